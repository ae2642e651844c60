"""Sync states: each registered export is active, paused (and why) or stopped, or a one-time export.

Like Mixpanel, a dynamic sync whose destination refuses a whole request with 400, 401, 403 or 404 (a
revoked key, an app that is gone, a plan that refuses segments) is paused: running it every fifteen
minutes would only fail again. The run that met the refusal ends ``paused`` with OneSignal's answer
as its error, and the pause is kept on the export's row (``paused_at``, ``paused_reason``): the scheduler
skips it (``registry.due``; ``sync.run_due`` says so) until a person resumes it (``toolkit resume NAME``,
the export panel's Resume). A refusal of one user (the tag cap, a 400 on one update) is that user's
failure, and a 429 or 5xx is retried and then fails the run: neither pauses. A person can pause a sync
too (``toolkit pause NAME``).

``overview`` is what ``toolkit runs`` and the export panel show per export: its state, last run, last
success, members, exportable, in segment, the match rate (exportable / members) run by run, and its last
reconciliation (the drift found by kind, repaired or not).
"""

from __future__ import annotations

import threading
from datetime import datetime

from toolkit.errors import ExportError, OneSignalError, SyncPaused
from toolkit.export.helpers import _naive
from toolkit.export.lock import _is_running
from toolkit.store import Store, transaction

ACTIVE, PAUSED, STOPPED, ONCE = "active", "paused", "stopped", "one-time"
GUARDED = "guarded"        # stopped by the removal guard until a person confirms the removals or resumes it
STILL_STOPPED = "still stopped by the removal guard since"     # a later cycle's short run says so
# OneSignal's answers to a whole request that no retry mends (402: the plan refuses segments).
PAUSING = frozenset({400, 401, 402, 403, 404})
KEY_REFUSED = frozenset({401, 403})     # the app's key: every sync of the app is refused alike
_PAUSES = threading.Lock()
PAUSED_BY_A_PERSON = "paused by a person"
HISTORY = 96          # runs of the match-rate series (a day of fifteen-minute runs)
# A run that did its work: ok, or partial with some users handled (sync.run_outcome's rule).
_SUCCEEDED = ("status = 'ok' OR (status = 'partial' AND coalesce(added, 0) + coalesce(removed, 0) "
              "+ coalesce(unchanged, 0) + coalesce(not_in_onesignal, 0) > 0)")


def pause_cause(exc: BaseException) -> OneSignalError | None:
    """OneSignal's refusal of a whole request behind ``exc``, if it should pause the sync. The segment
    step words a plan's refusals as an ExportError raised ``from None``: the refusal is its context."""
    for found in (exc, exc.__context__):
        if isinstance(found, OneSignalError) and found.status in PAUSING:
            return found
    return None


def after_failure(con, cohort: str, mode: str, app_id: str | None, exc: BaseException,
                  now: datetime | None) -> tuple[str, str]:
    """The status of a run that ``exc`` ended, and a note for its error: ``paused`` (and the export paused)
    when OneSignal refused a whole request of the registered dynamic sync of this app; else ``failed``.
    A refused key (401, 403) is the app's, not the cohort's: every active dynamic sync of the app is paused
    with it, so the others (which send nothing while unchanged) do not meet it one by one, each with an
    alert of its own; the note says how many."""
    cause = pause_cause(exc)
    if mode != "dynamic" or cause is None:
        return "failed", ""
    with _PAUSES:       # runs of a cycle meeting the refusal at once write the same rows
        found = con.execute("UPDATE exports SET paused_at = ?, paused_reason = ? WHERE cohort = ? AND app_id = ? "
                            "AND mode = 'dynamic' AND stopped_at IS NULL RETURNING cohort",
                            [_naive(now), str(exc), cohort, app_id]).fetchall()
        if not found:
            return "failed", ""
        if cause.status not in KEY_REFUSED:
            return "paused", ""
        others = con.execute(
            "UPDATE exports SET paused_at = ?, paused_reason = ? WHERE app_id = ? AND cohort <> ? AND mode = 'dynamic' "
            "AND stopped_at IS NULL AND paused_at IS NULL RETURNING cohort",
            [_naive(now), f'OneSignal refused the app\'s key (the sync of "{cohort}" met it): {exc}', app_id,
             cohort]).fetchall()
    return "paused", (f" (the app's key: its {len(others)} other active dynamic sync(s) are paused too)"
                      if others else "")


