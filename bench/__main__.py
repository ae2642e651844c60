"""Run the benchmarks and print one table.

    python -m bench                     # 1M and 10M events (generates them once under bench/data/)
    python -m bench --events 100000     # a quick run
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


def generated(events: int) -> Path:
    """The generated events file for this size, made once and reused."""
    folder = DATA / f"events-{events}"
    path = folder / "events.jsonl"
    if not path.exists():
        from toolkit.generate import generate

        print(f"generating {events:,} events into {folder} ...", file=sys.stderr)
        partial = folder.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        generate(partial, events=events)
        partial.rename(folder)
    return path


def measure(step: str, file: Path) -> dict:
    """Run one step in a child process; add its wall time and peak RSS (bytes)."""
    with tempfile.TemporaryDirectory(dir=DATA) as tmp:
        proc = subprocess.Popen([sys.executable, "-m", "bench.worker", step, str(file), f"{tmp}/db.duckdb"],
                                stdout=subprocess.PIPE, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"bench step {step} on {file} failed ({proc.returncode})")
        result = json.loads(out)
        result["peak_rss"] = usage.ru_maxrss * 1024
        return result


def load_rows(events: int) -> list[Row]:
    file = generated(events)
    ceiling = measure("ceiling", file)
    ours = measure("load", file)
    ratio = ceiling["seconds"] / ours["seconds"]
    size = f"{events / 1e6:g}M events"
    return [
        Row(f"load {size}", f"{ours['rows'] / ours['seconds']:,.0f} events/s",
            f"read_json {ceiling['rows'] / ceiling['seconds']:,.0f} rows/s", f"{ratio:.2f} of ceiling",
            ">= 0.70", ratio >= 0.7),
        Row(f"load {size} peak RSS", f"{ours['peak_rss'] / GIB:.2f} GiB",
            f"read_json {ceiling['peak_rss'] / GIB:.2f} GiB", "", "< 2 GiB" if events >= 10_000_000 else "",
            ours["peak_rss"] < 2 * GIB if events >= 10_000_000 else None),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--events", default="1000000,10000000",
                        help="comma-separated sizes of the load benchmark (default: 1M and 10M)")
    args = parser.parse_args()
    DATA.mkdir(exist_ok=True)
    rows: list[Row] = []
    for events in (int(n) for n in args.events.split(",")):
        rows += load_rows(events)
    print_table(rows)


if __name__ == "__main__":
    main()
