"""The fifteen-minute cycle of many dynamic syncs (sync.run_due): cohorts evaluated together, unchanged ones
sending nothing, and the runs sharing the app's rate budget (rate_budget.AppBudget). Real store files and the
real emulator over HTTP; the emulator's request log is the witness."""

import logging
from collections import deque
from datetime import timedelta

import pytest

from helpers import NOW, event, write_lines
from toolkit import Store, cohorts, export, kept_pass, load, sync
from toolkit.emulator import Emulator
from toolkit.export import merged
from toolkit.onesignal import Credentials, SyncOneSignalClient
from toolkit.rate_budget import AppBudget

pytestmark = pytest.mark.slow     # end to end: whole fifteen-minute cycles

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0, "max_attempts": 3}


SUBSCRIPTION = "8f0c8b1e-6a51-4c39-9d2e-3f6f3f1b2a77"      # a Player ID, resolved to its user by each run


def build(tmp_path, emu, app, groups: dict[str, list[str]], shared: list[str] = (), subscriber: bool = False):
    """A store whose cohort G holds the users of ``groups[G]`` (each did event G) and ``shared`` (who did
    every event), each with a OneSignal external id the emulator knows; a dynamic sync per cohort. With
    ``subscriber``, one more user in every cohort is known to OneSignal by its subscription id only."""
    if subscriber:
        shared = [*shared, "sub"]
        emu.add_user(app.app_id, None, [SUBSCRIPTION])
    data = tmp_path / "data"
    data.mkdir()
    users = [u for members in groups.values() for u in members] + list(shared)
    write_lines(data / "events.jsonl",
                [event(g, u, insert_id=f"{g}-{u}") for g, members in groups.items() for u in [*members, *shared]])
    write_lines(data / "profiles.jsonl", [{"$distinct_id": u, "$properties": {
        "$onesignal_user_id": SUBSCRIPTION if u == "sub" else f"ext-{u}"}} for u in users])
    for u in users:
        if u != "sub":
            emu.add_user(app.app_id, f"ext-{u}")
    db = tmp_path / "store.duckdb"
    with Store(db) as store:
        load(store, [data], now=NOW)
        cohorts.save_all(store, [{"name": g, "rules": [{"event": g}]} for g in groups])
        for g in groups:
            export.register(store, g, "dynamic", app.app_id, emu.url, now=NOW)
    return db


def credentials(monkeypatch, tmp_path, app):
    monkeypatch.setenv("ONESIGNAL_APP_ID", app.app_id)
    monkeypatch.setenv("ONESIGNAL_API_KEY", app.api_key)
    monkeypatch.setenv("TOOLKIT_CREDENTIALS", str(tmp_path / "no-credentials.json"))


def test_unchanged_cohorts_send_no_request_at_all(tmp_path, monkeypatch, users_unspaced):
    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app()
        credentials(monkeypatch, tmp_path, app)
        db = build(tmp_path, emu, app, {"A": ["a1", "a2"], "B": ["b1"], "C": ["c1", "c2"]}, shared=["s1"])
        with Store(db) as store:
            first = sync.run_due(store, now=NOW, client_options=FAST)
            assert [(r.cohort, r.status, r.added) for r in first] == [("A", "ok", 3), ("B", "ok", 2), ("C", "ok", 3)]
            sent = len(emu.requests())
            again = sync.run_due(store, now=NOW + timedelta(minutes=15), client_options=FAST)
            assert [(r.status, r.added, r.removed, r.unchanged) for r in again] == [("ok", 0, 0, 3), ("ok", 0, 0, 2),
                                                                                    ("ok", 0, 0, 3)]
            assert emu.requests()[sent:] == []                  # not even the segments were touched
            assert export.due(store, NOW + timedelta(minutes=29)) == []     # the runs still count as runs


