"""What each run did to each member (toolkit/export/fates.py): every member's operation and outcome, checked
against the run's plan and the snapshot it started from, the no-ops replayed rather than written. Real
DuckDB files, the emulator over HTTP."""

import csv
import io
from datetime import timedelta

import pytest

from helpers import NOW
from toolkit import export
from toolkit.emulator import Emulator
from toolkit.export import fates
from toolkit.onesignal import Credentials
from toolkit.planning import ADD, NOOP, REMOVE, Target

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 2.0, "max_attempts": 3}


@pytest.fixture
def emulator():
    with Emulator(user_rate_limit=0) as emu:
        yield emu


@pytest.fixture
def app(emulator):
    app = emulator.add_app()
    for ext in ["a", "a2", "b", "c", "d", "e", "bad"]:
        emulator.add_user(app.app_id, external_id=ext)
    # "bad": OneSignal refuses every update of it with a 400 no retry mends (one user's failure)
    emulator.faults.inject("refuse", method="PATCH", path="/bad", times=1_000_000)
    return app


def ext(**members):
    return {d: Target(o, "external_id") for d, o in members.items()}


def run(store, emulator, app, wanted, now, **kw):
    """One run of the registered dynamic sync of Buyers towards ``wanted``, with what the plan started
    from: (record, the snapshot before it)."""
    before = export.snapshot(store.con, "Buyers", now)
    settings = export.settings(store, "Buyers", client_options=FAST, now=now, **kw)
    return export.run(store, settings, wanted, Credentials(app.app_id, app.api_key)), before


def expected(record, before, wanted):
    """Each member's operation as the plan and the snapshot say: the changes, then those in both as they are."""
    ops = {(s.distinct_id, s.operation): s.target for s in record.plan.changes}
    ops.update({(d, NOOP): t for d, t in before.items() if wanted.get(d) == t})
    return ops


def listed(store, run_id):
    found = export.member_fates(store.con, run_id)
    rows = {(r["distinct_id"], r["operation"]): r for r in found.table.to_pylist()}
    assert len(rows) == found.table.num_rows            # a member's operation is listed once
    return found, rows


def test_every_members_fate_of_each_run_is_listed_exactly(empty_file_store, emulator, app):
    store = empty_file_store
    export.register(store, "Buyers", "dynamic", app.app_id, emulator.url, now=NOW)
    history = [
        ext(**{"d-a": "a", "d-b": "b", "d-c": "c", "d-ghost": "ghost", "d-bad": "bad"}),
        # d-a moved to another OneSignal id, d-c left, d-e joined; d-b unchanged; d-ghost still absent
        ext(**{"d-a": "a2", "d-b": "b", "d-e": "e", "d-ghost": "ghost", "d-bad": "bad"}),
        # nothing changed but d-bad, which is retried (its add failed)
        ext(**{"d-a": "a2", "d-b": "b", "d-e": "e", "d-ghost": "ghost", "d-bad": "bad"}),
    ]
    for i, wanted in enumerate(history):
        now = NOW + timedelta(minutes=15 * i)
        record, before = run(store, emulator, app, wanted, now, force=True)
        found, rows = listed(store, record.run_id)
        assert found.note is None
        assert {k: Target(r["onesignal_id"], r["id_type"]) for k, r in rows.items()} == expected(record, before, wanted)
        assert sum(op == NOOP for _, op in rows) == record.unchanged
        assert {r["cohort"] for r in rows.values()} == {"Buyers"}
        # the outcomes: the refused user failed with OneSignal's words, the unknown one is not in OneSignal
        assert rows[("d-bad", ADD)]["outcome"] == "failed" and "400" in rows[("d-bad", ADD)]["reason"]
        ghost = rows[("d-ghost", ADD if i == 0 else NOOP)]
        assert ghost["outcome"] == "not_in_onesignal" and "not in OneSignal" in ghost["reason"]
    first, second, third = [r["run_id"] for r in reversed(export.runs(store))]
    _, rows = listed(store, second)
    assert rows[("d-a", REMOVE)]["onesignal_id"] == "a" and rows[("d-a", ADD)]["onesignal_id"] == "a2"
    assert rows[("d-c", REMOVE)]["outcome"] == "ok" and rows[("d-e", ADD)]["outcome"] == "ok"
    assert rows[("d-b", NOOP)]["outcome"] == "ok" and rows[("d-b", NOOP)]["reason"] is None
    _, rows = listed(store, third)
    assert {k for k, r in rows.items() if k[1] != NOOP} == {("d-bad", ADD)}
    # the no-ops of an unchanged cohort are never written: the third run wrote one row (d-bad's)
    assert store.con.execute("SELECT count(*) FROM export_results WHERE run_id = ?", [third]).fetchone()[0] == 1


