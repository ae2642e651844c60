"""Sending one message to a webhook (Slack-compatible JSON) or by email (SMTP). A channel that fails
answers with a sentence saying why (never its secret), it never raises: an alert that cannot be sent
must not stop the sync that raised it. Each attempt waits at most the configured timeout."""

from __future__ import annotations

import logging
import smtplib
import time
from dataclasses import dataclass
from email.message import EmailMessage

import httpx

from toolkit.alerts.config import AlertSettings
from toolkit.redaction import REDACTOR

WEBHOOK_TRIES = 2               # a blip is retried once; a channel still failing waits for the next check
RETRY_PAUSE = 0.5

for _name in ("httpx", "httpcore"):      # they log request URLs: a webhook's URL is its secret
    logging.getLogger(_name).addFilter(REDACTOR)


@dataclass(frozen=True)
class Delivery:
    channel: str                # webhook | email
    ok: bool
    error: str | None = None


def send(settings: AlertSettings, subject: str, text: str, channels: list[str] | None = None) -> list[Delivery]:
    """``text`` to each configured channel (or those named), one Delivery each."""
    sent = []
    for channel in channels if channels is not None else settings.channels:
        error = post_webhook(settings, text) if channel == "webhook" else send_mail(settings, subject, text)
        sent.append(Delivery(channel, error is None, error))
    return sent


def slack_body(text: str) -> dict:
    """Slack's incoming-webhook shape: ``text`` (the fallback every receiver reads) and one section block."""
    return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


def post_webhook(settings: AlertSettings, text: str) -> str | None:
    """None when the webhook accepted the message (2xx), else why not."""
    where = f"webhook {settings.webhook_host}"
    if not settings.webhook_url:
        return (f"{where}: its URL is not in {ENV_HINT}; run `toolkit alerts configure --webhook URL` again")
    error = "not tried"
    for attempt in range(WEBHOOK_TRIES):
        if attempt:
            time.sleep(RETRY_PAUSE)
        try:
            response = httpx.post(settings.webhook_url, json=slack_body(text), timeout=settings.timeout)
        except httpx.TimeoutException:
            error = f"{where}: no answer within {settings.timeout:g} s"
            continue
        except httpx.HTTPError as exc:
            error = f"{where}: cannot reach it ({REDACTOR.redact(str(exc)) or type(exc).__name__})"
            continue
        if response.is_success:
            return None
        error = f"{where}: answered HTTP {response.status_code}"
        if response.status_code < 500 and response.status_code != 429:
            break                # a refusal (bad URL, revoked hook) is not mended by trying again
    return error + f" (tried {attempt + 1} time(s))"


ENV_HINT = "$TOOLKIT_ALERT_WEBHOOK or the alert secrets file"


def send_mail(settings: AlertSettings, subject: str, text: str) -> str | None:
    """None when the SMTP server accepted the message for every recipient, else why not."""
    where = f"email via {settings.smtp_host}:{settings.smtp_port}"
    message = EmailMessage()
    message["Subject"], message["From"], message["To"] = subject, settings.mail_from, ", ".join(settings.mail_to)
    message.set_content(text)
    try:
        with smtplib.SMTP(settings.smtp_host or "", settings.smtp_port, timeout=settings.timeout) as smtp:
            if settings.starttls:
                smtp.starttls()
            if settings.smtp_user:
                if not settings.smtp_password:
                    return f"{where}: no password for {settings.smtp_user} (set $TOOLKIT_SMTP_PASSWORD or " \
                           "`toolkit alerts configure --smtp-password`)"
                smtp.login(settings.smtp_user, settings.smtp_password)
            refused = smtp.send_message(message)
    except TimeoutError:
        return f"{where}: no answer within {settings.timeout:g} s"
    except smtplib.SMTPRecipientsRefused as exc:
        return f"{where}: refused for " + ", ".join(sorted(exc.recipients))
    except smtplib.SMTPResponseException as exc:      # the server's code and words, not Python's repr of them
        said = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"{where}: the server answered {exc.smtp_code} {REDACTOR.redact(said)}"
    except (OSError, smtplib.SMTPException) as exc:
        return f"{where}: {REDACTOR.redact(str(exc)) or type(exc).__name__}"
    if refused:
        return f"{where}: refused for " + ", ".join(sorted(refused))
    return None
