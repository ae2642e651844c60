"""MTU for every month against one full scan of the events.

    python -m bench.mtu_bench                        # 1M generated events, loaded into a temporary store
    python -m bench.mtu_bench --db var/big.duckdb    # a store you already loaded

The floor is the cheapest query that still answers "distinct canonical users per month":
``count(DISTINCT distinct_id) ... GROUP BY month`` on ``resolved_events`` (the identity join included,
because MTU cannot skip it). The same count on the raw ``events`` table is shown beside it, untargeted,
to show what identity resolution costs. Each query runs once to warm up, then they alternate and the
fastest run of each is kept, so a busy machine slows both sides alike.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.table import Row, print_table

FLOOR = "SELECT date_trunc('month', time) AS month, count(DISTINCT distinct_id) FROM {table} GROUP BY 1"
TARGET = 1.5
RUNS = 15


def _fastest(runs: dict, rounds: int) -> dict[str, float]:
    best = {name: float("inf") for name in runs}
    for run in runs.values():
        run()
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def rows(db_path, rounds: int = RUNS) -> list[Row]:
    from toolkit import Store, mtu

    with Store(db_path, read_only=True) as store:
        con = store.con
        events = con.execute("SELECT count(*) FROM events").fetchone()[0]
        months = len(mtu.report(store))
        t = _fastest({
            "mtu": lambda: mtu.report(store),
            "floor": lambda: con.execute(FLOOR.format(table="resolved_events")).fetchall(),
            "raw": lambda: con.execute(FLOOR.format(table="events")).fetchall(),
        }, rounds)
    size = f"{events:,} events"
    ratio = t["mtu"] / t["floor"]
    return [
        Row(f"mtu report, {months} months, {size}", f"{t['mtu'] * 1000:.0f} ms",
            f"count(DISTINCT) resolved_events {t['floor'] * 1000:.0f} ms", f"{ratio:.2f}x floor",
            f"<= {TARGET}x", ratio <= TARGET),
        Row(f"mtu report vs raw events, {size}", f"{t['mtu'] * 1000:.0f} ms",
            f"count(DISTINCT) events {t['raw'] * 1000:.0f} ms", f"{t['mtu'] / t['raw']:.2f}x", "", None),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mtu_bench")
    parser.add_argument("--events", type=int, default=1_000_000, help="generated events to load (default 1M)")
    parser.add_argument("--db", type=Path, help="an already loaded store (skips generating and loading)")
    args = parser.parse_args()
    if args.db:
        print_table(rows(args.db))
        return
    from bench.__main__ import DATA, generated
    from toolkit import Store, load

    DATA.mkdir(exist_ok=True)
    folder = generated(args.events).parent
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        db = Path(tmp) / "mtu.duckdb"
        print(f"loading {folder} ...", file=sys.stderr)
        with Store(db) as store:
            load(store, [folder])
        print_table(rows(db))


if __name__ == "__main__":
    main()
