"""Exporting a cohort to OneSignal, once or as a dynamic sync: a tag per cohort, a segment on that tag.

A run: evaluate who is exportable now, plan the difference against the snapshot of the last
successful export (``toolkit.plan``), check the removal guard, make sure the segment exists (a free
plan fails here, before any user is touched), then set the tag on added users and clear it on
removed ones. Each user's outcome is written as it arrives, in small transactions, and the snapshot
advances only for what succeeded: a killed run loses nothing, and the next run converges. Users
not in OneSignal are reported and never created. Two runs of one cohort never overlap: a run holds
a lock file beside the store (flock, released by the kernel when its process dies), so a stale
"running" record never blocks, whatever process now has its pid.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from toolkit import plan as planning
from toolkit.errors import ExportError
from toolkit.onesignal import (
    FAILED,
    NOT_FOUND,
    OK,
    REDACTOR,
    Conflict,
    Credentials,
    NotFound,
    OneSignalClient,
    OneSignalError,
    PlanRefused,
)
from toolkit.plan import ADD, REMOVE, Target
from toolkit.store import Store, transaction

FREE_PLAN_MESSAGE = "App may not submit cohort updates from Mixpanel"   # Mixpanel's words, kept exactly
DYNAMIC_INTERVAL = timedelta(minutes=15)
MAX_DYNAMIC_SYNCS = 60
MAX_COHORT_MEMBERS = 10_000_000
RECHECK_ABSENT = timedelta(hours=24)
DEFAULT_MAX_REMOVAL_SHARE = 0.5
FLUSH_EVERY = 500
TAG_VALUE = "1"
MAX_SEGMENT_NAME = 128          # OneSignal's limit, in characters
_running: dict[tuple[str, str], threading.Lock] = {}


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
    error: str | None = None
    guard: str = ""
    plan: planning.Plan | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("plan")
        return data


def tag_key(cohort: str) -> str:
    """A short, stable tag key per cohort: readable slug plus a hash so two names never collide."""
    slug = re.sub(r"[^a-z0-9]+", "_", cohort.lower()).strip("_")[:40] or "cohort"
    return f"mp_{slug}_{hashlib.sha1(cohort.encode()).hexdigest()[:6]}"


def segment_name(cohort: str) -> str:
    """The cohort's name, or for a longer name than OneSignal allows, its start and a short hash: two
    names sharing their first 128 characters still get two segments."""
    if len(cohort) <= MAX_SEGMENT_NAME:
        return cohort
    digest = hashlib.sha1(cohort.encode()).hexdigest()[:8]
    return f"{cohort[:MAX_SEGMENT_NAME - len(digest) - 2].rstrip()} ~{digest}"


def segment_filters(key: str) -> list[dict]:
    return [{"field": "tag", "key": key, "relation": "exists"}]


def _same_filters(found, wanted: list[dict]) -> bool:
    if not isinstance(found, list) or len(found) != len(wanted):
        return False
    return all(isinstance(f, dict) and all(f.get(k) == v for k, v in w.items())
               for f, w in zip(found, wanted, strict=True))


# -- registration -------------------------------------------------------------------------------

def register(store: Store, cohort: str, mode: str, app_id: str, base_url: str, *,
             user_id_property: str = "$onesignal_user_id", id_type: str = "auto",
             now: datetime | None = None) -> None:
    """Record the export of ``cohort`` (``once`` or ``dynamic``); a new export overwrites the previous
    one (its snapshot stays, so switching mode sends only the difference)."""
    _save_registration(store.con, proposed(store.con, cohort, mode, app_id, base_url,
                                           user_id_property=user_id_property, id_type=id_type, now=now))


def proposed(con, cohort: str, mode: str, app_id: str, base_url: str, *,
             user_id_property: str = "$onesignal_user_id", id_type: str = "auto",
             now: datetime | None = None) -> dict:
    """The registration ``register`` would write, checked but not stored: give it to ``run`` as
    ``registration`` and it is stored only if that run succeeds (a failed export changes nothing)."""
    if mode not in ("once", "dynamic"):
        raise ExportError(f"mode {mode!r}: expected once or dynamic")
    now = _naive(now)
    if mode == "dynamic":
        dynamic = con.execute("SELECT count(*) FROM exports WHERE mode = 'dynamic' AND stopped_at IS NULL "
                              "AND cohort <> ?", [cohort]).fetchone()[0]
        if dynamic >= MAX_DYNAMIC_SYNCS:
            raise ExportError(f"{dynamic} dynamic syncs are active; Mixpanel allows {MAX_DYNAMIC_SYNCS} per "
                              "project. Stop one (toolkit export NAME --stop) or use a one-time export.")
    old = con.execute("SELECT segment_id, app_id FROM exports WHERE cohort = ?", [cohort]).fetchone()
    segment_id = old[0] if old and old[1] == app_id else None
    return {"cohort": cohort, "mode": mode, "app_id": app_id, "base_url": base_url, "tag_key": tag_key(cohort),
            "segment_name": segment_name(cohort), "segment_id": segment_id, "user_id_property": user_id_property,
            "id_type": id_type, "created_at": now, "next_due_at": now if mode == "dynamic" else None,
            "stopped_at": None}


def _save_registration(con, row: dict) -> None:
    con.execute("""INSERT OR REPLACE INTO exports VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""", [
        row["cohort"], row["mode"], row["app_id"], row["base_url"], row["tag_key"], row["segment_name"],
        row["segment_id"], row["user_id_property"], row["id_type"], row["created_at"], row["next_due_at"],
        row["stopped_at"]])


def stop(store: Store, cohort: str, now: datetime | None = None) -> None:
    """Stop a dynamic sync: no further runs; OneSignal keeps the last export."""
    found = store.con.execute("UPDATE exports SET next_due_at = NULL, stopped_at = ? WHERE cohort = ? "
                              "AND mode = 'dynamic' AND stopped_at IS NULL RETURNING cohort",
                              [_naive(now), cohort]).fetchall()
    if not found:
        raise ExportError(f"no active dynamic sync for cohort {cohort!r}")


def due(store: Store, now: datetime | None = None) -> list[str]:
    """Cohorts whose dynamic sync is due."""
    return [c for c, in store.con.execute(
        "SELECT cohort FROM exports WHERE mode = 'dynamic' AND stopped_at IS NULL AND next_due_at <= ? "
        "ORDER BY next_due_at, cohort", [_naive(now)]).fetchall()]


def list_exports(store: Store) -> list[dict]:
    cursor = store.reader().execute("""
        SELECT e.cohort, e.mode, e.app_id, e.segment_name, e.segment_id, e.tag_key, e.next_due_at,
               e.stopped_at, count(m.distinct_id) FILTER (WHERE m.status = 'tagged') AS in_segment
        FROM exports e LEFT JOIN export_members m USING (cohort) GROUP BY ALL ORDER BY e.cohort""")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


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


# -- a run --------------------------------------------------------------------------------------

def snapshot(con, cohort: str, now: datetime) -> dict[str, Target]:
    """Who the last successful export covered; absent users count until it is time to look again."""
    rows = con.execute(
        "SELECT distinct_id, onesignal_id, id_type FROM export_members WHERE cohort = ? "
        "AND (status = 'tagged' OR checked_at > ?)", [cohort, _naive(now) - RECHECK_ABSENT]).fetchall()
    return {d: Target(o, t) for d, o, t in rows}


def run(store: Store, cohort: str, wanted: Mapping[str, Target], credentials: Credentials | None, *,
        dry_run: bool = False, mode: str | None = None, force: bool = False,
        max_removal_share: float = DEFAULT_MAX_REMOVAL_SHARE, members: int | None = None,
        now: datetime | None = None, client_options: Mapping | None = None,
        on_progress: Callable[[int, int], None] | None = None, registration: dict | None = None) -> RunRecord:
    """One export run of a registered cohort towards ``wanted`` (distinct_id -> OneSignal target).
    With ``registration`` (from ``proposed``) the run follows it, and stores it only if the run
    succeeds (ok or partial). A dry run needs no registration (``mode`` names what it rehearses)
    and changes no export."""
    now = now or datetime.now(UTC)
    con = store.con.cursor()     # a connection of its own: runs may happen in threads (widgets, scheduler)
    try:
        return _run(store, con, cohort, wanted, credentials, dry_run, mode, force, max_removal_share, members,
                    now, client_options, on_progress, registration)
    finally:
        con.close()


def _run(store, con, cohort, wanted, credentials, dry_run, mode, force, max_removal_share, members, now,
         client_options, on_progress, pending) -> RunRecord:
    if pending is not None and not dry_run:
        export = dict(pending)
    elif dry_run:
        found = registration(con, cohort) or {}
        export = {**found, "mode": mode or found.get("mode") or "once"}
    else:
        export = _registered(con, cohort)
    if len(wanted) > MAX_COHORT_MEMBERS:
        raise ExportError(f"cohort {cohort!r} has {len(wanted):,} exportable members; the limit is "
                          f"{MAX_COHORT_MEMBERS:,} (matchability reports the rest as over_limit)")
    current = snapshot(con, cohort, now)
    the_plan = planning.plan(wanted, current)
    # The share is of what the plan diffs against; with nothing exported yet, size is unknown (trips
    # only if something would be removed, which cannot happen then).
    verdict = planning.removal_guard(the_plan, len(current) or None, max_removal_share, force=force)
    with _run_lock(store, cohort):
        record = _start(store, con, cohort, export["mode"], dry_run, now, the_plan, verdict,
                        members if members is not None else len(wanted), len(wanted))
        if dry_run:
            return _finish(con, record, "ok" if verdict.ok else "stopped", None if verdict.ok else verdict.reason)
        if not verdict.ok:
            return _finish(con, record, "stopped", verdict.reason)
        if credentials is None:
            return _finish(con, record, "failed", "no OneSignal credentials: preview only (see toolkit connect)")
        try:
            _run_async(_apply(con, export, record, the_plan, credentials, client_options or {}, on_progress))
        except (OneSignalError, ExportError) as exc:
            return _finish(con, record, "failed", str(exc))
        except BaseException as exc:
            _finish(con, record, "interrupted", f"{type(exc).__name__}: {exc}")
            raise
        if pending is not None:              # the run succeeded: now the export is registered as asked
            _save_registration(con, export)
        if export["mode"] == "dynamic":
            con.execute("UPDATE exports SET next_due_at = ? WHERE cohort = ? AND stopped_at IS NULL",
                        [_naive(now) + DYNAMIC_INTERVAL, cohort])
        return _finish(con, record, "partial" if record.failed else "ok", _failed_users(con, record))


@contextmanager
def _run_lock(store: Store, cohort: str) -> Iterator[None]:
    """One run per cohort: a thread lock within this process, and an flock on a file beside the store
    across processes. The kernel drops the flock when its holder dies, however it dies, so liveness
    never rests on a process id that may since belong to another process."""
    lock = _running.setdefault((store.path, cohort), threading.Lock())
    if not lock.acquire(blocking=False):
        raise ExportError(f"an export of cohort {cohort!r} is already running")
    try:
        if store.path == ":memory:":         # no other process can reach this store
            yield
            return
        path = _lock_path(store, cohort)
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                raise ExportError(f"an export of cohort {cohort!r} is already running"
                                  + (f" (process {holder})" if holder.isdigit() else "")) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)                     # releases the flock
    finally:
        lock.release()


def _lock_path(store: Store, cohort: str) -> Path:
    return Path(f"{store.path}.export-locks") / f"{hashlib.sha1(cohort.encode()).hexdigest()[:16]}.lock"


def _is_running(store: Store, cohort: str) -> bool:
    """Whether a run of ``cohort`` is alive: a thread of this process or any process holds its lock.
    Taking the thread lock first keeps this process from starting that run while the lock is tried;
    another process cannot start one meanwhile, as it would need the store this process has open."""
    lock = _running.setdefault((store.path, cohort), threading.Lock())
    if not lock.acquire(blocking=False):
        return True
    try:
        if store.path == ":memory:":     # no other process can reach this store
            return False
        try:
            fd = os.open(_lock_path(store, cohort), os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False
    finally:
        lock.release()


async def _apply(con, export: dict, record: RunRecord, the_plan: planning.Plan, credentials: Credentials,
                 client_options: Mapping, on_progress) -> None:
    async with OneSignalClient(credentials, export["base_url"], **client_options) as client:
        export["segment_id"] = await _ensure_segment(con, client, export)
        changes = the_plan.changes
        resolved = await _resolve_subscriptions(con, client, export["app_id"], changes)
        writer = _ResultWriter(con, record, len(changes), on_progress)
        try:
            # Removals first: a OneSignal id that moved between members is cleared, then set again.
            for operation in (REMOVE, ADD):
                steps: dict[tuple[str, str], planning.Step] = {}
                for step in (s for s in changes if s.operation == operation):
                    alias = (resolved.get(step.target) if step.target.id_type == "subscription_id"
                             else ("external_id", step.target.onesignal_id))
                    if alias is None:             # a Player ID OneSignal does not know
                        writer.add(step, NOT_FOUND, None)
                    else:
                        steps[alias] = step
                value = TAG_VALUE if operation == ADD else ""

                def on_result(r, steps=steps):    # this operation's steps, bound now
                    writer.add(steps[(r.alias_label, r.alias_id)], r.outcome, r.error)

                await client.update_many(((label, alias_id, {export["tag_key"]: value}) for label, alias_id in steps),
                                         on_result=on_result)
        finally:
            writer.flush()


async def _ensure_segment(con, client: OneSignalClient, export: dict) -> str:
    """The segment must exist before any user is tagged; a free plan is refused here. Returns its id.

    Without a known id, a segment of that name is looked for first and adopted if it filters on this
    cohort's tag: a run killed between creating it and saving its id, or a rebuilt store, left it."""
    # From the cohort, not the stored name: a registration made before names were kept unique heals.
    name, filters = segment_name(export["cohort"]), segment_filters(export["tag_key"])
    export["segment_name"] = name
    try:
        if export["segment_id"]:
            try:
                await client.update_segment(export["segment_id"], name, filters)
                return export["segment_id"]
            except NotFound:
                pass                          # deleted in OneSignal: find or create it again
        segment_id = await _adopt_segment(client, export, name, filters)
        if segment_id is None:
            try:
                segment_id = await client.create_segment(name, filters)
            except Conflict:                  # made meanwhile (another run, a person): look again
                segment_id = await _adopt_segment(client, export, name, filters)
                if segment_id is None:
                    raise
    except PlanRefused:                       # decided from OneSignal's status and words, never the name
        raise ExportError(FREE_PLAN_MESSAGE) from None
    # Saved at once where this export is already registered for this app (a new registration is
    # saved with the id when the run succeeds); a kill before this line is recovered by name.
    con.execute("UPDATE exports SET segment_id = ?, segment_name = ? WHERE cohort = ? AND app_id = ?",
                [segment_id, name, export["cohort"], export["app_id"]])
    return segment_id


