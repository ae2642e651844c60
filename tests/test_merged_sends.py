"""A cycle's tag updates merged per user (toolkit/export/merged.py): one request carries every cohort's change
to a user, and each change's outcome is recorded by its own cohort's run, exactly as if that run had sent it.
Real store files, the real emulator over HTTP; the same world run cohort by cohort is the reference."""

import asyncio
import contextlib
import threading
from datetime import datetime, timedelta

import pytest

from helpers import NOW, event, write_lines
from toolkit import Store, cohorts, export, load, sync
from toolkit.emulator import Emulator, limits
from toolkit.export import merged
from toolkit.onesignal import Credentials, SyncOneSignalClient
from toolkit.planning import ADD, REMOVE, Step, Target
from toolkit.rate_budget import AppBudget, ViewBudget

pytestmark = pytest.mark.slow     # end to end: whole cycles of merged sends, some waiting out a per-user second

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0, "max_attempts": 3}
SUBSCRIPTION = "8f0c8b1e-6a51-4c39-9d2e-3f6f3f1b2a77"       # a user known to OneSignal by its Player ID only
LATER = NOW + timedelta(days=5)

# Who did which event, and when: recent events count in both cycles, old ones (8 days before NOW) age out
# of the cohorts' 10 days by the second cycle, and the second batch brings new members.
RECENT = {"A": ["a1", "a2", "a3", "s1", "s3", "ghost", "sub"], "B": ["b1", "b2", "b3", "s1", "ghost"],
          "C": ["c1", "c2", "c3", "s1", "s3", "sub"]}
OLD = {"A": ["a4", "s2"], "B": ["b4", "s2"], "C": ["c4"]}
NEW = {"A": ["n1", "b1"], "B": ["n1"], "C": ["n1", "a1"]}
NOT_IN_ONESIGNAL = {"ghost"}


def at(moment: datetime) -> int:
    return int(moment.timestamp())


def answer(answers) -> tuple:
    """A run's one change's answer: its next batch, of that one answer."""
    batch = answers.get(timeout=30)
    assert isinstance(batch, list), batch
    (one,) = batch
    return one


def build(tmp_path, emu, app):
    """A store with cohorts A, B and C ("did the event in the last 10 days") registered as dynamic syncs,
    their users in the emulator (but "ghost"; "sub" by its subscription id)."""
    data = tmp_path / "data"
    data.mkdir()
    users = sorted({u for group in (RECENT, OLD, NEW) for members in group.values() for u in members})
    recent, old = at(NOW - timedelta(days=1)), at(NOW - timedelta(days=8))
    write_lines(data / "events.jsonl",
                [event(g, u, recent, insert_id=f"{g}-{u}-r") for g, us in RECENT.items() for u in us]
                + [event(g, u, old, insert_id=f"{g}-{u}-o") for g, us in OLD.items() for u in us])
    write_lines(data / "profiles.jsonl", [{"$distinct_id": u, "$properties": {
        "$onesignal_user_id": SUBSCRIPTION if u == "sub" else f"ext-{u}"}} for u in users])
    emu.add_user(app.app_id, None, [SUBSCRIPTION])
    for u in users:
        if u != "sub" and u not in NOT_IN_ONESIGNAL:
            emu.add_user(app.app_id, f"ext-{u}")
    db = tmp_path / "store.duckdb"
    with Store(db) as store:
        load(store, [data], now=NOW)
        cohorts.save_all(store, [{"name": g, "rules": [{"event": g, "last_days": 10}]} for g in RECENT])
        for g in RECENT:
            export.register(store, g, "dynamic", app.app_id, emu.url, now=NOW)
    return db


def second_batch(tmp_path, store):
    more = tmp_path / "more"
    more.mkdir()
    write_lines(more / "events.jsonl", [event(g, u, at(LATER - timedelta(hours=1)), insert_id=f"{g}-{u}-n")
                                        for g, us in NEW.items() for u in us])
    load(store, [more], now=LATER)