def test_a_guard_stopped_run_lists_its_changes_as_not_sent(empty_file_store, emulator, app):
    store = empty_file_store
    export.register(store, "Buyers", "dynamic", app.app_id, emulator.url, now=NOW)
    run(store, emulator, app, ext(**{"d-a": "a", "d-b": "b", "d-c": "c"}), NOW)
    wanted = ext(**{"d-a": "a", "d-e": "e"})
    record, before = run(store, emulator, app, wanted, NOW + timedelta(minutes=15))
    assert record.status == "stopped"
    found, rows = listed(store, record.run_id)
    assert set(rows) == set(expected(record, before, wanted)) == {
        ("d-a", NOOP), ("d-b", REMOVE), ("d-c", REMOVE), ("d-e", ADD)}
    for key in [("d-b", REMOVE), ("d-c", REMOVE), ("d-e", ADD)]:
        assert rows[key]["outcome"] == fates.NOT_SENT
        assert rows[key]["reason"].startswith("not sent: the run stopped: would remove 2 of 3 users")
    # the snapshot did not move: the next run plans the same changes, and its listing replays the same snapshot
    again, before = run(store, emulator, app, wanted, NOW + timedelta(minutes=30), force=True)
    _, rows = listed(store, again.run_id)
    assert set(rows) == set(expected(again, before, wanted)) == {
        ("d-a", NOOP), ("d-b", REMOVE), ("d-c", REMOVE), ("d-e", ADD)}
    assert {r["outcome"] for r in rows.values()} == {"ok"}


def test_members_written_outside_the_runs_make_the_listing_say_it_is_not_exact(empty_file_store, emulator, app):
    store = empty_file_store
    export.register(store, "Buyers", "dynamic", app.app_id, emulator.url, now=NOW)
    run(store, emulator, app, ext(**{"d-a": "a"}), NOW)
    store.con.execute("INSERT INTO export_members VALUES ('Buyers', 'd-b', 'b', 'external_id', 'tagged', ?)",
                      [NOW.replace(tzinfo=None)])
    record, _ = run(store, emulator, app, ext(**{"d-a": "a", "d-b": "b"}), NOW + timedelta(minutes=15))
    found, _ = listed(store, record.run_id)
    assert record.unchanged == 2 and found.note and "not exact" in found.note and "2 unchanged" in found.note


def test_the_csv_has_a_header_and_a_member_a_line_with_its_onesignal_ids(empty_file_store, emulator, app):
    store = empty_file_store
    player = emulator.add_user(app.app_id, subscription_ids=["sub-1"])      # known by its Player ID only
    export.register(store, "Buyers", "dynamic", app.app_id, emulator.url, now=NOW)
    wanted = {**ext(**{"d-a": "a", "d-zoë, \"x\"": "b"}), "d-p": Target("sub-1", "subscription_id")}
    record, _ = run(store, emulator, app, wanted, NOW)
    out = io.StringIO()
    assert export.member_fates(store.con, record.run_id).write_csv(out) == 3
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["distinct_id"] for r in rows] == ["d-a", "d-p", "d-zoë, \"x\""]
    assert list(rows[0]) == list(fates.COLUMNS) and rows[2]["onesignal_id"] == "b"
    assert rows[2]["operation"] == "add" and rows[2]["outcome"] == "ok" and rows[2]["id_type"] == "external_id"
    assert (rows[1]["onesignal_id"], rows[1]["id_type"], rows[1]["onesignal_user_id"]) == (
        "sub-1", "subscription_id", player)
    assert rows[0]["onesignal_user_id"] == "" and rows[0]["reason"] == ""


