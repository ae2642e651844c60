"""Keeping a secret (the OneSignal API key) out of text: every written form of it, and a logging filter
that replaces them. Ground level (standard library only): errors.py redacts every OneSignal error's
message with it, onesignal.py installs the filter on its loggers and httpx's."""

from __future__ import annotations

import base64
import json
import logging
from urllib.parse import quote, quote_plus

REDACTED = "<redacted>"
MIN_SECRET = 8        # shorter strings are not redacted (OneSignal keys are far longer)


def secret_forms(secret: str) -> set[str]:
    """The ways a secret can be written into text: as is, escaped as in a str or bytes repr or JSON,
    URL-encoded, and base64 (alone or as an ``Authorization`` value)."""
    forms = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], quote(secret, safe=""), quote_plus(secret)}
    try:
        raw = secret.encode("utf-8")
    except UnicodeEncodeError:              # a lone surrogate: no bytes form
        return forms
    forms |= {repr(raw)[2:-1], base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(),
              base64.b64encode(raw).decode().rstrip("=")}
    for scheme in ("Key ", "Basic ", "Bearer "):
        forms.add(base64.b64encode(scheme.encode() + raw).decode())
    return {form for form in forms if len(form) >= MIN_SECRET}


class RedactingFilter(logging.Filter):
    """Replaces every registered secret in a log record (message, args and traceback text).

    Installed on the OneSignal client's logger and on httpx's and httpcore's; add ``REDACTOR`` to your own
    handlers to cover every logger."""

    def __init__(self):
        super().__init__()
        self._secrets: set[str] = set()

    def add(self, secret: str) -> None:
        # A few characters are no real key, and replacing them would garble every record.
        if len(secret) >= MIN_SECRET:
            self._secrets |= secret_forms(secret)

    def redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):     # longest first: no partial leftovers
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        if self.redact(message) != message:
            record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


REDACTOR = RedactingFilter()
