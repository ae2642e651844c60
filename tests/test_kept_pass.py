"""A sync cycle's pass kept in the store and brought up to date (toolkit/kept_pass.py): after any sequence of
loads (events, identity links, profiles, updates and deletions) and of moves of ``now`` across the windows'
edges, the kept pass answers exactly what evaluating the whole pass answers, for every cohort. A snapshot
in step with the kept pass is diffed on the changed users alone, with the plans diffing every member gives."""

import datetime as dt
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_delta import IDS, linking, snapshot, update, write

from helpers import NOW, T0, event, rows, write_lines
from toolkit import cohort_batch, kept_pass, matching
from toolkit.cohort_model import parse
from toolkit.loading import derived, run
from toolkit.store import Store

HOUR = 3600
DEFINITIONS = [parse(d) for d in [
    {"name": "viewed in 1d", "rules": [{"event": "Page View", "last_days": 1}]},
    {"name": "bought twice in 3d", "rules": [{"event": "Purchase", "operator": "at_least", "count": 2,
                                              "last_days": 3}]},
    {"name": "no purchase in 2d", "rules": [{"event": "Purchase", "did": False, "last_days": 2}]},
    {"name": "first purchase in 2d", "rules": [{"event": "Purchase", "first_time_last_days": 2}]},
    {"name": "free plan", "rules": [{"property": "plan", "operator": "equals", "value": "free"}]},
    {"name": "has an id, viewed x=1", "rules": [{"property": "$onesignal_user_id", "operator": "is_set"},
                                                {"event": "Page View", "where": [
                                                    {"property": "x", "operator": "equals", "value": 1}]}]},
    {"name": "viewers not free", "rules": [{"in_cohort": "viewed in 1d"}, {"not_in_cohort": "free plan"}]},
    {"name": "early viewers", "rules": [{"event": "Page View", "between": ["2026-09-21", "2026-09-22"]}]},
]]
NAMES = [d.name for d in DEFINITIONS]
START = dt.datetime.fromtimestamp(T0, dt.UTC)

spread = st.builds(lambda name, did, hours, x: event(name, did, T0 + hours * HOUR, None, x=x),
                   st.sampled_from(["Page View", "Purchase"]), st.sampled_from(IDS), st.integers(0, 120),
                   st.integers(0, 1))
events_file = st.tuples(st.just("events"), st.lists(st.one_of(spread, spread, linking), min_size=1, max_size=10))
profiles_file = st.tuples(st.just("profiles"), st.lists(snapshot, min_size=1, max_size=4))
updates_file = st.tuples(st.just("updates"), st.lists(update, min_size=1, max_size=4))
# a cycle: some files loaded, then the pass at a moment (hours after the first event: windows' edges move)
CYCLES = st.lists(st.tuples(st.lists(st.one_of(events_file, profiles_file, updates_file), max_size=2),
                            st.integers(0, 150)), min_size=2, max_size=5)


def members(store: Store, *, keep: bool, now: dt.datetime) -> dict[str, list[str]]:
    found = cohort_batch.evaluate(store, NAMES, now=now, definitions=DEFINITIONS, keep=keep)
    return {name: sorted(r[0] for r in rows(store, found.query(name).sql, found.query(name).params))
            for name in NAMES}


def classified(store: Store, *, keep: bool, now: dt.datetime, id_type: str) -> tuple[dict[str, list[str]], list]:
    """``members``, and every member's row as ``cohort_batch.classify`` gives it (kept, or in a temp table)."""
    found = cohort_batch.evaluate(store, NAMES, now=now, definitions=DEFINITIONS, keep=keep)
    matched = cohort_batch.classify(store, found, id_type=id_type, keep=keep)
    assert (matched.table == kept_pass.MATCHED) == keep
    listed = ", ".join([*matching.COLUMNS, *found.masks])
    return ({name: sorted(r[0] for r in rows(store, found.query(name).sql, found.query(name).params))
             for name in NAMES}, sorted(rows(store, f"SELECT {listed} FROM {matched.table}"), key=str))


@pytest.fixture
def refreshes(monkeypatch) -> list[bool]:
    """Whether each kept pass was brought up to date (True) or evaluated whole."""
    taken: list[bool] = []
    real = kept_pass.refresh

    def recorded(*args, **kwargs):
        again = real(*args, **kwargs)
        taken.append(again is not None)
        return again

    monkeypatch.setattr(kept_pass, "refresh", recorded)
    return taken


