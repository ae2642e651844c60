"""The ``toolkit`` command. Every subcommand takes ``--db PATH`` (else $TOOLKIT_DB, else ./toolkit.duckdb)
and most take ``--json`` for machine-readable output. Exit status: 0 ok, 1 a refused file or bad
input, 2 usage error."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from toolkit import ingest, report
from toolkit.errors import ToolkitError
from toolkit.store import Store

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the file being loaded was rolled back", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", metavar="PATH", help="DuckDB store (default: $TOOLKIT_DB or ./toolkit.duckdb)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")

    parser = argparse.ArgumentParser(prog="toolkit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("load", parents=[common], help="load Mixpanel exports (files or folders)")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--strict", action="store_true", help="refuse a whole file if any row is bad")
    p.add_argument("--kind", choices=("events", "profiles", "profile_updates"),
                   help="what the files hold (default: detected from the first record)")
    p.set_defaults(run=_load)

    p = sub.add_parser("status", parents=[common], help="what the store holds")
    p.set_defaults(run=_status)

    p = sub.add_parser("quarantine", parents=[common], help="rows refused by loads, with file, line and reason")
    p.add_argument("--file", help="only rows from files whose path contains this")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(run=_quarantine)

    p = sub.add_parser("mtu", parents=[common], help="monthly tracked users, OneSignal delivery events exempt")
    p.add_argument("--month", metavar="YYYY-MM")
    p.add_argument("--rules", default="seed", choices=("seed", "strict"),
                   help="seed: delivery exempt, engagement counts (default); strict: OneSignal's documented list")
    p.set_defaults(run=_mtu)

    p = sub.add_parser("generate", parents=[common], help="write a deterministic synthetic data set")
    p.add_argument("out", type=Path)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--profiles", type=int)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--gzip", action="store_true")
    p.add_argument("--time-in-ms", action="store_true")
    p.set_defaults(run=_generate)

    p = sub.add_parser("demo", parents=[common], help="the main job on the bundled sample data")
    p.set_defaults(run=_demo)
    return parser


def _store(args) -> Store:
    return Store(args.db)


def _emit(args, data: dict, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def _load(args) -> int:
    with _store(args) as store:
        summary = ingest.load(store, args.paths, strict=args.strict, kind=args.kind, progress=not args.json)
        _emit(args, summary.to_dict(), report.load_text(summary))
    return 1 if summary.refused else 0


def _status(args) -> int:
    with _store(args) as store:
        status = report.status(store)
        _emit(args, status, report.status_text(status))
    return 0


def _quarantine(args) -> int:
    with _store(args) as store:
        rows = report.quarantine(store, args.file, args.limit)
        _emit(args, {"rows": rows}, report.quarantine_text(rows))
    return 0


def _mtu(args) -> int:
    from toolkit import mtu

    with _store(args) as store:
        output, status = mtu.cli_main(store, args.month, args.rules, args.json)
    print(output, file=sys.stderr if status else sys.stdout)
    return status


def _generate(args) -> int:
    from toolkit import generate

    counts = generate.generate(args.out, events=args.events, profiles=args.profiles, seed=args.seed,
                               compress=args.gzip, time_in_ms=args.time_in_ms)
    _emit(args, counts, f"wrote {args.out}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()
                                                          if isinstance(v, int)))
    return 0


def _demo(args) -> int:
    """Load the sample into the store and print what it holds (later: sync it to the emulator)."""
    with _store(args) as store:
        summary = ingest.load(store, [SAMPLE], progress=not args.json)
        status = report.status(store)
        if args.json:
            _emit(args, {"load": summary.to_dict(), "status": status}, "")
        else:
            print(report.load_text(summary))
            print()
            print(report.status_text(status))
            print(f"\nstore: {store.path}")
    return 1 if summary.refused else 0
