"""Spark local[2] over a lake next to DuckDB on the same data, as bench table rows (issue 17).

    python -m bench.spark_lake 1000000 [5000000 10000000]      # or: python -m bench --spark 1000000

For each size: the generated events and profiles are loaded into a store of their own (once), written
as a lake (``toolkit lake export``, once), then each cohort is evaluated with its matchability (what a
preview and an export run) on DuckDB over the store, on DuckDB over the lake and on Spark local[2] over
the lake, and MTU is counted on each. Each timing is the best of ``RUNS`` after a warm-up; Spark's
session start and the lake's preparation (views, identity map) are timed on their own rows.

Per-partition cost, for estimating a cluster: Spark's time per cohort divided over the lake's day
partitions, times the 2 local cores (core-seconds per day partition of ``events / days`` events).
A month of 10 billion events on N executors of C cores: about 10e9 / (events per partition) partitions,
so (that count x core-seconds per partition) / (N x C) seconds, plus the fixed cost (session, plan).
"""

from __future__ import annotations

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


def _best(fn, runs: int = RUNS) -> float:
    fn()                        # warm-up: caches, the JVM's compiled code
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure(events: int) -> dict:
    """Seconds per cohort and for MTU on each engine, the fixed costs, and the lake's shape."""
    from toolkit import Store, engine, mtu
    from toolkit.cohort_sql import to_utc_naive

    db, lake = _store_and_lake(events)
    out: dict = {"events": events, "days": sum(1 for p in (lake / "events").iterdir() if p.is_dir())}
    with Store(db, read_only=True) as store:
        now = store.con.execute("SELECT max(time) FROM events").fetchall()[0][0]
        now = to_utc_naive(now)
        started = time.perf_counter()
        spark = engine.Evaluator(engine.choose("spark", lake=str(lake), master="local[2]"))
        from toolkit import spark_session

        spark_session.start("local[2]")
        out["spark_session"] = time.perf_counter() - started
        started = time.perf_counter()
        spark.lake                           # noqa: B018  (the lake's relations and identity map)
        out["spark_prepare"] = time.perf_counter() - started
        duck = engine.Evaluator(engine.choose(lake=str(lake)))
        started = time.perf_counter()
        duck.lake                            # noqa: B018
        out["duck_prepare"] = time.perf_counter() - started
        store_engine = engine.Evaluator()
        for name in COHORTS:
            members = store_engine.preview(store, name, now=now).summary["members"]
            out[name] = {"members": members, **{
                label: _best(lambda ev=ev, name=name: ev.preview(store, name, now=now))
                for label, ev in (("store", store_engine), ("duck_lake", duck), ("spark", spark))}}
        out["mtu"] = {label: _best(lambda ev=ev: ev.mtu(store))
                      for label, ev in (("store", store_engine), ("duck_lake", duck), ("spark", spark))}
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
            growth = ""
            if m is not first:
                factor = m["events"] / first["events"]
                spark_growth = t["spark"] / first[name]["spark"]
                duck_growth = t["store"] / first[name]["store"]
                growth = f"x{spark_growth:.1f} spark, x{duck_growth:.1f} duckdb for x{factor:g} events"
            core_s = t["spark"] * 2 / m["days"]
            table.append(Row(f"spark local[2] {label}", f"{t['spark']:.2f} s",
                             f"duckdb store {t['store']:.2f} s, lake {t['duck_lake']:.2f} s",
                             f"{t['spark'] / t['store']:.0f}x duckdb" + (f"; {growth}" if growth else ""),
                             "linear or better" if growth else "",
                             (t["spark"] / first[name]["spark"] <= 1.2 * m["events"] / first["events"]
                              and t["store"] / first[name]["store"] <= 1.2 * m["events"] / first["events"])
                             if growth else None))
            table.append(Row(f"  per day partition ({per_day:,.0f} events), {name if name == 'mtu' else 'cohort'}",
                             f"{core_s * 1000:.0f} core-ms", "", "", "", None))
        table.append(Row(f"spark MTU {size} equals duckdb", str(m["mtu_equal"]), "", "", "equal", m["mtu_equal"]))
    return table


if __name__ == "__main__":
    from bench.table import print_table

    print_table(rows([int(n) for n in sys.argv[1:]] or [1_000_000]))
