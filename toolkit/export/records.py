"""Run records (``export_runs``): a run's start, finish and failure, and the runs listed, a killed run
shown as interrupted."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime

from toolkit import planning
from toolkit.export import fates
from toolkit.export.helpers import _naive
from toolkit.export.lock import DEAD_RUN, _is_running
from toolkit.export.registry import registration
from toolkit.export.run_settings import ExportSettings
from toolkit.onesignal import REDACTOR
from toolkit.planning import ADD, NOOP, REMOVE, GuardVerdict, Target
from toolkit.store import Store, transaction


@dataclass
class RunRecord:
    run_id: int
    cohort: str
    mode: str
    dry_run: bool
    status: str
    started_at: datetime
    ended_at: datetime | None = None
    members: int = 0
    exportable: int = 0
    added: int = 0
    removed: int = 0
    unchanged: int = 0
    not_in_onesignal: int = 0
    failed: int = 0
    tag_cap: int = 0                # members the app's data-tag cap kept out (refused, or not sent)
    error: str | None = None
    guard: str = ""
    plan: planning.Plan | None = field(default=None, repr=False)
    held: Mapping[str, Target] = field(default_factory=dict, repr=False)   # members the tag cap held back

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("plan")
        data.pop("held")
        return data


def runs(store: Store, cohort: str | None = None, limit: int = 50) -> list[dict]:
    cursor = store.reader().execute(
        "SELECT * FROM export_runs WHERE $cohort IS NULL OR cohort = $cohort ORDER BY run_id DESC LIMIT $limit",
        {"cohort": cohort, "limit": limit})
    names = [d[0] for d in cursor.description]
    found = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in found:                    # a killed run, before any run has marked it
        if row["status"] == "running" and not _is_running(store, row["cohort"]):
            row["status"], row["error"] = "interrupted", row["error"] or DEAD_RUN
    return found


# Runs of a cycle start and end at once (threads of one process: no other process can open the store
# meanwhile). A start marks the records of runs whose lock nobody holds; in a transaction overlapping another
# start's, or a run's end (its record read "running" in the snapshot, its lock already released), both would
# write one row and DuckDB refuse one. So starts and ends write run records one at a time.
_RECORD_WRITES = threading.Lock()


def _start(store: Store, con, settings: ExportSettings, the_plan: planning.Plan, verdict: GuardVerdict,
           members: int, exportable: int, held: Mapping[str, Target], tag_cap: int) -> RunRecord:
    """Called holding the cohort's run lock: any run of this cohort still marked running was cut short,
    and so was one of another cohort whose lock nobody holds (a killed run that no run of its own
    cohort followed would otherwise read "running" for ever). A dry run is written whole in this one
    transaction (it sends nothing, so there is no "running" to show): its status, counts and the rows
    of what it would have done; a sending run's start is one commit, its end (``_finish``) another."""
    record = new_record(settings, the_plan, verdict, members, exportable, held, tag_cap)
    _write_starts(store, con, [record])
    return record


def new_record(settings: ExportSettings, the_plan: planning.Plan, verdict: GuardVerdict, members: int,
               exportable: int, held: Mapping[str, Target], tag_cap: int) -> RunRecord:
    """A run's record as it starts (a dry run's whole), not yet written."""
    record = RunRecord(0, settings.cohort, settings.mode, settings.dry_run, "running", _naive(settings.now),
                       members=members, exportable=exportable, unchanged=the_plan.counts.get(NOOP, 0),
                       guard=verdict.reason, plan=the_plan, held=held, tag_cap=tag_cap)
    if settings.dry_run:
        _dry_run_outcome(record, verdict)
    return record


def write_dry_runs(store: Store, con, records: Sequence[RunRecord]) -> None:
    """Dry runs' records (``new_record``), written as ``_start`` writes one, all in one transaction: a
    dry-run cycle's sixty runs each writing its own commit took ~0.4 s at 10M events. The caller holds
    their cohorts' run locks."""
    assert all(r.dry_run for r in records)
    if records:
        _write_starts(store, con, records)


_STARTED = ("run_id", "cohort", "mode", "dry_run", "started_at", "status", "pid", "members", "exportable", "unchanged",
            "ended_at", "error", "added", "removed", "not_in_onesignal", "failed", "tag_cap")


