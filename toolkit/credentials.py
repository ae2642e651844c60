"""Where the OneSignal API key comes from: the environment, a 0600 credentials file, or a prompt.

Never from a command-line argument (shell history) or a papermill parameter (written into the
output notebook), and never stored in DuckDB. The file maps App IDs to keys:
``{"<app id>": "<api key>"}`` at $TOOLKIT_CREDENTIALS or ~/.config/toolkit/credentials.json.
"""

from __future__ import annotations

import getpass
import json
import os
import stat
import sys
import tempfile
from pathlib import Path

from toolkit.errors import CredentialsError
from toolkit.onesignal import Credentials

ENV_KEY = "ONESIGNAL_API_KEY"
ENV_APP = "ONESIGNAL_APP_ID"
ENV_FILE = "TOOLKIT_CREDENTIALS"


def credentials_file() -> Path:
    return Path(os.environ.get(ENV_FILE) or Path.home() / ".config" / "toolkit" / "credentials.json")


def find(app_id: str | None = None, *, prompt: bool = False) -> Credentials | None:
    """The credentials for ``app_id`` (default $ONESIGNAL_APP_ID): environment first, then the file,
    then (if ``prompt`` and a terminal is attached) a hidden prompt. None when there are none."""
    app_id = app_id or os.environ.get(ENV_APP)
    if not app_id:
        return None
    key = os.environ.get(ENV_KEY) or _from_file(app_id)
    if key is None and prompt and sys.stdin.isatty():
        key = getpass.getpass(f"OneSignal API key for app {app_id}: ").strip() or None
    return Credentials(app_id, key) if key else None


def require(app_id: str | None = None, *, prompt: bool = False) -> Credentials:
    found = find(app_id, prompt=prompt)
    if found is None:
        raise CredentialsError(
            f"no OneSignal API key for app {app_id or '(no app id: pass --app-id or set ' + ENV_APP + ')'}: "
            f"set {ENV_KEY}, or run `toolkit connect --app-id ... --save` to keep it in {credentials_file()} "
            "(mode 0600). Without a key the toolkit works in preview mode only.")
    return found


def save(credentials: Credentials) -> Path:
    """Add or replace this app's key in the credentials file, written atomically with mode 0600."""
    path = credentials_file()
    entries = _read(path) if path.exists() else {}
    entries[credentials.app_id] = credentials.api_key
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".credentials-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(entries, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _from_file(app_id: str) -> str | None:
    path = credentials_file()
    return _read(path).get(app_id) if path.exists() else None


def _read(path: Path) -> dict[str, str]:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise CredentialsError(f"credentials file {path} is readable by others (mode {mode:04o}); "
                               f"run: chmod 600 {path}")
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"credentials file {path} is not valid JSON: {exc}") from None
    if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
        raise CredentialsError(f"credentials file {path}: expected {{\"<app id>\": \"<api key>\"}}")
    return entries
