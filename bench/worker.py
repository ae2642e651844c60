"""One measured step, run in its own process so that its peak memory is its own.

python -m bench.worker ceiling|load FILE DB  ->  prints {"seconds": ..., "rows": ..., "peak_rss": ...}
"""

import json
import sys
import time
from pathlib import Path

import duckdb


def ceiling(file: Path, db: Path) -> dict:
    """DuckDB's own read_json into a table of a fresh database file: the most a loader could hope for."""
    con = duckdb.connect(str(db))
    started = time.perf_counter()
    con.execute("CREATE TABLE t AS SELECT * FROM read_json(?)", [str(file)])
    con.close()
    seconds = time.perf_counter() - started
    rows = duckdb.connect(str(db), read_only=True).execute("SELECT count(*) FROM t").fetchone()[0]
    return {"seconds": seconds, "rows": rows}


def load(file: Path, db: Path) -> dict:
    from toolkit import Store
    from toolkit import load as load_files

    started = time.perf_counter()
    with Store(db) as store:
        summary = load_files(store, [file])
    seconds = time.perf_counter() - started
    counts = summary.to_dict()
    if counts["files_refused"]:
        raise SystemExit(f"{file} was refused: {summary.refused[0].message}")
    return {"seconds": seconds, "rows": counts["events"], "profiles": counts["profiles"],
            "profile_updates": counts["profile_updates"], "quarantined": counts["rows_quarantined"]}


def peak_rss() -> int:
    """This process's peak resident memory in bytes (VmHWM). Not getrusage: its maxrss also counts the
    parent's memory, copied at fork before this program was exec'd."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise SystemExit("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    step, file, db = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    print(json.dumps({**{"ceiling": ceiling, "load": load}[step](file, db), "peak_rss": peak_rss()}))
