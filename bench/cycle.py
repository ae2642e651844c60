"""Bench rows: one fifteen-minute cycle of 60 dynamic syncs on the bench store (issue 15.5).

    python -m bench.cycle STORE [--rate 200] [--no-one-by-one] [--memory-limit 4GB] [--workdir DIR]
                                        # STORE: a store holding the generated events and profiles

On a copy of the store (the cycle writes): 60 cohorts of mixed shape (profile only, behavioural, "did
not", counts, event property filters, OR groups, first time, references, date ranges) registered as
dynamic syncs to one app of the OneSignal emulator (its own process, as OneSignal would be; its users are
the store's OneSignal ids and the delta's). Their previous export is written straight into the snapshot
(tagging every member through a rate-limited API would take hours) and their segments are made first.

1. Nothing changed: the 60 syncs run again at the same time; the emulator's request log must stay empty.
   That cycle keeps its pass (toolkit/kept_pass.py); the next ones bring it up to date.
2. The cycle without its sends: a 10k-event delta (another seed, over the store's last month, with its
   profile updates) is loaded, then every cohort is evaluated, matched and planned (``run_due`` as a dry
   run, fifteen minutes later). Its time is compared with evaluating one cohort (the three-condition
   cohort of bench/cohort_eval.py, best of 5); evaluating the 60 one by one is shown beside it.
3. The sends: the same cycle for real, every changed cohort at once, the client at 95% of the app's
   limit; the rate is the requests over the span from the first to the last (emulator's log), as a
   share of the limit, and no request may be answered 429.
Each phase runs once (the store changes under it); on a shared machine, say so when quoting it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from bench.table import Row, print_table

CYCLE = dt.timedelta(minutes=15)
HEADROOM = 0.95              # the client's max_rps as a share of the app's limit (as bench/export_throughput.py)
TARGET_RATIO = 10            # the cycle's 60 cohorts cost at most 10x one
TARGET_SHARE = 0.90
APP_ID = "00000000-0000-4000-8000-00000000cc15"
API_KEY = "bench-cycle-key"
ADMIN_TOKEN = secrets.token_urlsafe(16)
EVENTS = ["Page View", "Add to Cart", "Search", "Video Played", "Feature Used", "Login", "Purchase", "Sign Up"]
PLANS = ["free", "starter", "pro", "enterprise"]


def definitions() -> list[dict]:
    """60 cohorts of mixed shape, over the generated data's events and properties."""
    out: list[dict] = []

    def add(name, rules, match="all"):
        out.append({"name": f"cycle {len(out):02d}: {name}", "match": match, "rules": rules})

    for e in EVENTS:
        for days in (7, 30):
            add(f"did {e} in {days}d", [{"event": e, "last_days": days}])
    for e in ("Page View", "Add to Cart", "Search", "Login"):
        add(f"{e} 3+ times in 30d", [{"event": e, "operator": "at_least", "count": 3, "last_days": 30}])
    for plan in PLANS:
        add(f"plan {plan}", [{"property": "plan", "operator": "equals", "value": plan}])
        add(f"plan {plan}, no Login in 7d", [{"property": "plan", "operator": "equals", "value": plan},
                                             {"event": "Login", "did": False, "last_days": 7}])
    for country in ("US", "FR", "DE", "JP"):
        add(f"country {country}", [{"property": "$country_code", "operator": "equals", "value": country}])
    add("beta testers", [{"property": "is_beta", "operator": "equals", "value": True}])
    add("lifetime value > 100", [{"property": "lifetime_value", "operator": "greater", "value": 100}])
    add("likes music", [{"property": "interests", "operator": "contains", "value": "music"}])
    for e in ("Purchase", "Search", "Video Played"):
        add(f"no {e} in 14d", [{"event": e, "did": False, "last_days": 14}])
    for amount in (20, 50, 100):
        add(f"Purchase > {amount} in 30d", [{"event": "Purchase", "last_days": 30, "where": [
            {"property": "amount", "operator": "greater", "value": amount}]}])
    add("Add to Cart price > 50", [{"event": "Add to Cart", "last_days": 30, "where": [
        {"property": "price", "operator": "greater", "value": 50}]}])
    add("Login with google", [{"event": "Login", "where": [{"property": "method", "operator": "equals",
                                                            "value": "google"}]}])
    add("used export", [{"event": "Feature Used", "where": [{"property": "feature", "operator": "equals",
                                                             "value": "export"}]}])
    add("searched on ios", [{"event": "Search", "last_days": 14, "where": [
        {"property": "platform", "operator": "equals", "value": "ios"}]}])
    for a, b in (("Purchase", "Add to Cart"), ("Video Played", "Search"), ("Sign Up", "Login")):
        add(f"{a} or {b} in 7d", [{"event": a, "last_days": 7}, {"event": b, "last_days": 7}], match="any")
    for plan in ("pro", "enterprise", "starter"):
        add(f"{plan} purchasers not logging in", [{"property": "plan", "operator": "equals", "value": plan},
                                                  {"event": "Purchase", "last_days": 30},
                                                  {"event": "Login", "did": False, "last_days": 7}])
    add("first Sign Up in 14d", [{"event": "Sign Up", "first_time_last_days": 14}])
    add("first Purchase in 30d", [{"event": "Purchase", "first_time_last_days": 30}])
    buyers, beta = (next(c["name"] for c in out if c["name"].endswith(end))
                    for end in (": did Purchase in 30d", ": beta testers"))
    add("pro among 30d purchasers", [{"in_cohort": buyers}, {"property": "plan", "operator": "equals", "value": "pro"}])
    add("30d purchasers not beta", [{"in_cohort": buyers}, {"not_in_cohort": beta}])
    add("Page View in early October", [{"event": "Page View", "between": ["2026-10-01", "2026-10-15"]}])
    add("birthday known, Login in 30d", [{"property": "birthday", "operator": "is_set"},
                                         {"event": "Login", "last_days": 30}])
    add("Page View 10+ times in 60d", [{"event": "Page View", "operator": "at_least", "count": 10, "last_days": 60}])
    add("lifetime value 50-500 and Purchase in 60d", [
        {"property": "lifetime_value", "operator": "between", "value": [50, 500]},
        {"event": "Purchase", "last_days": 60}])
    add("US and Search in 14d", [{"property": "$country_code", "operator": "equals", "value": "US"},
                                 {"match": "any", "rules": [{"event": "Search", "last_days": 14},
                                                            {"event": "Video Played", "last_days": 14}]}])
    assert len(out) == 60, len(out)
    return out