async def _adopt_segment(client: OneSignalClient, export: dict, name: str, filters: list[dict]) -> str | None:
    """The id of the app's segment called ``name`` if it is this cohort's (it filters on the cohort's
    tag); None if there is none; an error naming it if one of that name filters on something else."""
    for found in [s for s in await client.list_segments() if s.get("name") == name]:
        try:
            details = await client.get_segment(found["id"])
        except NotFound:
            continue                          # deleted since the list
        if _same_filters(details.get("filters"), filters):
            return found["id"]
        raise ExportError(
            f"cohort {export['cohort']!r}: OneSignal app {export['app_id']} already has a segment named {name!r} "
            f"(id {found['id']}) that does not filter on this cohort's tag {export['tag_key']!r}, so it was "
            "not made by this export and is left alone. Rename or delete that segment in OneSignal, or "
            "rename the cohort.")
    return None


async def _resolve_subscriptions(con, client: OneSignalClient, app_id: str,
                                 steps: Sequence[planning.Step]) -> dict[Target, tuple[str, str] | None]:
    """Subscription (Player) IDs -> ("onesignal_id", id) of their user, from the cache or OneSignal."""
    wanted = sorted({s.target for s in steps if s.target.id_type == "subscription_id"})
    if not wanted:
        return {}
    ids = [t.onesignal_id for t in wanted]
    known = dict(con.execute("SELECT subscription_id, onesignal_id FROM subscription_users "
                                   "WHERE app_id = ? AND subscription_id IN (SELECT unnest(?))",
                                   [app_id, ids]).fetchall())
    resolved: dict[Target, tuple[str, str] | None] = {}
    for target in wanted:
        sub = target.onesignal_id
        if sub not in known or known[sub] is None:
            try:
                known[sub] = (await client.identity_of_subscription(sub)).get("onesignal_id")
            except NotFound:
                known[sub] = None
            con.execute("INSERT OR REPLACE INTO subscription_users VALUES (?, ?, ?, now()::TIMESTAMP)",
                        [app_id, sub, known[sub]])
        resolved[target] = ("onesignal_id", known[sub]) if known[sub] else None
    return resolved


