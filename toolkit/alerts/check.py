"""After a cycle: which incidents open or end (``toolkit.incidents``, pure), kept in the store, and their
messages sent. An incident gets one alert when it opens and one "resolved" when it ends, per channel; a
message a channel did not take is tried again at later checks (at most ``MAX_TRIES`` times), and a
channel that fails is not tried again within the same check, so a hanging webhook costs a sync at most
one timeout per attempt. Nothing here raises for a channel's failure: it is recorded and returned."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from toolkit import incidents
from toolkit.alerts import channels
from toolkit.alerts.config import AlertSettings, current
from toolkit.errors import AlertError
from toolkit.export.runner import DYNAMIC_INTERVAL
from toolkit.incidents import RunFacts, SyncFacts
from toolkit.redaction import REDACTOR
from toolkit.sql import to_utc_naive
from toolkit.store import Store, transaction

MAX_TRIES = 5                 # per message and channel
RUNS_READ = 10                # per cohort: the latest few runs decide every condition


def sync_facts(con) -> dict[str, SyncFacts]:
    """Every registered export with its latest non-dry runs, newest first."""
    runs: dict[str, list[RunFacts]] = {}
    for row in con.execute(f"""
            SELECT cohort, run_id, status, started_at, members, exportable, coalesce(failed, 0),
                   coalesce(tag_cap, 0), error
            FROM export_runs WHERE NOT dry_run
            QUALIFY row_number() OVER (PARTITION BY cohort ORDER BY run_id DESC) <= {RUNS_READ}
            ORDER BY cohort, run_id DESC""").fetchall():
        runs.setdefault(row[0], []).append(RunFacts(*row[1:]))
    return {c: SyncFacts(c, mode, created, stopped, tuple(runs.get(c, ())), paused)
            for c, mode, created, stopped, paused in con.execute(
                "SELECT cohort, mode, created_at, stopped_at, paused_at IS NOT NULL FROM exports ORDER BY cohort"
            ).fetchall()}


def check(store: Store, now: datetime | None = None, cadence: timedelta = DYNAMIC_INTERVAL) -> dict:
    """Open and resolve incidents as the runs now say, then send what is due. Returns what happened,
    JSON-ready: opened, resolved, open (count), sent, not_delivered (why, per failed channel)."""
    now = to_utc_naive(now or datetime.now(UTC))
    con = store.con
    try:
        settings, settings_error = current(store), None
    except AlertError as exc:          # unreadable secrets: incidents are still kept, the error reported
        settings, settings_error = AlertSettings(), str(exc)
    syncs = sync_facts(con)
    holding = incidents.conditions(syncs.values(), now, incidents.Rules(cadence, 2, settings.shrink_share))
    open_now = {(c, k) for c, k in con.execute(
        "SELECT cohort, kind FROM alert_incidents WHERE resolved_at IS NULL").fetchall()}
    change = incidents.changes(open_now, holding)
    with transaction(con):
        for c in change.opened:
            con.execute("INSERT INTO alert_incidents VALUES (nextval('incident_ids'), ?, ?, ?, ?, ?, ?, NULL, NULL)",
                        [c.cohort, c.kind, REDACTOR.redact(c.cause), c.advice, c.run_id, now])
        for cohort, kind in change.resolved:
            con.execute("UPDATE alert_incidents SET resolved_at = ?, resolution = ? WHERE cohort = ? AND kind = ? "
                        "AND resolved_at IS NULL", [now, incidents.resolution(cohort, kind, syncs), cohort, kind])
    sent, failures = _deliver(con, settings, now)
    return {"opened": [{"cohort": c.cohort, "kind": c.kind, "cause": REDACTOR.redact(c.cause)} for c in change.opened],
            "resolved": [{"cohort": c, "kind": k} for c, k in change.resolved],
            "open": len(open_now) + len(change.opened) - len(change.resolved),
            "sent": sent, "not_delivered": ([settings_error] if settings_error else []) + failures}


def _deliver(con, settings: AlertSettings, now: datetime) -> tuple[int, list[str]]:
    sent, failures = 0, []
    for channel in settings.channels:
        for incident_ids, message, subject, text in _pending(con, channel):
            (delivery,) = channels.send(settings, subject, text, [channel])
            for incident_id in incident_ids:
                con.execute("INSERT INTO alert_deliveries VALUES (?, ?, ?, ?, ?, ?)",
                            [incident_id, message, channel, now, delivery.ok, delivery.error])
            if not delivery.ok:
                failures.append(str(delivery.error))
                break               # this channel is down: the rest wait for the next check
            sent += 1
    return sent, failures


def _pending(con, channel: str) -> list[tuple[list[int], str, str, str]]:
    """(incidents, message, subject, text) the channel has not taken yet: the opening alert of an open
    incident, the resolution of one whose alert it took. Incidents of one kind pending together make one
    message (a revoked key or the tag cap meets many syncs of an app at once: one alert, not sixty)."""
    rows = con.execute("""
        WITH d AS (SELECT incident_id, message, bool_or(ok) AS ok, count(*) AS tries FROM alert_deliveries
                   WHERE channel = $channel GROUP BY ALL)
        SELECT i.incident_id, i.cohort, i.kind, i.cause, i.advice, i.run_id, i.opened_at, i.resolution,
               i.resolved_at IS NULL AS is_open
        FROM alert_incidents i
        LEFT JOIN d o ON o.incident_id = i.incident_id AND o.message = 'opened'
        LEFT JOIN d r ON r.incident_id = i.incident_id AND r.message = 'resolved'
        WHERE (i.resolved_at IS NULL AND NOT coalesce(o.ok, false) AND coalesce(o.tries, 0) < $max)
           OR (i.resolved_at IS NOT NULL AND coalesce(o.ok, false) AND NOT coalesce(r.ok, false)
               AND coalesce(r.tries, 0) < $max)
        ORDER BY i.incident_id""", {"channel": channel, "max": MAX_TRIES}).fetchall()
    groups: dict[tuple[str, str], list[tuple]] = {}
    for row in rows:
        groups.setdefault(("opened" if row[-1] else "resolved", row[2]), []).append(row)
    pending = []
    for (message, kind), found in groups.items():
        ids = [row[0] for row in found]
        if message == "opened":
            text = incidents.opened_group_text([incidents.Condition(c, k, cause, advice, run_id)
                                                for _, c, k, cause, advice, run_id, *_ in found])
            subject = (f'[toolkit] sync of "{found[0][1]}" {incidents.TITLES[kind]}' if len(found) == 1 else
                       f"[toolkit] syncs of {len(found)} cohorts {incidents.TITLES[kind].replace('is ', 'are ', 1)}")
        else:
            text = incidents.resolved_group_text([(c, k, opened_at, resolution)
                                                  for _, c, k, _, _, _, opened_at, resolution, _ in found])
            subject = (f'[toolkit] resolved: sync of "{found[0][1]}"' if len(found) == 1 else
                       f"[toolkit] resolved: syncs of {len(found)} cohorts")
        pending.append((ids, message, subject, text))
    return pending


def send_test(store: Store) -> list[channels.Delivery]:
    """A test message to every configured channel; an error when none is configured."""
    settings = current(store)
    if not settings.channels:
        raise AlertError("no alert channel is configured: run `toolkit alerts configure --webhook URL` "
                         "and/or `--smtp HOST:PORT --from ADDRESS --to ADDRESS` first")
    return channels.send(settings, "[toolkit] test alert",
                         "Test alert from the toolkit: alerts for unattended syncs reach this channel.")


def incident_list(store: Store, *, open_only: bool = False, cohort: str | None = None, limit: int = 50) -> list[dict]:
    """Incidents, newest first, with their deliveries per channel (the last attempt's outcome)."""
    cursor = store.reader().execute("""
        SELECT i.incident_id, i.cohort, i.kind, i.cause, i.advice, i.run_id, i.opened_at, i.resolved_at,
               i.resolution,
               (SELECT list({'message': message, 'channel': channel, 'ok': ok, 'error': error,
                             'attempted_at': attempted_at} ORDER BY attempted_at, message)
                FROM alert_deliveries d WHERE d.incident_id = i.incident_id) AS deliveries
        FROM alert_incidents i
        WHERE (NOT $open_only OR i.resolved_at IS NULL) AND ($cohort IS NULL OR i.cohort = $cohort)
        ORDER BY i.incident_id DESC LIMIT $limit""", {"open_only": open_only, "cohort": cohort, "limit": limit})
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
