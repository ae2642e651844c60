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
        self.pending: list[tuple[Step, str, str | None]] = []
        self.done = 0
        self.learned_limit: int | None = None      # the cap OneSignal named, when it differs from ours

    def add(self, step: Step, outcome: str, error: Exception | None) -> None:
        text = None
        if outcome == TAG_CAP:
            limit = error.limit if isinstance(error, TagLimitExceeded) else self.caps.limit
            if limit != self.settings.tag_limit:
                self.learned_limit = limit
            known = self.caps.other.get(step.target.onesignal_id, 0)
            text = (f"OneSignal refused: the app allows {limit} data tags per user" if error is not None else
                    f"not sent: the app allows {limit} data tags per user and this user carries {known} other(s)")
        elif error is not None and outcome == FAILED:
            text = REDACTOR.redact(str(error))
        self.pending.append((step, outcome, text))
        if len(self.pending) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        # The run's clock, not the wall's: snapshot() compares checked_at with the run's `now`.
        cohort, run_id, now = self.record.cohort, self.record.run_id, self.record.started_at
        shared = _APP_LIMITS if self.learned_limit is not None else contextlib.nullcontext()
        with shared, transaction(self.con) as con:
            snapshots.forget(con, cohort)        # with the writes: a kill never leaves a stale fingerprint
            for step, outcome, error in batch:
                key = [cohort, step.distinct_id]
                reported = "not_in_onesignal" if outcome == NOT_FOUND else outcome
                con.execute("INSERT INTO export_results (run_id, distinct_id, onesignal_id, id_type, operation, "
                            "outcome, error) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [run_id, step.distinct_id, *step.target, step.operation, reported, error])
                if step.operation == ADD and outcome in (OK, NOT_FOUND):
                    con.execute("INSERT OR REPLACE INTO export_members VALUES (?, ?, ?, ?, ?, ?)",
                                [*key, step.target.onesignal_id, step.target.id_type,
                                 "tagged" if outcome == OK else "absent", now])
                elif step.operation == REMOVE and outcome in (OK, NOT_FOUND):
                    con.execute("DELETE FROM export_members WHERE cohort = ? AND distinct_id = ? "
                                "AND onesignal_id = ?", [*key, step.target.onesignal_id])
                if step.operation == ADD and outcome == TAG_CAP:
                    con.execute("INSERT OR REPLACE INTO export_tag_caps VALUES (?, ?, ?, ?, ?, ?, ?)",
                                [*key, step.target.onesignal_id, step.target.id_type,
                                 self.learned_limit or self.settings.tag_limit,
                                 self.caps.other.get(step.target.onesignal_id, 0), now])
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
