"""Planning from the store: the snapshot's fingerprint and the SQL diff (toolkit.snapshots) give exactly
the plan of the member-by-member oracle (tests/plan_oracle.py), on a real DuckDB file; a killed run
never leaves a fingerprint for a snapshot it did not reach; an unchanged million sends nothing."""

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plan_oracle import plan as oracle

from toolkit import export, snapshots
from toolkit.emulator import Emulator
from toolkit.onesignal import Credentials
from toolkit.planning import ADD, NOOP, REMOVE, Target, removal_guard
from toolkit.store import Store

NOW = datetime(2026, 11, 1, 12)
SINCE = NOW - export.RECHECK_ABSENT
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 2.0, "max_attempts": 30}
KINDS = ["external_id", "subscription_id"]

ids = st.text(alphabet="abcé✓ ", min_size=1, max_size=3)
targets = st.builds(Target, st.text(alphabet="xyz0", min_size=1, max_size=3), st.sampled_from(KINDS))
# A snapshot row: its target, tagged or absent, and how many hours before NOW it was checked (over 24:
# an absent member whose recheck is due has left the snapshot).
rows = st.tuples(targets, st.sampled_from(["tagged", "absent"]), st.sampled_from([0, 1, 23, 24, 25, 72]))
stored = st.dictionaries(ids, rows, max_size=12)


@pytest.fixture(scope="module")
def shared_file_store(new_store, tmp_path_factory):
    with Store(new_store(tmp_path_factory.mktemp("plan") / "s.duckdb")) as s:
        yield s


def put(store, cohort, members):
    """Write a snapshot straight into export_members (as runs' results would have)."""
    con = store.con
    con.execute("DELETE FROM export_members WHERE cohort = ?", [cohort])
    snapshots.forget(con, cohort)
    written = pa.table({"distinct_id": list(members),
                        "onesignal_id": [t.onesignal_id for t, _, _ in members.values()],
                        "id_type": [t.id_type for t, _, _ in members.values()],
                        "status": [s for _, s, _ in members.values()],
                        "checked_at": [NOW - timedelta(hours=h) for _, _, h in members.values()]},
                       schema=pa.schema([*snapshots.SCHEMA, ("status", pa.string()),
                                         ("checked_at", pa.timestamp("us"))]))
    con.register("written", written)
    try:
        con.execute("INSERT INTO export_members SELECT ?, distinct_id, onesignal_id, id_type, status, checked_at "
                    "FROM written", [cohort])
    finally:
        con.unregister("written")


def effective(members):
    """Who the snapshot holds as of NOW: the rule in plain Python."""
    return {d: t for d, (t, status, hours) in members.items()
            if status == "tagged" or NOW - timedelta(hours=hours) > SINCE}


def edited(draw, base):
    """``base`` with a few members dropped, added, or given another OneSignal id or id type."""
    wanted = dict(base)
    for d in draw(st.lists(st.sampled_from(sorted(base)), max_size=3)) if base else []:
        choice = draw(st.sampled_from(["drop", "id", "kind"]))
        if d not in wanted:
            continue
        if choice == "drop":
            del wanted[d]
        elif choice == "id":
            wanted[d] = Target(wanted[d].onesignal_id + "2", wanted[d].id_type)
        else:
            wanted[d] = Target(wanted[d].onesignal_id, KINDS[1 - KINDS.index(wanted[d].id_type)])
    wanted.update(draw(st.dictionaries(ids, targets, max_size=3)))
    return wanted


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(members=stored, keep=st.booleans(), data=st.data())
def test_the_plan_from_the_store_is_the_member_by_member_plan(shared_file_store, members, keep, data):
    put(shared_file_store, "C", members)
    if keep:                 # a run ended on this snapshot and kept its fingerprint
        snapshots.keep(shared_file_store.con, "C")
    current = effective(members)
    wanted = current if data.draw(st.booleans(), label="unchanged") else edited(data.draw, current)
    chosen = export.ExportSettings("C", dry_run=True, now=NOW)
    the_plan, verdict = export._plan(shared_file_store.con, chosen, wanted)
    expected = oracle(wanted, current)
    assert the_plan == expected
    assert verdict == removal_guard(expected, len(current) or None, chosen.max_removal_share)
    assert export.snapshot(shared_file_store.con, "C", NOW) == current


