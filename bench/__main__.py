"""Run the benchmarks and print one table.

    python -m bench                     # 1M and 10M events (generates them once under bench/data/)
    python -m bench --events 100000 --stages 100000 --repeat 1     # a quick run
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.table import Row, print_table

DATA = Path(__file__).resolve().parent / "data"
GIB = 1 << 30
EVENTS_PER_PROFILE = 10
INCREMENT_EVENTS = 10_000


def generated(events: int, **options) -> Path:
    """The generated events file for this size (``options`` go to `toolkit.synthetic.generate`; the
    profiles and updates sit beside it), made once and reused. One profile per 10 events: the cohort
    issue's shape, 10M events and 1M profiles."""
    profiles = events // EVENTS_PER_PROFILE
    folder = DATA / f"events-{events}-profiles-{profiles}"
    if options:
        folder = folder.with_name(folder.name + "-" + "-".join(f"{k}-{v}" for k, v in sorted(options.items())))
    if not (folder / "events.jsonl").exists():
        from toolkit.synthetic import generate

        print(f"generating {events:,} events and {profiles:,} profiles into {folder} ...", file=sys.stderr)
        partial = folder.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        generate(partial, events=events, profiles=profiles, **options)
        partial.rename(folder)
    return folder / "events.jsonl"


def measure(step: str, file: Path, db: Path, fresh: bool = True) -> dict:
    """Run one step in a child process (on a fresh database file unless not ``fresh``); it reports its
    peak RSS (bytes)."""
    for stale in (db, db.with_name(db.name + ".wal")) if fresh else ():
        stale.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "bench.worker", step, str(file), str(db)],
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    status = proc.wait()
    if status:
        raise SystemExit(f"bench step {step} on {file} failed ({status})")
    return json.loads(out)


def load_rows(events: int, repeat: int) -> tuple[list[Row], Path]:
    """The load benchmark; also leaves the loaded store (events, then profiles) for the rows after it.

    The ceiling and our load run in turns, ``repeat`` times each; each keeps its fastest run, as timeit
    does: on a shared 2-core machine one run can vary by a third. Peak memory is the highest of all."""
    file = generated(events)
    store = file.parent / "store.duckdb"
    ceilings, ours_runs = [], []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(dir=DATA) as tmp:
            ceilings.append(measure("ceiling", file, Path(tmp) / "ceiling.duckdb"))
        ours_runs.append(measure("load", file, store))
    ceiling = min(ceilings, key=lambda r: r["seconds"])
    ours = min(ours_runs, key=lambda r: r["seconds"])
    ratio = ceiling["seconds"] / ours["seconds"]
    peak, ceiling_peak = (max(r["peak_rss"] for r in runs) for runs in (ours_runs, ceilings))
    size = f"{events / 1e6:g}M events"
    return [
        Row(f"load {size}", f"{ours['rows'] / ours['seconds']:,.0f} events/s",
            f"read_json {ceiling['rows'] / ceiling['seconds']:,.0f} rows/s", f"{ratio:.2f} of ceiling",
            ">= 0.70", ratio >= 0.7),
        Row(f"load {size} peak RSS", f"{peak / GIB:.2f} GiB",
            f"read_json {ceiling_peak / GIB:.2f} GiB", "", "< 2 GiB" if events >= 10_000_000 else "",
            peak < 2 * GIB if events >= 10_000_000 else None),
    ], store


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--events", default="1000000,10000000",
                        help="comma-separated sizes of the load benchmark (default: 1M and 10M)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each load measurement; the fastest counts (default: 3)")
    parser.add_argument("--stages", default="10000000",
                        help="sizes at which profile, cohort and MTU rows are measured too (default: 10M, "
                             "with 1M profiles)")
    parser.add_argument("--spark", default="",
                        help="sizes at which Spark local[2] over a lake is measured next to DuckDB "
                             "(e.g. 1000000,5000000,10000000; default: none, Spark takes minutes)")
    parser.add_argument("--pipelines", default="",
                        help="sizes at which DuckDB over a Data Pipelines JSON folder is measured, reading it "
                             "once per session against at every query (e.g. 1000000; default: none)")
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    rows: list[Row] = []
    stages = {int(n) for n in args.stages.split(",") if n}
    for events in (int(n) for n in args.events.split(",")):
        load, store = load_rows(events, args.repeat)
        rows += load
        if events in stages:
            rows += later_rows(store)
    rows += export_rows()
    rows += mixpanel_rows()
    if args.spark:
        from bench import spark_lake

        rows += spark_lake.rows([int(n) for n in args.spark.split(",") if n])
    if args.pipelines:
        from bench import pipelines_lake

        rows += pipelines_lake.rows([int(n) for n in args.pipelines.split(",") if n])
    print_table(rows)


