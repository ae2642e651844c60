"""Where the OneSignal API key (and, below, the Mixpanel service account) comes from: the environment, a
0600 credentials file, or a prompt.

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
from toolkit.mixpanel.client import ServiceAccount
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
    return _write_private(path, entries)


def _write_private(path: Path, entries: dict) -> Path:
    """``entries`` as JSON at ``path``, written atomically with mode 0600 (its folder 0700 if new)."""
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
    entries = _read_private(path)
    if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
        raise CredentialsError(f"credentials file {path}: expected {{\"<app id>\": \"<api key>\"}}")
    return entries


def _read_private(path: Path):
    """The JSON of a credentials file, refused when others could read it."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise CredentialsError(f"credentials file {path} is readable by others (mode {mode:04o}); "
                               f"run: chmod 600 {path}")
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"credentials file {path} is not valid JSON: {exc}") from None
    return entries


# -- Mixpanel's service account ---------------------------------------------------------------------
# The same rules: the environment, then a 0600 file ({"<project id>": {"username", "secret", "region"}} at
# $TOOLKIT_MIXPANEL_CREDENTIALS or ~/.config/toolkit/mixpanel.json), then a hidden prompt; never an
# argument, a notebook parameter or the store. The project id and region are not secret.

ENV_MIXPANEL_USERNAME = "MIXPANEL_USERNAME"
ENV_MIXPANEL_SECRET = "MIXPANEL_SECRET"
ENV_MIXPANEL_PROJECT = "MIXPANEL_PROJECT_ID"
ENV_MIXPANEL_REGION = "MIXPANEL_REGION"
ENV_MIXPANEL_FILE = "TOOLKIT_MIXPANEL_CREDENTIALS"


def mixpanel_credentials_file() -> Path:
    return Path(os.environ.get(ENV_MIXPANEL_FILE) or Path.home() / ".config" / "toolkit" / "mixpanel.json")


def find_mixpanel(project_id: str | None = None, *, region: str | None = None,
                  prompt: bool = False) -> ServiceAccount | None:
    """The service account for ``project_id`` (default $MIXPANEL_PROJECT_ID, else the file's only project):
    environment first, then the file, then (``prompt`` on a terminal) a hidden prompt. None when none."""
    path = mixpanel_credentials_file()
    saved = _read_mixpanel(path) if path.exists() else {}
    project_id = str(project_id or os.environ.get(ENV_MIXPANEL_PROJECT) or "").strip()
    if not project_id and len(saved) == 1:
        project_id = next(iter(saved))
    if not project_id:
        return None
    entry = saved.get(project_id, {})
    username = os.environ.get(ENV_MIXPANEL_USERNAME) or entry.get("username")
    secret = os.environ.get(ENV_MIXPANEL_SECRET) or entry.get("secret")
    region = region or os.environ.get(ENV_MIXPANEL_REGION) or entry.get("region") or "us"
    if prompt and sys.stdin.isatty():
        username = username or input(f"Mixpanel service account username for project {project_id}: ").strip()
        secret = secret or getpass.getpass(f"Mixpanel service account secret for {username}: ").strip()
    if not (username and secret):
        return None
    return ServiceAccount(username, secret, project_id, region)


def require_mixpanel(project_id: str | None = None, *, region: str | None = None,
                     prompt: bool = False) -> ServiceAccount:
    found = find_mixpanel(project_id, region=region, prompt=prompt)
    if found is None:
        which = f"project {project_id}" if project_id else f"a project (set {ENV_MIXPANEL_PROJECT} or --project-id)"
        raise CredentialsError(
            f"no Mixpanel service account for {which}: set {ENV_MIXPANEL_USERNAME} and {ENV_MIXPANEL_SECRET} "
            f"(and {ENV_MIXPANEL_REGION} for an EU or India project), or keep them in "
            f"{mixpanel_credentials_file()} (mode 0600) with `toolkit pull --save-credentials`")
    return found


def save_mixpanel(account: ServiceAccount) -> Path:
    """Add or replace this project's service account in the Mixpanel credentials file (0600, atomic)."""
    path = mixpanel_credentials_file()
    entries = _read_mixpanel(path) if path.exists() else {}
    entries[account.project_id] = {"username": account.username, "secret": account.secret, "region": account.region}
    return _write_private(path, entries)


def _read_mixpanel(path: Path) -> dict[str, dict[str, str]]:
    entries = _read_private(path)
    if not isinstance(entries, dict) or not all(
            isinstance(v, dict) and all(isinstance(x, str) for x in v.values()) for v in entries.values()):
        raise CredentialsError(f"Mixpanel credentials file {path}: expected "
                               '{"<project id>": {"username": "...", "secret": "...", "region": "us"}}')
    return entries