@pytest.mark.slow   # 25 sequences of loads and passes
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(CYCLES, st.sampled_from(matching.ID_TYPES))
def test_a_kept_pass_answers_what_the_whole_pass_answers(new_store, refreshes, cycles, id_type):
    """And its users classified, kept and brought up to date with it, are classified as the whole pass's."""
    with tempfile.TemporaryDirectory() as tmp, Store(new_store(Path(tmp) / "s.duckdb")) as store:
        refreshes.clear()
        for n, (files, hours) in enumerate(cycles):
            (Path(tmp) / f"c{n}").mkdir()
            for path in write(Path(tmp) / f"c{n}", files):
                run.load(store, [path], now=NOW)
            everyone = rows(store, "SELECT count(*) FROM member_changes WHERE distinct_id IS NULL")[0][0]
            now = START + dt.timedelta(hours=hours)
            kept = classified(store, keep=True, now=now, id_type=id_type)
            # whole only the first time, or after a load that re-resolved every identity (the first links)
            assert refreshes[-1] == (n > 0 and not everyone)
            assert kept == classified(store, keep=False, now=now, id_type=id_type), f"cycle {n} at +{hours} h"


def test_only_changed_users_and_crossed_windows_are_evaluated_again(new_store, tmp_path, refreshes):
    """Nothing loaded and the same now: no user is evaluated again. Two hours later, only users with an
    event at a window's edge; after a load, its users."""
    store = Store(new_store(tmp_path / "s.duckdb"))
    run.load(store, [write_lines(tmp_path / "a.jsonl", [
        event("Page View", f"u{n}", T0 + n * HOUR) for n in range(48)])], now=NOW)
    now = START + dt.timedelta(days=2)                    # "viewed in 1d": u24..u47
    evaluated = []
    real = kept_pass._changed_users

    def spy(con, since, slices):
        real(con, since, slices)
        evaluated.append(sorted(r[0] for r in con.execute(f"SELECT id FROM {kept_pass.USERS}").fetchall()))

    def viewers(at):
        return members(store, keep=True, now=at)["viewed in 1d"]

    kept_pass._changed_users = spy
    try:
        assert viewers(now) == sorted(f"u{n}" for n in range(24, 48))
        assert viewers(now) == sorted(f"u{n}" for n in range(24, 48))
        assert evaluated[-1] == []
        later = now + dt.timedelta(hours=2)                # u24 and u25 leave the window
        assert viewers(later) == sorted(f"u{n}" for n in range(26, 48))
        # events at [old edge, new edge] of each window that moved, both ends in: 1 day, 2 days (now: none)
        assert evaluated[-1] == ["u0", "u1", "u2", "u24", "u25", "u26"]
        run.load(store, [write_lines(tmp_path / "b.jsonl", [event("Page View", "u3", T0 + 49 * HOUR)])], now=NOW)
        assert viewers(later) == sorted(["u3", *(f"u{n}" for n in range(26, 48))])
        assert evaluated[-1] == ["u3"]
    finally:
        kept_pass._changed_users = real
        store.close()
    assert refreshes == [False, True, True, True]
    with Store(tmp_path / "s.duckdb", read_only=True) as after:    # what the last pass took in is let go
        assert rows(after, "SELECT count(*) FROM member_changes") == [(0,)]


