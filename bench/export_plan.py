"""Bench rows: a dynamic sync of an unchanged 1M-member cohort sends no update, and what planning costs,
unchanged and with 1% of the members changed, beside a scan of the members.

The cohort's previous export is in the snapshot already (written straight into the store, with the
fingerprint its run would have kept: tagging 1M users through a rate-limited API would take 17
minutes), so the run must find nothing to send. The members are handed over as the Arrow table a
sync gets from matching. Each timing is the best of ``REPEAT`` (a shared machine: one run can vary by
a third).
"""

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from bench.table import Row

MEMBERS = 1_000_000
CHANGED_SHARE = 0.01
REPEAT = 3


def best(action) -> float:
    seconds = []
    for _ in range(REPEAT):
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    return min(seconds)


def rows(members: int = MEMBERS) -> list[Row]:
    from toolkit import export, snapshots
    from toolkit.emulator import Emulator
    from toolkit.onesignal import Credentials
    from toolkit.store import Store

    now = datetime(2026, 11, 1, tzinfo=UTC)
    ids = pa.array([f"user-{i:07d}" for i in range(members)])
    wanted = pa.table({"distinct_id": ids, "onesignal_id": pc.binary_join_element_wise("ext-", ids, ""),
                       "id_type": pa.array(["external_id"] * members)})
    # 1% of the members have another OneSignal id: a remove and an add each.
    moved = pc.less(pc.random(members, initializer=0), CHANGED_SHARE)
    changed = wanted.set_column(1, "onesignal_id", pc.if_else(moved, pc.binary_join_element_wise(
        wanted.column("onesignal_id"), "-new", ""), wanted.column("onesignal_id")))
    with tempfile.TemporaryDirectory() as tmp, Emulator() as emu, Store(Path(tmp) / "s.duckdb") as store:
        app = emu.add_app()
        export.register(store, "Big", "dynamic", app.app_id, emu.url, now=now)
        store.con.register("exported", wanted)
        store.con.execute("INSERT INTO export_members SELECT 'Big', distinct_id, onesignal_id, id_type, "
                          "'tagged', ?::TIMESTAMP FROM exported", [now.replace(tzinfo=None)])
        store.con.unregister("exported")
        snapshots.keep(store.con, "Big")
        settings = export.settings(store, "Big", now=now)
        unchanged = best(lambda: export._plan(store.con, settings, wanted))
        moved_plan = export._plan(store.con, settings, changed)[0]
        diffed = best(lambda: export._plan(store.con, settings, changed))
        started = time.perf_counter()
        record = export.run(store, settings, wanted, Credentials(app.app_id, app.api_key))
        run_seconds = time.perf_counter() - started
        updates = sum(1 for r in emu.requests() if r["method"] == "PATCH")
        # What reading a cohort of this size costs: the members' ids out of DuckDB.
        scan = best(lambda: store.con.execute("SELECT DISTINCT distinct_id FROM export_members "
                                              "WHERE cohort = 'Big'").fetchall())
    size = f"{members / 1e6:g}M"
    return [
        Row(f"unchanged dynamic sync, {size} members", f"{updates} update requests",
            f"{record.unchanged:,} unchanged", f"run {run_seconds:.1f} s", "0 requests", updates == 0),
        Row(f"plan {size} members vs snapshot (unchanged)", f"{unchanged:.2f} s", f"member scan {scan:.2f} s",
            f"{unchanged / scan:.2f}x scan", "<= 2x scan", unchanged <= 2 * scan),
        Row(f"plan {size} members vs snapshot ({CHANGED_SHARE:.0%} moved)", f"{diffed:.2f} s",
            f"{moved_plan.counts['add']:,} add, {moved_plan.counts['remove']:,} remove",
            f"{diffed / scan:.2f}x scan", "", None),
    ]
