"""Where alerts go, configured once per store: a webhook (Slack-compatible) and/or email over SMTP.

The webhook URL (a Slack URL is its own secret) and the SMTP password are secrets, kept like the API key:
in a 0600 file ($TOOLKIT_ALERT_CREDENTIALS, else ~/.config/toolkit/alerts.json) or the environment
($TOOLKIT_ALERT_WEBHOOK, $TOOLKIT_SMTP_PASSWORD), never in the store, a repr, a log line or an error.
The store keeps the rest, and the webhook's scheme and host to show which one is set."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from toolkit.credentials import _read_private, _write_private
from toolkit.errors import AlertError, UsageError
from toolkit.redaction import REDACTOR
from toolkit.sql import to_utc_naive
from toolkit.store import Store

ENV_FILE = "TOOLKIT_ALERT_CREDENTIALS"
ENV_WEBHOOK = "TOOLKIT_ALERT_WEBHOOK"
ENV_SMTP_PASSWORD = "TOOLKIT_SMTP_PASSWORD"
DEFAULT_TIMEOUT = 5.0           # seconds per attempt: a hanging channel never holds the sync up for long
DEFAULT_SHRINK_SHARE = 0.5


@dataclass(frozen=True)
class AlertSettings:
    webhook_host: str | None = None          # scheme://host, shown; None: no webhook
    smtp_host: str | None = None             # None: no email
    smtp_port: int = 25
    smtp_user: str | None = None
    starttls: bool = False
    mail_from: str | None = None
    mail_to: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    shrink_share: float = DEFAULT_SHRINK_SHARE
    webhook_url: str | None = field(default=None, repr=False)       # secret
    smtp_password: str | None = field(default=None, repr=False)     # secret

    @property
    def channels(self) -> list[str]:
        return (["webhook"] if self.webhook_host else []) + (["email"] if self.smtp_host else [])

    def shown(self) -> dict:
        """The settings a person may see (no secret)."""
        return {"webhook": self.webhook_host, "smtp": f"{self.smtp_host}:{self.smtp_port}" if self.smtp_host else None,
                "smtp_user": self.smtp_user, "smtp_password_set": bool(self.smtp_password),
                "starttls": self.starttls, "from": self.mail_from, "to": list(self.mail_to),
                "timeout_seconds": self.timeout, "shrink_share": self.shrink_share,
                "secrets_file": str(secrets_file())}


def secrets_file() -> Path:
    return Path(os.environ.get(ENV_FILE) or Path.home() / ".config" / "toolkit" / "alerts.json")


def _secrets() -> dict[str, str]:
    path = secrets_file()
    if not path.exists():
        return {}
    try:
        entries = _read_private(path)
    except AlertError:
        raise
    except Exception as exc:       # CredentialsError: words for the credentials file; say it of this one
        raise AlertError(f"alert secrets: {exc}") from None
    if not isinstance(entries, dict) or not all(isinstance(v, str) for v in entries.values()):
        raise AlertError(f'alert secrets file {path}: expected {{"webhook_url": "...", "smtp_password": "..."}}')
    return entries


def _keep_secret(secret: str | None) -> None:
    """Every written form of ``secret`` is redacted from logs, errors and stored text from now on; for a
    URL also its path and query (the part that is the secret when the host is shown)."""
    if not secret:
        return
    REDACTOR.add(secret)
    parts = urlsplit(secret)
    if parts.netloc:
        REDACTOR.add(secret[secret.index(parts.netloc) + len(parts.netloc):])


def current(store: Store) -> AlertSettings:
    """The store's alert settings with their secrets (environment first, then the 0600 file)."""
    row = store.con.execute("SELECT webhook_host, smtp_host, smtp_port, smtp_user, starttls, mail_from, mail_to, "
                            "timeout_seconds, shrink_share FROM alert_settings WHERE id = 1").fetchone()
    if row is None:
        return AlertSettings()
    secrets = _secrets() if (row[0] or row[3]) else {}
    webhook = (os.environ.get(ENV_WEBHOOK) or secrets.get("webhook_url")) if row[0] else None
    password = (os.environ.get(ENV_SMTP_PASSWORD) or secrets.get("smtp_password")) if row[3] else None
    _keep_secret(webhook)
    _keep_secret(password)
    return AlertSettings(row[0], row[1], row[2] or 25, row[3], bool(row[4]), row[5], tuple(row[6] or ()),
                         row[7], row[8], webhook, password)