def later_rows(store: Path) -> list[Row]:
    """Rows of the stages after loading, on the same generated data: the profiles are loaded into the
    events' store first (timed, untargeted), then cohorts and MTU are measured on it."""
    from bench import cohort_eval, cycle, mtu_bench

    loaded = measure("load", store.parent / "profiles.json", store, fresh=False)
    profiles = Row(f"load {loaded['profiles'] / 1e6:g}M profiles (Engage pages) after the events",
                   f"{loaded['profiles'] / loaded['seconds']:,.0f} profiles/s", f"{loaded['seconds']:.1f} s",
                   f"peak RSS {loaded['peak_rss'] / GIB:.2f} GiB", "", None)
    return [profiles, *cohort_eval.rows(store), *mtu_bench.rows(store), *increment_rows(store), *cycle.rows(store)]


def increment_rows(store: Path) -> list[Row]:
    """What a sync run pays to load one more small export into the big store: other users (another
    seed) over the store's last month, events then profile updates; then a second export of events
    (a third seed), as the next sync loads it. Each load is a process of its own: open the store,
    load, close (the close checkpoints). Measured last, as it adds to the store the rows above read.
    Each load is timed DELTA_RUNS times, on copies of the store as it was and last on the store itself;
    the median counts (one run of a second on a shared 2-core machine varied from 0.86 to 1.35 s).
    Target (issue 18): a 10k-event delta in at most 1 s, into the 10M-event store too."""
    import datetime as dt
    import statistics

    first = generated(INCREMENT_EVENTS, seed=8, start=dt.date(2026, 10, 1), months=1).parent
    second = generated(INCREMENT_EVENTS, seed=9, start=dt.date(2026, 10, 1), months=1).parent
    rows = []
    for folder, name, what, label in ((first, "events.jsonl", "events", "new events"),
                                      (first, "profile_updates.jsonl", "profile_updates", "new profile updates"),
                                      (second, "events.jsonl", "events", "more new events (the next sync)")):
        runs = _loads_on_copies(folder / name, store)
        seconds = statistics.median(run["seconds"] for run in runs)
        loaded = runs[-1]
        count = loaded["rows"] if what == "events" else loaded["profile_updates"]
        events = what == "events"
        rows.append(Row(f"load {count:,} {label} into that store", f"{seconds:.2f} s",
                        f"median of {len(runs)}: {min(r['seconds'] for r in runs):.2f}-"
                        f"{max(r['seconds'] for r in runs):.2f} s",
                        f"peak RSS {max(r['peak_rss'] for r in runs) / GIB:.2f} GiB",
                        "<= 1 s" if events else "", seconds <= 1 if events else None))
    return rows


DELTA_RUNS = 3


def _loads_on_copies(file: Path, store: Path, runs: int = DELTA_RUNS) -> list[dict]:
    """``file`` loaded into ``runs - 1`` copies of ``store``, then into the store itself, which keeps it.
    The copies are made, and on disk, before the first load (else a load's checkpoint waits for the kernel
    to write a copy), and deleted after the last."""
    with tempfile.TemporaryDirectory(dir=store.parent) as tmp:
        copies = [Path(tmp) / f"{n}.duckdb" for n in range(runs - 1)]
        for copy in copies:
            shutil.copyfile(store, copy)
            with open(copy, "rb+") as copied:
                os.fsync(copied.fileno())
        return [measure("load", file, db, fresh=False) for db in (*copies, store)]


def export_rows() -> list[Row]:
    from bench import export_plan, export_throughput

    return [*export_throughput.rows(), *export_plan.rows()]


def mixpanel_rows() -> list[Row]:
    from bench import mixpanel_pull

    return [row for events in mixpanel_pull.SIZES for row in mixpanel_pull.rows(events)]


if __name__ == "__main__":
    main()
