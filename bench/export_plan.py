"""Bench rows: a dynamic sync of an unchanged 1M-member cohort sends no update, and its planning time.

The cohort's previous export is in the snapshot already (written straight into the store: tagging
1M users through a rate-limited API would take 17 minutes), so the run must find nothing to send.
Its planning time stands beside the time to evaluate a cohort of the same size.
"""

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from bench.table import Row

MEMBERS = 1_000_000


def rows(members: int = MEMBERS) -> list[Row]:
    from toolkit import export
    from toolkit.emulator import Emulator
    from toolkit.onesignal import Credentials
    from toolkit.planning import Target, plan
    from toolkit.store import Store

    now = datetime(2026, 11, 1, tzinfo=UTC)
    ids = [f"user-{i:07d}" for i in range(members)]
    wanted = {d: Target(f"ext-{d}", "external_id") for d in ids}
    with tempfile.TemporaryDirectory() as tmp, Emulator() as emu, Store(Path(tmp) / "s.duckdb") as store:
        app = emu.add_app()
        export.register(store, "Big", "dynamic", app.app_id, emu.url, now=now)
        frame = pd.DataFrame({"distinct_id": ids, "onesignal_id": [t.onesignal_id for t in wanted.values()]})  # noqa: F841  (DuckDB reads it by name)
        store.con.execute("INSERT INTO export_members SELECT 'Big', distinct_id, onesignal_id, 'external_id', "
                          "'tagged', ?::TIMESTAMP FROM frame", [now.replace(tzinfo=None)])
        started = time.perf_counter()
        plan(wanted, export.snapshot(store.con, "Big", now))
        planning = time.perf_counter() - started
        started = time.perf_counter()
        record = export.run(store, export.settings(store, "Big", now=now), wanted,
                            Credentials(app.app_id, app.api_key))
        run_seconds = time.perf_counter() - started
        updates = sum(1 for r in emu.requests() if r["method"] == "PATCH")
        # What evaluating a cohort of this size costs: the members' ids out of DuckDB.
        started = time.perf_counter()
        store.con.execute("SELECT DISTINCT distinct_id FROM export_members WHERE cohort = 'Big'").fetchall()
        scan = time.perf_counter() - started
    return [
        Row(f"unchanged dynamic sync, {members / 1e6:g}M members", f"{updates} update requests",
            f"{record.unchanged:,} unchanged", f"run {run_seconds:.1f} s", "0 requests", updates == 0),
        Row(f"plan {members / 1e6:g}M members vs snapshot", f"{planning:.2f} s", f"member scan {scan:.2f} s",
            f"{planning / scan:.1f}x scan", "", None),
    ]
