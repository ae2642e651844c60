"""The result writer: each user's outcome written as it arrives, in small transactions, the snapshot
advancing only for what succeeded."""

from __future__ import annotations

import contextlib
import threading

from toolkit import snapshots
from toolkit.export.records import RunRecord
from toolkit.export.run_settings import ExportSettings
from toolkit.export.tag_caps import TagCaps
from toolkit.onesignal import FAILED, NOT_FOUND, OK, REDACTOR, TAG_CAP, TagLimitExceeded
from toolkit.planning import ADD, REMOVE, Step
from toolkit.store import transaction

FLUSH_EVERY = 500

# Runs of a cycle learn the app's tag cap together (a user in several cohorts refused at once): their writes
# of its one app_limits row, each in its own transaction, would conflict. One at a time.
_APP_LIMITS = threading.Lock()


class _ResultWriter:
    """Writes per-user outcomes and advances the snapshot in small transactions as results arrive."""

    def __init__(self, con, record: RunRecord, settings: ExportSettings, caps: TagCaps, total: int, on_progress):
        self.con, self.record, self.total, self.on_progress = con, record, total, on_progress
        self.settings, self.caps = settings, caps
        self.pending: list[tuple[Step, str, str | None, int | None]] = []
        self.done = 0
        self.learned_limit: int | None = None      # the cap OneSignal named, when it differs from ours

    def add(self, step: Step, outcome: str, error: Exception | None, carries: int | None = None) -> None:
        """One user's outcome; ``carries``: for an addition the cap refused without a request, the tags the
        user carries as the sender counted them (default: those the plan knew of besides this cohort's)."""
        text = None
        if outcome == TAG_CAP:
            limit = error.limit if isinstance(error, TagLimitExceeded) else self.caps.limit
            if limit != self.settings.tag_limit:
                self.learned_limit = limit
            if carries is None:
                carries = self.caps.other.get(step.target.onesignal_id, 0)
            text = (f"OneSignal refused: the app allows {limit} data tags per user" if error is not None else
                    f"not sent: the app allows {limit} data tags per user and this user carries {carries} "
                    "other(s)")
        elif error is not None and outcome == FAILED:
            text = REDACTOR.redact(str(error))
        self.pending.append((step, outcome, text, carries))
        if len(self.pending) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        # The run's clock, not the wall's: snapshot() compares checked_at with the run's `now`.
        cohort, run_id, now = self.record.cohort, self.record.run_id, self.record.started_at
        shared = _APP_LIMITS if self.learned_limit is not None else contextlib.nullcontext()
        # Imported here, not at the top: `import toolkit` loads no pyarrow.
        import pyarrow as pa

        targets = [step.target for step, _, _, _ in batch]
        table = pa.table({
            "seq": range(len(batch)),
            "distinct_id": [step.distinct_id for step, _, _, _ in batch],
            "onesignal_id": [t.onesignal_id for t in targets],
            "id_type": [t.id_type for t in targets],
            "operation": [step.operation for step, _, _, _ in batch],
            "outcome": [outcome for _, outcome, _, _ in batch],
            "error": pa.array([error for _, _, error, _ in batch], pa.string()),
            "other_tags": [self.caps.other.get(t.onesignal_id, 0) if carries is None else carries
                           for t, (_, _, _, carries) in zip(targets, batch, strict=True)],
        })
        # Set-based writes, one statement per table: a cycle's 60 runs finishing together wrote ~20k single-row
        # statements and queued minutes behind each other. A removal and an addition of one member never share
        # a target (an id change removes the old one, adds the new), so deleting first equals the order sent.
        with shared, transaction(self.con) as con:
            con.register("written", table)
            try:
                snapshots.forget(con, cohort)    # with the writes: a kill never leaves a stale fingerprint
                con.execute("INSERT INTO export_results (run_id, distinct_id, onesignal_id, id_type, operation, "
                            "outcome, error) SELECT ?, distinct_id, onesignal_id, id_type, operation, "
                            "CASE WHEN outcome = ? THEN 'not_in_onesignal' ELSE outcome END, error "
                            "FROM written ORDER BY seq", [run_id, NOT_FOUND])
                con.execute("DELETE FROM export_members m USING written w WHERE m.cohort = ? "
                            "AND m.distinct_id = w.distinct_id AND m.onesignal_id = w.onesignal_id "
                            "AND w.operation = ? AND w.outcome IN (?, ?)", [cohort, REMOVE, OK, NOT_FOUND])
                con.execute("INSERT OR REPLACE INTO export_members SELECT ?, distinct_id, onesignal_id, id_type, "
                            "CASE WHEN outcome = ? THEN 'tagged' ELSE 'absent' END, ? FROM written "
                            "WHERE operation = ? AND outcome IN (?, ?) "
                            "QUALIFY row_number() OVER (PARTITION BY distinct_id ORDER BY seq DESC) = 1",
                            [cohort, OK, now, ADD, OK, NOT_FOUND])
                con.execute("INSERT OR REPLACE INTO export_tag_caps SELECT ?, distinct_id, onesignal_id, id_type, "
                            "?, other_tags, ? FROM written WHERE operation = ? AND outcome = ? "
                            "QUALIFY row_number() OVER (PARTITION BY distinct_id ORDER BY seq DESC) = 1",
                            [cohort, self.learned_limit or self.settings.tag_limit, now, ADD, TAG_CAP])
            finally:
                con.unregister("written")
            for step, outcome, _, _ in batch:
                self._count(step, outcome)
            if self.learned_limit is not None:      # OneSignal's own number beats a default or a stale setting
                con.execute("INSERT OR REPLACE INTO app_limits VALUES (?, ?, 'onesignal', ?)",
                            [self.settings.app_id, self.learned_limit, now])
        self.done += len(batch)
        if self.on_progress:
            self.on_progress(self.done, self.total)

    def _count(self, step: Step, outcome: str) -> None:
        r = self.record
        if outcome == FAILED or (outcome == TAG_CAP and step.operation == REMOVE):   # a removal is retried
            r.failed += 1
        elif outcome == TAG_CAP:
            r.tag_cap += 1
        elif outcome == NOT_FOUND and step.operation == ADD:
            r.not_in_onesignal += 1
        elif step.operation == ADD:
            r.added += 1
        else:
            r.removed += 1
