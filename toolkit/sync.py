"""The workflows people run, built from the pieces: export a cohort, run the due dynamic syncs, and the
whole scheduled sync (load new files, re-evaluate cohorts, sync, count MTU). The CLI, the notebooks
and the widgets all call these, so there is one behaviour to test."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import duckdb
import pandas as pd
from tqdm.auto import tqdm

from toolkit import cohort_batch, export, mtu, reconcile
from toolkit.credentials import find as find_credentials
from toolkit.engine import EngineChoice, Evaluator
from toolkit.errors import CredentialsError, SyncFailed, SyncPaused, ToolkitError, UsageError
from toolkit.export import cycle_plans
from toolkit.export.helpers import CycleStop, stopped_by
from toolkit.export.merged import MergedSends
from toolkit.export.registry import Registered
from toolkit.loading import LoadSummary, load
from toolkit.onesignal import DEFAULT_MAX_RPS, VIEW_RPS, Credentials, default_base_url
from toolkit.rate_budget import AppBudget, ViewBudget
from toolkit.store import Store
from toolkit.waiting import wait_until

log = logging.getLogger("toolkit.sync")


def connect(store: Store, credentials: Credentials, base_url: str | None = None) -> dict:
    """Check the key against OneSignal and record the outcome (never the key): Connected, or why not.
    Once connected, the app's registered exports use this address."""
    from toolkit.onesignal import OneSignalError, SyncOneSignalClient

    base_url = base_url or default_base_url()
    try:
        with SyncOneSignalClient(credentials, base_url, max_attempts=3, timeout=10.0) as client:
            client.validate()
        connected, detail = True, "Connected"
    except OneSignalError as exc:
        connected, detail = False, str(exc)
    store.con.execute("INSERT OR REPLACE INTO connections VALUES (?, ?, ?, ?, now()::TIMESTAMP)",
                      [credentials.app_id, base_url, "connected" if connected else "failed", detail])
    if connected:
        export.follow_app(store, credentials.app_id, base_url)
    return {"app_id": credentials.app_id, "base_url": base_url, "connected": connected, "detail": detail}