def test_the_kept_classification_classifies_again_only_the_users_evaluated_again(new_store, tmp_path,
                                                                                    monkeypatch):
    """Fifteen minutes on with nothing loaded, no user is classified again; after a profile takes a
    OneSignal id two others share, it and both other holders are (their detail names it), and the kept
    rows equal a whole classification. Another id type, or a pass evaluated whole, classifies everyone."""
    store = Store(new_store(tmp_path / "s.duckdb"))
    run.load(store, [write_lines(tmp_path / "p.jsonl", [
        {"$distinct_id": d, "$properties": {"$onesignal_user_id": v, "plan": "free"}}
        for d, v in (("a", "os-1"), ("b", "os-1"), ("c", "os-2"), ("d", "os-3"))])], now=NOW)
    relations: list[str] = []
    real = matching.classify_sql

    def spy(members, **options):
        relations.append(members.sql)
        return real(members, **options)

    monkeypatch.setattr(matching, "classify_sql", spy)
    again = f"WHERE distinct_id IN (SELECT id FROM {kept_pass.USERS})"
    try:
        first = classified(store, keep=True, now=START, id_type="auto")
        assert again not in relations[-1]                                  # no classification kept yet
        assert classified(store, keep=True, now=START + dt.timedelta(minutes=15), id_type="auto") == first
        assert again in relations[-1] and rows(store, f"SELECT count(*) FROM {kept_pass.USERS}") == [(0,)]
        run.load(store, [write_lines(tmp_path / "u.jsonl", [
            {"$distinct_id": "c", "$set": {"$onesignal_user_id": "os-1"}}])], now=NOW)
        later = START + dt.timedelta(minutes=30)
        kept = classified(store, keep=True, now=later, id_type="auto")
        assert again in relations[-1]
        users = {r[0] for r in rows(store, f"SELECT id FROM {kept_pass.USERS}")}
        assert {"a", "b", "c"} <= users and "d" not in users        # (and the id values themselves)
        whole = classified(store, keep=False, now=later, id_type="auto")
        assert kept == whole and kept != first
        assert [r[5] for r in kept[1] if r[0] == "a"][0].startswith("external_id also on b, c;")
        classified(store, keep=True, now=later + dt.timedelta(minutes=15), id_type="external_id")
        assert again not in relations[-1]                                  # kept for another id type
    finally:
        store.close()


def test_loads_record_changed_users_only_while_a_pass_is_kept(new_store, tmp_path, monkeypatch):
    with Store(new_store(tmp_path / "s.duckdb")) as store:
        run.load(store, [write_lines(tmp_path / "a.jsonl", [event("Page View", "u1", T0)])], now=NOW)
        assert rows(store, "SELECT count(*) FROM member_changes") == [(0,)]
        classified(store, keep=True, now=NOW, id_type="auto")
        assert rows(store, "SELECT count(*) FROM kept_matched") == [(1,)]
        run.load(store, [write_lines(tmp_path / "b.jsonl", [event("Page View", "u2", T0)])], now=NOW)
        assert rows(store, "SELECT distinct_id FROM member_changes") == [("u2",)]
        # cycles stopped, loads went on: past the cap the pass is let go, and the log with it
        monkeypatch.setattr(derived, "MAX_MEMBER_CHANGES", 1)
        run.load(store, [write_lines(tmp_path / "c.jsonl", [event("Page View", f"u{n}", T0) for n in (3, 4)])],
                 now=NOW)
        assert rows(store, "SELECT distinct_id FROM member_changes ORDER BY 1") == [("u2",), ("u3",), ("u4",)]
        run.load(store, [write_lines(tmp_path / "d.jsonl", [event("Page View", "u5", T0)])], now=NOW)
        assert rows(store, "SELECT (SELECT count(*) FROM member_changes), (SELECT count(*) FROM kept_pass), "
                           "(SELECT count(*) FROM kept_pass_state), (SELECT count(*) FROM kept_matched), "
                           "(SELECT count(*) FROM kept_matched_state)") == [(0, 0, 0, 0, 0)]
        run.load(store, [write_lines(tmp_path / "e.jsonl", [event("Page View", "u6", T0)])], now=NOW)
        assert rows(store, "SELECT count(*) FROM member_changes") == [(0,)]
        assert members(store, keep=True, now=NOW) == members(store, keep=False, now=NOW)   # whole again