@given(members=st.dictionaries(ids, targets, min_size=1, max_size=12), data=st.data())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_fingerprint_sees_every_id_and_id_type_and_ignores_order(shared_file_store, members, data):
    con = shared_file_store.con
    table = snapshots.table_of(members)
    shuffled = table.take(data.draw(st.permutations(range(table.num_rows))))
    assert snapshots.fingerprint(con, shuffled) == snapshots.fingerprint(con, table)
    d = data.draw(st.sampled_from(sorted(members)))
    old = members[d]
    for changed in (Target(old.onesignal_id + "x", old.id_type),
                    Target(old.onesignal_id, KINDS[1 - KINDS.index(old.id_type)])):
        other = snapshots.table_of({**members, d: changed})
        assert snapshots.fingerprint(con, other) != snapshots.fingerprint(con, table)


def test_the_kept_fingerprint_is_the_snapshots_and_expired_absences_leave_it(shared_file_store):
    members = {"a": (Target("1", "external_id"), "tagged", 72), "b": (Target("2", "external_id"), "absent", 1),
               "c": (Target("3", "subscription_id"), "absent", 30)}
    put(shared_file_store, "K", members)
    snapshots.keep(shared_file_store.con, "K")
    current = effective(members)                        # a and b: c's recheck is due
    assert set(current) == {"a", "b"}
    assert (snapshots.kept(shared_file_store.con, "K", SINCE)
            == snapshots.fingerprint(shared_file_store.con, snapshots.table_of(current)))
    the_plan, _ = export._plan(shared_file_store.con, export.ExportSettings("K", dry_run=True, now=NOW), current)
    assert the_plan.changes == () and the_plan.counts[NOOP] == 2


def test_an_unchanged_plan_reads_no_member_rows(shared_file_store, monkeypatch):
    members = {f"u{i}": (Target(f"ext-{i}", "external_id"), "tagged", 0) for i in range(50)}
    put(shared_file_store, "U", members)
    snapshots.keep(shared_file_store.con, "U")
    monkeypatch.setattr(snapshots, "diff", lambda *a: pytest.fail("an unchanged cohort was diffed"))
    the_plan, verdict = export._plan(shared_file_store.con, export.ExportSettings("U", dry_run=True, now=NOW),
                                     effective(members))
    assert the_plan.counts == {ADD: 0, REMOVE: 0, NOOP: 50} and verdict.ok


def test_members_deleted_by_hand_are_noticed_and_sent_again(shared_file_store):
    members = {f"u{i}": (Target(f"ext-{i}", "external_id"), "tagged", 0) for i in range(5)}
    put(shared_file_store, "H", members)
    snapshots.keep(shared_file_store.con, "H")
    shared_file_store.con.execute("DELETE FROM export_members WHERE cohort = 'H' AND distinct_id IN ('u1', 'u3')")
    wanted = effective(members)
    the_plan, _ = export._plan(shared_file_store.con, export.ExportSettings("H", dry_run=True, now=NOW), wanted)
    assert the_plan == oracle(wanted, export.snapshot(shared_file_store.con, "H", NOW))
    assert [s.distinct_id for s in the_plan.of(ADD)] == ["u1", "u3"]


# -- runs against the emulator --------------------------------------------------------------------

def ext(*names):
    return {f"d-{n}": Target(n, "external_id") for n in names}


def tagged(emu, app, cohort="Buyers"):
    key = export.tag_key(cohort)
    return {user for user, tags in emu.user_tags(app.app_id).items() if tags.get(key)}