def pause(store: Store, cohort: str, reason: str | None = None, now: datetime | None = None) -> None:
    """A person pauses an active dynamic sync: the scheduler skips it until it is resumed."""
    row = _dynamic(store, cohort)
    if row["paused_at"] is not None:
        raise ExportError(f"the dynamic sync of {cohort!r} is already paused: {row['paused_reason']}")
    store.con.execute("UPDATE exports SET paused_at = ?, paused_reason = ? WHERE cohort = ?",
                      [_naive(now), reason or PAUSED_BY_A_PERSON, cohort])


def resume(store: Store, cohort: str, now: datetime | None = None) -> dict:
    """A person resumes a paused dynamic sync (having fixed the cause), or one the removal guard stopped
    (its next run plans and guards afresh): due at once. Returns the pause or stop it ended (paused_at,
    paused_reason, guard_stopped_at, guard_stopped_run: None for the one it was not)."""
    row = _dynamic(store, cohort)
    if row["paused_at"] is None and row["guard_stopped_at"] is None:
        raise ExportError(f"the dynamic sync of {cohort!r} is not paused")
    store.con.execute("UPDATE exports SET paused_at = NULL, paused_reason = NULL, guard_stopped_at = NULL, "
                      "guard_stopped_run = NULL, next_due_at = least(coalesce(next_due_at, $now), $now) "
                      "WHERE cohort = $cohort", {"now": _naive(now), "cohort": cohort})
    return {"cohort": cohort, **{k: row[k] for k in ("paused_at", "paused_reason", "guard_stopped_at",
                                                      "guard_stopped_run")}}


def resume_all(store: Store, app_id: str | None = None, now: datetime | None = None) -> list[dict]:
    """A person resumes every paused dynamic sync (of app ``app_id``), e.g. after fixing the app's key that
    paused them all: each due at once. Returns the pauses it ended (cohort, paused_at, paused_reason) by
    cohort; a sync the removal guard stopped is left to ``resume`` one by one (its removals need a look)."""
    with transaction(store.con) as con:
        found = [row for row in paused(con) if app_id is None or row["app_id"] == app_id]
        con.execute("UPDATE exports SET paused_at = NULL, paused_reason = NULL, "
                    "next_due_at = least(coalesce(next_due_at, $now), $now) WHERE cohort IN (SELECT unnest($cohorts))",
                    {"now": _naive(now), "cohorts": [row["cohort"] for row in found]})
    if not found:
        raise ExportError("no paused dynamic sync" + (f" of app {app_id}" if app_id else "")
                          + ": nothing to resume (toolkit runs shows each sync's state)")
    return [{k: row[k] for k in ("cohort", "paused_at", "paused_reason")} for row in found]


def guard_stop(con, cohort: str) -> tuple[datetime, int] | None:
    """When the removal guard stopped the cohort's dynamic sync, and the run it stopped; None: not stopped."""
    row = con.execute("SELECT guard_stopped_at, guard_stopped_run FROM exports WHERE cohort = ? "
                      "AND guard_stopped_at IS NOT NULL", [cohort]).fetchone()
    return (row[0], row[1]) if row else None


def stop_by_guard(con, cohort: str, now: datetime | None, run_id: int) -> None:
    """The removal guard stopped run ``run_id`` of the dynamic sync: it stays stopped (later cycles record
    a short run, no member rows) until a person confirms the removals (a forced run) or resumes it."""
    con.execute("UPDATE exports SET guard_stopped_at = ?, guard_stopped_run = ? WHERE cohort = ? "
                "AND mode = 'dynamic' AND guard_stopped_at IS NULL", [_naive(now), run_id, cohort])