def _write_starts(store: Store, con, records: Sequence[RunRecord]) -> None:
    """Write ``records`` (numbered here) in one transaction, marking the runs they follow as cut short."""
    now = records[0].started_at
    with _RECORD_WRITES, transaction(con):
        ours = {r.cohort for r in records}
        stale = [c for c, in con.execute("SELECT DISTINCT cohort FROM export_runs WHERE status = 'running'")
                 .fetchall() if c in ours or not _is_running(store, c)]
        if stale:
            con.execute("UPDATE export_runs SET status = 'interrupted', ended_at = ?, "
                        "error = coalesce(error, ?) WHERE status = 'running' AND cohort IN (SELECT unnest(?))",
                        [now, DEAD_RUN, stale])
        ids = con.execute("SELECT nextval('run_ids') FROM range(?)", [len(records)]).fetchall()
        for record, (run_id,) in zip(records, ids, strict=True):
            record.run_id = run_id
        pid = os.getpid()
        row = f"({', '.join('?' * len(_STARTED))})"
        con.execute(f"INSERT INTO export_runs ({', '.join(_STARTED)}) VALUES {', '.join([row] * len(records))}",
                    [v for r in records for v in (r.run_id, r.cohort, r.mode, r.dry_run, r.started_at, r.status, pid,
                                                  r.members, r.exportable, r.unchanged, r.ended_at, r.error, r.added,
                                                  r.removed, r.not_in_onesignal, r.failed, r.tag_cap)])
        _record_unsent(con, *(r for r in records if r.dry_run))


def _dry_run_outcome(record: RunRecord, verdict: GuardVerdict) -> None:
    """A dry run's end, known at its start: what it would do, or the guard's stop."""
    assert record.plan is not None
    status, error = ("ok", None) if verdict.ok else ("stopped", REDACTOR.redact(verdict.reason))
    record.status, record.error, record.ended_at = status, error, _naive(None)
    record.added, record.removed = record.plan.counts.get(ADD, 0), record.plan.counts.get(REMOVE, 0)


def _record_unsent(con, *records: RunRecord) -> None:
    """Every member's fate is on record (fates.py): what the runs did not send, and who the cap held back."""
    fates.record_unsent(con, [(record.run_id, record.plan.changes if record.plan else (), record.held,
                               *_unsent(record)) for record in records])


def _unsent(record: RunRecord) -> tuple[str | None, str]:
    """The outcome and reason of what the run did not send."""
    status = record.status
    unsent = fates.DRY_RUN if record.dry_run else None if status in ("ok", "partial") else fates.NOT_SENT
    return unsent, "dry run: not sent" if record.dry_run else f"not sent: the run {status}: {record.error}"


def _failed_users(con, record: RunRecord, shown: int = 3) -> str | None:
    """For a run where some users failed: who, and why (the first few), so the failure is not just a count."""
    if not record.failed:
        return None
    rows = con.execute("SELECT distinct_id, onesignal_id, operation, error FROM export_results WHERE run_id = ? "
                       "AND (outcome = 'failed' OR (outcome = 'tag_cap' AND operation = 'remove')) "
                       "ORDER BY distinct_id LIMIT ?", [record.run_id, shown]).fetchall()
    listed = "; ".join(f"user {d!r} (OneSignal id {o!r}, {'tag' if op == ADD else 'untag'}): {e}"
                       for d, o, op, e in rows)
    more = f"; and {record.failed - len(rows):,} more (see export_results)" if record.failed > len(rows) else ""
    return f"{record.failed:,} user(s) not updated in OneSignal, the next run retries them: {listed}{more}"


def _finish(con, record: RunRecord, status: str, error: str | None) -> RunRecord:
    """A sending run's end, in one commit: its status and counts, and the rows of what it did not send."""
    assert not record.dry_run, "a dry run is written whole by its start"
    error = None if error is None else REDACTOR.redact(error)
    record.status, record.error, record.ended_at = status, error, _naive(None)
    with _RECORD_WRITES, transaction(con):
        _record_unsent(con, record)
        con.execute("""UPDATE export_runs SET status = ?, error = ?, ended_at = ?, added = ?, removed = ?,
                             not_in_onesignal = ?, failed = ?, tag_cap = ? WHERE run_id = ?""",
                    [status, error, record.ended_at, record.added, record.removed, record.not_in_onesignal,
                     record.failed, record.tag_cap, record.run_id])
    return record


def record_failure(store: Store, cohort: str, error: str, *, mode: str | None = None, dry_run: bool = False,
                   now: datetime | None = None) -> RunRecord:
    """A failed run record for an export that could not even start (its cohort cannot be evaluated,
    no key...), so the failure shows in ``toolkit runs`` like any other. Without ``mode`` (its settings
    could not be made), the registered export's mode, else once."""
    con = store.con
    if mode is None:
        try:
            mode = (registration(con, cohort) or {}).get("mode") or "once"
        except Exception:       # whatever stopped the export may stop this read too: the failure still counts
            mode = "once"
    started = _naive(now)
    run_id = con.execute("SELECT nextval('run_ids')").fetchone()[0]
    record = RunRecord(run_id, cohort, mode, dry_run, "failed", started, ended_at=_naive(None), error=error)
    con.execute("INSERT INTO export_runs (run_id, cohort, mode, dry_run, started_at, ended_at, status, pid, "
                "error) VALUES (?, ?, ?, ?, ?, ?, 'failed', ?, ?)",
                [run_id, cohort, mode, dry_run, started, record.ended_at, os.getpid(), error])
    return record