class _ResultWriter:
    """Writes per-user outcomes and advances the snapshot in small transactions as results arrive."""

    def __init__(self, con, record: RunRecord, total: int, on_progress):
        self.con, self.record, self.total, self.on_progress = con, record, total, on_progress
        self.pending: list[tuple[planning.Step, str, str | None]] = []
        self.done = 0

    def add(self, step: planning.Step, outcome: str, error: Exception | None) -> None:
        self.pending.append((step, outcome, REDACTOR.redact(str(error)) if error is not None and outcome == FAILED
                             else None))
        if len(self.pending) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        # The run's clock, not the wall's: snapshot() compares checked_at with the run's `now`.
        cohort, run_id, now = self.record.cohort, self.record.run_id, self.record.started_at
        with transaction(self.con) as con:
            for step, outcome, error in batch:
                key = [cohort, step.distinct_id]
                reported = "not_in_onesignal" if outcome == NOT_FOUND else outcome
                con.execute("INSERT INTO export_results VALUES (?, ?, ?, ?, ?, ?)",
                            [run_id, step.distinct_id, step.target.onesignal_id, step.operation, reported, error])
                if step.operation == ADD and outcome in (OK, NOT_FOUND):
                    con.execute("INSERT OR REPLACE INTO export_members VALUES (?, ?, ?, ?, ?, ?)",
                                [*key, step.target.onesignal_id, step.target.id_type,
                                 "tagged" if outcome == OK else "absent", now])
                elif step.operation == REMOVE and outcome in (OK, NOT_FOUND):
                    con.execute("DELETE FROM export_members WHERE cohort = ? AND distinct_id = ? "
                                "AND onesignal_id = ?", [*key, step.target.onesignal_id])
                self._count(step, outcome)
        self.done += len(batch)
        if self.on_progress:
            self.on_progress(self.done, self.total)

    def _count(self, step: planning.Step, outcome: str) -> None:
        r = self.record
        if outcome == FAILED:
            r.failed += 1
        elif outcome == NOT_FOUND and step.operation == ADD:
            r.not_in_onesignal += 1
        elif step.operation == ADD:
            r.added += 1
        else:
            r.removed += 1