def end_guard_stop(con, cohort: str, run_id: int | None = None) -> None:
    """A person confirmed the removals (a forced run went through), or the run that stopped it is undone
    (``run_id``: only the stop that run made)."""
    con.execute("UPDATE exports SET guard_stopped_at = NULL, guard_stopped_run = NULL WHERE cohort = $cohort "
                "AND guard_stopped_at IS NOT NULL AND ($run IS NULL OR guard_stopped_run = $run)",
                {"cohort": cohort, "run": run_id})


def still_stopped(cohort: str, stop: tuple[datetime, int], now_reason: str, guard_passes: bool) -> str:
    """A later cycle's short run of a guard-stopped sync: since when, what the guard says of the plan now,
    and the way out."""
    since, run_id = stop
    now = (f"now the guard would pass ({now_reason}): resume the sync to send the changes" if guard_passes
           else f"now: {now_reason.split('; rerun with force')[0]}")
    return (f"{STILL_STOPPED} {since:%Y-%m-%d %H:%M} UTC (run #{run_id} lists every change not sent); {now}. "
            f"Confirm the removals: toolkit export {cohort!r} --force, or resume the sync: toolkit resume {cohort!r}")


def _dynamic(store: Store, cohort: str) -> dict:
    cursor = store.con.execute("SELECT mode, stopped_at, paused_at, paused_reason, guard_stopped_at, "
                               "guard_stopped_run FROM exports WHERE cohort = ?", [cohort])
    row = cursor.fetchone()
    if row is None or row[0] != "dynamic":
        raise ExportError(f"cohort {cohort!r} has no dynamic sync" + ("" if row is None else " (a one-time export)"))
    if row[1] is not None:
        raise ExportError(f"the dynamic sync of {cohort!r} was stopped; register it again (toolkit export NAME "
                          "--dynamic)")
    return dict(zip([d[0] for d in cursor.description], row, strict=True))


def refuse_if_paused(con, cohort: str) -> None:
    """A registered run of a paused sync is refused, naming the pause and the way out; registering the
    export again (a person's act) is not."""
    row = con.execute("SELECT paused_at, paused_reason FROM exports WHERE cohort = ? AND paused_at IS NOT NULL",
                      [cohort]).fetchone()
    if row:
        raise SyncPaused(paused_refusal(cohort, row[0], row[1]))


def paused_refusal(cohort: str, since: datetime, reason: str) -> str:
    """Why a run of a paused sync is refused, and the way out."""
    return (f"the dynamic sync of {cohort!r} is paused since {since:%Y-%m-%d %H:%M} UTC: {reason}. "
            f"Fix the cause, then resume it (toolkit resume {cohort!r}, or the export panel's Resume)")


def sync_stop(con, cohort: str) -> dict | None:
    """What holds the registered dynamic sync of ``cohort`` back now, or None (active, one-time, unregistered,
    stopped for good): ``state`` paused (``since``, ``reason``: a person's or OneSignal's 400-404) or guarded
    (stopped by the removal guard: ``since``, ``run_id``, the run that lists the changes not sent)."""
    row = con.execute("SELECT paused_at, paused_reason, guard_stopped_at, guard_stopped_run FROM exports "
                      "WHERE cohort = ? AND mode = 'dynamic' AND stopped_at IS NULL", [cohort]).fetchone()
    if row is None:
        return None
    if row[0] is not None:
        return {"state": PAUSED, "since": row[0], "reason": row[1], "run_id": None}
    if row[2] is not None:
        return {"state": GUARDED, "since": row[2], "reason": None, "run_id": row[3]}
    return None


def paused(con) -> list[dict]:
    """The paused dynamic syncs: cohort, paused_at, paused_reason, app_id."""
    cursor = con.execute("SELECT cohort, paused_at, paused_reason, app_id FROM exports WHERE mode = 'dynamic' "
                         "AND stopped_at IS NULL AND paused_at IS NOT NULL ORDER BY cohort")
    return [dict(zip(("cohort", "paused_at", "paused_reason", "app_id"), row, strict=True))
            for row in cursor.fetchall()]