def export_cohort(store: Store, settings: export.ExportSettings | str, credentials: Credentials | None = None, *,
                  progress: bool = False, on_progress: Callable[[int, int], None] | None = None,
                  found: export.Exportable | None = None, evaluator: Evaluator | None = None) -> export.RunRecord:
    """Export a cohort now, as ``settings`` say (``export.settings``; a cohort's name alone runs its
    registered export again): evaluate who is exportable (unless ``found`` says: a cycle evaluates its
    cohorts together; on ``evaluator``'s engine, default the store), then run. Without ``credentials``,
    the key of the settings' app comes from the environment or the 0600 credentials file."""
    if isinstance(settings, str):
        settings = export.settings(store, settings)
    if credentials is None and not settings.dry_run and settings.app_id:
        credentials = find_credentials(settings.app_id)
    found = found or export.exportable(store, settings, evaluator.preview if evaluator else None)
    bar = tqdm(desc=f"export {settings.cohort}", unit="user", disable=not progress or None)

    def report(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
        if on_progress:
            on_progress(done, total)

    try:
        return export.run(store, settings, found.table, credentials, members=found.members, on_progress=report,
                          planned=found.planned)
    finally:
        bar.close()


PARALLEL_RUNS = 16     # a cycle's export runs at once: each a thread with its own client, all on the app's budget


def run_due(store: Store, *, now: datetime | None = None, dry_run: bool = False,
            cohorts: list[str] | None = None, client_options: dict | None = None,
            parallel: int = PARALLEL_RUNS, evaluator: Evaluator | None = None) -> list[export.RunRecord]:
    """Every dynamic sync that is due (or the named cohorts' exports), as one cycle: the cohorts are
    evaluated in one pass over the events and matched in one query (``cohort_batch``), then run,
    ``parallel`` at a time, every run to one app drawing on one rate budget (``rate_budget.AppBudget``
    at the clients' ``max_rps``): together they never exceed it, and each progresses. Each cohort
    succeeds or fails on its own: whatever stops one (a cohort that cannot be evaluated, no key, a
    refused export) becomes its failed run record, with the reason, and the others still run."""
    now = now or datetime.now(UTC)
    names = cohorts if cohorts is not None else export.due(store, now)
    waiting = {p["cohort"]: p["paused_reason"] for p in export.paused(store.con)}   # due() leaves them out
    for name, reason in waiting.items():    # a paused sync waits for a person (export.states)
        log.info('cohort "%s" is paused (%s): skipped until a person resumes it', name, reason)
    names = [name for name in dict.fromkeys(names) if name not in waiting]     # a name given twice runs once
    records: dict[int, export.RunRecord | None] = {}
    chosen: dict[int, export.ExportSettings] = {}
    known = Registered.read(store.reader())
    for i, name in enumerate(names):
        try:
            chosen[i] = export.settings(store, name, now=now, dry_run=dry_run, client_options=client_options,
                                        known=known)
        except Exception as exc:
            records[i] = _failed(store, name, None, exc, now, dry_run)
    _once_each(chosen, records)
    if chosen:
        on_lake = evaluator is not None and not evaluator.choice.on_store    # each cohort there, one at a time
        shared = _SharedPass(store, [] if on_lake else list(chosen.values()), now)
        budgets: dict[tuple, AppBudget] = {}
        parallel = 1 if on_lake else max(1, min(parallel, len(chosen)))
        slots = threading.BoundedSemaphore(parallel)
        held = {settings.cohort: _Slot(slots) for settings in chosen.values()}
        senders = _merged_senders(list(chosen.values()), client_options, held)
        stop = CycleStop()
        try:
            # A run waiting for its merged sends holds no slot, but its thread: one thread per run.
            with ThreadPoolExecutor(len(chosen) if senders else parallel, thread_name_prefix="sync-run") as pool:
                try:
                    futures, rehearsed = {}, {}
                    for i, settings in chosen.items():
                        # In slices (toolkit.waiting), as every wait of the cycle's thread: Ctrl-C is seen.
                        wait_until(lambda t: slots.acquire(timeout=t))  # its members leave the pass when it can run
                        found = shared.exportable(settings)
                        if settings.dry_run and found is not None and found.planned is not None:
                            held[settings.cohort].release()     # planned already: recorded with the others
                            rehearsed[i] = (settings, found.members, found.planned)
                            continue
                        futures[i] = pool.submit(_run_in_thread, store, _sharing(settings, budgets, senders), found,
                                                 held[settings.cohort], evaluator, stop)
                    for i, outcome in zip(rehearsed, export.rehearse(store, list(rehearsed.values())), strict=True):
                        records[i] = (outcome if isinstance(outcome, export.RunRecord) else
                                      _failed(store, chosen[i].cohort, chosen[i], outcome, now, dry_run))
                    for i, future in futures.items():
                        wait_until(partial(_done_within, future))
                        records[i] = future.result()
                except KeyboardInterrupt:
                    # Ctrl-C reaches this thread only: every run stops as one alone would (cancelled, recorded
                    # interrupted) and the requests out are cancelled; leaving the pool waits for that alone.
                    stop.set()
                    for sender in senders.values():
                        sender.stop()
                    raise
        finally:
            shared.close()
            for sender in senders.values():
                sender.close()
    return [r for r in (records[i] for i in range(len(names))) if r is not None]    # None: paused meanwhile


def _done_within(future: Future, seconds: float) -> bool:
    return bool(wait([future], timeout=seconds).done)


def _once_each(chosen: dict[int, export.ExportSettings], records: dict[int, export.RunRecord | None]) -> None:
    """Each cohort once in a cycle, however many of the names given resolve to it (any case finds a cohort):
    a second run of it would wait on the first's lock, or fail for it, and its slot and merged sends are
    the cohort's, given back once (one run at a time, the cycle then waited for ever)."""
    first: dict[str, int] = {}
    for i, settings in list(chosen.items()):
        if settings.cohort in first:
            log.info('cohort "%s" is named more than once in this cycle: it runs once', settings.cohort)
            del chosen[i]
            records[i] = None
        else:
            first[settings.cohort] = i


def _merged_senders(chosen: list[export.ExportSettings], client_options: dict | None,
                    held: dict[str, _Slot]) -> dict[tuple, MergedSends]:
    """One merged sender per app the cycle sends to (``export.merged``): each user's changes from every
    cohort in one request. A run hands its changes over and waits; its slot goes to the next run then."""
    apps: dict[tuple, set[str]] = {}
    for settings in chosen:
        if not settings.dry_run:        # each cohort once (_once_each)
            apps.setdefault((settings.app_id, settings.base_url), set()).add(settings.cohort)
    concurrency = int((client_options or {}).get("concurrency", 64))
    return {key: MergedSends(len(cohorts), concurrency=concurrency,
                             on_submit=lambda cohort: held[cohort].release())
            for key, cohorts in apps.items()}


class _Slot:
    """A run's place among the ``parallel`` preparing at once, given back once: when it hands its sends
    over, or when it ends."""

    def __init__(self, slots: threading.BoundedSemaphore):
        self.slots, self.lock, self.released = slots, threading.Lock(), False

    def release(self) -> None:
        with self.lock:
            if not self.released:
                self.released = True
                self.slots.release()


def _sharing(settings: export.ExportSettings, budgets: dict[tuple, AppBudget],
             senders: dict[tuple, MergedSends] | None = None) -> export.ExportSettings:
    """The settings with their app's shared budget, and a share of the concurrency, in the client options,
    and the app's merged sender."""
    options = dict(settings.client_options)
    key = (settings.app_id, settings.base_url)
    if key not in budgets:
        budgets[key] = AppBudget(float(options.get("max_rps", DEFAULT_MAX_RPS)))
    options["limiter"] = budgets[key]
    views = ("view", *key)              # OneSignal's View user limit is the app's too
    if views not in budgets:
        budgets[views] = ViewBudget(float(options.get("view_rps", VIEW_RPS)))
    options["view_limiter"] = budgets[views]
    # Enough requests in flight that the runs still sending fill the budget (a run of four went at 28/s when
    # few were left on a loaded machine); the budget, not this, bounds the rate.
    options["concurrency"] = max(8, int(options.get("concurrency", 64)) // 4)
    return replace(settings, client_options=options, sends=(senders or {}).get(key))


def _run_in_thread(store: Store, settings: export.ExportSettings, found: export.Exportable | None,
                   slot: _Slot, evaluator: Evaluator | None, stop: CycleStop) -> export.RunRecord | None:
    """One cohort's run, on a connection of its own (a DuckDB connection is not used by two threads),
    stopped as by Ctrl-C once the cycle's ``stop`` is set."""
    view = copy.copy(store)
    view.con = store.con.cursor()
    try:
        if stop.is_set():
            raise KeyboardInterrupt
        with stopped_by(stop):
            return _run_one(view, settings, found, evaluator)
    finally:
        view.con.close()
        if settings.sends is not None:       # whatever ended the run, the merged sends need not wait for it
            settings.sends.leave(settings.cohort)
        slot.release()


CONFLICT_TRIES = 5     # a run whose write met another run's (DuckDB: "Conflict on update") starts again


def _run_one(store: Store, chosen: export.ExportSettings, found: export.Exportable | None,
             evaluator: Evaluator | None = None) -> export.RunRecord | None:
    for attempt in range(1, CONFLICT_TRIES + 1):
        try:
            return export_cohort(store, chosen, found=found, evaluator=evaluator)
        except (duckdb.TransactionException, duckdb.ConstraintException) as exc:
            # Runs at once share the store: two that write one row (a dead run's record, marked interrupted
            # by each run's start) conflict, and DuckDB refuses the second (a conflict, or a duplicate key).
            # A run records its users' outcomes as they arrive, so the next attempt plans only what is left.
            if attempt == CONFLICT_TRIES:
                return _failed(store, chosen.cohort, chosen, exc, chosen.now, chosen.dry_run)
            log.info('cohort "%s": its run met another run\'s write (%s); starting it again', chosen.cohort, exc)
            _end_open_transaction(store)
            if found is not None and found.planned is not None:
                found = None        # a plan made before the cycle would resend what that attempt did: plan again
        except SyncPaused as exc:    # paused since the cycle began (another run met the app's refused key)
            log.info('cohort "%s" is skipped: %s', chosen.cohort, exc)
            return None
        except Exception as exc:     # one cohort never stops the sync; the failure is its run record
            return _failed(store, chosen.cohort, chosen, exc, chosen.now, chosen.dry_run)
    raise AssertionError("unreachable")


def _failed(store: Store, name: str, chosen: export.ExportSettings | None, exc: Exception, now: datetime,
            dry_run: bool) -> export.RunRecord:
    reason = failure_reason(exc)
    log.warning('cohort "%s" failed: %s', name, reason, exc_info=not isinstance(exc, ToolkitError))
    _end_open_transaction(store)
    return export.record_failure(store, name, reason, mode=chosen.mode if chosen else None, dry_run=dry_run,
                                 now=now)


class _SharedPass:
    """A cycle's cohorts evaluated in one pass, matched in one query per (user-id property, id type), and
    planned together (``export.cycle_plans``). A pass that fails (a cohort that cannot be compiled) is
    given up: each cohort is then evaluated on its own by its run, so the failure is that cohort's alone."""

    def __init__(self, store: Store, chosen: list[export.ExportSettings], now: datetime):
        self.store = store
        self.chosen = chosen
        self.matched: dict[tuple[str, str], cohort_batch.Matched] = {}
        self.planned: dict[str, export.Exportable] = {}
        self.members: cohort_batch.Members | None = None
        if len({s.cohort for s in chosen}) < 2:
            return                      # one cohort: its run evaluates it, as an export does
        try:
            self.members = cohort_batch.evaluate(store, sorted({s.cohort for s in chosen}), now=now, keep=True)
            if self.members.refreshed is not None:
                log.info("the cycle's %d cohorts: the kept pass brought up to date, %d user(s) evaluated again",
                         len(self.members.flags), self.members.refreshed)
        except Exception as exc:
            log.info("the cycle's cohorts are evaluated one by one: %s", failure_reason(exc))
            _end_open_transaction(store)

    def exportable(self, settings: export.ExportSettings) -> export.Exportable | None:
        """The cohort's exportable members from the shared pass (None: its run evaluates it, and any
        failure is its own)."""
        if self.members is None or settings.cohort not in self.members.names:
            return None
        key = (settings.user_id_property, settings.id_type)
        try:
            if key not in self.matched:
                # Only the first kept: two keys would take turns replacing it, while the first one's runs read it.
                self.matched[key] = cohort_batch.classify(
                    self.store, self.members, user_id_property=key[0], id_type=key[1],
                    table=f"{cohort_batch.MATCHED_TABLE}_{len(self.matched)}", keep=not self.matched)
                self._plan_together(key)
            if settings.cohort in self.planned:
                return self.planned[settings.cohort]
            found = self.matched[key].of(settings.cohort)
        except Exception as exc:
            log.info('cohort "%s" is matched on its own: %s', settings.cohort, failure_reason(exc))
            _end_open_transaction(self.store)
            return None
        return export.Exportable(int(found.summary["members"]), found.exportable_table,
                                 {reason: int(n) for reason, n in found.summary["reasons"].items() if n})

    def _plan_together(self, key: tuple[str, str]) -> None:
        """Plan every cohort of this (user-id property, id type) at once; if that fails, each run plans its own."""
        assert self.members is not None
        alike = [s for s in self.chosen if (s.user_id_property, s.id_type) == key]
        try:
            self.planned.update(cycle_plans.plan_all(self.store.con, self.members, self.matched[key].table, alike))
        except Exception as exc:
            log.info("the cycle's cohorts are planned one by one: %s", failure_reason(exc))
            _end_open_transaction(self.store)

    def close(self) -> None:
        if self.members is not None:
            cohort_batch.drop(self.store, *(m.table for m in self.matched.values()))


def failure_reason(exc: BaseException) -> str:
    """What a person reads about a failure: the toolkit's own message, else the error's text."""
    if isinstance(exc, ToolkitError):
        return str(exc)
    return f"unexpected error: {str(exc).strip() or type(exc).__name__} (details in the log)"


def _end_open_transaction(store: Store) -> None:
    """A failure inside a transaction leaves the connection refusing further statements until rolled back."""
    try:
        store.con.execute("ROLLBACK")
    except duckdb.Error:
        pass            # none was open


def run_outcome(record: export.RunRecord) -> str:
    """ok; partial: some users failed and others were handled; failed: nothing was (a failed, guarded or
    interrupted run, or one where every user failed)."""
    if record.status == "ok":
        return "ok"
    handled = record.added + record.removed + record.unchanged + record.not_in_onesignal
    return "partial" if record.status == "partial" and handled else "failed"


@dataclass
class SyncResult:
    load: LoadSummary | None
    runs: list[export.RunRecord] = field(default_factory=list)
    mtu: pd.DataFrame | None = None
    load_error: str | None = None       # the landing folder could not be loaded at all
    mtu_error: str | None = None
    landing: str | None = None
    now: datetime | None = None
    dry_run: bool = False
    alerts: dict | None = None          # incidents opened/resolved and deliveries (toolkit.alerts.check)
    mixpanel: dict | None = None        # a configured project: what its pull and cohort refresh did
    pull_error: str | None = None       # its pull failed (the load, local cohorts and MTU still ran)
    paused: list[dict] = field(default_factory=list)    # syncs skipped until a person resumes them

    @property
    def table(self) -> pd.DataFrame:
        """Per cohort: members, exportable, added, removed, not in OneSignal, failed, status."""
        columns = ["cohort", "mode", "status", "members", "exportable", "added", "removed", "unchanged",
                   "not_in_onesignal", "failed", "error"]
        return pd.DataFrame([{k: r.to_dict()[k] for k in columns} for r in self.runs], columns=columns)

    def _load_outcome(self) -> str | None:
        if self.landing is None:
            return None
        if self.load_error:
            return "failed"
        refused = len(self.load.refused) if self.load else 0
        loaded = self.load.to_dict()["files_loaded"] if self.load else 0
        return "ok" if not refused else "partial" if loaded else "failed"

    @property
    def status(self) -> str:
        """ok: everything worked; failed: every export failed (or, with none due, the load and the MTU
        count both failed); partial: anything else that failed beside something that worked."""
        runs = [run_outcome(r) for r in self.runs]
        outcomes = [o for o in (self._load_outcome(),) if o] + runs + ["failed" if self.mtu_error else "ok"]
        outcomes += ["failed"] if self.pull_error else []
        if all(o == "ok" for o in outcomes):
            return "ok"
        if (runs and all(o == "failed" for o in runs)) or all(o == "failed" for o in outcomes):
            return "failed"
        return "partial"

    @property
    def summary(self) -> str:
        """One line: the verdict, the cohorts that failed and why, the load's refusals, MTU."""
        ok = sum(r.status == "ok" for r in self.runs)
        parts = [f"sync {self.status}: {ok} of {len(self.runs)} cohort export(s) ok"]
        parts += [f'"{r.cohort}" {r.status}' + (f" ({r.error})" if r.error else f" ({r.failed:,} user(s) failed)")
                  for r in self.runs if r.status != "ok"]
        if self.pull_error:
            parts.append(f"pulling from Mixpanel failed: {self.pull_error}")
        if self.load_error:
            parts.append(f"loading {self.landing} failed: {self.load_error}")
        elif self.load and self.load.refused:
            parts.append(f"{len(self.load.refused)} file(s) refused: "
                         + "; ".join(f.message or f.path for f in self.load.refused))
        parts.append(f"MTU not counted: {self.mtu_error}" if self.mtu_error else "MTU counted")
        if self.alerts and self.alerts.get("not_delivered"):
            parts.append("alerts not delivered: " + "; ".join(self.alerts["not_delivered"]))
        ran = {r.cohort for r in self.runs}      # one paused by this run is named with its run above
        parts += [f'"{p["cohort"]}" paused, skipped until resumed ({p["paused_reason"]})' for p in self.paused
                  if p["cohort"] not in ran]
        return "; ".join(parts)

    def to_record(self) -> dict:
        """The run record the scheduler reads (JSON-ready): verdict, per cohort, load, MTU."""
        load = None
        if self.landing is not None:
            counts = self.load.to_dict() if self.load else {}
            load = {"ok": self._load_outcome() == "ok", "landing": self.landing, "error": self.load_error,
                    **{k: counts.get(k, 0) for k in ("files_loaded", "files_skipped", "files_refused", "events",
                                                     "profiles", "profile_updates", "rows_quarantined")},
                    "refused": [{"path": f.path, "reason": f.message}
                                for f in (self.load.refused if self.load else [])]}
        cohorts = [{k: v for k, v in r.to_dict().items() if k not in ("started_at", "ended_at", "guard")}
                   for r in self.runs]
        return {"status": self.status, "summary": self.summary, "dry_run": self.dry_run,
                "as_of": self.now.isoformat() if self.now else None, "load": load, "cohorts": cohorts,
                "mtu": {"ok": self.mtu_error is None, "error": self.mtu_error}, "alerts": self.alerts,
                "paused": [{**p, "paused_at": p["paused_at"].isoformat()} for p in self.paused],
                **({"mixpanel": {"ok": self.pull_error is None, "error": self.pull_error, **self.mixpanel}}
                   if self.mixpanel is not None else {})}

    def finish(self, record: str | Path | None = None, fail_on_error: bool = True) -> None:
        """The sync notebook's last step: write the run record (JSON, atomically) when a path is given,
        then, if anything failed and ``fail_on_error``, raise, so whatever runs the notebook (papermill,
        Airflow) sees the failure."""
        if record:
            from toolkit.schedule import write_record

            write_record(Path(record), self.to_record())
        if fail_on_error and self.status != "ok":
            raise SyncFailed(self.summary)


def run_scheduled(store_path: str | Path, *, landing: str | Path | None = None, cohorts: str = "due",
         dry_run: bool = False, now: datetime | None = None, client_options: dict | None = None,
         mixpanel: dict | str | None = None, engine: EngineChoice | None = None) -> SyncResult:
    """The scheduled job: with a Mixpanel project (``mixpanel``, see `mixpanel.scheduled.Project`), pull its
    new data into ``landing`` first; load new files from ``landing``; fetch the Mixpanel cohorts' members
    again; re-evaluate cohorts and run the syncs (``cohorts``: "due", "all" registered exports, or
    comma-separated names), then count MTU (``engine``: where cohorts and MTU are evaluated,
    `toolkit.engine.choose`; default the store). The pull, the load, each cohort and the MTU count fail on their
    own; the result says what worked and what not."""
    from toolkit.mixpanel import scheduled

    now = now or datetime.now(UTC)
    project = scheduled.Project.of(mixpanel)
    pulled, pull_error = None, None
    if project:
        try:
            pulled = scheduled.pull_new(landing, project)
        except Exception as exc:
            pull_error = failure_reason(exc)
            log.warning("pulling Mixpanel project %s failed: %s", project.project_id, pull_error,
                        exc_info=not isinstance(exc, ToolkitError))
    with Store(store_path) as store, Evaluator(engine) as evaluator:
        loaded, load_error = None, None
        if landing:
            try:
                if not Path(landing).exists():
                    raise UsageError(f"the landing folder {landing} does not exist")
                # event times are checked against the real clock; ``now`` only says when cohorts are evaluated
                loaded = load(store, [landing])
            except Exception as exc:
                load_error = failure_reason(exc)
                log.warning("loading %s failed: %s", landing, load_error, exc_info=not isinstance(exc, ToolkitError))
                _end_open_transaction(store)
        refreshed, unfetched = scheduled.refresh_cohorts(store, project, pull_error) if project else ([], {})
        names = None
        if cohorts == "all":
            names = [e["cohort"] for e in export.list_exports(store)]
        elif cohorts != "due":
            names = [name.strip() for name in cohorts.split(",") if name.strip()]
        if unfetched:   # a Mixpanel cohort whose members could not be fetched does not export old ones
            names = names if names is not None else export.due(store, now)
            stale = [n for n in names if n in unfetched]
            names = [n for n in names if n not in unfetched]
        runs = run_due(store, now=now, dry_run=dry_run, cohorts=names, client_options=client_options,
                       evaluator=evaluator)
        if unfetched:
            runs += [export.record_failure(store, n, unfetched[n], dry_run=dry_run, now=now) for n in stale]
        frame, mtu_error = None, None
        try:
            frame = mtu.frame(evaluator.mtu(store))
        except Exception as exc:
            mtu_error = failure_reason(exc)
            log.warning("counting MTU failed: %s", mtu_error, exc_info=not isinstance(exc, ToolkitError))
        alerted = None if dry_run else check_alerts(store, now)
        return SyncResult(loaded, runs, frame, load_error, mtu_error, str(landing) if landing else None, now, dry_run,
                          alerts=alerted, mixpanel=scheduled.summary(pulled, refreshed) if project else None,
                          pull_error=pull_error, paused=export.paused(store.con))


def check_alerts(store: Store, now: datetime) -> dict:
    """Incidents and their alerts after a cycle (toolkit.alerts); whatever goes wrong there is reported in
    the result, never raised: an alert must not fail the sync it is about."""
    from toolkit import alerts

    try:
        outcome = alerts.check(store, now)
    except Exception as exc:
        log.warning("checking alerts failed", exc_info=not isinstance(exc, ToolkitError))
        _end_open_transaction(store)
        outcome = {"opened": [], "resolved": [], "not_delivered": [f"alerts not checked: {failure_reason(exc)}"]}
    for problem in outcome["not_delivered"]:
        log.warning("alert not delivered: %s", problem)
    return outcome


def reconcile_cohort(store: Store, name: str, credentials: Credentials | None = None, *, repair: bool = False,
                     force: bool = False, progress: bool = False,
                     client_options: dict | None = None, now: datetime | None = None) -> reconcile.Reconciliation:
    """Read the cohort's tag back from OneSignal and report drift against the snapshot
    (``toolkit.reconcile``). With ``repair``: correct the snapshot to what OneSignal holds, then run the
    registered export, which sends the difference to the cohort's current exportable set (re-tags those
    who lost the tag, clears it from users tagged outside the toolkit) under the usual rate limits,
    removal guard (``force`` passes it) and run record, its cohort evaluated as of ``now`` (default: the
    current time; a cycle's own ``now`` when a scheduler simulates time)."""
    settings = export.settings(store, name, force=force, client_options=client_options, now=now)
    if credentials is None and settings.app_id:
        credentials = find_credentials(settings.app_id)
    if credentials is None:
        raise CredentialsError(f'no OneSignal key for app {settings.app_id} of cohort "{settings.cohort}": set '
                               "$ONESIGNAL_API_KEY or run toolkit connect --save")
    bar = tqdm(desc=f"reconcile {settings.cohort}", unit="user", disable=not progress or None)

    def report(stage: str, done: int, total: int | None) -> None:
        if stage == "export":
            bar.set_description(f"reconcile {settings.cohort}: OneSignal writing its CSV export, {done}s")
        else:
            bar.set_description(f"reconcile {settings.cohort}: viewing users not in the export")
            bar.total = total
            bar.update(done - bar.n)

    try:
        found = reconcile.read_back(store, settings, credentials, on_progress=report)
    finally:
        bar.close()
    if repair:
        before = reconcile.correct_snapshot(store, found)
        try:
            found.repair = export_cohort(store, settings, credentials, progress=progress)
        except ToolkitError:        # e.g. refused before it started (paused, already running)
            reconcile.repair_refused(store, found, before)
            raise
        if found.repair.status == "stopped":          # the removal guard: nothing sent, nothing changed
            reconcile.restore_snapshot(store, found, before)
    if not store.read_only:          # a read-only caller (the CLI's read back) records it in a short write after
        reconcile.record(store, found)
    return found
