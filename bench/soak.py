"""Issue 15's "done when" as a run anyone can repeat: sixty dynamic syncs, unattended, for several
fifteen-minute cycles against the OneSignal emulator (a paid plan: 20 data tags per user), with faults.

    python -m bench.soak [--events 20000] [--profiles 1500] [--user-rate 1]

The store is generated (toolkit.synthetic) and loaded; the sixty cohorts are bench/cycle.py's; every usable
OneSignal id of the store is a user of the emulator's app (an HTTP server on 127.0.0.1, in this process).
Each cycle is the scheduled sync's body (``sync.run_scheduled``) at ``now`` fifteen minutes later:

0. the first export of all sixty, with 3% of requests answered 503, a few 429s without Retry-After, 500s
   and hung requests aimed at the users' updates; users in more than 20 cohorts meet the tag cap;
1. the same faults: the runs converge (the failed users are retried);
2. a cohort shrinks by 40% (its members replaced by a static list of 60% of them);
3. the app's key is revoked in OneSignal and the cohort grows back: the run meeting the refusal pauses
   the app's syncs; 4. a cycle skips every paused sync;
5. a person puts the new key in place and resumes them;
then drift is made in the emulator behind the toolkit's back (a user tagged, a tag removed, a user
deleted) and ``sync.reconcile_cohort(repair=True)`` finds and repairs it, the app's cap raised to 100
first; a cycle tags the members it held back, and a last one has nothing to do. Every run's member
listing (``export.member_fates``) is checked against its plan, and at the end every cohort's tag in
OneSignal against its exportable members.

The test (tests/test_soak.py) runs this at a few thousand profiles and asserts; this prints one table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.cycle import definitions
from bench.table import Row, print_table

CYCLE = dt.timedelta(minutes=15)
# The client: quick retries, and a timeout short enough that hung requests cost seconds, not minutes; under
# faults, two tries only, so that some users fail and the next cycle must retry them.
CLIENT = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 3.0, "max_attempts": 4}
HANG_SECONDS = 4.0
ERROR_RATE = 0.03
SHRINK_SHARE = 0.3            # alert on a drop of more than 30% (the removal guard stops at 50%)
UPDATES = "/users/by/"        # the path of a user's update (PATCH), where the aimed faults go


@dataclass
class CycleStats:
    cycle: int
    what: str
    runs: Counter = field(default_factory=Counter)      # outcome -> runs
    requests: int = 0
    throttled: int = 0          # answered 429
    server_errors: int = 0      # answered 5xx
    unanswered: int = 0         # hung or dropped
    opened: list = field(default_factory=list)          # (cohort, kind) incidents opened
    resolved: list = field(default_factory=list)
    alerts_sent: int = 0
    seconds: float = 0.0
    fates_checked: int = 0
    fate_problems: list = field(default_factory=list)


class Soak:
    """The scenario, step by step (the test asserts between steps; ``run_all`` is the bench's way)."""

    def __init__(self, folder: Path, emulator, *, events: int, profiles: int, setenv=None, seed: int = 15,
                 webhook: str | None = None, smtp: dict | None = None):
        self.folder, self.emu = Path(folder), emulator
        self.events, self.profiles, self.seed = events, profiles, seed
        self.setenv = setenv or os.environ.__setitem__
        self.webhook, self.smtp = webhook, smtp or {}
        self.db = self.folder / "soak.duckdb"
        self.stats: list[CycleStats] = []
        self.cycle_no = 0

    # -- setting up -------------------------------------------------------------------------------
    def setup(self) -> None:
        from toolkit import Store, alerts, cohorts, export, load
        from toolkit.synthetic import generate

        data = self.folder / "data"
        generate(data, events=self.events, profiles=self.profiles, seed=self.seed, start=dt.date(2026, 10, 1),
                 months=1)
        self.app = self.emu.add_app(plan="paid", tag_limit=20)
        self.setenv("ONESIGNAL_APP_ID", self.app.app_id)
        self.setenv("ONESIGNAL_API_KEY", self.app.api_key)
        self.setenv("TOOLKIT_CREDENTIALS", str(self.folder / "no-credentials.json"))
        self.setenv("TOOLKIT_ALERT_CREDENTIALS", str(self.folder / "alert-credentials.json"))
        self.definitions = definitions()
        self.names = [d["name"] for d in self.definitions]
        with Store(self.db) as store:
            load(store, [data])
            self.now0 = store.con.execute("SELECT max(time) FROM events").fetchone()[0].replace(tzinfo=dt.UTC) \
                + dt.timedelta(seconds=1)
            self.emu.add_users(self.app.app_id, _users(store.con))
            cohorts.save_all(store, self.definitions)
            for name in self.names:
                export.register(store, name, "dynamic", self.app.app_id, self.emu.url, now=self.now0)
            alerts.configure(store, webhook=self.webhook, shrink_share=SHRINK_SHARE, timeout=2.0, **self.smtp)

    @property
    def now(self) -> dt.datetime:
        return self.now0 + CYCLE * self.cycle_no

    # -- one cycle --------------------------------------------------------------------------------
    def faults(self, on: bool) -> None:
        """3% of requests answered 503, and aimed at users' updates: 429s without Retry-After, 500s, hangs."""
        faults = self.emu.faults
        faults.error_rate, faults.hang_seconds = (ERROR_RATE if on else 0.0), HANG_SECONDS
        if on:
            # Early enough to hit: the cycle sends each user's changes from every cohort in one request
            # (export.merged), about one update per user.
            for kind, skip, times in (("throttle", 20, 25), ("crash", 60, 10), ("hang", 100, 2),
                                      ("throttle", 140, 25), ("crash", 170, 10)):
                faults.inject(kind, method="PATCH", path=UPDATES, skip=skip, times=times)
        else:
            faults._aimed.clear()

    def cycle(self, what: str):
        """One scheduled sync at ``now``; its numbers kept in ``stats``. Returns the SyncResult."""
        from toolkit import Store, export, sync

        before = len(self.emu.requests())
        started = time.perf_counter()
        options = {**CLIENT, "max_attempts": 2} if self.emu.faults.error_rate else CLIENT
        result = sync.run_scheduled(self.db, now=self.now, client_options=options)
        seconds = time.perf_counter() - started
        log = self.emu.requests()[before:]
        stats = CycleStats(self.cycle_no, what, Counter(_outcome(r) for r in result.runs), len(log),
                           sum(r["status"] == 429 for r in log),
                           sum(isinstance(r["status"], int) and r["status"] >= 500 for r in log),
                           sum(r["status"] in ("hung", "dropped") for r in log),
                           [(o["cohort"], o["kind"]) for o in result.alerts["opened"]],
                           [(o["cohort"], o["kind"]) for o in result.alerts["resolved"]],
                           result.alerts["sent"], seconds)
        stats.runs.update({"paused, skipped": len(result.paused) - stats.runs["paused"]})
        with Store(self.db, read_only=True) as store:
            for record in result.runs:
                stats.fates_checked += 1
                stats.fate_problems += fate_problems(store.con, record, export)
        self.stats.append(stats)
        for record in result.runs:
            if record.status != "ok":
                print(f"bench.soak: {record.cohort!r} {record.status}: {record.error}", file=sys.stderr)
        print(f"bench.soak: cycle {stats.cycle} ({what}): {seconds:.1f} s, runs {dict(stats.runs)}, {stats.requests} "
              f"requests, +{len(stats.opened)}/-{len(stats.resolved)} incidents, {len(stats.fate_problems)} fate "
              "problems", file=sys.stderr, flush=True)
        self.cycle_no += 1
        return result

    # -- what a person, or someone behind the toolkit's back, does ----------------------------------
    def shrink(self, cohort: str, keep: float = 0.6) -> int:
        """The cohort's members replaced by a static list of ``keep`` of them (sorted): a sharp drop."""
        from toolkit import Store, cohorts

        with Store(self.db) as store:
            ids = cohorts.evaluate(store, cohort, now=self.now)
            cohorts.save_all(store, [{"name": cohort, "static_ids": ids[:int(len(ids) * keep)]}])
        return len(ids)

    def restore(self, cohort: str) -> None:
        from toolkit import Store, cohorts

        with Store(self.db) as store:
            cohorts.save_all(store, [d for d in self.definitions if d["name"] == cohort])

    def revoke_key(self) -> str:
        """OneSignal's key is replaced (a person revoked it in OneSignal's dashboard): the store's key is refused."""
        with self.emu._lock:
            self.app.api_key = "soak-new-key-" + "7" * 24
        return self.app.api_key

    def new_key_and_resume(self) -> list[str]:
        """A person puts the new key in place and resumes every paused sync."""
        from toolkit import Store, export

        self.setenv("ONESIGNAL_API_KEY", self.app.api_key)
        with Store(self.db) as store:
            paused = [p["cohort"] for p in export.paused(store.con)]
            for cohort in paused:
                export.resume(store, cohort, now=self.now)
        return paused

    def drift(self) -> dict:
        """Behind the toolkit's back, in OneSignal itself: a non-member of cohort A tagged, a member of B
        untagged, a member of C deleted. Returns who, per kind. (The one tagged has a subscription: OneSignal's
        CSV export, which the reconcile reads, lists subscriptions; a user with none is seen only by a View
        user call, made for members alone.)"""
        from toolkit import Store, export

        with Store(self.db, read_only=True) as store:
            tagged = {name: store.con.execute(
                "SELECT distinct_id, onesignal_id, id_type FROM export_members WHERE cohort = ? AND status = 'tagged' "
                "ORDER BY distinct_id", [name]).fetchall() for name in self.names}
            keys = {name: export.registration(store.con, name)["tag_key"] for name in self.names}
        a, b, c = sorted((n for n in self.names if len(tagged[n]) >= 10), key=lambda n: (len(tagged[n]), n))[:3]
        app = self.emu.app(self.app.app_id)
        with self.emu._lock:
            lost, gone = tagged[b][0], tagged[c][len(tagged[c]) // 2]
            lost_user, gone_user = self._user(app, lost[1], lost[2]), self._user(app, gone[1], gone[2])
            members = {self._user(app, o, t).onesignal_id for _, o, t in tagged[a]}
            outsider = next(u for u in sorted(app.users.values(), key=lambda u: u.onesignal_id)
                            if u.onesignal_id not in members | {lost_user.onesignal_id, gone_user.onesignal_id}
                            and len(u.tags) < 20 and u.subscriptions)
            outsider.tags[keys[a]] = "1"
            del lost_user.tags[keys[b]]
            app.remove_user(gone_user)
            self.emu.world.changed()
        return {a: ("tagged_outside", outsider.onesignal_id), b: ("lost_tag", lost[0]), c: ("deleted", gone[0])}

    @staticmethod
    def _user(app, onesignal_id: str, id_type: str):
        return app.owner_of(onesignal_id) if id_type == "subscription_id" else app.find_user("external_id",
                                                                                             onesignal_id)

    def reconcile(self, cohorts: list[str]) -> dict:
        from toolkit import Store, sync

        found = {}
        with Store(self.db) as store:
            for cohort in cohorts:
                found[cohort] = sync.reconcile_cohort(store, cohort, repair=True, client_options=CLIENT,
                                                      now=self.now)
        return found

    def raise_cap(self, limit: int = 100) -> None:
        from toolkit import Store, export

        self.emu.set_limits(self.app.app_id, tag_limit=limit)
        with Store(self.db) as store:
            export.set_tag_limit(store, self.app.app_id, limit, now=self.now)

    # -- the end state ----------------------------------------------------------------------------
    def differences(self) -> dict[str, dict]:
        """Per cohort whose OneSignal tag differs from its exportable members now (the users OneSignal no
        longer has left out): who is missing and who is extra. Empty when everything converged."""
        from toolkit import Store, cohort_batch, export

        app = self.emu.app(self.app.app_id)
        with Store(self.db) as store:
            members = cohort_batch.evaluate(store, self.names, now=self.now)
            matched = cohort_batch.classify(store, members)
            keys = {name: export.registration(store.con.cursor(), name)["tag_key"] for name in self.names}
            out = {}
            for name in self.names:
                key = keys[name]
                table = matched.of(name).exportable_table
                with self.emu._lock:
                    wanted = {u.onesignal_id for o, t in zip(table["onesignal_id"].to_pylist(),
                                                             table["id_type"].to_pylist(), strict=True)
                              if (u := self._user(app, o, t)) is not None}
                    tagged = {u.onesignal_id for u in app.users.values() if u.tags.get(key) == "1"}
                if wanted != tagged:
                    out[name] = {"missing": sorted(wanted - tagged), "extra": sorted(tagged - wanted)}
            cohort_batch.drop(store)
        return out

    def duplicates(self) -> int:
        """Members the snapshot holds twice (must be none)."""
        from toolkit import Store

        with Store(self.db, read_only=True) as store:
            return store.con.execute("SELECT count(*) - count(DISTINCT (cohort, distinct_id)) FROM export_members"
                                     ).fetchone()[0]


def fate_problems(con, record, export) -> list[str]:
    """What is wrong with the run's member listing (``export.member_fates``) against what the run planned:
    it must be exact (no note), list every planned add and remove and every member the cap held back, each
    with an outcome (a failure with its reason), and as many no-ops as the plan had."""
    fates = export.member_fates(con, record.run_id)
    if record.plan is None:           # a run that failed before it planned
        return [] if fates.note and "before it planned" in fates.note else [f"run {record.run_id}: {fates.note}"]
    problems = [f"run {record.run_id} ({record.cohort}, {record.status}): {fates.note}"] if fates.note else []
    rows = fates.table.to_pylist()
    listed = {(r["distinct_id"], r["operation"]) for r in rows if r["operation"] != "no-op"}
    planned = {(s.distinct_id, s.operation) for s in record.plan.changes} | {(d, "add") for d in record.held}
    if listed != planned:
        problems.append(f"run {record.run_id} ({record.cohort}): listed changes differ from the plan: "
                        f"{len(listed - planned)} not planned, {len(planned - listed)} planned not listed")
    noops = sum(r["operation"] == "no-op" for r in rows)
    if noops != record.plan.counts.get("no-op", 0):
        problems.append(f"run {record.run_id} ({record.cohort}): {noops} no-ops listed, "
                        f"{record.plan.counts.get('no-op', 0)} planned")
    problems += [f"run {record.run_id} ({record.cohort}): {r['distinct_id']} {r['operation']} failed without a "
                 "reason" for r in rows if r["outcome"] in ("failed", "not_sent", "tag_cap") and not r["reason"]]
    return problems


def _outcome(record) -> str:
    from toolkit.sync import run_outcome

    return record.status if record.status in ("paused", "stopped") else run_outcome(record)


def _users(con) -> list[dict]:
    """Every usable OneSignal id of the store's profiles, as a user of the app (a UUID as a subscription)."""
    from toolkit.onesignal_ids import UUID

    ids = sorted(v for v, in con.execute(
        "SELECT DISTINCT v FROM user_id_facts WHERE jt = 'VARCHAR' AND problem IS NULL").fetchall())
    return [{"subscription_ids": [v]} if re.fullmatch(UUID, v) else {"external_id": v} for v in ids]


def run_all(soak: Soak) -> dict:
    """The whole scenario; returns what the table shows."""
    soak.setup()
    soak.faults(True)
    soak.cycle("first export, faults")
    soak.cycle("faults: the failed retried")
    soak.faults(False)
    shrunk = soak.names[0]
    soak.shrink(shrunk)
    soak.cycle(f"cohort {shrunk!r} shrinks 40%")
    soak.revoke_key()
    soak.restore(shrunk)
    soak.cycle("key revoked in OneSignal")
    soak.cycle("paused syncs skipped")
    soak.new_key_and_resume()
    soak.cycle("new key, syncs resumed")
    soak.raise_cap()
    drift = soak.drift()
    started = time.perf_counter()
    found = soak.reconcile(sorted(drift))
    reconcile_s = time.perf_counter() - started
    soak.cycle("cap raised to 100, drift repaired")
    soak.cycle("steady")
    return {"drift": drift, "reconciled": found, "reconcile_s": reconcile_s, "differences": soak.differences(),
            "duplicates": soak.duplicates()}


def rows(events: int, profiles: int, user_rate: float) -> list[Row]:
    from toolkit.emulator import Emulator

    with tempfile.TemporaryDirectory() as tmp, Emulator(user_rate_limit=user_rate) as emu:
        soak = Soak(Path(tmp), emu, events=events, profiles=profiles)
        end = run_all(soak)
    out = []
    for s in soak.stats:
        runs = ", ".join(f"{n} {k}" for k, n in sorted(s.runs.items()) if n)
        out.append(Row(f"soak cycle {s.cycle}: {s.what}", f"{s.seconds:.1f} s", runs,
                       f"{s.requests:,} req, {s.throttled} x 429, {s.server_errors} x 5xx, {s.unanswered} hung",
                       f"+{len(s.opened)} / -{len(s.resolved)} incidents, {s.alerts_sent} msgs",
                       not s.fate_problems))
    found = end["reconciled"]
    drift = sum(len(r.tagged_outside) + len(r.lost_tag) + len(r.deleted) for r in found.values())
    out.append(Row("soak: reconcile --repair after drift in OneSignal", f"{end['reconcile_s']:.1f} s",
                   f"{len(end['drift'])} made, {drift} found", "repaired: " + ", ".join(
                       f"{r.repair.added} add {r.repair.removed} remove" for r in found.values() if r.repair),
                   "", drift == len(end["drift"])))
    out.append(Row("soak: end state, OneSignal's tags = exportable members", f"{len(end['differences'])} differ",
                   f"{end['duplicates']} duplicated", "", "0, 0", not end["differences"] and not end["duplicates"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak")
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--profiles", type=int, default=1500)
    parser.add_argument("--user-rate", type=float, default=0.0,
                        help="OneSignal's updates per user per second (1 is OneSignal's; 0: off)")
    args = parser.parse_args()
    print_table(rows(args.events, args.profiles, args.user_rate))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