# -- run records ----------------------------------------------------------------------------------

DEAD_RUN = "its process ended before the run did (killed or crashed); the next run sends the rest"


def _start(store, con, cohort, mode, dry_run, now, the_plan, verdict, members, exportable) -> RunRecord:
    """Called holding the cohort's run lock: any run of this cohort still marked running was cut short,
    and so was one of another cohort whose lock nobody holds (a killed run that no run of its own
    cohort followed would otherwise read "running" for ever)."""
    with transaction(con):
        stale = [c for c, in con.execute("SELECT DISTINCT cohort FROM export_runs WHERE status = 'running'")
                 .fetchall() if c == cohort or not _is_running(store, c)]
        con.execute("UPDATE export_runs SET status = 'interrupted', ended_at = ?, error = coalesce(error, ?) "
                    "WHERE status = 'running' AND cohort IN (SELECT unnest(?))", [_naive(now), DEAD_RUN, stale])
        run_id = con.execute("SELECT nextval('run_ids')").fetchone()[0]
        con.execute("INSERT INTO export_runs (run_id, cohort, mode, dry_run, started_at, status, pid, members, "
                    "exportable, unchanged) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                    [run_id, cohort, mode, dry_run, _naive(now), os.getpid(), members, exportable,
                     the_plan.counts.get(planning.NOOP, 0)])
    return RunRecord(run_id, cohort, mode, dry_run, "running", _naive(now), members=members,
                     exportable=exportable, unchanged=the_plan.counts.get(planning.NOOP, 0),
                     guard=verdict.reason, plan=the_plan)


