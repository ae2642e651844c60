"""The export engine against the OneSignal emulator over real HTTP, with a real DuckDB file."""

import logging
import threading
from datetime import UTC

import pytest

from toolkit import export
from toolkit.emulator import Emulator
from toolkit.onesignal import Credentials
from toolkit.planning import Target
from toolkit.store import Store

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 2.0, "max_attempts": 30}
WEIRD = ["a/b", "with space", "zoë ✓", "quote\"'", "100%", "."]


@pytest.fixture
def unlimited_emulator():
    with Emulator(user_rate_limit=0) as emu:
        yield emu


@pytest.fixture
def app_with_users(unlimited_emulator):
    app = unlimited_emulator.add_app()
    for ext in ["u1", "u2", "u3", "u4", *WEIRD]:
        unlimited_emulator.add_user(app.app_id, external_id=ext)
    return app


def creds(app):
    return Credentials(app.app_id, app.api_key)


def ext(*ids):
    return {f"d-{i}": Target(i, "external_id") for i in ids}


def sync(store, emulator, app, wanted, cohort="Buyers", mode="dynamic", **kw):
    export.register(store, cohort, mode, app.app_id, emulator.url)
    return export.run(store, fast(store, cohort, **kw), wanted, creds(app))


def fast(store, cohort="Buyers", **kw):
    """The registered export's settings, with the client's retries made quick."""
    return export.settings(store, cohort, client_options=FAST, **kw)


def tagged(emulator, app, cohort="Buyers"):
    key = export.tag_key(cohort)
    return {user for user, tags in emulator.user_tags(app.app_id).items() if tags.get(key)}


def patches(emulator):
    return sum(1 for r in emulator.requests() if r["method"] == "PATCH" and "/users/" in r["path"])


def test_overwrite_semantics_join_leave_rejoin(empty_file_store, unlimited_emulator, app_with_users):
    for wanted in (["u1", "u2"], ["u2", "u3"], ["u1", "u3"], []):
        before = patches(unlimited_emulator)
        record = sync(empty_file_store, unlimited_emulator, app_with_users, ext(*wanted), force=True)
        assert record.status == "ok" and tagged(unlimited_emulator, app_with_users) == set(wanted)
        assert patches(unlimited_emulator) - before == record.added + record.removed
    assert [r["added"] for r in reversed(export.runs(empty_file_store))] == [2, 1, 1, 0]
    assert [r["removed"] for r in reversed(export.runs(empty_file_store))] == [0, 1, 1, 2]


def test_segment_exists_and_its_membership_is_the_cohort(empty_file_store, unlimited_emulator, app_with_users):
    sync(empty_file_store, unlimited_emulator, app_with_users, ext("u1", "u2"))
    (segment,) = unlimited_emulator.state["apps"][app_with_users.app_id]["segments"]
    assert segment["name"] == "(Mixpanel) Buyers" and set(segment["members"]["external_ids"]) == {"u1", "u2"}
    sync(empty_file_store, unlimited_emulator, app_with_users, ext("u2", "zoë ✓"))
    (segment,) = unlimited_emulator.state["apps"][app_with_users.app_id]["segments"]     # updated, not created again
    assert set(segment["members"]["external_ids"]) == {"u2", "zoë ✓"}


def test_unchanged_cohort_sends_no_updates(empty_file_store, unlimited_emulator, app_with_users):
    sync(empty_file_store, unlimited_emulator, app_with_users, ext("u1", "u2", "u3"))
    before = patches(unlimited_emulator)
    record = sync(empty_file_store, unlimited_emulator, app_with_users, ext("u1", "u2", "u3"))
    assert patches(unlimited_emulator) == before and record.unchanged == 3 and record.added == record.removed == 0


def test_free_plan_fails_before_touching_any_user(empty_file_store, unlimited_emulator):
    free = unlimited_emulator.add_app(plan="free")
    unlimited_emulator.add_user(free.app_id, external_id="u1")
    record = sync(empty_file_store, unlimited_emulator, free, ext("u1"), mode="once")
    assert record.status == "failed" and record.error == "App may not submit cohort updates from Mixpanel"
    assert patches(unlimited_emulator) == 0


