"""Pull of N events from the Mixpanel emulator (in its own process, as Mixpanel would be) against the
emulator serving the same bytes to curl: one export of the whole range, gzip, written to a file. Ours asks
for the range in day chunks (11 exports for the 2 months of the generated data) inside the export
budget (3/second), streams each into a part file and renames it; peak memory of the pull's process, which
must stay flat in the size of the pull. Runs alternate (curl, ours), the fastest of each counts.

    python -m bench.mixpanel_pull [--events 1000000,5000000] [--repeat 2]

Measured (one run each, 2 shared cores under load average 11-24 from other sessions' tests): 1M events
11.7 s against curl's 5.8 s (0.50: 11 exports, each paying the 3/second budget, against curl's one), peak
RSS 49 MiB; 5M events 200 s against curl's 212 s (1.06: the emulator serving was the bottleneck), 50 MiB.
Three exports in flight instead of one, 1M events alternating old/new, one run each: old 22.9 s and 20.1 s,
new 22.9 s and 12.5 s (curl 8.9-36 s in the same minutes: too noisy to call), peak RSS 52 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import date
from pathlib import Path

from bench.table import Row, print_table

FIRST, LAST = date(2026, 9, 1), date(2026, 10, 31)       # the generated data's two months
MIB = 1 << 20
TARGET_SHARE = 0.8
TARGET_PEAK = 500 * MIB
SIZES = (1_000_000, 5_000_000)      # peak memory must stay flat from one to the other


@contextmanager
def emulator_process(folder: Path):
    """``toolkit mixpanel-emulator`` over the generated folder; yields (url, username, secret, project)."""
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "mixpanel-emulator", "--data", str(folder), "--port",
                             "0", "--export-per-hour", "100000"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip().startswith("export MIXPANEL_BASE_URL="):
                env = dict(part.split("=", 1) for part in line.split()[1:])
                yield (env["MIXPANEL_BASE_URL"], env["MIXPANEL_USERNAME"], env["MIXPANEL_SECRET"],
                       env["MIXPANEL_PROJECT_ID"])
                break
        else:
            raise SystemExit("the Mixpanel emulator did not start")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def curl(url: str, username: str, secret: str, project: str, out: Path) -> dict:
    """The ceiling: curl downloading the same range in one export, gzip bytes as sent (the secret goes
    through curl's config on stdin, not its command line)."""
    started = time.perf_counter()
    done = subprocess.run(["curl", "-sS", "--fail", "-K", "-", "-H", "Accept-Encoding: gzip", "-o", str(out),
                           "-w", "%{size_download}",
                           f"{url}/api/2.0/export?project_id={project}&from_date={FIRST}&to_date={LAST}"],
                          input=f'user = "{username}:{secret}"\n', capture_output=True, text=True, check=True)
    return {"seconds": time.perf_counter() - started, "bytes": int(done.stdout)}


def ours(url: str, username: str, secret: str, project: str, landing: Path) -> dict:
    """``pull`` in a child process (its peak RSS is its own)."""
    env = {**os.environ, "MIXPANEL_SECRET": secret}
    done = subprocess.run([sys.executable, "-m", "bench.mixpanel_pull", "--child", url, username, project,
                           str(landing)], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def child(url: str, username: str, project: str, landing: str) -> None:
    from bench.worker import peak_rss
    from toolkit.mixpanel.client import ServiceAccount
    from toolkit.mixpanel.pull import pull

    started = time.perf_counter()
    result = pull(landing, ServiceAccount(username, os.environ["MIXPANEL_SECRET"], project), from_date=FIRST,
                  to_date=LAST, base_url=url)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "bytes": result.bytes,
                      "exports": len(result.chunks),
                      "peak_rss": peak_rss()}))


def measure(events: int, repeat: int) -> dict:
    from bench.__main__ import generated

    folder = generated(events).parent
    curls, runs = [], []
    with emulator_process(folder) as (url, username, secret, project), tempfile.TemporaryDirectory() as tmp:
        for n in range(repeat):
            time.sleep(1.2)        # the emulator keeps Mixpanel's 3 exports/second across clients
            curls.append(curl(url, username, secret, project, Path(tmp) / "curl.gz"))
            landing = Path(tmp) / f"landing-{n}"
            runs.append(ours(url, username, secret, project, landing))
            shutil.rmtree(landing)
    best_curl = min(curls, key=lambda r: r["seconds"])
    best = min(runs, key=lambda r: r["seconds"])
    return {"events": events, "seconds": best["seconds"], "exports": best["exports"],
            "bytes": best["bytes"], "curl_seconds": best_curl["seconds"], "curl_bytes": best_curl["bytes"],
            "peak_rss": max(r["peak_rss"] for r in runs)}


def rows(events: int = 1_000_000, repeat: int = 2) -> list[Row]:
    m = measure(events, repeat)
    share = m["curl_seconds"] / m["seconds"]
    size = f"{events / 1e6:g}M events"
    return [
        Row(f"pull {size} from the Mixpanel emulator ({m['exports']} exports)",
            f"{m['events'] / m['seconds']:,.0f} events/s ({m['seconds']:.1f} s)",
            f"curl, one export: {m['curl_seconds']:.1f} s", f"{share:.2f} of curl", f">= {TARGET_SHARE:.2f}",
            share >= TARGET_SHARE),
        Row(f"pull {size} peak RSS", f"{m['peak_rss'] / MIB:.0f} MiB",
            f"{m['bytes'] / MIB:.0f} MiB pulled (curl {m['curl_bytes'] / MIB:.0f} MiB)", "",
            f"< {TARGET_PEAK // MIB} MiB", m["peak_rss"] < TARGET_PEAK),
    ]


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:6])
        return
    parser = argparse.ArgumentParser(prog="python -m bench.mixpanel_pull")
    parser.add_argument("--events", default=",".join(map(str, SIZES)), help="comma-separated sizes (default 1M,5M)")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    print_table([row for n in args.events.split(",") for row in rows(int(n), args.repeat)])


if __name__ == "__main__":
    main()
