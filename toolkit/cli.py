"""The toolkit command: load Mixpanel exports, define cohorts, export them to OneSignal, count MTU.

Every command takes --db PATH (else $TOOLKIT_DB, else ./toolkit.duckdb) and most take --json for
machine-readable output. Exit status: 0 all good; 1 failed (nothing succeeded, a refused file, bad
input); 2 usage error; 3 partial failure (sync, export, schedule: some cohorts or users failed); 4 (sync)
another sync was running, so this one did nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from datetime import UTC, date, datetime, time
from pathlib import Path

from toolkit import report
from toolkit.errors import SyncBusy, ToolkitError, UsageError
from toolkit.loading import load
from toolkit.onesignal_ids import USER_ID_PROPERTY
from toolkit.schedule import EXIT_CODES
from toolkit.store import Store


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["emulator"]:          # its own options and --help
        from toolkit.emulator import main as emulator_main

        return emulator_main(argv[1:])
    if argv[:1] == ["mixpanel-emulator"]:
        from toolkit.mixpanel.emulator import main as mixpanel_emulator_main

        return mixpanel_emulator_main(argv[1:])
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:     # --help, or a usage error argparse has printed: a status, not an exit
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.run(args)
    except ToolkitError as exc:     # the one place an error becomes words and an exit code
        if isinstance(exc, SyncBusy):       # not a failure: the sync's answer, on stdout
            _emit(args, report.error(exc), report.error_text(exc))
        else:
            print(report.error_text(exc), file=sys.stderr)
        return exit_status(exc)
    except KeyboardInterrupt:
        print(f"interrupted: {_INTERRUPTED.get(args.run.__name__, 'stopped before it finished')}", file=sys.stderr)
        return 130
    except BrokenPipeError:     # `toolkit runs | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def exit_status(exc: ToolkitError) -> int:
    """4 for a busy sync, 2 for a usage error (a bad --month, --every...), else 1 (failed)."""
    if isinstance(exc, SyncBusy):
        return EXIT_CODES["busy"]
    return EXIT_CODES["usage"] if isinstance(exc, UsageError) else EXIT_CODES["failed"]


_INTERRUPTED = {     # what Ctrl-C cut short, and what is left of it
    "_load": "the file being loaded was rolled back",
    "_pull": "the day range being pulled was left as a hidden part file; the next pull resumes the run",
    "_export": "the export stopped; users already updated are recorded, and the next run sends the rest",
    "_reconcile": "nothing was changed, unless --repair had begun its export run: that run keeps what it sent, "
                  "and the next run converges",
    "_sync": "the sync stopped; a file being loaded was rolled back, exports keep what they sent and the next "
             "run converges",
}


def as_of(text: str) -> datetime:
    """--as-of: a date (its last moment, UTC: the whole day counts) or an ISO time (UTC unless it says)."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time.max, UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date: expected YYYY-MM-DD (that whole day, UTC) or YYYY-MM-DDTHH:MM") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _as_of_or_now(text: str) -> datetime | str:
    return "now" if text == "now" else as_of(text)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", metavar="PATH", help="DuckDB store (default: $TOOLKIT_DB or ./toolkit.duckdb)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    evaluated = argparse.ArgumentParser(add_help=False)
    evaluated.add_argument("--as-of", type=as_of, metavar="DATE",
                           help="evaluate cohorts as of DATE (YYYY-MM-DD: the end of that day, UTC) "
                                "or an ISO time (default: now)")

    engined = argparse.ArgumentParser(add_help=False)
    engined.add_argument("--engine", choices=("duckdb", "spark"),
                         help="where cohorts and MTU are evaluated (default duckdb: the store; with --lake, the lake)")
    engined.add_argument("--lake", metavar="PATH", help="evaluate over this lake folder instead of the store "
                         "(toolkit lake export writes one; or a Mixpanel Data Pipelines folder)")
    engined.add_argument("--master", metavar="URL", help="Spark master (default local[2])")
    engined.add_argument("--remote", metavar="URL", help="Spark Connect server, sc://host:port")

    parser = argparse.ArgumentParser(prog="toolkit", description=__doc__.strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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

    p = sub.add_parser("mtu", parents=[common, engined], help="monthly tracked users, OneSignal delivery events exempt")
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

    cohorts = sub.add_parser("cohorts", help="cohort definitions and who in them can reach OneSignal")
    csub = cohorts.add_subparsers(required=True, metavar="ACTION")
    p = csub.add_parser("load", parents=[common], help="store the cohorts of a YAML or JSON file (versioned)")
    p.add_argument("file", type=Path)
    p.set_defaults(run=_cohorts_load)
    p = csub.add_parser("list", parents=[common], help="stored cohorts")
    p.set_defaults(run=_cohorts_list)
    p = csub.add_parser("preview", parents=[common, evaluated, engined],
                        help="members, match rate and why the rest cannot export")
    p.add_argument("name")
    p.add_argument("--user-id-property", default=USER_ID_PROPERTY)
    p.add_argument("--id-type", default="auto", choices=("auto", "external_id", "subscription_id"))
    p.add_argument("--rows", type=int, default=20, help="members to show (text output)")
    p.set_defaults(run=_cohorts_preview)
    p = csub.add_parser("sql", parents=[common, evaluated], help="a cohort's query, for DuckDB or a warehouse")
    p.add_argument("name")
    p.add_argument("--dialect", default="duckdb", choices=("duckdb", "spark", "bigquery", "snowflake"),
                   help="duckdb (default: the query the toolkit runs) or spark, bigquery, snowflake")
    p.set_defaults(run=_cohorts_sql)

    p = sub.add_parser("connect", parents=[common], help="check an App ID and API key against OneSignal")
    p.add_argument("--app-id", help="OneSignal App ID (default: $ONESIGNAL_APP_ID)")
    p.add_argument("--base-url", default=None, help="OneSignal API (default: the real one; the emulator's URL)")
    p.add_argument("--save", action="store_true", help="keep the key in the 0600 credentials file")
    p.add_argument("--tag-limit", type=int, metavar="N",
                   help="data tags per user the app's OneSignal plan allows (Free 2, paid 20; default 20)")
    p.set_defaults(run=_connect)

    p = sub.add_parser("export", parents=[common, evaluated, engined],
                       help="export a cohort to OneSignal once, or keep it in sync")
    p.add_argument("cohort")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--once", dest="mode", action="store_const", const="once", help="one-time export")
    how.add_argument("--dynamic", dest="mode", action="store_const", const="dynamic",
                     help="register a dynamic sync (every 15 minutes) and run it now")
    how.add_argument("--stop", action="store_true", help="stop the cohort's dynamic sync")
    p.add_argument("--dry-run", action="store_true", help="show the plan, send nothing")
    p.add_argument("--force", action="store_true", help="pass the removal guard")
    p.add_argument("--app-id")
    p.add_argument("--base-url")
    p.add_argument("--user-id-property")
    p.add_argument("--id-type", choices=("auto", "external_id", "subscription_id"))
    p.set_defaults(run=_export)

    p = sub.add_parser("reconcile", parents=[common], help="compare what OneSignal holds of a cohort's export "
                       "with the toolkit's record; --repair sends the difference",
                       description=RECONCILE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cohort")
    p.add_argument("--repair", action="store_true",
                   help="make OneSignal's tag equal the cohort's current exportable members (one export run)")
    p.add_argument("--force", action="store_true", help="with --repair: pass the removal guard")
    p.set_defaults(run=_reconcile)

    p = sub.add_parser("runs", parents=[common],
                       help="each sync's state and match rate, the export runs, and what a run did to each member")
    p.add_argument("name", nargs="?", metavar="COHORT", help="only this cohort's export")
    p.add_argument("--cohort", help=argparse.SUPPRESS)          # the older spelling of COHORT
    p.add_argument("--limit", type=int, default=20, help="runs listed (default 20)")
    p.add_argument("--members", metavar="CSV", help="write every member's fate in the cohort's last run (or --run) "
                   "to CSV (- for stdout): add / remove / no-op, outcome, reason, OneSignal id")
    p.add_argument("--run", dest="run_id", type=int, metavar="ID",
                   help="the run --members lists (default: the cohort's last)")
    p.set_defaults(run=_runs)

    for name, text in (("pause", "pause a dynamic sync: the scheduler skips it until it is resumed"),
                       ("resume", "resume a paused dynamic sync (paused by you, or by OneSignal refusing it)")):
        p = sub.add_parser(name, parents=[common], help=text)
        if name == "pause":
            p.add_argument("cohort")
            p.add_argument("--reason", help="why (shown with the sync's state)")
        else:
            p.add_argument("cohort", nargs="?")
            p.add_argument("--all", action="store_true", help="resume every paused dynamic sync (after a refused "
                           "key paused an app's syncs); syncs stopped by the removal guard are resumed one by one")
            p.add_argument("--app", metavar="APP_ID", help="with --all: only the syncs of this OneSignal app")
        p.set_defaults(run=_pause if name == "pause" else _resume)

    _alerts_parser(sub, common)

    p = sub.add_parser("pull", parents=[common],
                       help="pull events (and profiles) from Mixpanel into a landing folder, then load them")
    p.add_argument("landing", type=Path, help="the landing folder (files go to LANDING/mixpanel-<project id>/)")
    p.add_argument("--from", dest="from_date", type=_day, metavar="YYYY-MM-DD",
                   help="first day (needed on the first pull; later pulls go on from the last day pulled)")
    p.add_argument("--to", dest="to_date", type=_day, metavar="YYYY-MM-DD", help="last day (default: today, UTC)")
    p.add_argument("--lookback", type=int, default=3, metavar="DAYS",
                   help="days pulled again for late events (default 3)")
    p.add_argument("--chunk-days", type=int, metavar="DAYS", help="days per export request (default: 1 for recent "
                   "days, wider for a long first pull)")
    p.add_argument("--profiles", action="store_true", help="pull every profile through Engage too")
    p.add_argument("--cohorts", action="store_true", help="only list the project's Mixpanel cohorts")
    p.add_argument("--cohort", type=int, action="append", default=[], metavar="ID",
                   help="keep this Mixpanel cohort as a toolkit cohort (its members refreshed on every pull)")
    p.add_argument("--cohort-name", help="the toolkit name of the one --cohort (default: its Mixpanel name)")
    p.add_argument("--project-id", help="Mixpanel project id (default: $MIXPANEL_PROJECT_ID)")
    p.add_argument("--region", choices=("us", "eu", "in"), help="data residency (default: $MIXPANEL_REGION or us)")
    p.add_argument("--base-url", help="one URL for both APIs (the Mixpanel emulator; default $MIXPANEL_BASE_URL)")
    p.add_argument("--no-load", action="store_true", help="pull only; load later")
    p.add_argument("--save-credentials", action="store_true",
                   help="keep the service account in the 0600 Mixpanel credentials file")
    p.set_defaults(run=_pull)

    sub.add_parser("emulator", help="run the OneSignal emulator on 127.0.0.1 (toolkit emulator --help)")
    sub.add_parser("mixpanel-emulator",
                   help="run the Mixpanel API emulator on 127.0.0.1 (toolkit mixpanel-emulator --help)")

    for name, text in (("sync", "run notebooks/sync.ipynb once with papermill"),
                       ("schedule", "run the sync every --every (default 15m), one run at a time")):
        p = sub.add_parser(name, parents=[common, evaluated, engined], help=text)
        p.add_argument("--landing", help="folder of new Mixpanel export files to load first")
        p.add_argument("--cohorts", default="due", help="due (default), all, or comma-separated names")
        p.add_argument("--dry-run", action="store_true")
        p.add_argument("--runs-dir", type=Path, default=Path("var/runs"), help="where executed notebooks go")
        p.add_argument("--mixpanel-project", metavar="ID", help="pull this Mixpanel project into --landing before "
                       "loading, and refresh its cohorts (service account: $MIXPANEL_USERNAME/$MIXPANEL_SECRET or "
                       "the 0600 file)")
        p.add_argument("--mixpanel-from", type=_day, metavar="YYYY-MM-DD", help="the first pull's first day")
        if name == "schedule":
            p.add_argument("--every", default="15m", help="e.g. 15m, 90s, 1h")
            p.add_argument("--max-runs", type=int, metavar="N", help="stop after N runs (default: until stopped)")
        p.set_defaults(run=_sync if name == "sync" else _schedule)

    lake = sub.add_parser("lake", help="the store's data as a lake that DuckDB and Spark read in place")
    lsub = lake.add_subparsers(required=True, metavar="ACTION")
    p = lsub.add_parser("export", parents=[common], help="write the store's events (Parquet by day), profiles "
                        "and identity mappings to PATH")
    p.add_argument("path", type=Path, metavar="PATH")
    p.add_argument("--store", dest="db", metavar="PATH", help="the store to export (same as --db)")
    p.add_argument("--replace", action="store_true", help="write over a non-empty PATH")
    p.set_defaults(run=_lake_export)

    p = sub.add_parser("lab", parents=[engined],
                       help="JupyterLab on the notebooks, with the demo's store and its emulator running")
    p.add_argument("--workdir", type=Path, default=Path("var"),
                   help="the demo's folder: demo.duckdb and the emulator's onesignal.json (default var/)")
    p.add_argument("--db", metavar="PATH", help="the store the notebooks open (default: WORKDIR/demo.duckdb)")
    p.add_argument("--notebooks", type=Path, help="folder JupyterLab opens (default: the toolkit's notebooks)")
    p.add_argument("--port", type=int, default=8888, help="JupyterLab's port on 127.0.0.1 (default 8888)")
    p.add_argument("--emulator-port", type=int, default=0, help="the emulator's port (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--as-of", type=_as_of_or_now, metavar="DATE",
                   help="when the notebooks evaluate cohorts: DATE, or now (default: the store's last "
                        "event day, as the demo)")
    p.set_defaults(run=_lab)

    p = sub.add_parser("demo", help="the main job on the bundled sample data, against the emulator")
    p.add_argument("--workdir", type=Path, default=Path("var"),
                   help="where the store, the emulator's state and executed notebooks go (default var/)")
    p.set_defaults(run=_demo)
    return parser


def _store(args, read_only: bool = False) -> Store:
    """The store for this command's run. Commands that only read open it read-only, so they share it
    with other readers; either kind waits (saying for whom) while another process writes it."""
    return Store(args.db, read_only=read_only)


def _emit(args, data: dict, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


def _load(args) -> int:
    with _store(args) as store:
        summary = load(store, args.paths, strict=args.strict, kind=args.kind, progress=not args.json)
        hint = "toolkit quarantine" + (f" --db {shlex.quote(args.db)}" if args.db else "")
        _emit(args, summary.to_dict(), report.load_text(summary, quarantine_command=hint))
    return EXIT_CODES["failed" if summary.refused else "ok"]


def _status(args) -> int:
    with _store(args, read_only=True) as store:
        status = report.status(store)
        _emit(args, status, report.status_text(status))
    return 0


def _quarantine(args) -> int:
    with _store(args, read_only=True) as store:
        rows = report.quarantine(store, args.file, args.limit)
        _emit(args, {"rows": rows}, report.quarantine_text(rows))
    return 0


def _engine(args):
    """The evaluator the --engine/--lake/--master/--remote options choose (default: the store)."""
    from toolkit import engine

    return engine.Evaluator(engine.choose(args.engine, args.lake, args.master, args.remote))


def _mtu(args) -> int:
    from toolkit import mtu

    with _store(args, read_only=True) as store, _engine(args) as evaluator:
        months = evaluator.mtu(store, args.month, args.rules)
    _emit(args, {"rules": args.rules, "exempt": sorted(mtu.exempt_names(args.rules)),
                 "months": [m.to_dict() for m in months]}, report.mtu_text(months, args.rules))
    return 0


def _cohorts_load(args) -> int:
    from toolkit import cohorts

    with _store(args) as store:
        versions = cohorts.save_all(store, cohorts.load_definitions(args.file), where=str(args.file))
    _emit(args, {"saved": versions}, report.cohorts_saved_text(versions))
    return 0


def _cohorts_list(args) -> int:
    from toolkit import cohorts

    with _store(args, read_only=True) as store:
        found = cohorts.list_cohorts(store)
    _emit(args, {"cohorts": found}, report.cohorts_text(found))
    return 0


def _cohorts_preview(args) -> int:
    evaluator = _engine(args)        # over a lake, the members come home: the store is written
    with _store(args, read_only=evaluator.choice.on_store) as store, evaluator:
        preview = evaluator.preview(store, args.name, user_id_property=args.user_id_property,
                                    id_type=args.id_type, now=args.as_of)
    _emit(args, preview.to_dict(), report.preview_text(preview, args.rows,
                                                       more="--rows N shows more, --json lists them all"))
    return 0


def _cohorts_sql(args) -> int:
    from toolkit import cohorts, dialects

    now = args.as_of or datetime.now(UTC)
    with _store(args, read_only=True) as store:
        name = cohorts.resolve_name(store, args.name)
        # another engine has the raw events, not the store's typed property columns: read the JSON there
        query = cohorts.query(store, name, now=now, typed_columns=args.dialect == "duckdb")
    sql = dialects.render(query, args.dialect)
    shown = now.astimezone(UTC).isoformat()
    _emit(args, {"cohort": name, "dialect": args.dialect, "now": shown, "sql": sql},
          report.cohort_sql_text(name, args.dialect, shown, sql))
    return 0


def _connect(args) -> int:
    from toolkit import credentials, sync

    creds = credentials.require(args.app_id, prompt=True)
    with _store(args) as store:
        status = sync.connect(store, creds, args.base_url)
        if args.tag_limit is not None:
            from toolkit import export

            export.set_tag_limit(store, creds.app_id, args.tag_limit)
            status["tag_limit"] = args.tag_limit
    if status["connected"] and args.save:
        status["saved_to"] = str(credentials.save(creds))
    _emit(args, status, report.connect_text(status))
    return EXIT_CODES["ok" if status["connected"] else "failed"]


def _export(args) -> int:
    from toolkit import cohorts, export, sync

    dry_run = args.dry_run and not args.stop
    with _store(args, read_only=dry_run) as store, _engine(args) as evaluator:      # a dry run only reads
        if args.stop:
            args.cohort = cohorts.resolve_name(store, args.cohort)
            export.stop(store, args.cohort)
            _emit(args, {"stopped": args.cohort}, report.stopped_text(args.cohort))
            return EXIT_CODES["ok"]
        settings = export.settings(store, args.cohort, mode=args.mode, app_id=args.app_id, base_url=args.base_url,
                                   user_id_property=args.user_id_property, id_type=args.id_type, dry_run=dry_run,
                                   force=args.force, now=args.as_of)
        if dry_run:
            preview = export.preview_export(store, settings, evaluate=evaluator.preview)
            _emit(args, preview.to_dict(), report.dry_run_text(preview))
            return EXIT_CODES["ok" if preview.status == "ok" else "failed"]
        record = sync.export_cohort(store, settings, progress=not args.json, evaluator=evaluator)
    _emit(args, record.to_dict(), report.run_text(record))
    return EXIT_CODES[sync.run_outcome(record)]


RECONCILE_HELP = """\
Read the cohort's tag back from OneSignal (one CSV export of the app, then the View user API, 1/s,
for members the export does not show) and report drift against the toolkit's record of the export:
users tagged outside the toolkit, members who lost the tag, members deleted from OneSignal.

--repair makes OneSignal hold the tag on exactly the cohort's current exportable members: members
who lost it are tagged again, users tagged outside the toolkit have it cleared (so a tag added by
hand does not last: put such users in the cohort instead), deleted users are recorded as not in
OneSignal (looked for again after a day), and the cohort's own changes since the last run go too.
It is one export run (rate-limited, listed by toolkit runs); if the removal guard stops it (it would
clear more than half of the segment), nothing is sent or changed: --force passes it.

Exit status: 0 no drift (or repaired), 1 drift found or the repair failed, 3 repair partly failed."""


def _reconcile(args) -> int:
    from toolkit import sync

    with _store(args, read_only=not args.repair) as store:
        found = sync.reconcile_cohort(store, args.cohort, repair=args.repair, force=args.force,
                                      progress=not args.json)
    if store.read_only:       # read back without holding the store for writing; kept for the overview now
        from toolkit import reconcile

        with _store(args) as store:
            reconcile.record(store, found)
    _emit(args, found.to_dict(), report.reconcile_text(found))
    if found.repair is not None:
        return EXIT_CODES[sync.run_outcome(found.repair)]
    return EXIT_CODES["failed" if found.drifted else "ok"]


def _lake_export(args) -> int:
    from tqdm.auto import tqdm

    from toolkit.lake import writer

    with _store(args, read_only=True) as store, \
            tqdm(desc="lake export", unit="event", disable=args.json or None) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        written = writer.export_store(store, args.path, replace=args.replace, on_progress=progress)
    _emit(args, written.to_dict(), report.lake_text(written))
    return 0


def _runs(args) -> int:
    from toolkit import export

    cohort = args.name or args.cohort
    with _store(args, read_only=True) as store:
        if cohort and not export.runs(store, cohort, 1) and not export.registration(store.reader(), cohort):
            from toolkit import cohorts

            cohort = cohorts.resolve_name(store, cohort)     # any case; else "did you mean"
        if args.members:
            return _run_members(args, store, cohort)
        found, syncs = export.runs(store, cohort, args.limit), export.overview(store, cohort)
    text = report.runs_text(found)
    _emit(args, {"syncs": syncs, "runs": found}, f"{report.syncs_text(syncs)}\n\n{text}" if syncs else text)
    return 0


def _run_members(args, store, cohort: str | None) -> int:
    """``toolkit runs NAME --members CSV``: the run's members as CSV, what was written said on stderr."""
    from toolkit import export

    run_id = args.run_id if args.run_id is not None else export.latest_run(store.reader(), cohort) if cohort else None
    if run_id is None:
        raise UsageError("--members needs a cohort with runs, or --run ID (toolkit runs lists them)")
    fates = export.member_fates(store.reader(), run_id)
    if args.members == "-":
        fates.write_csv(sys.stdout)
    else:
        with open(args.members, "w", encoding="utf-8", newline="") as out:
            fates.write_csv(out)
    print(report.member_fates_text(fates, args.members), file=sys.stderr if args.members == "-" else sys.stdout)
    return 0


def _pause(args) -> int:
    from toolkit import cohorts, export

    with _store(args) as store:
        cohort = cohorts.resolve_name(store, args.cohort)
        export.pause(store, cohort, args.reason)
    _emit(args, {"paused": cohort}, report.paused_text(cohort))
    return 0


def _resume(args) -> int:
    from toolkit import cohorts, export

    if args.all == bool(args.cohort) or (args.app and not args.all):
        raise UsageError("resume: name a cohort, or --all (with --app APP_ID for one app's syncs)")
    if args.all:
        with _store(args) as store:
            resumed = export.resume_all(store, args.app)
        _emit(args, {"resumed": resumed}, report.resumed_all_text(resumed))
        return 0
    with _store(args) as store:
        cohort = cohorts.resolve_name(store, args.cohort)
        ended = export.resume(store, cohort)
    _emit(args, ended, report.resumed_text(ended))
    return 0


def _alerts_parser(sub, common) -> None:
    alerts = sub.add_parser("alerts", help="alerts for unattended syncs: a webhook and/or email, one per incident")
    asub = alerts.add_subparsers(required=True, metavar="ACTION")
    p = asub.add_parser("configure", parents=[common], help="where alerts go (the options given change, "
                        "the others stay); secrets go to a 0600 file, never the store")
    p.add_argument("--webhook", metavar="URL", help="a Slack-compatible incoming webhook; - reads it from stdin "
                   "(keeps it out of the shell history); '' removes it")
    p.add_argument("--smtp", metavar="HOST:PORT", help="send email through this SMTP server; '' removes email")
    p.add_argument("--smtp-user", metavar="NAME", help="log in to the SMTP server as NAME")
    p.add_argument("--smtp-password", action="store_true",
                   help="keep the SMTP password ($TOOLKIT_SMTP_PASSWORD, else a hidden prompt) in the 0600 file")
    p.add_argument("--starttls", action=argparse.BooleanOptionalAction, default=None, help="STARTTLS before login")
    p.add_argument("--from", dest="mail_from", metavar="ADDRESS")
    p.add_argument("--to", dest="mail_to", action="append", metavar="ADDRESS", help="repeat for several")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="per attempt and channel (default 5)")
    p.add_argument("--shrink-share", type=float, metavar="SHARE",
                   help="alert when members or exportable users drop by more than this between runs (default 0.5)")
    p.set_defaults(run=_alerts_configure)
    p = asub.add_parser("test", parents=[common], help="send a test message to every configured channel")
    p.set_defaults(run=_alerts_test)
    p = asub.add_parser("list", parents=[common], help="incidents, newest first, and their alerts' deliveries")
    p.add_argument("--open", action="store_true", help="only open incidents")
    p.add_argument("--cohort")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(run=_alerts_list)
    p = asub.add_parser("check", parents=[common], help="open and resolve incidents now and send their alerts "
                        "(the scheduled sync does this after each run; run it from cron to hear of a stopped schedule)")
    p.set_defaults(run=_alerts_check)


def _alerts_configure(args) -> int:
    import getpass

    from toolkit import alerts

    given = {name: value for name, value in (
        ("smtp", args.smtp), ("smtp_user", args.smtp_user), ("starttls", args.starttls),
        ("mail_from", args.mail_from), ("mail_to", args.mail_to), ("timeout", args.timeout),
        ("shrink_share", args.shrink_share)) if value is not None}
    if args.webhook is not None:
        given["webhook"] = sys.stdin.readline().strip() if args.webhook == "-" else args.webhook
    if args.smtp_password:
        given["smtp_password"] = (os.environ.get(alerts.config.ENV_SMTP_PASSWORD)
                                  or (getpass.getpass("SMTP password: ") if sys.stdin.isatty() else ""))
        if not given["smtp_password"]:
            raise UsageError("--smtp-password: set $TOOLKIT_SMTP_PASSWORD or run it in a terminal to be asked")
    with _store(args) as store:
        settings = alerts.configure(store, **given) if given else alerts.current(store)
    _emit(args, settings.shown(), report.alert_settings_text(settings.shown()))
    return EXIT_CODES["ok"]


def _alerts_test(args) -> int:
    from toolkit import alerts

    with _store(args, read_only=True) as store:
        sent = alerts.send_test(store)
    _emit(args, {"deliveries": [d.__dict__ for d in sent]}, report.alert_test_text(sent))
    return EXIT_CODES["ok" if all(d.ok for d in sent) else "failed"]


def _alerts_list(args) -> int:
    from toolkit import alerts

    with _store(args, read_only=True) as store:
        found = alerts.incident_list(store, open_only=args.open, cohort=args.cohort, limit=args.limit)
    _emit(args, {"incidents": found}, report.incidents_text(found))
    return EXIT_CODES["ok"]


def _alerts_check(args) -> int:
    from toolkit import alerts

    with _store(args) as store:
        outcome = alerts.check(store)
    _emit(args, outcome, report.alert_check_text(outcome))
    return EXIT_CODES["ok"]


def _generate(args) -> int:
    from toolkit import synthetic

    counts = synthetic.generate(args.out, events=args.events, profiles=args.profiles, seed=args.seed,
                                compress=args.gzip, time_in_ms=args.time_in_ms)
    _emit(args, counts, report.generated_text(args.out, counts))
    return 0


def _sync_parameters(args) -> dict:
    from toolkit.store import default_path

    parameters = {"store_path": str(Path(args.db or default_path()).resolve()),
                  "landing": str(Path(args.landing).resolve()) if args.landing else None,
                  "cohorts": args.cohorts, "dry_run": args.dry_run,
                  "now": args.as_of.isoformat() if args.as_of else None,
                  **_engine(args).choice.to_dict(),     # engine, lake, master, remote: checked here, before any run
                  "lake": str(Path(args.lake).resolve()) if args.lake else None}
    if args.mixpanel_project:   # settings only: the kernel finds the service account itself
        parameters["mixpanel"] = {"project_id": args.mixpanel_project,
                                  "from": args.mixpanel_from.isoformat() if args.mixpanel_from else None}
    elif args.mixpanel_from:
        raise UsageError("--mixpanel-from needs --mixpanel-project")
    return parameters


def _sync(args) -> int:
    from toolkit import schedule

    parameters = _sync_parameters(args)
    runs_dir = args.runs_dir.resolve()
    with schedule.sync_lock(runs_dir):     # a sync already running: SyncBusy at once, not after a wait
        schedule.wait_for_store(parameters["store_path"])
        run = schedule.run_once(runs_dir, parameters)
    _emit(args, report.sync_run(run), report.sync_run_text(run))
    return EXIT_CODES[run.status]


def _schedule(args) -> int:
    import logging

    from toolkit import schedule

    # Each run's outcome on this command's stderr; the handler goes when the command ends, so calling
    # main() again in one process (tests, a notebook) neither piles handlers up nor writes to a closed stream.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    root, level = logging.getLogger(), logging.getLogger().level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        runs = schedule.schedule(args.runs_dir.resolve(), _sync_parameters(args), schedule.parse_every(args.every),
                                 max_runs=args.max_runs)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    print(report.schedule_text(runs))
    return schedule.exit_code([r.status for r in runs])


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date: expected YYYY-MM-DD") from None


def _pull(args) -> int:
    from toolkit import credentials
    from toolkit.mixpanel.client import MixpanelClient
    from toolkit.mixpanel.pull import project_folder, pull

    account = credentials.require_mixpanel(args.project_id, region=args.region, prompt=True)
    if args.cohorts:
        with MixpanelClient(account, args.base_url) as client:
            found = client.cohorts()
        _emit(args, {"cohorts": found}, report.mixpanel_cohorts_text(found))
        return EXIT_CODES["ok"]
    result = pull(args.landing, account, from_date=args.from_date, to_date=args.to_date, lookback_days=args.lookback,
                  chunk_days=args.chunk_days, profiles=args.profiles, base_url=args.base_url, progress=not args.json)
    if args.save_credentials:
        credentials.save_mixpanel(account)
    pulled = result.to_dict()
    text = report.pull_text(pulled)
    status = "ok"
    if not args.no_load:
        with _store(args) as store:
            summary = load(store, [project_folder(args.landing, account.project_id)], progress=not args.json)
            pulled["load"] = summary.to_dict()
            text += "\n" + report.load_text(summary)
            status = "failed" if summary.refused else "ok"
            refreshed = _mixpanel_cohorts(store, account, args)
        pulled["mixpanel_cohorts"] = [r.to_dict() for r in refreshed]
        text += "".join("\n" + report.mixpanel_cohort_refreshed_text(r.to_dict()) for r in refreshed)
    _emit(args, pulled, text)
    return EXIT_CODES[status]


def _mixpanel_cohorts(store, account, args) -> list:
    """Adopt the --cohort ids, then fetch the members of every Mixpanel cohort kept before again."""
    from toolkit.mixpanel import cohorts as mixpanel_cohorts
    from toolkit.mixpanel.client import MixpanelClient

    if args.cohort_name and len(args.cohort) != 1:
        raise UsageError("--cohort-name names one --cohort")
    with MixpanelClient(account, args.base_url) as client:
        adopted = [mixpanel_cohorts.adopt(store, client, cohort_id, args.cohort_name) for cohort_id in args.cohort]
        again = [r for r in mixpanel_cohorts.refresh(store, client)
                 if r.cohort_id not in args.cohort] if mixpanel_cohorts.linked(store, account.project_id) else []
    return adopted + again


def _lab(args) -> int:
    from toolkit import engine, lab

    lake = str(Path(args.lake).resolve()) if args.lake else None     # the kernels run in the notebooks' folder
    return lab.run(args.workdir, db=args.db, notebooks=args.notebooks, port=args.port,
                   emulator_port=args.emulator_port, browser=not args.no_browser, as_of=args.as_of,
                   engine=engine.choose(args.engine, lake, args.master, args.remote))


def _demo(args) -> int:
    from toolkit import demo

    result = demo.run(args.workdir)
    print(result.text)
    return 0 if result.ok else 1