def fresh(store, cohort="Buyers"):
    """The fingerprint of export_members as it is now, computed from the table."""
    return snapshots.fingerprint(store.con, store.con.sql(
        "SELECT distinct_id, onesignal_id, id_type FROM export_members WHERE cohort = $cohort",
        params={"cohort": cohort}).to_arrow_table())


@pytest.mark.slow   # a toolkit process killed
def test_a_sigkilled_run_leaves_no_fingerprint_for_a_snapshot_it_did_not_reach(tmp_path):
    """Tagged A; a run towards B killed midway; the next run towards A plans what the snapshot holds.
    Had the kill left A's fingerprint beside a snapshot half way to B, it would see "unchanged"."""
    users = [f"k{i:02d}" for i in range(90)]
    first, second = users[:60], users[30:]
    with Emulator(latency=0.02, user_rate_limit=0) as emu:
        app = emu.add_app()
        for user in users:
            emu.add_user(app.app_id, external_id=user)
        db = tmp_path / "s.duckdb"
        creds = Credentials(app.app_id, app.api_key)
        with Store(db) as store:
            export.register(store, "Buyers", "dynamic", app.app_id, emu.url)
            assert export.run(store, export.settings(store, "Buyers", client_options=FAST), ext(*first),
                              creds).status == "ok"
            assert snapshots.kept(store.con, "Buyers", SINCE) == fresh(store)
        script = f"""
import json, sys
from toolkit import export
from toolkit.onesignal import Credentials
from toolkit.planning import Target
from toolkit.store import Store
export.results.FLUSH_EVERY = 3
with Store({str(db)!r}) as store:
    wanted = {{f"d-{{i}}": Target(i, "external_id") for i in json.loads(sys.argv[1])}}
    export.run(store, export.settings(store, "Buyers", client_options={{"concurrency": 2}}), wanted,
               Credentials({app.app_id!r}, sys.stdin.readline().strip()))
"""
        proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(second)], stdin=subprocess.PIPE, text=True)
        proc.stdin.write(app.api_key + "\n")
        proc.stdin.flush()
        for _ in range(600):                    # removals run first: wait until some are done, then kill
            if len(tagged(emu, app)) <= 50:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with Store(db) as store:
            kept = snapshots.kept(store.con, "Buyers", SINCE)
            assert kept is None or kept == fresh(store)
            expected = oracle(ext(*first), export.snapshot(store.con, "Buyers", datetime.now(UTC)))
            assert expected.changes                                  # killed half way
            record = export.run(store, export.settings(store, "Buyers", client_options=FAST), ext(*first), creds)
            assert record.status == "ok" and (record.added, record.removed) == (expected.counts[ADD],
                                                                                 expected.counts[REMOVE])
            assert export.snapshot(store.con, "Buyers", datetime.now(UTC)) == ext(*first)
            assert snapshots.kept(store.con, "Buyers", SINCE) == fresh(store)


def test_a_run_interrupted_between_sends_is_followed_by_one_that_converges(new_store, tmp_path, monkeypatch):
    """The same in one process, interrupted right after a flush: then OneSignal holds exactly what the
    snapshot says, and the run towards A again must leave A tagged."""
    monkeypatch.setattr(export.results, "FLUSH_EVERY", 2)
    users = [f"k{i}" for i in range(12)]
    first, second = users[:8], users[4:]
    with Emulator(user_rate_limit=0) as emu, Store(new_store(tmp_path / "s.duckdb")) as store:
        app = emu.add_app()
        for user in users:
            emu.add_user(app.app_id, external_id=user)
        creds = Credentials(app.app_id, app.api_key)
        one_at_a_time = {**FAST, "concurrency": 1}
        export.register(store, "Buyers", "dynamic", app.app_id, emu.url)
        export.run(store, export.settings(store, "Buyers", client_options=one_at_a_time), ext(*first), creds)

        def stop(done, total):
            if done >= 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            export.run(store, export.settings(store, "Buyers", client_options=one_at_a_time), ext(*second), creds,
                       on_progress=stop)
        assert tagged(emu, app) not in (set(first), set(second))
        assert snapshots.kept(store.con, "Buyers", SINCE) is None
        record = export.run(store, export.settings(store, "Buyers", client_options=one_at_a_time), ext(*first), creds)
        assert record.status == "ok" and tagged(emu, app) == set(first)