def _failed_users(con, record: RunRecord, shown: int = 3) -> str | None:
    """For a run where some users failed: who, and why (the first few), so the failure is not just a count."""
    if not record.failed:
        return None
    rows = con.execute("SELECT distinct_id, onesignal_id, operation, error FROM export_results WHERE run_id = ? "
                       "AND outcome = 'failed' ORDER BY distinct_id LIMIT ?", [record.run_id, shown]).fetchall()
    listed = "; ".join(f"user {d!r} (OneSignal id {o!r}, {'tag' if op == ADD else 'untag'}): {e}"
                       for d, o, op, e in rows)
    more = f"; and {record.failed - len(rows):,} more (see export_results)" if record.failed > len(rows) else ""
    return f"{record.failed:,} user(s) not updated in OneSignal, the next run retries them: {listed}{more}"


def _finish(con, record: RunRecord, status: str, error: str | None) -> RunRecord:
    error = None if error is None else REDACTOR.redact(error)
    record.status, record.error, record.ended_at = status, error, _naive(None)
    if record.dry_run and record.plan is not None:   # what the run would do
        record.added, record.removed = record.plan.counts.get(ADD, 0), record.plan.counts.get(REMOVE, 0)
    con.execute("""UPDATE export_runs SET status = ?, error = ?, ended_at = ?, added = ?, removed = ?,
                         not_in_onesignal = ?, failed = ? WHERE run_id = ?""",
                      [status, error, record.ended_at, record.added, record.removed, record.not_in_onesignal,
                       record.failed, record.run_id])
    return record