def state_of(export: dict) -> str:
    """active / paused / guarded / stopped for a dynamic sync, one-time for a one-time export (a row of ``exports``)."""
    if export["mode"] != "dynamic":
        return ONCE
    if export.get("stopped_at") is not None:
        return STOPPED
    if export.get("paused_at") is not None:
        return PAUSED
    return GUARDED if export.get("guard_stopped_at") is not None else ACTIVE


def overview(store: Store, cohort: str | None = None, history: int = HISTORY) -> list[dict]:
    """Per registered export (or ``cohort``'s): state, why paused, last run (id, time, status), last
    success, members and exportable (as its last run counted them), in segment (tagged now), match rate,
    ``series``: (started_at, members, exportable, match_rate) of its last ``history`` runs, oldest
    first, and ``last_reconcile`` (``last_reconcile``). Dry runs and runs that could not count members
    are left out of the numbers."""
    con = store.reader()
    cursor = con.execute("""
        SELECT e.cohort, e.mode, e.app_id, e.segment_name, e.next_due_at, e.stopped_at, e.paused_at,
               e.paused_reason, e.guard_stopped_at, e.guard_stopped_run,
               (SELECT count(*) FROM export_members m WHERE m.cohort = e.cohort AND m.status = 'tagged') AS in_segment
        FROM exports e WHERE $cohort IS NULL OR e.cohort = $cohort ORDER BY e.cohort""", {"cohort": cohort})
    names = [d[0] for d in cursor.description]
    found = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in found:
        row["state"] = state_of(row)
        last = con.execute("SELECT run_id, started_at, status, error FROM export_runs WHERE cohort = ? "
                           "AND NOT dry_run ORDER BY run_id DESC LIMIT 1", [row["cohort"]]).fetchone()
        status = last[2] if last else None
        if status == "running" and not _is_running(store, row["cohort"]):
            status = "interrupted"
        row.update(last_run_id=last[0] if last else None, last_run_at=last[1] if last else None,
                   last_status=status, last_error=last[3] if last else None)
        row["last_success_at"] = con.execute(
            f"SELECT max(started_at) FROM export_runs WHERE cohort = ? AND NOT dry_run AND ({_SUCCEEDED})",
            [row["cohort"]]).fetchone()[0]
        row["last_reconcile"] = last_reconcile(con, row["cohort"])
        series = match_rates(con, row["cohort"], history)
        row["series"] = series
        latest = series[-1] if series else None
        row["members"] = latest["members"] if latest else None
        row["exportable"] = latest["exportable"] if latest else None
        row["match_rate"] = latest["match_rate"] if latest else None
    return found


def last_reconcile(con, cohort: str) -> dict | None:
    """The cohort's last ``toolkit reconcile`` (``reconcile.record``): checked_at, the drift found by kind
    (tagged_outside, lost_tag, deleted), snapshot, in_sync, and its repair run (repair_run_id,
    repair_status; None without --repair); None if it was never reconciled."""
    cursor = con.execute("SELECT checked_at, tagged_outside, lost_tag, deleted, snapshot, in_sync, repair_run_id, "
                         "repair_status FROM reconciliations WHERE cohort = ? ORDER BY checked_at DESC, "
                         "rowid DESC LIMIT 1", [cohort])
    row = cursor.fetchone()
    return dict(zip([d[0] for d in cursor.description], row, strict=True)) if row else None


def match_rates(con, cohort: str, history: int = HISTORY) -> list[dict]:
    """The cohort's match rate (exportable / members) at each of its last ``history`` runs that counted
    members, oldest first: run_id, started_at, members, exportable, match_rate (None for an empty cohort)."""
    rows = con.execute("""
        SELECT run_id, started_at, members, exportable FROM export_runs
        WHERE cohort = ? AND NOT dry_run AND members IS NOT NULL ORDER BY run_id DESC LIMIT ?""",
                       [cohort, history]).fetchall()
    return [{"run_id": r, "started_at": t, "members": m, "exportable": x,
             "match_rate": (x or 0) / m if m else None} for r, t, m, x in reversed(rows)]