@contextmanager
def emulator_process(rate: int, seed: list[dict]):
    """``python -m toolkit.emulator`` with one app limited to ``rate`` requests/s and the ``seed`` users."""
    with tempfile.TemporaryDirectory() as tmp:
        users = Path(tmp) / "users.jsonl"
        users.write_text("".join(json.dumps(u) + "\n" for u in seed))
        proc = subprocess.Popen([sys.executable, "-m", "toolkit.emulator", "--port", "0", "--rate-limit", str(rate),
                                 "--app-id", APP_ID, "--api-key", API_KEY, "--seed-users", str(users)],
                                stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "TOOLKIT_EMULATOR_TOKEN": ADMIN_TOKEN})
        try:
            first = proc.stdout.readline()
            if " at " not in first:
                raise SystemExit(f"the emulator did not start: {first!r}")
            yield first.split(" at ")[1].split()[0]
        finally:
            proc.terminate()
            proc.wait(timeout=60)


def _admin(url: str, what: str) -> dict:
    request = urllib.request.Request(f"{url}/_emulator/{what}", headers={"X-Emulator-Token": ADMIN_TOKEN})
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def _users(con, delta: Path) -> list[dict]:
    """The emulator's users: every usable OneSignal id of the store's profiles and of the delta's updates
    (a UUID as a subscription, anything else as an external id, as ``id_type="auto"`` reads them)."""
    import re

    from toolkit.onesignal_ids import UUID

    ids = {v for v, in con.execute("SELECT DISTINCT v FROM user_id_facts WHERE jt = 'VARCHAR' AND problem IS NULL")
           .fetchall()}
    for line in (delta / "profile_updates.jsonl").read_text(encoding="utf-8").splitlines():
        value = (json.loads(line).get("$set") or {}).get("$onesignal_user_id")
        if isinstance(value, str) and value.strip():
            ids.add(value)
    return [{"subscription_ids": [v]} if re.fullmatch(UUID, v) else {"external_id": v} for v in sorted(ids)]


def _best(fn, runs=5, clock=time.perf_counter) -> float:
    fn()
    times = []
    for _ in range(runs):
        started = clock()
        fn()
        times.append(clock() - started)
    return min(times)


