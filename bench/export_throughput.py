"""Export throughput against a rate-limited OneSignal: how close to the limit, how few 429s.

The emulator limits the app to R requests/s (R=200 unless told); the client is set to 95% of R, as
one would set it just under a real app's limit (its default, 900 for OneSignal's 1000, is 90%). A
run updates ``seconds * R`` distinct users, so the per-user 1/s limit never binds. The emulator runs
in its own process, as OneSignal would: in this one it would compete with the client for the GIL.

    python -m bench.export_throughput [--rate 200] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from bench.table import Row, print_table
from toolkit.emulator.server import ADMIN_HEADER, ENV_ADMIN_TOKEN
from toolkit.onesignal import Credentials, OneSignalClient

HEADROOM = 0.95          # the client's max_rps as a share of the app's limit
TARGET_SHARE = 0.90      # sustained updates/s as a share of the limit
TARGET_429 = 0.01        # share of requests answered 429


APP_ID = "00000000-0000-4000-8000-00000000be11"
API_KEY = "bench-key"
ADMIN_TOKEN = secrets.token_urlsafe(16)      # for the emulator's /_emulator/state


@contextmanager
def emulator_process(rate: int, users: int):
    """``python -m toolkit.emulator`` with ``users`` seeded users; yields its base URL."""
    with tempfile.TemporaryDirectory() as tmp:
        seed = Path(tmp) / "users.jsonl"
        seed.write_text("".join(json.dumps({"external_id": f"user-{n}"}) + "\n" for n in range(users)))
        proc = subprocess.Popen([sys.executable, "-m", "toolkit.emulator", "--port", "0", "--rate-limit", str(rate),
                                 "--app-id", APP_ID, "--api-key", API_KEY, "--seed-users", str(seed)],
                                stdout=subprocess.PIPE, text=True, env={**os.environ, ENV_ADMIN_TOKEN: ADMIN_TOKEN})
        try:
            first = proc.stdout.readline()         # "OneSignal emulator at http://127.0.0.1:PORT  (...)"
            if " at " not in first:
                raise SystemExit(f"the emulator did not start: {first!r}")
            yield first.split(" at ")[1].split()[0]
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def measure(rate: int = 200, seconds: float = 5.0) -> dict:
    """Update ``seconds * rate`` users through the emulator; updates/s and the 429 share."""
    users = int(seconds * rate)
    updates = [("external_id", f"user-{n}", {"cohort_bench": "1"}) for n in range(users)]
    with emulator_process(rate, users) as url:
        async def run():
            async with OneSignalClient(Credentials(APP_ID, API_KEY), url, max_rps=rate * HEADROOM) as client:
                started = time.perf_counter()
                summary = await client.update_many(updates)
                return summary, time.perf_counter() - started

        summary, elapsed = asyncio.run(run())
        state = urllib.request.Request(f"{url}/_emulator/state", headers={ADMIN_HEADER: ADMIN_TOKEN})
        with urllib.request.urlopen(state) as response:
            counters = json.load(response)["counters"]
    return {"rate": rate, "updates": summary.ok, "failed": summary.failed + summary.not_found,
            "seconds": elapsed, "updates_per_s": summary.ok / elapsed, "requests": counters["requests"],
            "rate_limited": counters["rate_limited"]}


def rows(rate: int = 200, seconds: float = 5.0) -> list[Row]:
    m = measure(rate, seconds)
    share = m["updates_per_s"] / rate
    limited = m["rate_limited"] / max(1, m["requests"])
    return [
        Row(f"export tag updates, limit {rate} req/s", f"{m['updates_per_s']:,.0f} updates/s",
            f"limit {rate} req/s", f"{share:.2f} of limit", f">= {TARGET_SHARE:.2f}",
            share >= TARGET_SHARE and m["failed"] == 0),
        Row("export requests answered 429", f"{limited:.2%}", f"{m['requests']:,} requests", "",
            f"<= {TARGET_429:.0%}", limited <= TARGET_429),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.export_throughput")
    parser.add_argument("--rate", type=int, default=200, help="the emulator's per-app limit, requests/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="about how long the run lasts")
    args = parser.parse_args()
    print_table(rows(args.rate, args.seconds))


if __name__ == "__main__":
    main()
