"""Spark local[2] over a lake next to DuckDB on the same data, as bench table rows (issue 17).

    python -m bench.spark_lake 1000000 [5000000 10000000]      # or: python -m bench --spark 1000000

For each size: the generated events and profiles are loaded into a store of their own (once), written
as a lake (``toolkit lake export``, once), then each cohort is evaluated with its matchability (what a
preview and an export run) on DuckDB over the store, on DuckDB over the lake and on Spark local[2] over
the lake, and MTU is counted on each. Each timing is the best of ``RUNS`` after a warm-up; Spark's
session start and the lake's preparation (views, identity map) are timed on their own rows.

Each timing is wall seconds and CPU seconds (DuckDB: this process; Spark: its JVM and this process),
each the best of ``RUNS``. The growth verdict reads CPU seconds: on a machine shared by several
sessions the wall time mostly measures the others' load.

Per-partition cost, for estimating a cluster: Spark's CPU seconds per cohort (or MTU) divided over the
lake's day partitions (core-seconds per day partition of ``events / days`` events). A month of 10
billion events on N executors of C cores: about 10e9 / (events per partition) partitions, so (that
count x core-seconds per partition) / (N x C) seconds, plus the fixed cost (session, plan).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from bench.table import Row

RUNS = 3
COHORTS = ("bench: pro purchasers not logging in", "bench: everyone with a plan")


def _store_and_lake(events: int) -> tuple[Path, Path]:
    """A store of the generated events and profiles with the bench cohorts, and its lake (made once)."""
    from bench.__main__ import generated
    from bench.cohort_eval import COHORT, EVERYONE
    from toolkit import Store, cohorts, load
    from toolkit.lake import writer

    folder = generated(events).parent
    db, lake = folder / "lake-store.duckdb", folder / "lake"
    if not db.exists():
        partial = db.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        with Store(partial) as store:
            load(store, [folder / "events.jsonl"])
            load(store, [folder / "profiles.json"])
            cohorts.save_all(store, [COHORT, EVERYONE])
        partial.rename(db)
    if not lake.exists():
        with Store(db, read_only=True) as store:
            writer.export_store(store, lake)
    return db, lake


def _best(fn, cpu=time.process_time, runs: int = RUNS) -> dict:
    """Best wall seconds and best CPU seconds (``cpu``: the engine's processes) of ``runs``."""
    fn()                        # warm-up: caches, the JVM's compiled code
    wall = used = float("inf")
    for _ in range(runs):
        started, cpu_started = time.perf_counter(), cpu()
        fn()
        wall, used = min(wall, time.perf_counter() - started), min(used, cpu() - cpu_started)
    return {"wall": wall, "cpu": used}


def _jvm_cpu(spark):
    """CPU seconds of this process and of Spark's JVM (local mode: the driver is every executor)."""
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    tick = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick + time.process_time()
    return cpu


def measure(events: int) -> dict:
    """Seconds per cohort and for MTU on each engine, the fixed costs, and the lake's shape."""
    from toolkit import Store, engine, mtu
    from toolkit.cohort_sql import to_utc_naive

    db, lake = _store_and_lake(events)
    out: dict = {"events": events, "days": sum(1 for p in (lake / "events").iterdir() if p.is_dir())}
    with Store(db, read_only=True) as store:
        store.con.execute("SET memory_limit = '4GB'")      # the machine is shared (24 GiB, 8 sessions)
        now = store.con.execute("SELECT max(time) FROM events").fetchall()[0][0]
        now = to_utc_naive(now)
        started = time.perf_counter()
        spark = engine.Evaluator(engine.choose("spark", lake=str(lake), master="local[2]"))
        from toolkit import spark_session

        session = spark_session.start("local[2]")
        out["spark_session"] = time.perf_counter() - started
        spark_cpu = _jvm_cpu(session)
        started = time.perf_counter()
        spark.lake.facts()                   # the lake's relations, identity map and user-id facts
        out["spark_prepare"] = time.perf_counter() - started
        duck = engine.Evaluator(engine.choose(lake=str(lake)))
        started = time.perf_counter()
        duck.lake                            # noqa: B018
        out["duck_prepare"] = time.perf_counter() - started
        store_engine = engine.Evaluator()
        engines = (("store", store_engine, time.process_time), ("duck_lake", duck, time.process_time),
                   ("spark", spark, spark_cpu))
        for name in COHORTS:
            members = store_engine.preview(store, name, now=now).summary["members"]
            out[name] = {"members": members, **{
                label: _best(lambda ev=ev, name=name: ev.preview(store, name, now=now), cpu)
                for label, ev, cpu in engines}}
        out["mtu"] = {label: _best(lambda ev=ev: ev.mtu(store), cpu) for label, ev, cpu in engines}
        out["mtu_equal"] = spark.mtu(store) == mtu.report(store)
        duck.close()
        spark.close()
    return out


def rows(sizes: list[int]) -> list[Row]:
    measured = [measure(n) for n in sizes]
    table: list[Row] = []
    first = measured[0]
    for m in measured:
        size = f"{m['events'] / 1e6:g}M"
        per_day = m["events"] / m["days"]
        table.append(Row(f"spark local[2] {size}: session start + lake views and identity",
                         f"{m['spark_session']:.1f} s + {m['spark_prepare']:.1f} s",
                         f"duckdb lake views {m['duck_prepare']:.2f} s", "", "", None))
        for name in (*COHORTS, "mtu"):
            t = m[name]
            label = f"MTU {size}" if name == "mtu" else f"cohort + matchability {size} ({t['members']:,} members)"
            growth, linear = "", None
            if m is not first:
                factor = m["events"] / first["events"]
                grown = {f"{e} {k}": t[e][k] / first[name][e][k] for e in ("spark", "store") for k in ("wall", "cpu")}
                growth = (f"; x{grown['spark cpu']:.1f} spark, x{grown['store cpu']:.1f} duckdb CPU "
                          f"(wall x{grown['spark wall']:.1f}, x{grown['store wall']:.1f}) for x{factor:g} events")
                linear = grown["spark cpu"] <= 1.2 * factor and grown["store cpu"] <= 1.2 * factor
            table.append(Row(f"spark local[2] {label}", _seconds(t["spark"]),
                             f"duckdb store {_seconds(t['store'])}, lake {_seconds(t['duck_lake'])}",
                             f"{t['spark']['cpu'] / t['store']['cpu']:.0f}x duckdb CPU{growth}",
                             "linear or better" if growth else "", linear))
            table.append(Row(f"  per day partition ({per_day:,.0f} events), {name if name == 'mtu' else 'cohort'}",
                             f"{t['spark']['cpu'] / m['days'] * 1000:.0f} core-ms", "", "", "", None))
        table.append(Row(f"spark MTU {size} equals duckdb", str(m["mtu_equal"]), "", "", "equal", m["mtu_equal"]))
    return table


def _seconds(t: dict) -> str:
    return f"{t['wall']:.2f} s ({t['cpu']:.2f} s CPU)"


if __name__ == "__main__":
    from bench.table import print_table

    print_table(rows([int(n) for n in sys.argv[1:]] or [1_000_000]))