def test_the_cycle_evaluates_its_cohorts_together(tmp_path, monkeypatch, users_unspaced):
    """The runs get their members from the shared pass: evaluating a cohort on its own is never called."""
    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app()
        credentials(monkeypatch, tmp_path, app)
        db = build(tmp_path, emu, app, {"A": ["a1"], "B": ["b1", "b2"]}, shared=["s1"])

        def alone(*args, **kwargs):
            raise AssertionError("a cohort of the cycle was evaluated on its own")

        monkeypatch.setattr(export, "exportable", alone)
        with Store(db) as store:
            runs = sync.run_due(store, now=NOW, client_options=FAST)
        assert [(r.cohort, r.status, r.members, r.added) for r in runs] == [("A", "ok", 2, 2), ("B", "ok", 3, 3)]
        assert {u for u, tags in emu.user_tags(app.app_id).items() if tags.get(export.tag_key("B"))} == \
            {"ext-b1", "ext-b2", "ext-s1"}


def test_the_next_cycle_brings_the_kept_pass_up_to_date(tmp_path, monkeypatch, users_unspaced, caplog):
    """The first cycle keeps its pass (toolkit/kept_pass.py); the next brings it up to date instead of
    evaluating it whole, and sends exactly what changed: a1, who did B after the first cycle, joins B."""
    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app()
        credentials(monkeypatch, tmp_path, app)
        db = build(tmp_path, emu, app, {"A": ["a1"], "B": ["b1"]}, shared=["s1"])
        evaluated: list[int | None] = []
        real = kept_pass.refresh
        monkeypatch.setattr(kept_pass, "refresh", lambda *args: evaluated.append(real(*args)) or evaluated[-1])
        with Store(db) as store:
            sync.run_due(store, now=NOW, client_options=FAST)
            load(store, [write_lines(tmp_path / "later.jsonl", [event("B", "a1", insert_id="B-a1")])], now=NOW)
            with caplog.at_level(logging.INFO, logger="toolkit.sync"):
                again = sync.run_due(store, now=NOW + timedelta(minutes=15), client_options=FAST)
        assert evaluated == [None, 1]           # whole, then a1 alone
        assert "the kept pass brought up to date, 1 user(s) evaluated again" in caplog.text
        assert [(r.cohort, r.status, r.added, r.removed) for r in again] == [("A", "ok", 0, 0), ("B", "ok", 1, 0)]
        assert emu.user_tags(app.app_id)["ext-a1"] == {export.tag_key("A"): "1", export.tag_key("B"): "1"}


class _Logged(deque):
    """The budget's window of grant times, every grant also written to ``log``."""

    def __init__(self, window: deque, log: list):
        super().__init__(window, maxlen=window.maxlen)
        self.log = log

    def append(self, granted_at):
        self.log.append(granted_at)
        super().append(granted_at)


def test_cohorts_changing_at_once_share_the_app_budget_fairly_and_never_exceed_it(tmp_path, monkeypatch):
    """Three cohorts of 40 users, and one user in all three, sent at once to an app allowing 20 requests/s
    and one update per user per second: the shared budget grants no more than 20 requests in any second,
    the shared user gets one request with the three cohorts' tags (export.merged), and each cohort
    progresses from the start (none waits for another to finish).

    Deterministic (it failed once on a loaded machine when it was timed): the rate is witnessed by the
    budget's own grant times (its clock), not by the emulator timing arrivals, whose jitter on a busy
    machine can bunch requests the budget spaced; and the sender starts once every run has handed its
    changes over (``merged.SEND_EARLY`` off), so the order of the sends is the sender's own, not the race
    between runs still being prepared and sends already going."""
    rate, size = 20, 40
    groups = {g: [f"{g.lower()}{n}" for n in range(size)] for g in ("A", "B", "C")}
    grants: list[float] = []
    budgets = []

    def witnessed(*args, **kwargs):
        budget = AppBudget(*args, **kwargs)
        budget._released = _Logged(budget._released, grants)
        budgets.append(budget)
        return budget

    monkeypatch.setattr(sync, "AppBudget", witnessed)
    monkeypatch.setattr(merged, "SEND_EARLY", False)
    with Emulator() as emu:
        app = emu.add_app()
        credentials(monkeypatch, tmp_path, app)
        db = build(tmp_path, emu, app, groups, shared=["s1"])
        with Store(db) as store:
            runs = sync.run_due(store, now=NOW, client_options={**FAST, "max_rps": rate, "concurrency": 8})
        assert [(r.status, r.added) for r in runs] == [("ok", size + 1)] * 3
        log = emu.requests()
        assert [r for r in log if r["status"] == 429] == []
        patches = [r["path"].rsplit("/", 1)[1] for r in log if r["method"] == "PATCH" and "/users/" in r["path"]]
        assert len(patches) == 3 * size + 1 and patches.count("ext-s1") == 1
        assert emu.user_tags(app.app_id)["ext-s1"] == {export.tag_key(g): "1" for g in groups}
        # Every request went through the one budget, which let no more than `rate` start within a second.
        (budget,) = budgets
        assert budget.granted == len(grants) >= len(patches)
        assert all(first + 1.0 <= later for first, later in zip(grants, grants[rate:], strict=False))
        owner = {f"ext-{u}": g for g, members in groups.items() for u in members}
        order = [owner[p] for p in patches if p in owner]
        half, third = len(order) // 2, len(order) // 3
        assert set(order[:half]) == {"A", "B", "C"}             # all started together (one after the other,
        assert set(order[-third:]) == {"A", "B", "C"}           # C would start past half) and none was done first