def credentials(monkeypatch, tmp_path, app):
    monkeypatch.setenv("ONESIGNAL_APP_ID", app.app_id)
    monkeypatch.setenv("ONESIGNAL_API_KEY", app.api_key)
    monkeypatch.setenv("TOOLKIT_CREDENTIALS", str(tmp_path / "no-credentials.json"))


def one_by_one(store, now):
    """The reference: each cohort's run on its own, one after the other, sending its own requests."""
    return [sync.export_cohort(store, export.settings(store, g, now=now, client_options=FAST)) for g in RECENT]


def outcome(store, runs):
    """Everything a run leaves that must not depend on how its requests were sent."""
    records = [(r.cohort, r.status, r.members, r.exportable, r.added, r.removed, r.unchanged, r.not_in_onesignal,
                r.failed, r.tag_cap, r.error) for r in runs]
    results = store.con.execute(
        "SELECT r.cohort, x.distinct_id, x.onesignal_id, x.id_type, x.operation, x.outcome, x.error "
        "FROM export_results x JOIN export_runs r USING (run_id) WHERE r.run_id IN (SELECT unnest(?)) "
        "ORDER BY ALL", [[r.run_id for r in runs]]).fetchall()
    members = store.con.execute("SELECT * FROM export_members ORDER BY ALL").fetchall()
    fates = {r.cohort: export.member_fates(store.con, r.run_id).table.drop(["run_id"]).to_pylist() for r in runs}
    return records, results, members, fates


def whole_cycle_at_once(monkeypatch):
    """Sending waits until every run has handed its changes over: a user's changes are then in one request
    whatever the threads' timing (sending early, a user's first cohort may be sent before the others)."""
    monkeypatch.setattr(merged, "SEND_EARLY", False)


def patches(emu):
    return [r for r in emu.requests() if r["method"] == "PATCH" and "/users/" in r["path"]]


def test_merged_sends_leave_what_cohort_by_cohort_sends_leave(tmp_path, monkeypatch):
    """Two cycles (adds; then removals, new members, a user moving between cohorts), users not in OneSignal
    and one known by its Player ID: the emulator's users end with the same tags, and the runs with the same
    records, per-member results, snapshots and fates as when each cohort sends on its own; in fewer
    requests, none answered 429 although OneSignal's one update per user per second is on."""
    seen = {}
    for way in ("merged", "alone"):
        with Emulator(rate_limit=50) as emu:
            app = emu.add_app()
            credentials(monkeypatch, tmp_path / way, app)
            (tmp_path / way).mkdir()
            db = build(tmp_path / way, emu, app)
            with Store(db) as store:
                for now in (NOW, LATER):
                    if now == LATER:
                        second_batch(tmp_path / way, store)
                        emu.limits.reset()       # the cycles are 15 minutes apart, not the test's second
                    runs = (sync.run_due(store, now=now, client_options={**FAST, "max_rps": 50}) if way == "merged"
                            else one_by_one(store, now))
                    seen[way, now] = outcome(store, runs)
                    seen[way, now, "tags"] = emu.user_tags(app.app_id)
            seen[way, "patches"] = len(patches(emu))
            seen[way, "429"] = sum(r["status"] == 429 for r in emu.requests())
    for now in (NOW, LATER):
        assert seen["merged", now] == seen["alone", now]
        assert seen["merged", now, "tags"] == seen["alone", now, "tags"]
    records, results, _, _ = seen["merged", LATER]
    assert {r[0]: r[4:8] for r in records} == {"A": (2, 2, 6, 1), "B": (1, 2, 4, 1), "C": (2, 1, 6, 0)}
    assert ("B", "ghost", "ext-ghost", "external_id", ADD, "not_in_onesignal", None) in seen["merged", NOW][1]
    tags = seen["merged", LATER, "tags"]
    assert tags["ext-n1"] == {export.tag_key(g): "1" for g in "ABC"} and tags["ext-s2"] == {}
    assert seen["merged", "429"] == 0
    assert seen["merged", "patches"] < seen["alone", "patches"]