def test_members_the_tag_cap_holds_back_are_listed_each_run_with_the_reason(empty_file_store, emulator):
    store = empty_file_store
    capped = emulator.add_app(tag_limit=2)
    emulator.add_user(capped.app_id, external_id="a")
    emulator.add_user(capped.app_id, external_id="c", tags={"vip": "1", "plan": "gold"})   # no room for a third
    export.register(store, "Buyers", "dynamic", capped.app_id, emulator.url, now=NOW)
    wanted = ext(**{"d-a": "a", "d-c": "c"})
    for i in range(2):
        record, before = run(store, emulator, capped, wanted, NOW + timedelta(minutes=15 * i))
        found, rows = listed(store, record.run_id)
        assert found.note is None and record.tag_cap == 1
        assert rows[("d-c", ADD)]["outcome"] == "tag_cap" and rows[("d-c", ADD)]["reason"] == (
            "OneSignal refused: the app allows 2 data tags per user" if i == 0 else fates.HELD)   # then not sent
        assert rows[("d-a", ADD if i == 0 else NOOP)]["outcome"] == "ok" and len(rows) == 2


def test_a_run_that_pauses_its_sync_lists_what_it_did_not_send_and_why(empty_file_store, emulator, app):
    store = empty_file_store
    export.register(store, "Buyers", "dynamic", app.app_id, emulator.url, now=NOW)
    run(store, emulator, app, ext(**{"d-a": "a", "d-b": "b"}), NOW)
    app.api_key, key = "revoked", app.api_key
    wanted = ext(**{"d-a": "a", "d-c": "c"})
    settings = export.settings(store, "Buyers", client_options=FAST, now=NOW + timedelta(minutes=15))
    before = export.snapshot(store.con, "Buyers", settings.now)
    record = export.run(store, settings, wanted, Credentials(app.app_id, key))
    assert record.status == "paused"
    _, rows = listed(store, record.run_id)
    assert set(rows) == set(expected(record, before, wanted)) == {("d-a", NOOP), ("d-b", REMOVE), ("d-c", ADD)}
    for key_ in [("d-b", REMOVE), ("d-c", ADD)]:
        assert rows[key_]["outcome"] == fates.NOT_SENT and rows[key_]["reason"].startswith(
            "not sent: the run paused: OneSignal answered 403")


def test_an_interrupted_run_lists_what_it_did_not_reach_and_a_dead_ones_listing_says_so(
        empty_file_store, emulator, app, monkeypatch):
    from toolkit.export import results

    store = empty_file_store
    export.register(store, "Buyers", "dynamic", app.app_id, emulator.url, now=NOW)
    monkeypatch.setattr(results, "FLUSH_EVERY", 1)

    def stop(done, total):
        raise KeyboardInterrupt                       # Ctrl-C once the first user's outcome is written

    settings = export.settings(store, "Buyers", client_options={**FAST, "concurrency": 1}, now=NOW)
    with pytest.raises(KeyboardInterrupt):
        export.run(store, settings, ext(**{"d-a": "a", "d-b": "b", "d-c": "c"}), Credentials(app.app_id, app.api_key),
                   on_progress=stop)
    (record,) = export.runs(store)
    found, rows = listed(store, record["run_id"])
    assert record["status"] == "interrupted" and found.note is None and set(rows) == {
        ("d-a", ADD), ("d-b", ADD), ("d-c", ADD)}
    outcomes = sorted(r["outcome"] for r in rows.values())
    assert outcomes == ["not_sent", "not_sent", "ok"]
    assert all(r["reason"].startswith("not sent: the run interrupted") for r in rows.values() if r["outcome"] != "ok")
    # a run whose process died never wrote the rest: the listing says so
    store.con.execute("UPDATE export_runs SET status = 'running', ended_at = NULL")
    assert "process died" in export.member_fates(store.con, record["run_id"]).note


def test_an_unchanged_run_writes_no_row_and_lists_every_member_as_a_no_op(empty_file_store, emulator, app):
    store = empty_file_store
    export.register(store, "Buyers", "dynamic", app.app_id, emulator.url, now=NOW)
    wanted = ext(**{"d-a": "a", "d-b": "b", "d-c": "c"})
    run(store, emulator, app, wanted, NOW)
    record, before = run(store, emulator, app, wanted, NOW + timedelta(minutes=15))
    assert record.plan.recognised and record.unchanged == 3          # the fingerprint said: nothing changed
    assert store.con.execute("SELECT count(*) FROM export_results WHERE run_id = ?", [record.run_id]).fetchone()[0] == 0
    found, rows = listed(store, record.run_id)
    assert found.note is None and set(rows) == set(expected(record, before, wanted)) == {
        ("d-a", NOOP), ("d-b", NOOP), ("d-c", NOOP)}
