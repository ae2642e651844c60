"""The main job on the bundled sample: what `make demo` runs.

Starts the OneSignal emulator on 127.0.0.1 (its state kept beside the store, in var/), seeds it with
OneSignal users for three in four of the sample's profiles, loads data/sample/, stores the sample
cohorts and registers their dynamic syncs, runs notebooks/sync.ipynb with papermill exactly as the
scheduler does, and prints what happened. Running it again continues from the same state, so the
second run sends only what changed (usually nothing).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from toolkit import cohorts, export, ingest, mtu, schedule
from toolkit.credentials import ENV_APP, ENV_KEY
from toolkit.emulator import Emulator
from toolkit.identity import is_uuid4
from toolkit.store import Store

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "sample"
VAR = ROOT / "var"
DEMO_APP_ID = "0c7d1f4e-5b2a-4c3d-9e8f-7a6b5c4d3e21"     # fixed, so a rerun finds its emulator app


@dataclass
class DemoResult:
    store: Path
    notebook: Path
    ok: bool
    text: str


def seed_users(store: Store) -> list[dict]:
    """OneSignal users for three in four of the sample's OneSignal ids (a stable pick by hash), so the
    export has users it finds and users it reports as not in OneSignal."""
    values = store.con.execute("""
        SELECT DISTINCT properties ->> '$."$onesignal_user_id"' FROM resolved_profiles
        WHERE json_type(properties -> '$."$onesignal_user_id"') = 'VARCHAR'
          AND trim(properties ->> '$."$onesignal_user_id"') <> '' ORDER BY 1""").fetchall()
    users = []
    for (value,) in values:
        if hashlib.sha1(value.encode()).digest()[0] % 4 == 0:
            continue
        users.append({"subscription_ids": [value]} if is_uuid4(value) else {"external_id": value})
    return users


def run(workdir: Path = VAR) -> DemoResult:
    """Everything the demo writes goes under ``workdir``: demo.duckdb, onesignal.json, runs/."""
    workdir = Path(workdir).resolve()     # the notebook kernel runs from the project root
    workdir.mkdir(parents=True, exist_ok=True)
    db, runs_dir = workdir / "demo.duckdb", workdir / "runs"
    with Emulator(state_file=workdir / "onesignal.json") as emulator:
        with Store(db) as store:
            loaded = ingest.load(store, [SAMPLE], progress=True)
            cohorts.save_all(store, cohorts.load_definitions(SAMPLE / "cohorts.yaml"))
            if DEMO_APP_ID not in emulator.world.apps:
                app = emulator.add_app(DEMO_APP_ID, name="Demo app (emulated)")
                emulator.add_users(app.app_id, seed_users(store))
            app = emulator.app(DEMO_APP_ID)
            names = [c["name"] for c in cohorts.list_cohorts(store)]
            for name in names:
                export.register(store, name, "dynamic", app.app_id, emulator.url)
        # The notebook's kernel reads the key from its environment, never from a parameter.
        os.environ[ENV_APP], os.environ[ENV_KEY] = app.app_id, app.api_key
        run = schedule.run_once(runs_dir, {"store_path": str(db), "cohorts": "due", "dry_run": False})
        emulator.save()
    with Store(db, read_only=True) as store:
        text = summary_text(store, names, loaded, run)
    return DemoResult(db, run.notebook, run.ok, text)


def summary_text(store: Store, names: list[str], loaded: ingest.LoadSummary, run: schedule.SyncRun) -> str:
    from toolkit import report

    last = {r["cohort"]: r for r in reversed(export.runs(store, limit=10_000))}
    lines = [report.load_text(loaded), "",
             f"sync notebook {'ran' if run.ok else 'FAILED: ' + run.error}: {run.notebook}", "",
             f"{'cohort':<52}{'members':>8}{'exportable':>11}{'added':>7}{'removed':>8}{'not in OS':>10}  status"]
    for name in names:
        r = last.get(name)
        if r is None:
            lines.append(f"{name[:51]:<52}{'':>8}{'':>11}{'':>7}{'':>8}{'':>10}  not run")
            continue
        lines.append(f"{name[:51]:<52}{r['members'] or 0:>8,}{r['exportable'] or 0:>11,}{r['added'] or 0:>7,}"
                     f"{r['removed'] or 0:>8,}{r['not_in_onesignal'] or 0:>10,}  {r['status']}"
                     + (f" ({r['error']})" if r["error"] else ""))
    lines += ["", mtu.report_text(store), "",
              f"store: {store.path}",
              "open the widget notebooks:  .venv/bin/jupyter lab notebooks/",
              "run the sync on a schedule: .venv/bin/toolkit schedule --every 15m"]
    return "\n".join(lines)