@pytest.mark.slow
def test_snapshots_in_step_are_diffed_on_the_changed_users_alone_with_the_same_plans(tmp_path, monkeypatch,
                                                                                       users_unspaced):
    """A cycle that applied every plan leaves its snapshots in step with its pass. After loads that move
    users in and out, change a OneSignal id, delete a profile, merge an anonymous user into a known one,
    and time that empties a window, the next cycle's plans, made by diffing the changed users alone,
    equal the plans made by diffing every member."""
    from test_cycle import FAST, build, credentials

    from toolkit import cohorts, export, snapshots, sync
    from toolkit.emulator import Emulator
    from toolkit.export import cycle_plans

    anon = "9b2e4c1a-7d3f-4e8a-b5c6-0f1e2d3c4b5a"
    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app()
        credentials(monkeypatch, tmp_path, app)
        db = build(tmp_path, emu, app, {"A": ["a1", "a2", "a3"], "B": ["b1", "b2"], "C": ["c1"]}, shared=["s1"])
        first, second = START + dt.timedelta(hours=12), START + dt.timedelta(days=2)
        with Store(db) as store:
            cohorts.save_all(store, [{"name": "A today", "rules": [{"event": "A", "last_days": 1}]}])
            export.register(store, "A today", "dynamic", app.app_id, emu.url, now=first)
            names = sorted(["A", "B", "C", "A today"])
            runs = sync.run_due(store, now=first, cohorts=names, client_options=FAST)
            assert [r.status for r in runs] == ["ok"] * 4
            marks = rows(store, "SELECT count(*) FROM export_snapshots WHERE in_step_with IS NOT NULL")
            assert marks == [(4,)]
            run.load(store, [write_lines(tmp_path / "later.jsonl", [
                event("A", "b1", T0 + 30 * HOUR), event("B", "n1", T0 + 30 * HOUR),
                event("C", anon, T0 + 30 * HOUR),
                event("$identify", "a3", T0 + 31 * HOUR, **{"$anon_id": anon, "$identified_id": "a3"})]),
                write_lines(tmp_path / "later-updates.jsonl", [
                    {"$distinct_id": "a2", "$set": {"$onesignal_user_id": "ext-a2-new"}},
                    {"$distinct_id": "c1", "$delete": None},
                    {"$distinct_id": "n1", "$set": {"$onesignal_user_id": "ext-n1"}}])], now=NOW)
            members = cohort_batch.evaluate(store, names, now=second, keep=True)
            assert members.refreshed is not None
            matched = cohort_batch.classify(store, members)
            chosen = [export.settings(store, name, now=second) for name in names]
            compared: list[str | None] = []
            real = snapshots.diff_all

            def spied(con, wanted, cohorts_, since, users=None):
                compared.append(users)
                return real(con, wanted, cohorts_, since, users)

            monkeypatch.setattr(snapshots, "diff_all", spied)
            alone = cycle_plans.plan_all(store.con, members, matched.table, chosen)
            assert compared and all(users is not None for users in compared)    # the changed users alone
            members.refreshed_from = None                                        # every member
            every = cycle_plans.plan_all(store.con, members, matched.table, chosen)
            assert compared[-1] is None
            plans = {name: (e.planned.plan.changes, dict(e.planned.plan.counts)) for name, e in alone.items()}
            assert plans == {name: (e.planned.plan.changes, dict(e.planned.plan.counts)) for name, e in every.items()}
            changed = {name: [(s.distinct_id, s.operation, s.target.onesignal_id) for s in changes]
                       for name, (changes, _) in plans.items()}
            assert changed == {
                "A": [("a2", "remove", "ext-a2"), ("a2", "add", "ext-a2-new"), ("b1", "add", "ext-b1")],
                "A today": [("a1", "remove", "ext-a1"), ("a2", "remove", "ext-a2"), ("a3", "remove", "ext-a3"),
                            ("b1", "add", "ext-b1"), ("s1", "remove", "ext-s1")],
                "B": [("n1", "add", "ext-n1")],
                "C": [("a3", "add", "ext-a3"), ("c1", "remove", "ext-c1")]}


def test_a_run_with_a_failed_user_leaves_its_snapshot_out_of_step(tmp_path, monkeypatch, users_unspaced):
    """A user whose update failed is not in the snapshot: that snapshot is not in step, so the next cycle
    diffs every member and sends the user again, though nothing about the user changed."""
    from test_cycle import FAST, build, credentials

    from toolkit import export, sync
    from toolkit.emulator import Emulator

    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app()
        credentials(monkeypatch, tmp_path, app)
        db = build(tmp_path, emu, app, {"A": ["a1", "a2"], "B": ["b1"]}, shared=["s1"])
        emu.faults.inject("crash", method="PATCH", path="/users/by/external_id/ext-a2", times=FAST["max_attempts"])
        with Store(db) as store:
            first = sync.run_due(store, now=NOW, cohorts=["A", "B"], client_options=FAST)
            assert [(r.cohort, r.status, r.failed) for r in first] == [("A", "partial", 1), ("B", "ok", 0)]
            assert rows(store, "SELECT cohort FROM export_snapshots WHERE in_step_with IS NOT NULL") == [("B",)]
            again = sync.run_due(store, now=NOW + dt.timedelta(minutes=15), cohorts=["A", "B"], client_options=FAST)
            assert [(r.cohort, r.status, r.added) for r in again] == [("A", "ok", 1), ("B", "ok", 0)]
        assert emu.user_tags(app.app_id)["ext-a2"] == {export.tag_key("A"): "1"}