def test_a_user_failing_inside_a_merged_request_fails_only_that_users_changes(tmp_path, monkeypatch):
    """OneSignal answering 500 to every try for s1 (in all three cohorts): s1's change fails in each
    cohort, with the reason, every other user is tagged, and the next cycle sends s1 again and converges."""
    whole_cycle_at_once(monkeypatch)
    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app()
        credentials(monkeypatch, tmp_path, app)
        db = build(tmp_path, emu, app)
        emu.faults.inject("crash", method="PATCH", path="/ext-s1", times=FAST["max_attempts"])
        with Store(db) as store:
            runs = sync.run_due(store, now=NOW, client_options=FAST)
            assert [(r.cohort, r.status, r.failed) for r in runs] == [("A", "partial", 1), ("B", "partial", 1),
                                                                       ("C", "partial", 1)]
            failed = store.con.execute("SELECT DISTINCT distinct_id FROM export_results WHERE outcome = 'failed'"
                                       ).fetchall()
            assert failed == [("s1",)]
            assert all("500" in r.error for r in runs)
            assert sum(1 for r in patches(emu) if r["path"].endswith("/ext-s1")) == FAST["max_attempts"]
            tags = emu.user_tags(app.app_id)
            assert tags["ext-s1"] == {} and tags["ext-s3"] == {export.tag_key("A"): "1", export.tag_key("C"): "1"}
            again = sync.run_due(store, now=NOW + timedelta(minutes=15), client_options=FAST)
            assert [(r.status, r.added) for r in again] == [("ok", 1)] * 3
        assert emu.user_tags(app.app_id)["ext-s1"] == {export.tag_key(g): "1" for g in "ABC"}


def test_a_refusal_of_a_merged_request_sends_its_changes_one_by_one(tmp_path, monkeypatch):
    """A 400 to the merged request for s1 may be some changes' doing: they are sent again in halves, each
    getting its own answer (here: all accepted)."""
    whole_cycle_at_once(monkeypatch)
    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app()
        credentials(monkeypatch, tmp_path, app)
        db = build(tmp_path, emu, app)
        emu.faults.inject("refuse", method="PATCH", path="/ext-s1")
        with Store(db) as store:
            runs = sync.run_due(store, now=NOW, client_options=FAST)
        assert [(r.status, r.failed) for r in runs] == [("ok", 0)] * 3
        assert [r["status"] for r in patches(emu) if r["path"].endswith("/ext-s1")] == [400, 202, 202]
        assert emu.user_tags(app.app_id)["ext-s1"] == {export.tag_key(g): "1" for g in "ABC"}


def test_a_merged_request_over_the_tag_cap_sends_what_the_cap_allows(tmp_path, monkeypatch):
    """The app allows 2 tags and s1 joins three cohorts: the merged request is refused, OneSignal naming the
    cap; the next one carries two of the keys and is accepted; the third is then refused without a
    request (the user already holds as many tags as the cap allows), recorded as the cap's refusal, and
    its run does not read the user's tags back (it knows why)."""
    whole_cycle_at_once(monkeypatch)
    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app(tag_limit=2)
        credentials(monkeypatch, tmp_path, app)
        db = build(tmp_path, emu, app)
        with Store(db) as store:
            runs = sync.run_due(store, now=NOW, client_options=FAST)
            assert [r.status for r in runs] == ["ok"] * 3, [r.error for r in runs]
            assert sum(r.tag_cap for r in runs) == 1
            refused = store.con.execute("SELECT distinct_id, error FROM export_results WHERE outcome = 'tag_cap'"
                                        ).fetchall()
            assert refused == [("s1", "OneSignal refused: the app allows 2 data tags per user")]
        assert [r["status"] for r in patches(emu) if r["path"].endswith("/ext-s1")] == [400, 202]
        views = [r for r in emu.requests() if r["method"] == "GET" and "/users/by/" in r["path"]]
        assert views == []          # the cap's refusal is this cycle's own tags: no user's tags read back
        assert len(emu.user_tags(app.app_id)["ext-s1"]) == 2


