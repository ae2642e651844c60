"""Run a OneSignal-compatible emulator on 127.0.0.1 until interrupted (toolkit emulator).

On a fresh start it creates one app from --app-id/--api-key/--plan (generated when not given) and
seeds --seed-users into it. With --state FILE, an existing file is loaded instead (apps, users,
segments and counters) and the state is written back, atomically, while running and on exit.
It prints each app's API key when it generated the key or loaded it from the state file (the key is
the emulator's own stand-in, never a real OneSignal key), so a client can connect.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from toolkit.emulator.server import Emulator
from toolkit.emulator.state import PLANS, EmulatorError
from toolkit.waiting import set_from_signal_handler

DEFAULT_PORT = 8787


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("a port is between 0 and 65535")
    return port


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="toolkit emulator", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"0 picks a free port (default {DEFAULT_PORT})")
    p.add_argument("--state", metavar="FILE", help="load the state from FILE if it exists; save it there")
    p.add_argument("--seed-users", metavar="FILE", help="JSON or JSON Lines user records, seeded on a fresh start")
    p.add_argument("--app-id", help="the app's id (default: a generated UUID)")
    p.add_argument("--api-key", help="the app's API key (default: generated, printed once at start)")
    p.add_argument("--plan", choices=PLANS, default="paid", help="free plans cannot create segments")
    p.add_argument("--tag-limit", type=int, help="data tags per user (default: the plan's, free 2, paid 20)")
    p.add_argument("--segment-limit", type=int, help="segments per app (default: the plan's, free 6, paid 100)")
    p.add_argument("--rate-limit", type=int, default=1000, help="requests/s per app (default 1000)")
    p.add_argument("--user-rate-limit", type=float, default=1.0,
                   help="updates/s per user (default 1; 0 turns it off)")
    p.add_argument("--view-rate-limit", type=float, default=None,
                   help="View user requests/s per app, burst 10 (OneSignal's: 1; default: no limit)")
    p.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered 503")
    p.add_argument("--drop-rate", type=float, default=0.0, help="share of connections closed without answer")
    p.add_argument("--hang-rate", type=float, default=0.0, help="share of requests left hanging")
    p.add_argument("--hang-seconds", type=float, default=30.0, help="how long a hung request hangs")
    p.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    p.add_argument("--seed", type=int, default=0, help="seed for faults and generated ids")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        emulator = Emulator(host=args.host, port=args.port, state_file=args.state, seed=args.seed,
                            rate_limit=args.rate_limit, user_rate_limit=args.user_rate_limit,
                            view_rate_limit=args.view_rate_limit, error_rate=args.error_rate,
                            drop_rate=args.drop_rate, hang_rate=args.hang_rate,
                            hang_seconds=args.hang_seconds, latency=args.latency)
        fresh = not emulator.world.apps
        generated_key = fresh and not args.api_key
        if fresh or (args.app_id and args.app_id not in emulator.world.apps):
            emulator.add_app(args.app_id, args.api_key, plan=args.plan, tag_limit=args.tag_limit,
                             segment_limit=args.segment_limit)
        if args.seed_users and fresh:
            emulator.seed_users(args.seed_users, args.app_id)
        elif args.seed_users:
            print(f"note: --seed-users ignored, the users come from {args.state}", file=sys.stderr)
        url = emulator.start()
    except (EmulatorError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    # Before the address is announced: a caller may stop the emulator as soon as it has read it (a SIGTERM
    # between the announcement and the handler killed it unsaved, exit -15, on a loaded machine).
    done = threading.Event()
    if threading.current_thread() is threading.main_thread():     # signals are for the main thread only
        signal.signal(signal.SIGTERM, lambda *_: set_from_signal_handler(done))
    print(f"OneSignal emulator at {url}  (state: {args.state or 'in memory'})")
    for app in emulator.world.apps.values():
        print(f"  app {app.app_id}  plan {app.plan}  users {len(app.users)}  segments {len(app.segments)}")
        if generated_key:
            # A generated key is unusable unless shown once; it is a local stand-in, never a real key.
            print(f"  generated API key for this emulator: {app.api_key}")
        elif not fresh:       # from the state file: only there otherwise
            print(f"  API key (from {args.state}): {app.api_key}")
    print("Ctrl-C to stop.", flush=True)

    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0
