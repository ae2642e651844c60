"""Alerts for unattended syncs: a webhook and/or email when a dynamic sync fails, partially fails, is
paused or guard-stopped, hits the data-tag cap, goes stale or shrinks sharply; one alert per incident
and a short "resolved" when it ends. Which incidents hold is ``toolkit.incidents`` (pure); this package
keeps the settings (``config``), sends (``channels``) and keeps incidents in the store (``check``)."""

from toolkit.alerts.channels import Delivery
from toolkit.alerts.check import check, incident_list, send_test, sync_facts
from toolkit.alerts.config import AlertSettings, configure, current, secrets_file

__all__ = ["AlertSettings", "Delivery", "check", "configure", "current", "incident_list", "secrets_file",
           "send_test", "sync_facts"]