def test_a_user_with_more_keys_than_one_request_takes_gets_them_in_turn(tmp_path, monkeypatch):
    """Beyond OneSignal's 100 keys per request a user's changes are split (the limit lowered to 2 here, for
    three cohorts): two requests, a second apart (OneSignal's per-user limit is on: no 429)."""
    whole_cycle_at_once(monkeypatch)
    monkeypatch.setattr(merged, "MAX_KEYS", 2)
    with Emulator() as emu:
        app = emu.add_app()
        credentials(monkeypatch, tmp_path, app)
        db = build(tmp_path, emu, app)
        with Store(db) as store:
            runs = sync.run_due(store, now=NOW, client_options=FAST)
        assert [r.status for r in runs] == ["ok"] * 3
        assert [r["status"] for r in patches(emu) if r["path"].endswith("/ext-s1")] == [202, 202]
        assert not [r for r in emu.requests() if r["status"] == 429]
        assert emu.user_tags(app.app_id)["ext-s1"] == {export.tag_key(g): "1" for g in "ABC"}


def test_a_key_revoked_while_merged_sends_are_out_pauses_every_waiting_sync(tmp_path, monkeypatch):
    """The key revoked while the merged requests are out: every sync still waiting for answers stops with the
    403 and is paused (as a run sending on its own would be); what was answered before is kept."""
    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app()
        credentials(monkeypatch, tmp_path, app)
        db = build(tmp_path, emu, app)
        emu.faults.inject("hold", method="PATCH", path="/users/")
        with Store(db) as store:
            done: list = []
            cycle = threading.Thread(target=lambda: done.append(sync.run_due(
                store, now=NOW, client_options={**FAST, "concurrency": 1})))
            cycle.start()
            for _ in range(500):
                if emu.held():
                    break
                threading.Event().wait(0.02)
            app.api_key = "revoked-" + app.api_key[8:]
            emu.release()
            cycle.join(60)
            assert not cycle.is_alive()
            runs = done[0]
            assert [r.status for r in runs] == ["paused"] * 3, [r.error for r in runs]
            assert all("403" in r.error for r in runs)
            assert sorted(p["cohort"] for p in export.paused(store.con)) == ["A", "B", "C"]


def test_chunks_keep_to_100_keys_and_one_change_per_key():
    """Pure: 250 cohorts' keys for one user make three requests of at most 100; a run's removal and addition
    of its key go together; the same key from two runs (a run started again) goes in two requests."""
    first, second = object(), object()
    target = Target("ext-u", "external_id")

    def change(key, operation=ADD, answers=first):
        return merged.Change(("external_id", "ext-u"), Step("u", operation, target), key,
                             "1" if operation == ADD else "", answers)

    many = [change(f"k{i}", answers=object()) for i in range(250)]
    assert [len(c) for c in merged.chunks(many)] == [100, 100, 50]
    moved = [change("k", REMOVE), change("k", ADD)]
    assert merged.chunks(moved) == [moved]
    again = [change("k"), change("k", answers=second)]
    assert merged.chunks(again) == [[again[0]], [again[1]]]


def test_a_player_id_is_looked_up_once_for_the_runs_of_a_cycle():
    """The first run to ask looks it up; the others wait for its answer. A lookup that failed is no answer:
    the next run asking looks it up itself."""
    sends = merged.MergedSends(2)

    async def scenario():
        assert await sends.looked_up("sub-1") is merged.NOT_LOOKED_UP          # this run looks it up
        waiting = asyncio.ensure_future(sends.looked_up("sub-1"))
        await asyncio.sleep(0)
        assert not waiting.done()
        sends.look_up_done("sub-1", "onesignal-1")
        assert await waiting == "onesignal-1"
        assert await sends.looked_up("sub-1") == "onesignal-1"                 # and later runs too
        assert await sends.looked_up("sub-2") is merged.NOT_LOOKED_UP
        waiting = asyncio.ensure_future(sends.looked_up("sub-2"))
        await asyncio.sleep(0)
        sends.look_up_done("sub-2", merged.NOT_LOOKED_UP)                      # its lookup failed
        assert await waiting is merged.NOT_LOOKED_UP                           # so this one looks it up

    asyncio.run(scenario())