def test_runs_at_once_that_write_one_row_start_again_and_all_end_ok(tmp_path, monkeypatch):
    """A dead run's record is marked interrupted by every run's start: sixteen runs at once write that one
    row, DuckDB refuses all but one, and the others start again (nothing of them was kept). And each run
    resolves the same subscription id and caches it: one row, written by one run at a time."""
    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app()
        credentials(monkeypatch, tmp_path, app)
        db = build(tmp_path, emu, app, {g: [f"{g.lower()}1"] for g in "ABCDEFGHIJKLMNOP"}, subscriber=True)
        with Store(db) as store:
            store.con.execute("INSERT INTO export_runs (run_id, cohort, mode, dry_run, started_at, status, pid) "
                              "VALUES (nextval('run_ids'), 'Gone', 'dynamic', false, ?, 'running', 0)",
                              [NOW.replace(tzinfo=None)])
            runs = sync.run_due(store, now=NOW, client_options=FAST)
            assert [(r.status, r.added) for r in runs] == [("ok", 2)] * 16, [r.error for r in runs]
            assert store.con.execute("SELECT status FROM export_runs WHERE cohort = 'Gone'").fetchall() == \
                [("interrupted",)]
            assert store.con.execute("SELECT count(*) FROM export_runs WHERE cohort <> 'Gone'").fetchone()[0] == 16
        assert sum(tags.get(export.tag_key(g)) == "1" for tags in emu.user_tags(app.app_id).values()
                   for g in "ABCDEFGHIJKLMNOP") == 32


def test_runs_refused_by_the_tag_cap_at_once_each_learn_the_users_tags(tmp_path, monkeypatch):
    """Six cohorts share a user carrying a tag of its own on an app whose plan allows 2 tags: OneSignal
    refuses the user to five of them, each of those runs reads its tags back and keeps them (one row per
    user, written by one run at a time), and every run ends with its outcome recorded."""
    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app(tag_limit=2)
        credentials(monkeypatch, tmp_path, app)
        db = build(tmp_path, emu, app, {g: [f"{g.lower()}1"] for g in "ABCDEF"}, shared=["s1"])
        with SyncOneSignalClient(Credentials(app.app_id, app.api_key), emu.url) as client:
            client.update_tags("external_id", "ext-s1", {"vip": "1"})     # set outside the toolkit
        with Store(db) as store:
            runs = sync.run_due(store, now=NOW, client_options=FAST)
            assert [r.status for r in runs] == ["ok"] * 6, [r.error for r in runs]
            assert sum(r.tag_cap for r in runs) == 5 and sum(r.added for r in runs) == 7
            assert store.con.execute("SELECT count(*) FROM export_runs WHERE status <> 'ok'").fetchone()[0] == 0
            assert store.con.execute("SELECT onesignal_id, len(tag_keys) FROM known_user_tags").fetchall() == \
                [("ext-s1", 2)]
        assert len(emu.user_tags(app.app_id)["ext-s1"]) == 2
