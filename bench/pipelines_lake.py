"""DuckDB over a Mixpanel Data Pipelines JSON folder: a cohort's time when a session reads the folder once
(toolkit/lake/duck.py keeps the parsed events) against reading the JSON at every query (the views alone,
``DuckLake(read_once=False)``), as bench table rows (issue 17).

    python -m bench.pipelines_lake 1000000          # or: python -m bench --pipelines 1000000

The folder is written once from the size's lake (bench/spark_lake.py makes the lake) by
``toolkit.lake.writer.export_pipelines``: events by day as JSON with Mixpanel's field names (every event
with an $insert_id a second time, gzipped, in an earlier file: the copies dedup drops), people (one per
resolved user) and identity mappings. Each timing is the
best of ``RUNS`` after a warm-up, in one session per mode; the session's start (reading the folder,
identity, profiles) is timed on its own row, also with the cache of parsed files beside the store
(``DuckLake(cache=...)``), empty (every file parsed and written) and full (a later session: none parsed).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from bench.table import Row

RUNS = 3
PROJECT = "1000001"


def _pipelines(lake: Path) -> Path:
    """The lake as a Data Pipelines folder beside it, made once (``writer.export_pipelines``)."""
    from toolkit.lake import writer

    folder = lake.parent / "pipelines"
    if not (folder / PROJECT).exists():
        writer.export_pipelines(lake, folder, PROJECT)
    return folder


def _best(fn, runs: int = RUNS) -> float:
    fn()
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure(events: int) -> dict:
    from bench.spark_lake import COHORTS, _store_and_lake
    from toolkit import Store, engine, matching
    from toolkit.lake.duck import DuckLake
    from toolkit.lake.layout import find
    from toolkit.sql import to_utc_naive

    db, lake = _store_and_lake(events)
    folder = _pipelines(lake)
    out: dict = {"events": events, "files": len(find(folder).events)}
    with Store(db, read_only=True) as store:       # read only: a lake evaluation is not written home
        now = to_utc_naive(store.con.execute("SELECT max(time) FROM events").fetchall()[0][0])
        for mode, read_once in (("once", True), ("each", False)):
            started = time.perf_counter()
            evaluator = engine.Evaluator(engine.choose(lake=str(folder)))
            evaluator._lake = DuckLake(find(folder), read_once=read_once).prepare()    # the mode measured
            out[f"{mode}_prepare"] = time.perf_counter() - started
            for name in COHORTS:
                out.setdefault(name, {})[mode] = _best(lambda ev=evaluator, n=name: ev.preview(store, n, now=now))
                got = evaluator.preview(store, name, now=now).members
                out[name]["members"] = len(got)
                out[name].setdefault("equal", True)
                out[name]["equal"] &= got.equals(matching.preview(store, name, now=now).members)
            out.setdefault("mtu", {})[mode] = _best(lambda ev=evaluator: ev.mtu(store))
            evaluator.close()
        with tempfile.TemporaryDirectory() as cache:
            for mode in ("cold", "warm"):
                started = time.perf_counter()
                DuckLake(find(folder), cache=cache).prepare().close()
                out[f"{mode}_prepare"] = time.perf_counter() - started
    return out


def rows(sizes: list[int]) -> list[Row]:
    table: list[Row] = []
    for m in (measure(n) for n in sizes):
        size = f"{m['events'] / 1e6:g}M"
        table.append(Row(f"duckdb over a Pipelines folder {size} ({m['files']} JSON files): session start",
                         f"{m['once_prepare']:.1f} s", f"views only {m['each_prepare']:.1f} s",
                         "reads the folder once", "", None))
        table.append(Row("  with the parsed files cached beside the store: first / later session",
                         f"{m['cold_prepare']:.1f} s / {m['warm_prepare']:.1f} s",
                         f"no cache {m['once_prepare']:.1f} s",
                         f"{m['once_prepare'] / m['warm_prepare']:.1f}x faster later", "faster than no cache",
                         m["warm_prepare"] < m["once_prepare"]))
        for name in (*[n for n in m if n.startswith("bench: ")], "mtu"):
            t = m[name]
            label = "MTU" if name == "mtu" else f"cohort + matchability ({t['members']:,} members)"
            reads_events = t["each"] >= 1.0     # a cohort of profile properties only reads no JSON either way
            table.append(Row(f"duckdb over a Pipelines folder {size}: {label}", f"{t['once']:.2f} s",
                             f"JSON read per query {t['each']:.2f} s", f"{t['each'] / t['once']:.0f}x faster",
                             "faster than re-reading" if reads_events else "(reads no events)",
                             t["once"] < t["each"] if reads_events else None))
            if name != "mtu":
                table.append(Row(f"  {name}: members equal the store's", str(t["equal"]), "", "", "equal",
                                 t["equal"]))
    return table


if __name__ == "__main__":
    from bench.table import print_table

    print_table(rows([int(n) for n in sys.argv[1:]] or [1_000_000]))