def test_the_cycle_counts_the_tags_it_set_on_a_user_across_its_requests():
    """Sending early, a user's changes come in several requests. The app allows 2 tags: two are accepted,
    the third is refused by OneSignal, known to be the cycle's own doing (no reading back), and the fourth
    is then the cap's refusal without a request."""
    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app(tag_limit=2)
        emu.add_user(app.app_id, "ext-u")
        sends = merged.MergedSends(5, early=True)
        target, alias = Target("ext-u", "external_id"), ("external_id", "ext-u")
        answers = []
        # The emulator takes the user's updates at any pace: no second between them to wait out.
        unspaced = {**FAST, "limiter": AppBudget(10, user_spacing=0.0)}
        try:
            for cohort in "ABCD":
                step = Step(f"u-{cohort}", ADD, target)
                got = sends.submit(cohort, [(alias, step, f"k{cohort}", "1")],
                                   Credentials(app.app_id, app.api_key), emu.url, unspaced)
                answers.append(answer(got)[2:5])
        finally:
            sends.close()
        assert [(outcome, known) for outcome, _, known in answers] == [
            ("ok", False), ("ok", False), ("tag_cap", True), ("tag_cap", True)]
        assert [r["status"] for r in patches(emu)] == [202, 202, 400]
        assert emu.user_tags(app.app_id)["ext-u"] == {"kA": "1", "kB": "1"}


def test_a_merged_request_the_known_tags_take_over_the_cap_carries_only_what_fits(tmp_path, monkeypatch):
    """The toolkit knows the app allows 2 tags and s1 joins three cohorts at once: its one request carries two
    of the keys and OneSignal answers no 400 (no request again in parts, a second apart, at the cycle's end);
    the third cohort records the cap's refusal without a request, saying what the user carries, and its
    next run holds the member back (no request for it)."""
    whole_cycle_at_once(monkeypatch)
    with Emulator() as emu:
        app = emu.add_app(tag_limit=2)
        credentials(monkeypatch, tmp_path, app)
        db = build(tmp_path, emu, app)
        with Store(db) as store:
            export.set_tag_limit(store, app.app_id, 2)
            runs = sync.run_due(store, now=NOW, client_options=FAST)
            assert [r.status for r in runs] == ["ok"] * 3, [r.error for r in runs]
            assert sum(r.tag_cap for r in runs) == 1
            refused = store.con.execute("SELECT distinct_id, error FROM export_results WHERE outcome = 'tag_cap'"
                                        ).fetchall()
            assert refused == [("s1", "not sent: the app allows 2 data tags per user and this user carries 2 "
                                "other(s)")]
            assert [r["status"] for r in patches(emu) if r["path"].endswith("/ext-s1")] == [202]
            assert not [r for r in emu.requests() if r["status"] in (400, 429)]
            assert len(emu.user_tags(app.app_id)["ext-s1"]) == 2
            before = len(patches(emu))
            again = sync.run_due(store, now=NOW + timedelta(minutes=15), client_options=FAST)
            assert [r.status for r in again] == ["ok"] * 3 and sum(r.tag_cap for r in again) == 1
            assert patches(emu)[before:] == []


