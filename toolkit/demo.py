"""The main job on the bundled sample: what `make demo` runs.

Starts the OneSignal emulator on 127.0.0.1 (its state kept beside the store, in var/), seeds it with
OneSignal users for three in four of the sample's profiles, loads data/sample/, stores the sample
cohorts and registers their dynamic syncs, runs notebooks/sync.ipynb with papermill exactly as the
scheduler does, and prints what happened and the next steps (commands that work as pasted). Running
it again continues from the same state, so the second run sends only what changed (usually nothing).

Cohorts are evaluated as of the end of the sample's last day (the sample is a fixed month; measured
from today's clock, "last 30 days" would be empty).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from toolkit import cohorts, export, mtu, schedule
from toolkit.credentials import ENV_APP, ENV_KEY
from toolkit.emulator import Emulator
from toolkit.loading import LoadSummary, load
from toolkit.loading.identity import is_uuid4
from toolkit.resources import SAMPLE
from toolkit.store import Store

VAR = Path("var")
DEMO_APP_ID = "0c7d1f4e-5b2a-4c3d-9e8f-7a6b5c4d3e21"     # fixed, so a rerun finds its emulator app


@dataclass
class DemoResult:
    store: Path
    notebook: Path
    ok: bool
    text: str
    as_of: dt.date
    next_steps: list[str]


def seed_users(store: Store) -> list[dict]:
    """OneSignal users for three in four of the sample's OneSignal ids (a stable pick by hash), so the
    export has users it finds and users it reports as not in OneSignal."""
    values = store.con.execute("""
        SELECT DISTINCT onesignal_user_id FROM resolved_profiles    -- kept beside each profile (migration 5)
        WHERE onesignal_user_id_type = 'VARCHAR' AND trim(onesignal_user_id) <> '' ORDER BY 1""").fetchall()
    users = []
    for (value,) in values:
        if hashlib.sha1(value.encode()).digest()[0] % 4 == 0:
            continue
        users.append({"subscription_ids": [value]} if is_uuid4(value) else {"external_id": value})
    return users


def end_of_day(day: dt.date) -> dt.datetime:
    """The last moment of a UTC day: what "as of 2026-10-31" means (the whole day counts)."""
    return dt.datetime.combine(day, dt.time.max, dt.UTC)


def last_event_day(store: Store) -> dt.date:
    last = store.con.execute("SELECT max(time) FROM events").fetchone()[0]
    return (last or dt.datetime.now(dt.UTC)).date()


def run(workdir: Path = VAR) -> DemoResult:
    """Everything the demo writes goes under ``workdir``: demo.duckdb, onesignal.json, runs/."""
    shown = Path(workdir)                 # as the person typed it, for commands they paste
    workdir = shown.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    db, runs_dir = workdir / "demo.duckdb", workdir / "runs"
    with Emulator(state_file=workdir / "onesignal.json") as emulator:
        with Store(db) as store:
            loaded = load(store, [SAMPLE], progress=True)
            as_of = last_event_day(store)
            now = end_of_day(as_of)
            cohorts.save_all(store, cohorts.load_definitions(SAMPLE / "cohorts.yaml"))
            if DEMO_APP_ID not in emulator.world.apps:
                app = emulator.add_app(DEMO_APP_ID, name="Demo app (emulated)")
                emulator.add_users(app.app_id, seed_users(store))
            app = emulator.app(DEMO_APP_ID)
            names = [c["name"] for c in cohorts.list_cohorts(store)]
            for name in names:      # due as of the sample's last day, so the sync below runs them
                export.register(store, name, "dynamic", app.app_id, emulator.url, now=now)
        # The notebook's kernel reads the key from its environment, never from a parameter.
        os.environ[ENV_APP], os.environ[ENV_KEY] = app.app_id, app.api_key
        run = schedule.run_once(runs_dir, {"store_path": str(db), "cohorts": "due", "dry_run": False,
                                           "now": now.isoformat()})
        emulator.save()
    with Store(db, read_only=True) as store:
        quarantined = store.con.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        steps = next_steps(shown, as_of, names, quarantined)
        text = summary_text(store, names, loaded, run, steps, as_of)
        failed = [r["cohort"] for r in _last_runs(store).values() if r["status"] != "ok"]
    return DemoResult(db, run.notebook, run.ok and not failed, text, as_of, [command for command, _ in steps])


def toolkit_command() -> str:
    """How to call this toolkit from the current directory: the venv's script (.venv/bin/toolkit after
    `make demo`, where nothing is activated), else this Python with -m."""
    script = Path(sys.executable).parent / "toolkit"
    if script.exists():
        return shlex.quote(_relative(script))
    return f"{shlex.quote(sys.executable)} -m toolkit"


def _relative(path: Path) -> str:
    try:
        return str(Path(os.path.abspath(path)).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def next_steps(workdir: Path, as_of: dt.date, names: list[str], quarantined: int) -> list[tuple[str, str]]:
    """(command, what it shows): commands that work as pasted, against the demo's store."""
    tk, db, day = toolkit_command(), shlex.quote(_relative(workdir / "demo.duckdb")), as_of.isoformat()
    example = "Engaged with push" if "Engaged with push" in names else names[0]
    steps = []
    if quarantined:
        steps.append((f"{tk} quarantine --db {db}", "the rows the load refused, with file, line and reason"))
    steps += [
        (f"{tk} cohorts preview {shlex.quote(example)} --db {db} --as-of {day}",
         "a cohort's members: who exports, and why the others cannot"),
        (f"{tk} export {shlex.quote(example)} --dry-run --db {db} --as-of {day}",
         "what its next sync would send (nothing: it is in sync)"),
        (f"{tk} mtu --db {db}", "monthly tracked users with the billing breakdown"),
        (f"{tk} lab --workdir {shlex.quote(_relative(workdir))}",
         "JupyterLab on the notebooks, with this store and the emulator running"),
    ]
    return steps


def _last_runs(store: Store) -> dict[str, dict]:
    return {r["cohort"]: r for r in reversed(export.runs(store, limit=10_000))}


def summary_text(store: Store, names: list[str], loaded: LoadSummary, run: schedule.SyncRun,
                 steps: list[tuple[str, str]], as_of: dt.date) -> str:
    from toolkit import report

    last = _last_runs(store)
    lines = [report.load_text(loaded, quarantine_command=steps[0][0] if "quarantine" in steps[0][0] else None),
             "",
             f"sync notebook ran: {run.notebook}" if run.ok else f"{run.error}\nexecuted notebook: {run.notebook}",
             f"cohorts evaluated as of {as_of} (the sample's last day)", "",
             f"{'cohort':<52}{'members':>8}{'exportable':>11}{'added':>7}{'removed':>8}{'not in OS':>10}  status"]
    for name in names:
        r = last.get(name)
        if r is None:
            lines.append(f"{name[:51]:<52}{'':>8}{'':>11}{'':>7}{'':>8}{'':>10}  not run")
            continue
        lines.append(f"{name[:51]:<52}{r['members'] or 0:>8,}{r['exportable'] or 0:>11,}{r['added'] or 0:>7,}"
                     f"{r['removed'] or 0:>8,}{r['not_in_onesignal'] or 0:>10,}  {r['status']}"
                     + (f" ({r['error']})" if r["error"] else ""))
    lines += ["", report.mtu_text(mtu.report(store)), "", f"store: {store.path}", "", "next steps (paste as is):"]
    lines += [f"  {command}\n      {why}" for command, why in steps]
    return "\n".join(lines)
