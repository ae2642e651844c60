"""The workflows people run, built from the pieces: export a cohort, run the due dynamic syncs, and the
whole scheduled sync (load new files, re-evaluate cohorts, sync, count MTU). The CLI, the notebooks
and the widgets all call these, so there is one behaviour to test."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from toolkit import credentials as keys
from toolkit import export, ingest, matching, mtu
from toolkit.matching import DEFAULT_USER_ID_PROPERTY
from toolkit.onesignal import DEFAULT_BASE_URL, Credentials
from toolkit.plan import Target
from toolkit.store import Store


def connect(store: Store, credentials: Credentials, base_url: str | None = None) -> dict:
    """Check the key against OneSignal and record the outcome (never the key): Connected, or why not.
    Once connected, the app's registered exports use this address."""
    from toolkit.onesignal import OneSignalError, SyncOneSignalClient

    base_url = base_url or DEFAULT_BASE_URL
    try:
        with SyncOneSignalClient(credentials, base_url, max_attempts=3, timeout=10.0) as client:
            client.validate()
        connected, detail = True, "Connected"
    except OneSignalError as exc:
        connected, detail = False, str(exc)
    store.con.execute("INSERT OR REPLACE INTO connections VALUES (?, ?, ?, ?, now()::TIMESTAMP)",
                      [credentials.app_id, base_url, "connected" if connected else "failed", detail])
    if connected:       # the app's exports follow it to the address that answered (e.g. a new emulator port)
        store.con.execute("UPDATE exports SET base_url = ? WHERE app_id = ? AND base_url <> ?",
                          [base_url, credentials.app_id, base_url])
    return {"app_id": credentials.app_id, "base_url": base_url, "connected": connected, "detail": detail}


def targets(preview: matching.Preview) -> dict[str, Target]:
    """The exportable members of a preview, as the OneSignal users the export addresses."""
    rows = preview.members[preview.members["exportable"]]
    return {r.distinct_id: Target(r.onesignal_id, r.id_type)
            for r in rows[["distinct_id", "onesignal_id", "id_type"]].itertuples(index=False)}


def export_cohort(store: Store, cohort: str, *, mode: str | None = None, app_id: str | None = None,
                  base_url: str | None = None, credentials: Credentials | None = None,
                  dry_run: bool = False, force: bool = False, now: datetime | None = None,
                  user_id_property: str | None = None, id_type: str | None = None,
                  client_options: dict | None = None, progress: bool = False,
                  on_progress: Callable[[int, int], None] | None = None) -> export.RunRecord:
    """Export ``cohort`` now. With ``mode`` (once/dynamic) it (re)registers the export, which
    overwrites the previous one; without, it runs the registered export again."""
    now = now or datetime.now(timezone.utc)
    registered = _registered(store, cohort)
    if mode is not None and not dry_run:     # a dry run rehearses; it changes no registration
        app_id = (app_id or (credentials.app_id if credentials else None) or (registered or {}).get("app_id")
                  or os.environ.get(keys.ENV_APP))
        if not app_id:
            raise export.ExportError("say which OneSignal app: --app-id or $ONESIGNAL_APP_ID")
        export.register(store, cohort, mode, app_id, base_url or (registered or {}).get("base_url")
                        or DEFAULT_BASE_URL, user_id_property=user_id_property or DEFAULT_USER_ID_PROPERTY,
                        id_type=id_type or "auto", now=now)
        registered = _registered(store, cohort)
    elif registered is None and not dry_run:
        raise export.ExportError(f"cohort {cohort!r} has no export yet: choose --once or --dynamic")
    if credentials is None and not dry_run:
        credentials = keys.find(registered["app_id"])
    settings = registered or {}
    preview = matching.preview(store, cohort, now=now,
                               user_id_property=user_id_property or settings.get("user_id_property")
                               or DEFAULT_USER_ID_PROPERTY, id_type=id_type or settings.get("id_type") or "auto")
    bar = tqdm(desc=f"export {cohort}", unit="user", disable=not progress or None)

    def report(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
        if on_progress:
            on_progress(done, total)

    try:
        return export.run(store, cohort, targets(preview), credentials, dry_run=dry_run, mode=mode, force=force,
                          members=int(preview.summary["members"]), now=now, client_options=client_options,
                          on_progress=report)
    finally:
        bar.close()


def run_due(store: Store, *, now: datetime | None = None, dry_run: bool = False,
            cohorts: list[str] | None = None, client_options: dict | None = None) -> list[export.RunRecord]:
    """Every dynamic sync that is due (or the named cohorts' exports), one after the other; one
    cohort's failure is recorded in its run and does not stop the others."""
    now = now or datetime.now(timezone.utc)
    names = cohorts if cohorts is not None else export.due(store, now)
    return [export_cohort(store, name, now=now, dry_run=dry_run, client_options=client_options)
            for name in names]


@dataclass
class SyncResult:
    load: ingest.LoadSummary | None
    runs: list[export.RunRecord] = field(default_factory=list)
    mtu: pd.DataFrame | None = None

    @property
    def table(self) -> pd.DataFrame:
        """Per cohort: members, exportable, added, removed, not in OneSignal, failed, status."""
        columns = ["cohort", "mode", "status", "members", "exportable", "added", "removed", "unchanged",
                   "not_in_onesignal", "failed", "error"]
        return pd.DataFrame([{k: r.to_dict()[k] for k in columns} for r in self.runs], columns=columns)


def sync(store_path: str | Path, *, landing: str | Path | None = None, cohorts: str = "due",
         dry_run: bool = False, now: datetime | None = None, client_options: dict | None = None) -> SyncResult:
    """The scheduled job: load new files from ``landing``, re-evaluate cohorts and run the syncs
    (``cohorts``: "due", "all" registered exports, or comma-separated names), then count MTU."""
    now = now or datetime.now(timezone.utc)
    with Store(store_path) as store:
        # Loading checks event times against the real clock: ``now`` only says when cohorts are evaluated.
        loaded = ingest.load(store, [landing]) if landing and Path(landing).exists() else None
        names = None
        if cohorts == "all":
            names = [e["cohort"] for e in export.list_exports(store)]
        elif cohorts != "due":
            names = [name.strip() for name in cohorts.split(",") if name.strip()]
        runs = run_due(store, now=now, dry_run=dry_run, cohorts=names, client_options=client_options)
        return SyncResult(loaded, runs, mtu.report_frame(store))


def _registered(store: Store, cohort: str) -> dict | None:
    return export.registration(store.reader(), cohort)