def test_a_user_waiting_out_its_second_holds_no_worker():
    """One worker, sending early: u's second change comes within a second of its first request, then v's
    change. OneSignal takes one update per user per second, so u waits; v is sent meanwhile (the worker
    does not wait out u's second), and u's second request goes once its second is over (no 429)."""
    with Emulator() as emu:
        app = emu.add_app()
        for user in ("u", "v"):
            emu.add_user(app.app_id, f"ext-{user}")
        sends = merged.MergedSends(3, concurrency=1, early=True)
        credentials_ = Credentials(app.app_id, app.api_key)

        def change(user, cohort):
            return (("external_id", f"ext-{user}"), Step(f"{user}-{cohort}", ADD, Target(f"ext-{user}", "external_id")),
                    f"k{cohort}", "1")

        try:
            first = sends.submit("A", [change("u", "A")], credentials_, emu.url, FAST)
            assert answer(first)[2] == "ok"
            later = [sends.submit("B", [change("u", "B")], credentials_, emu.url, FAST),
                     sends.submit("C", [change("v", "C")], credentials_, emu.url, FAST)]
            assert [answer(answers)[2] for answers in later] == ["ok", "ok"]
        finally:
            sends.close()
    assert [r["path"].rsplit("/", 1)[1] for r in patches(emu)] == ["ext-u", "ext-v", "ext-u"]
    assert not [r for r in emu.requests() if r["status"] == 429]


@contextlib.contextmanager
def v_held():
    """The emulator, an app with users u and v, v's updates held until released (at the latest on leaving)."""
    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app()
        for user in ("u", "v"):
            emu.add_user(app.app_id, f"ext-{user}")
        emu.faults.inject("hold", method="PATCH", path="/ext-v")
        try:
            yield emu, app
        finally:
            emu.release()


def _add(user: str, cohort: str = "A") -> tuple:
    return (("external_id", f"ext-{user}"), Step(user, ADD, Target(f"ext-{user}", "external_id")), f"k{cohort}", "1")


def test_runs_write_their_last_results_once_the_cycles_sends_are_over():
    """``wait_sent`` (what a run waits for before writing its last results and record) returns only once
    every run has handed over and every change is answered: not while another run's request is held."""
    with v_held() as (emu, app):
        sends = merged.MergedSends(2)
        credentials_ = Credentials(app.app_id, app.api_key)
        try:
            answers = [sends.submit(cohort, [_add(user, cohort)], credentials_, emu.url, FAST)
                       for cohort, user in (("A", "u"), ("B", "v"))]
            assert answer(answers[0])[2] == "ok"
            for _ in range(500):
                if emu.held():
                    break
                threading.Event().wait(0.02)
            waiting = threading.Thread(target=sends.wait_sent)
            waiting.start()
            waiting.join(0.3)
            assert waiting.is_alive()           # v's request is held: the cycle's sends are not over
            emu.release()
            assert answer(answers[1])[2] == "ok"
            waiting.join(30)
            assert not waiting.is_alive()
        finally:
            emu.release()
            sends.close()


def test_a_runs_answers_reach_it_together_once_sending_is_over(monkeypatch):
    """A run's answers gather (``ANSWER_EVERY``, here longer than the test) instead of waking the run once a
    change, and reach it at once when every change is answered."""
    monkeypatch.setattr(merged, "ANSWER_EVERY", 600.0)
    users = sorted(f"u{i:02d}" for i in range(30))
    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app()
        for user in users:
            emu.add_user(app.app_id, f"ext-{user}")
        sends = merged.MergedSends(1)
        try:
            got = sends.submit("A", [_add(user) for user in users], Credentials(app.app_id, app.api_key),
                               emu.url, FAST)
            batch = got.get(timeout=30)
            assert sorted(a[1].distinct_id for a in batch) == users
            assert {a[2] for a in batch} == {"ok"}
            assert got.empty()
        finally:
            sends.close()