def test_a_changed_id_type_or_user_id_is_sent_and_then_nothing_is(new_store, tmp_path):
    with Emulator(user_rate_limit=0) as emu, Store(new_store(tmp_path / "s.duckdb")) as store:
        app = emu.add_app()
        for user in ("u1", "u2", "u3", "v2"):
            emu.add_user(app.app_id, external_id=user)
        creds = Credentials(app.app_id, app.api_key)
        export.register(store, "Buyers", "dynamic", app.app_id, emu.url)

        def run(wanted):
            return export.run(store, export.settings(store, "Buyers", client_options=FAST), wanted, creds)

        assert run(ext("u1", "u2", "u3")).added == 3
        moved = {**ext("u1", "u3"), "d-u2": Target("v2", "external_id")}      # u2's user id is now v2
        record = run(moved)
        assert (record.added, record.removed, record.unchanged) == (1, 1, 2) and tagged(emu, app) == {"u1", "u3", "v2"}
        again = run(moved)
        assert (again.added, again.removed, again.unchanged) == (0, 0, 3)
        assert snapshots.kept(store.con, "Buyers", SINCE) == fresh(store)


def test_a_fingerprint_that_never_matches_is_replaced_by_the_next_run(new_store, tmp_path):
    """As if another DuckDB hashed differently: one run diffs (and finds nothing to send), then keeps
    the right one, so the next is recognised again."""
    with Emulator(user_rate_limit=0) as emu, Store(new_store(tmp_path / "s.duckdb")) as store:
        app = emu.add_app()
        for user in ("u1", "u2"):
            emu.add_user(app.app_id, external_id=user)
        creds = Credentials(app.app_id, app.api_key)
        export.register(store, "Buyers", "dynamic", app.app_id, emu.url)

        def run():
            return export.run(store, export.settings(store, "Buyers", client_options=FAST), ext("u1", "u2"), creds)

        run()
        store.con.execute("UPDATE export_snapshots SET fingerprint = fingerprint + 1")
        again = run()
        assert not again.plan.recognised and (again.added, again.removed, again.unchanged) == (0, 0, 2)
        assert snapshots.kept(store.con, "Buyers", SINCE) == fresh(store)
        assert run().plan.recognised


@pytest.mark.slow   # a million members
def test_an_unchanged_million_member_cohort_sends_nothing(new_store, tmp_path, monkeypatch):
    members = 1_000_000
    names = [f"user-{i:07d}" for i in range(members)]
    table = pa.table({"distinct_id": names, "onesignal_id": [f"ext-{n}" for n in names],
                      "id_type": ["external_id"] * members})
    with Emulator() as emu, Store(new_store(tmp_path / "s.duckdb")) as store:
        app = emu.add_app()
        export.register(store, "Big", "dynamic", app.app_id, emu.url, now=NOW)
        store.con.register("exported", table)
        store.con.execute("INSERT INTO export_members SELECT 'Big', distinct_id, onesignal_id, id_type, 'tagged', ? "
                          "FROM exported", [NOW])
        store.con.unregister("exported")
        snapshots.keep(store.con, "Big")          # as the run that exported them would have
        monkeypatch.setattr(snapshots, "diff", lambda *a: pytest.fail("an unchanged cohort was diffed"))
        record = export.run(store, export.settings(store, "Big", now=NOW), table,
                            Credentials(app.app_id, app.api_key))
        assert record.status == "ok" and (record.unchanged, record.added, record.removed) == (members, 0, 0)
        assert not [r for r in emu.requests() if r["method"] == "PATCH" and "/users/" in r["path"]]