def rows(source: Path, rate: int = 200, one_by_one: bool = True, memory_limit: str | None = None,
         workdir: Path | None = None) -> list[Row]:
    from bench.__main__ import INCREMENT_EVENTS, generated
    from bench.cohort_eval import COHORT
    from toolkit import Store, cohort_batch, cohorts, export, load, snapshots, sync
    from toolkit.export.naming import segment_filters
    from toolkit.onesignal import Credentials, SyncOneSignalClient

    delta = generated(INCREMENT_EVENTS, seed=15, start=dt.date(2026, 10, 1), months=1).parent
    with tempfile.TemporaryDirectory(dir=workdir or source.parent) as tmp:
        db = Path(tmp) / "cycle.duckdb"
        shutil.copyfile(source, db)
        with open(db, "rb+") as copied:      # on disk before timing: else the first load's checkpoint waits
            os.fsync(copied.fileno())        # for the kernel to write the copy (0.65-0.84 s at 10M)
        with Store(db, memory_limit=memory_limit) as store:
            con = store.con
            now0 = con.execute("SELECT max(time) FROM events").fetchone()[0].replace(tzinfo=dt.UTC) \
                + dt.timedelta(seconds=1)
            defs = definitions()
            cohorts.save_all(store, defs)
            names = [d["name"] for d in defs]
            one = cohorts.parse(COHORT)
            cohorts.evaluate(store, one, now=now0)                     # its columns kept, caches warm
            with emulator_process(rate, _users(con, delta)) as url:
                os.environ["ONESIGNAL_API_KEY"], os.environ["ONESIGNAL_APP_ID"] = API_KEY, APP_ID
                os.environ["TOOLKIT_CREDENTIALS"] = str(Path(tmp) / "none.json")
                _previous_export(store, names, now0, url, cohort_batch, export, snapshots, segment_filters,
                                 SyncOneSignalClient, Credentials)
                options = {"max_rps": rate * HEADROOM}

                before = len(_admin(url, "requests")["requests"])
                quiet = sync.run_due(store, now=now0, cohorts=names, client_options=options)
                unchanged_requests = len(_admin(url, "requests")["requests"]) - before
                _note(f"nothing changed: {unchanged_requests} requests")
                assert all(r.status == "ok" for r in quiet), [(r.cohort, r.error) for r in quiet if r.status != "ok"]

                one_s = _best(lambda: cohorts.evaluate(store, one, now=now0))
                one_cpu = _best(lambda: cohorts.evaluate(store, one, now=now0), clock=time.process_time)
                started = time.perf_counter()
                for name in names if one_by_one else ():
                    cohorts.evaluate(store, name, now=now0)
                alone = time.perf_counter() - started if one_by_one else float("nan")
                shared = _best(lambda: cohort_batch.evaluate(store, names, now=now0), runs=2)
                _note(f"one cohort {one_s:.3f} s, 60 one by one {alone:.2f} s, in one pass {shared:.2f} s")

                now1 = now0 + CYCLE
                started, cpu = time.perf_counter(), time.process_time()
                load(store, [delta / "events.jsonl", delta / "profile_updates.jsonl"])
                loaded = time.perf_counter()
                planned = sync.run_due(store, now=now1, cohorts=names, dry_run=True, client_options=options)
                cycle_s, load_s = time.perf_counter() - started, loaded - started
                cycle_cpu = time.process_time() - cpu
                assert all(r.status == "ok" for r in planned), [(r.cohort, r.error) for r in planned
                                                                if r.status != "ok"]
                changed = sum(1 for r in planned if r.plan and r.plan.changes)
                _note(f"CPU (user+sys, every thread): one cohort {one_cpu:.3f} s, the cycle {cycle_cpu:.2f} s: "
                      f"{cycle_cpu / one_cpu:.1f}x")
                _note(f"cycle without sends {cycle_s:.2f} s (load {load_s:.2f} s), {changed} cohorts changed, "
                      f"{sum(len(r.plan.changes) for r in planned if r.plan):,} changes")

                before = len(_admin(url, "requests")["requests"])
                started = time.perf_counter()
                sent = sync.run_due(store, now=now1, cohorts=names, client_options=options)
                send_s = time.perf_counter() - started
                log = _admin(url, "requests")["requests"][before:]
                # The kept pass alone, fifteen minutes on with nothing loaded: the windows' edges only.
                started = time.perf_counter()
                again = cohort_batch.evaluate(store, names, now=now1 + CYCLE, keep=True).refreshed
                kept_s = time.perf_counter() - started
    failed = [(r.cohort, r.error) for r in sent if r.status != "ok"]
    for cohort, error in failed:
        print(f"cycle run of {cohort!r} not ok: {error}", file=sys.stderr)
    limited = sum(1 for r in log if r["status"] == 429)
    if log:
        start = log[0]["t"]
        per10 = [0] * (int((log[-1]["t"] - start) // 10) + 1)
        for r in log:
            per10[int((r["t"] - start) // 10)] += 1
        kinds: dict = {}
        for r in log:
            kind = (r["method"], r["status"])
            kinds[kind] = kinds.get(kind, 0) + 1
        _note(f"requests per 10 s: {per10}; by method and status: {kinds}")
        by_kind: dict[str, list[int]] = {}
        for r in log:
            counts = by_kind.setdefault(_kind(r), [0] * len(per10))
            counts[int((r["t"] - start) // 10)] += 1
        for kind, counts in by_kind.items():
            _note(f"  {kind} per 10 s: {counts}")
    span = log[-1]["t"] - log[0]["t"] if len(log) > 1 else float("inf")
    share = (len(log) - 1) / span / rate if len(log) > 1 else 0.0
    events = con_events(source)
    size = f"{events / 1e6:.3g}M events"
    ratio = cycle_s / one_s
    return [
        Row(f"cycle {size}: 60 cohorts, {INCREMENT_EVENTS // 1000}k-event delta, without sends",
            f"{cycle_s:.2f} s", f"one cohort {one_s * 1000:,.0f} ms", f"{ratio:.1f}x one cohort",
            f"<= {TARGET_RATIO}x", ratio <= TARGET_RATIO),
        Row(f"  of which the delta's load ({changed} cohorts changed)", f"{load_s:.2f} s", "", "", "", None),
        Row("  the 60 evaluated in one pass (alone)", f"{shared:.2f} s", f"one by one {alone:.2f} s",
            f"{alone / shared:.1f}x faster", "", None),
        Row(f"  the pass kept, brought up to date 15 min on ({again:,} users again)" if again is not None
            else "  the pass kept: evaluated whole (not brought up to date)", f"{kept_s:.2f} s",
            f"whole {shared:.2f} s", f"{shared / kept_s:.1f}x faster", "", None),
        Row("cycle: requests when nothing changed (60 syncs)", f"{unchanged_requests} requests", "", "",
            "0", unchanged_requests == 0),
        Row(f"cycle: send rate, {changed} cohorts changing at once ({len(failed)} runs not ok)",
            f"{share * rate:,.0f} req/s",
            f"limit {rate} req/s, {len(log):,} requests in {send_s:.1f} s", f"{share:.2f} of limit, {limited} x 429",
            f">= {TARGET_SHARE:.2f}, 0 x 429", share >= TARGET_SHARE and limited == 0 and not failed),
    ]


def _kind(request: dict) -> str:
    """What a logged request was for: tag updates, segments, Player ID lookups, user views (tags read back)."""
    path = request["path"]
    if "/segments" in path:
        return "segments"
    if path.endswith("/user/identity"):
        return "lookups"
    return "updates" if request["method"] == "PATCH" else "views"


def _note(text: str) -> None:
    print(f"bench.cycle: {text}", file=sys.stderr, flush=True)


def con_events(source: Path) -> int:
    import duckdb

    with duckdb.connect(str(source), read_only=True) as con:
        return con.execute("SELECT count(*) FROM events").fetchone()[0]


def _previous_export(store, names, now, url, cohort_batch, export, snapshots, segment_filters,
                     SyncOneSignalClient, Credentials) -> None:
    """Each cohort registered, its segment made and its members as the last export left them (the snapshot,
    with its fingerprint), as of ``now``."""
    con = store.con
    members = cohort_batch.evaluate(store, names, now=now)
    matched = cohort_batch.classify(store, members)
    with SyncOneSignalClient(Credentials(APP_ID, API_KEY), url) as client:
        for name in names:
            export.register(store, name, "dynamic", APP_ID, url, now=now)
            key = export.registration(con, name)["tag_key"]
            segment = client.create_segment(export.segment_name(name), segment_filters(key))
            con.execute("UPDATE exports SET segment_id = ? WHERE cohort = ?", [segment, name])
            con.register("exported", matched.of(name).exportable_table)
            con.execute("INSERT INTO export_members SELECT ?, distinct_id, onesignal_id, id_type, 'tagged', ? "
                        "FROM exported", [name, now.replace(tzinfo=None)])
            con.unregister("exported")
            snapshots.keep(con, name)
    cohort_batch.drop(store)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cycle")
    parser.add_argument("store", type=Path, help="a store holding the generated events and profiles")
    parser.add_argument("--rate", type=int, default=200, help="the emulator app's limit, requests/s")
    parser.add_argument("--no-one-by-one", dest="one_by_one", action="store_false",
                        help="do not time the 60 cohorts evaluated one by one (minutes at 10M events)")
    parser.add_argument("--memory-limit", help="DuckDB's memory limit for the store, e.g. 4GB (at 10M events)")
    parser.add_argument("--workdir", type=Path, help="where the store's copy goes (default: beside the store)")
    args = parser.parse_args()
    print_table(rows(args.store, args.rate, args.one_by_one, args.memory_limit, args.workdir))


if __name__ == "__main__":
    main()