def test_a_stopped_cycles_runs_get_their_answers_before_the_interruption(monkeypatch):
    """Ctrl-C: what OneSignal answered reaches its run before the interruption does, so the run records it
    (else the next cycle sends it again)."""
    monkeypatch.setattr(merged, "ANSWER_EVERY", 600.0)
    with v_held() as (emu, app):
        sends = merged.MergedSends(1)
        try:
            got = sends.submit("A", [_add("u"), _add("v")], Credentials(app.app_id, app.api_key), emu.url, FAST)
            for _ in range(1500):        # u answered (its answer gathering for the run), v's request held
                if emu.held() and sum(len(b) for b in list(sends._outbox.values())) == 1:
                    break
                threading.Event().wait(0.02)
            else:
                pytest.fail("u's answer never came while v's request was held")
            sends.stop()
            first, then = got.get(timeout=30), got.get(timeout=30)
            assert [(a[1].distinct_id, a[2]) for a in first] == [("u", "ok")]
            assert isinstance(then, KeyboardInterrupt)
        finally:
            sends.close()


def test_the_cycles_runs_view_each_refused_user_once_at_the_apps_view_rate(tmp_path, monkeypatch):
    """s1 (in A, B and C) and s3 (in A and C) carry two tags set outside the toolkit on an app allowing 2:
    OneSignal refuses them to every cohort, and the runs read their tags back. OneSignal's View user limit is
    the app's (1/s; the emulator's look-back lowered to 2 views, so a burst shows): the cycle views each user
    once, the views a second apart, none answered 429."""
    monkeypatch.setattr(limits, "VIEW_BURST", 2)
    whole_cycle_at_once(monkeypatch)
    with Emulator(user_rate_limit=0, view_rate_limit=1.0) as emu:
        app = emu.add_app(tag_limit=2)
        credentials(monkeypatch, tmp_path, app)
        db = build(tmp_path, emu, app)
        with SyncOneSignalClient(Credentials(app.app_id, app.api_key), emu.url) as client:
            for user in ("ext-s1", "ext-s3"):
                client.update_tags("external_id", user, {"vip": "1", "plan": "gold"})   # outside the toolkit
        with Store(db) as store:
            export.set_tag_limit(store, app.app_id, 2)
            runs = sync.run_due(store, now=NOW, client_options=FAST)
            assert [r.status for r in runs] == ["ok"] * 3, [r.error for r in runs]
            assert sum(r.tag_cap for r in runs) == 5
            known = dict(store.con.execute("SELECT onesignal_id, tag_keys FROM known_user_tags").fetchall())
            assert known == {"ext-s1": ["plan", "vip"], "ext-s3": ["plan", "vip"]}
    views = [r for r in emu.requests() if r["method"] == "GET" and "/users/by/" in r["path"]]
    assert sorted(r["path"].rsplit("/", 1)[1] for r in views) == ["ext-s1", "ext-s3"]
    assert [r["status"] for r in views] == [200, 200]
    assert views[1]["t"] - views[0]["t"] > 0.9


def test_a_cycle_views_each_user_once_and_at_most_its_allowance():
    """Pure accounting: users claimed by one run are not viewed again by another; the cycle's allowance runs
    out across runs."""
    budget = ViewBudget(allowance=3)
    assert budget.claim(["u1", "u2", "u1"]) == ["u1", "u2"]
    assert budget.claim(["u2", "u3", "u4"]) == ["u3"]
    assert budget.claim(["u5"]) == [] and budget.allowance == 0


def test_a_cohort_named_twice_in_a_cycle_does_not_keep_its_other_runs_waiting(tmp_path, monkeypatch):
    """Runs write their last results once the cycle's sends are over, which needs every run to have handed
    over: a cohort named twice runs once (sync._once_each), one run to wait for."""
    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app()
        credentials(monkeypatch, tmp_path, app)
        db = build(tmp_path, emu, app)
        with Store(db) as store:
            done: list = []
            cycle = threading.Thread(target=lambda: done.append(sync.run_due(
                store, now=NOW, cohorts=["A", "A", "B", "C"], client_options=FAST)), daemon=True)
            cycle.start()
            cycle.join(120)
            assert not cycle.is_alive()
            assert sorted((r.cohort, r.status) for r in done[0]) == [("A", "ok"), ("B", "ok"), ("C", "ok")]