def test_bad_key_fails_without_leaking_it(empty_file_store, unlimited_emulator, app_with_users, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = Credentials(app_with_users.app_id, "not-the-key-" + "s3cr3t")
    export.register(empty_file_store, "Buyers", "once", app_with_users.app_id, unlimited_emulator.url)
    record = export.run(empty_file_store, fast(empty_file_store), ext("u1"), wrong)
    assert record.status == "failed" and "s3cr3t" not in (record.error or "")
    assert "s3cr3t" not in caplog.text
    assert patches(unlimited_emulator) == 0                     # it failed at the segment, before any user
    assert len(unlimited_emulator.requests()) == 1              # and 403 is not retried


def test_weird_external_ids_round_trip(empty_file_store, unlimited_emulator, app_with_users):
    sync(empty_file_store, unlimited_emulator, app_with_users, ext(*WEIRD))
    assert tagged(unlimited_emulator, app_with_users) == set(WEIRD)
    sync(empty_file_store, unlimited_emulator, app_with_users, ext(), force=True)
    assert tagged(unlimited_emulator, app_with_users) == set()


def test_player_ids_are_resolved_and_cached(empty_file_store, unlimited_emulator, app_with_users):
    sub = "5f0d7a2c-1e3b-4c6d-a8e9-0b1c2d3e4f50"
    unlimited_emulator.add_user(app_with_users.app_id, external_id="erin", subscription_ids=[sub])
    wanted = {"erin": Target(sub, "subscription_id"),
              "ghost": Target("11111111-2222-4333-8444-555555555555", "subscription_id")}
    record = sync(empty_file_store, unlimited_emulator, app_with_users, wanted)
    assert (record.added, record.not_in_onesignal) == (1, 1)
    assert tagged(unlimited_emulator, app_with_users) == {"erin"}
    cached = empty_file_store.con.execute("SELECT count(*) FROM subscription_users").fetchone()[0]
    assert cached == 2


def test_player_ids_looked_up_are_cached_even_when_another_lookup_fails(empty_file_store, unlimited_emulator,
                                                                       app_with_users):
    """The lookups are kept in one write at the end: also when one of them fails and stops the run."""
    sub, broken = "5f0d7a2c-1e3b-4c6d-a8e9-0b1c2d3e4f50", "6a1e8b3d-2f4c-4d7e-b9fa-1c2d3e4f5061"
    unlimited_emulator.add_user(app_with_users.app_id, external_id="erin", subscription_ids=[sub])
    unlimited_emulator.faults.inject("crash", method="GET", path=f"/subscriptions/{broken}/", times=2)
    export.register(empty_file_store, "Buyers", "dynamic", app_with_users.app_id, unlimited_emulator.url)
    wanted = {"erin": Target(sub, "subscription_id"), "zed": Target(broken, "subscription_id")}
    settings = export.settings(empty_file_store, "Buyers", client_options={**FAST, "max_attempts": 2})
    record = export.run(empty_file_store, settings, wanted, creds(app_with_users))
    assert record.status == "failed" and "500" in (record.error or "")
    cached = empty_file_store.con.execute("SELECT subscription_id, onesignal_id IS NOT NULL FROM subscription_users"
                                          ).fetchall()
    assert cached == [(sub, True)]
    assert patches(unlimited_emulator) == 0


def test_users_not_in_onesignal_are_reported_never_created_and_not_resent(empty_file_store, unlimited_emulator,
                                                                          app_with_users):
    record = sync(empty_file_store, unlimited_emulator, app_with_users, ext("u1", "nobody"))
    assert (record.added, record.not_in_onesignal) == (1, 1)
    assert unlimited_emulator.counters.get("user_creates", 0) == 0
    outcomes = empty_file_store.con.execute("SELECT distinct_id, outcome FROM export_results ORDER BY 1").fetchall()
    assert outcomes == [("d-nobody", "not_in_onesignal"), ("d-u1", "ok")]
    before = patches(unlimited_emulator)
    sync(empty_file_store, unlimited_emulator, app_with_users, ext("u1", "nobody"))
    assert patches(unlimited_emulator) == before


def test_guard_stops_mass_removal_unless_forced(empty_file_store, unlimited_emulator, app_with_users):
    sync(empty_file_store, unlimited_emulator, app_with_users, ext("u1", "u2", "u3", "u4"))
    record = sync(empty_file_store, unlimited_emulator, app_with_users, ext("u1"))
    assert record.status == "stopped" and "75%" in record.error
    assert tagged(unlimited_emulator, app_with_users) == {"u1", "u2", "u3", "u4"}
    assert sync(empty_file_store, unlimited_emulator, app_with_users, ext("u1"), force=True).status == "ok"
    assert tagged(unlimited_emulator, app_with_users) == {"u1"}


def test_dry_run_sends_nothing(empty_file_store, unlimited_emulator, app_with_users):
    record = sync(empty_file_store, unlimited_emulator, app_with_users, ext("u1", "u2"), dry_run=True)
    assert record.status == "ok" and record.added == 2 and patches(unlimited_emulator) == 0
    assert tagged(unlimited_emulator, app_with_users) == set()


@pytest.mark.slow
def test_faults_end_with_tags_equal_to_the_cohort(empty_file_store, tmp_path):
    with Emulator(error_rate=0.1, drop_rate=0.05, hang_rate=0.02, hang_seconds=3, seed=3,
                  user_rate_limit=0) as emu:
        app = emu.add_app(rate_limit=60)                 # and a 429 storm: 64 requests in flight
        ids = [f"user-{i}" for i in range(300)]
        for i in ids:
            emu.add_user(app.app_id, external_id=i)
        first, second = ids[:200], ids[100:]
        for wanted in (first, second):
            record = None
            for _ in range(3):                            # per-user failures retry on the next run
                record = sync(empty_file_store, emu, app, ext(*wanted), force=True)
                if record.status == "ok":
                    break
            assert record.status == "ok"
            assert tagged(emu, app) == set(wanted)
        assert emu.counters.get("rate_limited", 0) > 0 and emu.counters.get("server_errors", 0) > 0


def test_interrupted_run_loses_nothing_and_the_next_converges(empty_file_store, unlimited_emulator, app_with_users,
                                                              monkeypatch):
    monkeypatch.setattr(export.results, "FLUSH_EVERY", 2)
    calls = []

    def stop_midway(done, total):
        calls.append(done)
        if done >= 2:
            raise KeyboardInterrupt

    export.register(empty_file_store, "Buyers", "dynamic", app_with_users.app_id, unlimited_emulator.url)
    with pytest.raises(KeyboardInterrupt):
        export.run(empty_file_store, fast(empty_file_store), ext("u1", "u2", "u3", "u4"), creds(app_with_users),
                   on_progress=stop_midway)
    assert export.runs(empty_file_store)[0]["status"] == "interrupted"
    recorded = {d for d, in empty_file_store.con.execute("SELECT distinct_id FROM export_members").fetchall()}
    assert recorded and recorded <= {f"d-u{i}" for i in range(1, 5)}
    record = sync(empty_file_store, unlimited_emulator, app_with_users, ext("u1", "u2", "u3", "u4"))
    assert record.status == "ok" and tagged(unlimited_emulator, app_with_users) == {"u1", "u2", "u3", "u4"}


@pytest.mark.slow   # waits out real retries and backoff
def test_two_runs_of_one_cohort_never_overlap(tmp_path, monkeypatch):
    monkeypatch.setattr(export.results, "FLUSH_EVERY", 1)
    with Emulator(latency=0.3, user_rate_limit=0) as emu, Store(tmp_path / "s.duckdb") as store:
        app = emu.add_app()
        for i in range(5):
            emu.add_user(app.app_id, external_id=f"u{i}")
        export.register(store, "Buyers", "once", app.app_id, emu.url)
        started = threading.Event()
        result = {}

        def first():
            result["first"] = export.run(store, export.settings(store, "Buyers",
                                                                client_options={**FAST, "concurrency": 1}),
                                         ext(*[f"u{i}" for i in range(5)]), creds(app),
                                         on_progress=lambda d, t: started.set())
        thread = threading.Thread(target=first)
        thread.start()
        started.wait(10)
        with pytest.raises(export.ExportError, match="already running"):
            export.run(store, fast(store), ext("u1"), creds(app))
        thread.join()
        assert result["first"].status == "ok"


def test_dynamic_registration_due_and_stop(empty_file_store, unlimited_emulator, app_with_users):
    from datetime import datetime, timedelta

    now = datetime(2026, 11, 1, tzinfo=UTC)
    export.register(empty_file_store, "Buyers", "dynamic", app_with_users.app_id, unlimited_emulator.url, now=now)
    assert export.due(empty_file_store, now) == ["Buyers"]
    export.run(empty_file_store, fast(empty_file_store, now=now), ext("u1"), creds(app_with_users))
    assert export.due(empty_file_store, now + timedelta(minutes=14)) == []
    assert export.due(empty_file_store, now + timedelta(minutes=15)) == ["Buyers"]
    export.stop(empty_file_store, "Buyers")
    assert export.due(empty_file_store, now + timedelta(hours=1)) == []
    with pytest.raises(export.ExportError, match="no active dynamic sync"):
        export.stop(empty_file_store, "Buyers")


def test_dynamic_sync_limit(empty_file_store, unlimited_emulator, app_with_users, monkeypatch):
    monkeypatch.setattr(export.run_settings, "MAX_DYNAMIC_SYNCS", 2)
    export.register(empty_file_store, "a", "dynamic", app_with_users.app_id, unlimited_emulator.url)
    export.register(empty_file_store, "b", "dynamic", app_with_users.app_id, unlimited_emulator.url)
    # re-registering is fine
    export.register(empty_file_store, "a", "dynamic", app_with_users.app_id, unlimited_emulator.url)
    with pytest.raises(export.ExportError, match="2 dynamic syncs are active"):
        export.register(empty_file_store, "c", "dynamic", app_with_users.app_id, unlimited_emulator.url)
    export.register(empty_file_store, "c", "once", app_with_users.app_id, unlimited_emulator.url)


def test_key_never_reaches_the_store(empty_file_store, unlimited_emulator, app_with_users):
    sync(empty_file_store, unlimited_emulator, app_with_users, ext("u1"))
    for table, in empty_file_store.con.execute("SELECT table_name FROM information_schema.tables "
                                    "WHERE table_type = 'BASE TABLE'").fetchall():
        dump = str(empty_file_store.con.execute(f'SELECT * FROM "{table}"').fetchall())
        assert app_with_users.api_key not in dump, table


def test_runs_from_inside_a_running_event_loop(empty_file_store, unlimited_emulator, app_with_users):
    """Notebook kernels (and papermill) run an event loop in the main thread."""
    import asyncio

    async def from_a_notebook_cell():
        return sync(empty_file_store, unlimited_emulator, app_with_users, ext("u1"))

    assert asyncio.run(from_a_notebook_cell()).status == "ok"
    assert tagged(unlimited_emulator, app_with_users) == {"u1"}


@pytest.mark.slow   # a toolkit process killed
def test_sigkilled_run_then_rerun_converges(tmp_path):
    """A process killed mid-export: the store recovers, and the next run ends with tags == cohort."""
    import json
    import signal
    import subprocess
    import sys
    import time

    with Emulator(latency=0.02, user_rate_limit=0) as emu:
        app = emu.add_app()
        ids = [f"k{i}" for i in range(200)]
        for i in ids:
            emu.add_user(app.app_id, external_id=i)
        db = tmp_path / "s.duckdb"
        with Store(db) as store:
            export.register(store, "Buyers", "dynamic", app.app_id, emu.url)
        script = f"""
import json, sys
from toolkit import export
from toolkit.onesignal import Credentials
from toolkit.planning import Target
from toolkit.store import Store
export.results.FLUSH_EVERY = 10
with Store({str(db)!r}) as store:
    wanted = {{f"d-{{i}}": Target(i, "external_id") for i in json.loads(sys.argv[1])}}
    export.run(store, export.settings(store, "Buyers", client_options={{"concurrency": 4}}), wanted,
               Credentials({app.app_id!r}, sys.stdin.readline().strip()))
"""
        proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(ids)], stdin=subprocess.PIPE, text=True)
        proc.stdin.write(app.api_key + "\n")
        proc.stdin.flush()
        for _ in range(300):                              # wait until some users are tagged, then kill
            if len(tagged(emu, app)) >= 40:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert 0 < len(tagged(emu, app)) < len(ids)
        with Store(db) as store:
            record = export.run(store, fast(store), ext(*ids), creds(app))
            assert record.status == "ok" and tagged(emu, app) == set(ids)
            assert export.runs(store)[-1]["status"] == "interrupted"      # the killed run, marked as such


def test_dry_run_of_an_unregistered_cohort_registers_nothing(empty_file_store, unlimited_emulator, app_with_users):
    record = export.run(empty_file_store, export.ExportSettings("Later", mode="dynamic", dry_run=True),
                        ext("u1", "u2"), None)
    assert (record.status, record.mode, record.added) == ("ok", "dynamic", 2)
    assert export.list_exports(empty_file_store) == [] and export.due(empty_file_store) == []
    assert patches(unlimited_emulator) == 0
