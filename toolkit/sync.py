"""The workflows people run, built from the pieces: export a cohort, run the due dynamic syncs, and the
whole scheduled sync (load new files, re-evaluate cohorts, sync, count MTU). The CLI, the notebooks
and the widgets all call these, so there is one behaviour to test."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd
from tqdm.auto import tqdm

from toolkit import export, mtu
from toolkit.credentials import find as find_credentials
from toolkit.engine import EngineChoice, Evaluator
from toolkit.errors import SyncFailed, ToolkitError, UsageError
from toolkit.loading import LoadSummary, load
from toolkit.onesignal import Credentials, default_base_url
from toolkit.store import Store

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
                  evaluator: Evaluator | None = None) -> export.RunRecord:
    """Export a cohort now, as ``settings`` say (``export.settings``; a cohort's name alone runs its
    registered export again): evaluate who is exportable (on ``evaluator``'s engine: default the store),
    then run. Without ``credentials``, the key of the settings' app comes from the environment or the
    0600 credentials file."""
    if isinstance(settings, str):
        settings = export.settings(store, settings)
    if credentials is None and not settings.dry_run and settings.app_id:
        credentials = find_credentials(settings.app_id)
    found = export.exportable(store, settings, evaluator.preview if evaluator else None)
    bar = tqdm(desc=f"export {settings.cohort}", unit="user", disable=not progress or None)

    def report(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
        if on_progress:
            on_progress(done, total)

    try:
        return export.run(store, settings, found.table, credentials, members=found.members, on_progress=report)
    finally:
        bar.close()


def run_due(store: Store, *, now: datetime | None = None, dry_run: bool = False,
            cohorts: list[str] | None = None, client_options: dict | None = None,
            evaluator: Evaluator | None = None) -> list[export.RunRecord]:
    """Every dynamic sync that is due (or the named cohorts' exports), one after the other. Each cohort
    succeeds or fails on its own: whatever stops one (a cohort that cannot be evaluated, no key, a
    refused export) becomes its failed run record, with the reason, and the others still run."""
    now = now or datetime.now(UTC)
    names = cohorts if cohorts is not None else export.due(store, now)
    return [_run_one(store, name, now, dry_run, client_options, evaluator) for name in names]


def _run_one(store: Store, name: str, now: datetime, dry_run: bool, client_options: dict | None,
             evaluator: Evaluator | None = None) -> export.RunRecord:
    chosen = None
    try:
        chosen = export.settings(store, name, now=now, dry_run=dry_run, client_options=client_options)
        return export_cohort(store, chosen, evaluator=evaluator)
    except Exception as exc:     # one cohort never stops the sync; the failure is its run record
        reason = failure_reason(exc)
        log.warning('cohort "%s" failed: %s', name, reason, exc_info=not isinstance(exc, ToolkitError))
        _end_open_transaction(store)
        return export.record_failure(store, chosen.cohort if chosen else name, reason,
                                     mode=chosen.mode if chosen else None, dry_run=dry_run, now=now)


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
        if self.load_error:
            parts.append(f"loading {self.landing} failed: {self.load_error}")
        elif self.load and self.load.refused:
            parts.append(f"{len(self.load.refused)} file(s) refused: "
                         + "; ".join(f.message or f.path for f in self.load.refused))
        parts.append(f"MTU not counted: {self.mtu_error}" if self.mtu_error else "MTU counted")
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
                "mtu": {"ok": self.mtu_error is None, "error": self.mtu_error}}

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
         engine: EngineChoice | None = None) -> SyncResult:
    """The scheduled job: load new files from ``landing``, re-evaluate cohorts and run the syncs
    (``cohorts``: "due", "all" registered exports, or comma-separated names), then count MTU. The
    load, each cohort and the MTU count fail on their own; the result says what worked and what not.
    ``engine``: where cohorts and MTU are evaluated (`toolkit.engine.choose`; default the store)."""
    now = now or datetime.now(UTC)
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
        names = None
        if cohorts == "all":
            names = [e["cohort"] for e in export.list_exports(store)]
        elif cohorts != "due":
            names = [name.strip() for name in cohorts.split(",") if name.strip()]
        runs = run_due(store, now=now, dry_run=dry_run, cohorts=names, client_options=client_options,
                       evaluator=evaluator)
        frame, mtu_error = None, None
        try:
            frame = mtu.frame(evaluator.mtu(store))
        except Exception as exc:
            mtu_error = failure_reason(exc)
            log.warning("counting MTU failed: %s", mtu_error, exc_info=not isinstance(exc, ToolkitError))
        return SyncResult(loaded, runs, frame, load_error, mtu_error, str(landing) if landing else None, now, dry_run)