_UNSET = object()


def configure(store: Store, *, webhook=_UNSET, smtp=_UNSET, smtp_user=_UNSET, smtp_password=_UNSET,
              starttls=_UNSET, mail_from=_UNSET, mail_to=_UNSET, timeout=_UNSET, shrink_share=_UNSET,
              now: datetime | None = None) -> AlertSettings:
    """Change the settings given (the others stay): ``webhook`` a URL or None (no webhook), ``smtp``
    "HOST:PORT" or None (no email). Secrets go to the 0600 file; the rest to the store."""
    before = current(store)
    changes: dict = {}
    secrets: dict[str, str | None] = {}
    if webhook is not _UNSET:
        changes["webhook_host"], secrets["webhook_url"] = (_webhook_host(webhook), webhook) if webhook else (None, None)
    if smtp is not _UNSET:
        changes["smtp_host"], changes["smtp_port"] = _smtp_address(smtp) if smtp else (None, 25)
    if smtp_user is not _UNSET:
        changes["smtp_user"] = smtp_user or None
    if smtp_password is not _UNSET:
        secrets["smtp_password"] = smtp_password or None
    if starttls is not _UNSET:
        changes["starttls"] = bool(starttls)
    if mail_from is not _UNSET:
        changes["mail_from"] = _address(mail_from, "--from") if mail_from else None
    if mail_to is not _UNSET:
        changes["mail_to"] = tuple(_address(a, "--to") for a in mail_to or ())
    if timeout is not _UNSET:
        if not isinstance(timeout, (int, float)) or not 0 < timeout <= 60:
            raise UsageError(f"--timeout {timeout}: expected a number of seconds above 0, at most 60")
        changes["timeout"] = float(timeout)
    if shrink_share is not _UNSET:
        if not isinstance(shrink_share, (int, float)) or not 0 < shrink_share < 1:
            raise UsageError(f"--shrink-share {shrink_share}: expected a share between 0 and 1, e.g. 0.5 (50%)")
        changes["shrink_share"] = float(shrink_share)
    after = replace(before, **changes)
    if after.smtp_host and not (after.mail_from and after.mail_to):
        raise UsageError("email alerts need --from ADDRESS and at least one --to ADDRESS")
    if secrets:
        _save_secrets(secrets)
    store.con.execute("INSERT OR REPLACE INTO alert_settings VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      [after.webhook_host, after.smtp_host, after.smtp_port, after.smtp_user, after.starttls,
                       after.mail_from, list(after.mail_to), after.timeout, after.shrink_share,
                       to_utc_naive(now or datetime.now(UTC))])
    return current(store)


def _save_secrets(changed: dict[str, str | None]) -> None:
    entries = _secrets()
    for name, value in changed.items():
        _keep_secret(value)
        if value:
            entries[name] = value
        else:
            entries.pop(name, None)
    _write_private(secrets_file(), entries)


def _webhook_host(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # the URL may be a secret: name only what is wrong with it
        raise UsageError("--webhook: expected an http:// or https:// URL with a host "
                         "(e.g. a Slack incoming-webhook URL)")
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _smtp_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f'--smtp "{text}": expected HOST:PORT, e.g. smtp.example.com:587')
    return host, int(port)


def _address(text: str, option: str) -> str:
    text = text.strip()
    if "@" not in text or " " in text or text.startswith("@") or text.endswith("@"):
        raise UsageError(f'{option} "{text}": expected an email address, e.g. growth@example.com')
    return text