def record_failure(store: Store, cohort: str, mode: str, error: str, *, dry_run: bool = False,
                   now: datetime | None = None) -> RunRecord:
    """A failed run record for an export that could not even start (its cohort cannot be evaluated,
    no key...), so the failure shows in ``toolkit runs`` like any other."""
    con = store.con
    started = _naive(now)
    run_id = con.execute("SELECT nextval('run_ids')").fetchone()[0]
    record = RunRecord(run_id, cohort, mode, dry_run, "failed", started, ended_at=_naive(None), error=error)
    con.execute("INSERT INTO export_runs (run_id, cohort, mode, dry_run, started_at, ended_at, status, pid, "
                "error) VALUES (?, ?, ?, ?, ?, ?, 'failed', ?, ?)",
                [run_id, cohort, mode, dry_run, started, record.ended_at, os.getpid(), error])
    return record


def registration(con, cohort: str) -> dict | None:
    """The registered export of ``cohort`` (a row of ``exports``), or None."""
    cursor = con.execute("SELECT * FROM exports WHERE cohort = ?", [cohort])
    row = cursor.fetchone()
    return dict(zip([d[0] for d in cursor.description], row, strict=True)) if row else None


def _registered(con, cohort: str) -> dict:
    found = registration(con, cohort)
    if found is None:
        raise ExportError(f"cohort {cohort!r} has no export; register it first (toolkit export NAME --once)")
    return found


def _run_async(coroutine):
    """asyncio.run, also from where a loop already runs (Jupyter, papermill): then in a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        running = False
    else:
        running = True
    if not running:          # not inside the except block: errors of the run must not chain to it
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _naive(moment: datetime | None) -> datetime:
    """UTC without tzinfo, as the store keeps timestamps."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment
