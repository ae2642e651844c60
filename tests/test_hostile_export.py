"""Hostile inputs and faults on the export side (issue 13 points 1, 2, 5, 6, 11; issue 12 point 5), each
against the real emulator over HTTP and real DuckDB files. Every test here failed before its fix."""

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import httpx
import pytest
from cli_runner import toolkit

from helpers import NOW, ROOT
from toolkit import export, sync
from toolkit.emulator import Emulator
from toolkit.onesignal import REDACTOR, AuthError, Credentials, OneSignalClient, PlanRefused, ServerError, error_for
from toolkit.planning import Target
from toolkit.store import Store

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0, "max_attempts": 30}
COHORT = "Tech fans worth a call"         # a sample cohort with exportable members


def fast(store, cohort, **kw):
    """The export's settings, with the client's retries made quick."""
    return export.settings(store, cohort, client_options=FAST, **kw)


@pytest.fixture
def unlimited_emulator():
    with Emulator(user_rate_limit=0) as emu:
        yield emu


@pytest.fixture
def app_with_users(unlimited_emulator):
    app = unlimited_emulator.add_app()
    for ext in ["u1", "u2", "u3"]:
        unlimited_emulator.add_user(app.app_id, external_id=ext)
    return app


@pytest.fixture(scope="module")
def sample_file_and_users(sample_store_file, tmp_path_factory):
    """The sample loaded with its cohorts (a copy of the session's), in a file; tests take a copy."""
    from toolkit.demo import seed_users

    path = tmp_path_factory.mktemp("sample") / "sample.duckdb"
    shutil.copy(sample_store_file, path)
    with Store(path) as s:
        users = seed_users(s)
    return path, users


@pytest.fixture
def sample_copy_and_app(sample_file_and_users, tmp_path, unlimited_emulator):
    """(store path, app) with the sample's OneSignal users in the emulator."""
    path, users = sample_file_and_users
    db = tmp_path / "sample.duckdb"
    shutil.copy(path, db)
    app = unlimited_emulator.add_app()
    unlimited_emulator.add_users(app.app_id, users)
    return db, app


@pytest.fixture
def no_key(monkeypatch, tmp_path):
    monkeypatch.delenv("ONESIGNAL_API_KEY", raising=False)
    monkeypatch.setenv("TOOLKIT_CREDENTIALS", str(tmp_path / "no-credentials.json"))


def creds(app):
    return Credentials(app.app_id, app.api_key)


def ext(*ids):
    return {f"d-{i}": Target(i, "external_id") for i in ids}


def segments(emulator, app):
    return emulator.state["apps"][app.app_id]["segments"]


def patches(emulator):
    return sum(1 for r in emulator.requests() if r["method"] == "PATCH" and "/users/" in r["path"])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fragments(secret: str, size: int = 4) -> set[str]:
    return {secret[i:i + size] for i in range(len(secret) - size + 1)}


# -- 13.1: a segment that already exists ----------------------------------------------------------

def test_a_rebuilt_store_adopts_the_segment_its_earlier_export_made(new_store, tmp_path, unlimited_emulator,
                                                                    app_with_users):
    with Store(new_store(tmp_path / "first.duckdb")) as first:
        export.register(first, "Buyers", "once", app_with_users.app_id, unlimited_emulator.url)
        assert export.run(first, fast(first, "Buyers"), ext("u1"), creds(app_with_users)).status == "ok"
    (made,) = segments(unlimited_emulator, app_with_users)
    with Store(new_store(tmp_path / "rebuilt.duckdb")) as rebuilt:          # same cohort, no segment id known
        export.register(rebuilt, "Buyers", "once", app_with_users.app_id, unlimited_emulator.url)
        record = export.run(rebuilt, fast(rebuilt, "Buyers"), ext("u1", "u2"), creds(app_with_users))
        assert record.status == "ok", record.error
        assert export.registration(rebuilt.con, "Buyers")["segment_id"] == made["id"]
    (segment,) = segments(unlimited_emulator, app_with_users)                              # adopted, not a second one
    assert segment["id"] == made["id"] and set(segment["members"]["external_ids"]) == {"u1", "u2"}


def test_a_kill_between_creating_the_segment_and_saving_its_id_is_recovered(empty_file_store, unlimited_emulator,
                                                                            app_with_users, monkeypatch):
    created = OneSignalClient.create_segment

    async def create_then_die(self, name, filters):
        await created(self, name, filters)
        raise KeyboardInterrupt                                       # the process dies before saving the id

    export.register(empty_file_store, "Buyers", "dynamic", app_with_users.app_id, unlimited_emulator.url)
    monkeypatch.setattr(OneSignalClient, "create_segment", create_then_die)
    with pytest.raises(KeyboardInterrupt):
        export.run(empty_file_store, fast(empty_file_store, "Buyers"), ext("u1"), creds(app_with_users))
    assert export.registration(empty_file_store.con, "Buyers")["segment_id"] is None
    assert len(segments(unlimited_emulator, app_with_users)) == 1
    monkeypatch.setattr(OneSignalClient, "create_segment", created)
    for _ in range(2):                                                # and it stays unwedged
        record = export.run(empty_file_store, fast(empty_file_store, "Buyers"), ext("u1", "u2"), creds(app_with_users))
        assert record.status == "ok", record.error
    (segment,) = segments(unlimited_emulator, app_with_users)
    assert export.registration(empty_file_store.con, "Buyers")["segment_id"] == segment["id"]
    assert set(segment["members"]["external_ids"]) == {"u1", "u2"}


def test_a_hand_made_segment_of_that_name_is_left_alone_with_a_clear_error(empty_file_store, unlimited_emulator,
                                                                           app_with_users):
    other = [{"field": "tag", "key": "vip", "relation": "exists"}]
    with httpx.Client(base_url=f"{unlimited_emulator.url}/apps/{app_with_users.app_id}",
                      headers={"Authorization": f"Key {app_with_users.api_key}"}) as http:
        hand_made = http.post("/segments", json={"name": "(Mixpanel) Buyers", "filters": other}).json()["id"]
    export.register(empty_file_store, "Buyers", "once", app_with_users.app_id, unlimited_emulator.url)
    record = export.run(empty_file_store, fast(empty_file_store, "Buyers"), ext("u1"), creds(app_with_users))
    assert record.status == "failed"
    assert "'(Mixpanel) Buyers'" in record.error and hand_made in record.error and "Rename or delete" in record.error
    assert patches(unlimited_emulator) == 0                                     # no user touched
    (segment,) = segments(unlimited_emulator, app_with_users)
    assert segment["id"] == hand_made and segment["filters"] == other


def test_cohorts_sharing_their_first_128_characters_get_a_segment_each(empty_file_store, unlimited_emulator,
                                                                       app_with_users):
    stem = "Users who " + "x" * 130
    names = [stem + " bought", stem + " browsed"]
    for name, user in zip(names, ["u1", "u2"], strict=True):
        export.register(empty_file_store, name, "once", app_with_users.app_id, unlimited_emulator.url)
        record = export.run(empty_file_store, fast(empty_file_store, name), ext(user), creds(app_with_users))
        assert record.status == "ok", record.error
    made = segments(unlimited_emulator, app_with_users)
    assert len(made) == 2 and len({s["name"] for s in made}) == 2
    assert all(len(s["name"]) <= 128 and s["name"].startswith("(Mixpanel) Users who xxx") for s in made)
    assert {tuple(s["members"]["external_ids"]) for s in made} == {("u1",), ("u2",)}
    assert export.segment_name("Short") == "(Mixpanel) Short"


def test_a_registration_with_a_cut_name_from_before_is_renamed_and_unwedged(empty_file_store, unlimited_emulator,
                                                                            app_with_users):
    stem = "Users who " + "y" * 130
    first, second = stem + " bought", stem + " browsed"
    for name, user in ((first, "u1"), (second, "u2")):
        export.register(empty_file_store, name, "once", app_with_users.app_id, unlimited_emulator.url)
        # as registered before: the name cut at 128 characters, the same for both cohorts
        empty_file_store.con.execute("UPDATE exports SET segment_name = ? WHERE cohort = ?", [name[:128], name])
        record = export.run(empty_file_store, fast(empty_file_store, name), ext(user), creds(app_with_users))
        assert record.status == "ok", record.error
    assert (sorted(s["name"] for s in segments(unlimited_emulator, app_with_users))
            == sorted(map(export.segment_name, (first, second))))


# -- 13.2: a free-plan refusal is OneSignal's answer, not a word in a name -------------------------

def test_plan_in_a_cohort_name_is_not_a_free_plan_refusal(empty_file_store, unlimited_emulator, app_with_users):
    with httpx.Client(base_url=f"{unlimited_emulator.url}/apps/{app_with_users.app_id}",
                      headers={"Authorization": f"Key {app_with_users.api_key}"}) as http:
        http.post("/segments", json={"name": "(Mixpanel) Paid plan upgrades", "filters": [
            {"field": "tag", "key": "other", "relation": "exists"}]})
    export.register(empty_file_store, "Paid plan upgrades", "once", app_with_users.app_id, unlimited_emulator.url)
    record = export.run(empty_file_store, fast(empty_file_store, "Paid plan upgrades"), ext("u1"),
                        creds(app_with_users))
    assert record.status == "failed" and record.error != export.FREE_PLAN_MESSAGE
    assert "already has a segment named '(Mixpanel) Paid plan upgrades'" in record.error


def test_the_free_plan_is_known_by_status_and_exact_words():
    refusal = "App may not create or update segments through the API on a free plan; upgrade to a paid OneSignal plan"
    assert isinstance(error_for(400, [refusal], method="POST", path="/s"), PlanRefused)
    assert isinstance(error_for(402, ["anything"], method="POST", path="/s"), PlanRefused)
    for words in ["A segment named 'free plan' already exists", f"{refusal} (segment 'x')", "upgrade your paid plan"]:
        for status in (400, 409):
            assert not isinstance(error_for(status, [words], method="POST", path="/s"), PlanRefused)


# -- 13.5: keys with control or non-ASCII characters; every form of a secret redacted ----------------

BAD_KEYS = ["zq7xk3wv9bj2\nm4vj8tpq2rsb", "zq7xk3wv9bj2\tm4vj8tpq2rsb", "zq7xk3wv9bj2ém4vj8tpq2rsb",
            "zq7xk3wv9bj2\x00m4vj8tpq2rsb"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_a_bad_key_is_refused_up_front_and_never_echoed(key):
    with pytest.raises(ValueError) as info:
        Credentials("app-1", key)
    assert "API key" in str(info.value) and "app-1" in str(info.value)
    assert [f for f in fragments(key, 3) if f in str(info.value)] == []
    assert not isinstance(info.value, UnicodeError)


def test_connect_with_a_pasted_two_line_key_stores_and_prints_nothing_of_it(tmp_path, unlimited_emulator,
                                                                            app_with_users):
    key = app_with_users.api_key[:20] + "\n" + app_with_users.api_key[20:]
    db = tmp_path / "s.duckdb"
    result = toolkit("connect", "--db", db, "--app-id", app_with_users.app_id, "--base-url", unlimited_emulator.url,
                     env={"ONESIGNAL_API_KEY": key, "TOOLKIT_CREDENTIALS": str(tmp_path / "none.json")})
    assert result.returncode == 1 and "line break" in result.stderr
    assert "Traceback" not in result.stderr
    output = result.stdout + result.stderr
    assert [f for f in fragments(app_with_users.api_key, 6) if f in output] == []
    with Store(db) as s:
        dump = str(s.con.execute("SELECT * FROM connections").fetchall())
        dump += str(s.con.execute("SELECT * FROM export_runs").fetchall())
    assert [f for f in fragments(app_with_users.api_key, 6) if f in dump] == []


def test_every_written_form_of_a_key_is_redacted():
    key = "os_v2_app+some/secret=key-0123"
    REDACTOR.add(key)
    forms = [key, repr(key.encode()), quote(key, safe=""), base64.b64encode(key.encode()).decode(),
             base64.b64encode(f"Key {key}".encode()).decode(), json.dumps(key)]
    for form in forms:
        text = REDACTOR.redact(f"header: {form} end")
        assert "some/secret" not in text and "some%2Fsecret" not in text and form not in text, form


def test_a_stored_run_error_never_holds_the_key(empty_file_store, unlimited_emulator, app_with_users, monkeypatch):
    async def leaky(self, *args, **kwargs):
        raise RuntimeError(f"boom with {self.credentials.api_key!r} and {self.credentials.api_key.encode()!r}")

    monkeypatch.setattr(OneSignalClient, "create_segment", leaky)
    export.register(empty_file_store, "Buyers", "once", app_with_users.app_id, unlimited_emulator.url)
    with pytest.raises(RuntimeError):
        export.run(empty_file_store, fast(empty_file_store, "Buyers"), ext("u1"), creds(app_with_users))
    (error,) = empty_file_store.con.execute("SELECT error FROM export_runs").fetchone()
    assert app_with_users.api_key not in error and "boom" in error


# -- 13.6: liveness of a run is not a process id ---------------------------------------------------

def test_a_stale_running_record_whose_pid_now_belongs_to_a_live_process_does_not_block(empty_file_store,
                                                                                       unlimited_emulator,
                                                                                       app_with_users):
    export.register(empty_file_store, "Buyers", "once", app_with_users.app_id, unlimited_emulator.url)
    empty_file_store.con.execute("INSERT INTO export_runs (run_id, cohort, mode, dry_run, started_at, status, pid) "
                      "VALUES (nextval('run_ids'), 'Buyers', 'once', false, now()::TIMESTAMP, 'running', ?)",
                      [os.getppid()])                                 # a live process, not an export
    record = export.run(empty_file_store, fast(empty_file_store, "Buyers"), ext("u1"), creds(app_with_users))
    assert record.status == "ok", record.error
    assert [r["status"] for r in export.runs(empty_file_store)] == ["ok", "interrupted"]


@pytest.mark.slow   # a toolkit run in a process of its own, racing this one
def test_a_run_in_another_process_blocks_until_that_process_is_gone(empty_file_store, unlimited_emulator,
                                                                    app_with_users):
    export.register(empty_file_store, "Buyers", "once", app_with_users.app_id, unlimited_emulator.url)
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, types
from toolkit import export
with export._run_lock(types.SimpleNamespace(path={str(empty_file_store.path)!r}), "Buyers"):
    print("holding", flush=True)
    sys.stdin.readline()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(export.ExportError, match=rf"already running \(process {holder.pid}\)"):
            export.run(empty_file_store, fast(empty_file_store, "Buyers"), ext("u1"), creds(app_with_users))
    finally:
        holder.kill()
        holder.wait()
    assert export.run(empty_file_store, fast(empty_file_store, "Buyers"), ext("u1"),
                      creds(app_with_users)).status == "ok"


# -- 13.11: the emulator's secrets; --base-url; Ctrl-C ----------------------------------------------

def test_the_emulator_state_file_is_private(tmp_path):
    path = tmp_path / "onesignal.json"
    with Emulator(state_file=path) as emu:
        emu.add_app()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)                                                 # an old file is made private again
    with Emulator(state_file=path) as emu:
        emu.add_app()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_control_endpoints_need_the_admin_token(unlimited_emulator, app_with_users):
    for method, path in [("GET", "state"), ("GET", "requests"), ("POST", "reset")]:
        for headers in ({}, {"X-Emulator-Token": "guess"}, {"Authorization": f"Key {app_with_users.api_key}"}):
            answer = httpx.request(method, f"{unlimited_emulator.url}/_emulator/{path}", headers=headers)
            assert answer.status_code == 401 and "admin token" in answer.text
        answer = httpx.request(method, f"{unlimited_emulator.url}/_emulator/{path}",
                               headers=unlimited_emulator.admin_headers)
        assert answer.status_code == 200


def test_base_url_without_a_mode_is_honoured_and_kept_after_success(sample_copy_and_app, unlimited_emulator):
    db, app = sample_copy_and_app
    dead = f"http://127.0.0.1:{closed_port()}"
    with Store(db) as s:
        export.register(s, COHORT, "dynamic", app.app_id, dead)
        record = sync.export_cohort(s, fast(s, COHORT, base_url=unlimited_emulator.url), creds(app))
        assert record.status == "ok", record.error
        assert export.registration(s.con, COHORT)["base_url"] == unlimited_emulator.url
    assert len(segments(unlimited_emulator, app)) == 1


def test_a_run_reads_its_registration_once(sample_copy_and_app, unlimited_emulator, monkeypatch):
    """The registration is read where the run's settings are made, and nowhere else in the run; a cycle
    reads every registration once for all its runs' settings."""
    from toolkit.export.registry import Registered

    db, app = sample_copy_and_app
    reads, read, read_all = [], export.registration, Registered.read
    monkeypatch.setattr(export.run_settings, "registration",
                        lambda con, cohort: reads.append(cohort) or read(con, cohort))
    monkeypatch.setattr(Registered, "read", classmethod(lambda cls, con: reads.append("every one") or read_all(con)))
    later = datetime.now(UTC) + timedelta(minutes=1)
    with Store(db) as s:
        export.register(s, COHORT, "dynamic", app.app_id, unlimited_emulator.url)
        reads.clear()
        assert sync.export_cohort(s, fast(s, COHORT), creds(app)).status == "ok" and reads == [COHORT]
        reads.clear()                                                 # a new registration
        settings = fast(s, COHORT, mode="once", app_id=app.app_id, base_url=unlimited_emulator.url)
        assert sync.export_cohort(s, settings, creds(app)).status == "ok" and reads == [COHORT]
        export.register(s, COHORT, "dynamic", app.app_id, unlimited_emulator.url)
        reads.clear()                                                 # the scheduled sync's way
        monkeypatch.setenv("ONESIGNAL_API_KEY", app.api_key)
        (record,) = sync.run_due(s, now=later, client_options=FAST)
        assert record.status == "ok" and reads == ["every one"]


@pytest.fixture
def terminal_ctrl_c():
    """SIGINT as a terminal delivers it: KeyboardInterrupt in the main thread. Also when the suite runs as a
    background job of a script, which starts with SIGINT ignored (the shell's rule for such jobs)."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("a signal's handler runs in the main thread only")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.slow   # `toolkit export` as a process, interrupted
def test_ctrl_c_during_an_export_says_the_export_stopped(sample_copy_and_app, tmp_path, terminal_ctrl_c):
    """The process started as from a terminal (``terminal_ctrl_c``: a handled SIGINT is default again after
    exec): started with SIGINT ignored, as a suite run as a script's background job is, it would ignore the
    SIGINT as every program does, run the held update to its timeout and finish with 0."""
    db, app = sample_copy_and_app
    with Emulator(user_rate_limit=0) as slow:
        slow_app = slow.add_app(app.app_id, app.api_key)
        slow.add_users(slow_app.app_id, [{"external_id": f"x{n}"} for n in range(3)])
        from toolkit.demo import seed_users
        with Store(db) as s:
            slow.add_users(slow_app.app_id, seed_users(s))
        slow.faults.inject("hold", method="PATCH", path="/users/")   # the export, caught mid-way: no timing
        proc = subprocess.Popen([sys.executable, "-m", "toolkit", "export", COHORT, "--once", "--db", str(db),
                                 "--app-id", app.app_id, "--base-url", slow.url],
                                env={**os.environ, "ONESIGNAL_API_KEY": app.api_key,
                                     "TOOLKIT_CREDENTIALS": str(tmp_path / "none.json")},
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(1200):                                     # until a user's update is held
                if slow.held() or proc.poll() is not None:
                    break
                time.sleep(0.05)
            assert slow.held(), proc.communicate(timeout=60)           # the export was caught mid-way
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            slow.release()
    assert proc.returncode == 130, err
    assert "the export stopped" in err and "file being loaded" not in err


@contextlib.contextmanager
def ctrl_c_once_held(emulator, elsewhere: bool = False):
    """Press Ctrl-C once the emulator holds a user's update (``faults.inject("hold")``): the export is caught
    mid-way whatever the machine's speed. Held requests are let go on the way out. ``elsewhere``: the kernel
    gives the signal to a thread other than the main one (it may give it to any thread), the handler's
    KeyboardInterrupt still comes in the main thread."""
    done = threading.Event()

    def press():
        while not done.wait(0.01):
            if emulator.held():
                if elsewhere:
                    signal.pthread_kill(threading.get_ident(), signal.SIGINT)
                else:
                    os.kill(os.getpid(), signal.SIGINT)
                return

    presser = threading.Thread(target=press, daemon=True)
    presser.start()
    try:
        yield
    finally:
        done.set()
        presser.join()
        emulator.release()


def in_a_notebook(call):
    """``call()`` from a cell: Jupyter runs cells with an event loop running (the export then runs its own in a
    thread) and turns Ctrl-C (the kernel's interrupt) into KeyboardInterrupt wherever the main thread is."""
    async def cell():
        return call()

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(cell())
    finally:
        loop.close()


@pytest.mark.parametrize("where", ["terminal", "notebook"])
def test_ctrl_c_mid_export_stops_it_at_once(where, empty_file_store, unlimited_emulator, app_with_users,
                                            terminal_ctrl_c):
    store, emulator = empty_file_store, unlimited_emulator
    export.register(store, "Buyers", "once", app_with_users.app_id, emulator.url)
    settings = export.settings(store, "Buyers", client_options={**FAST, "timeout": 1.0})
    emulator.faults.inject("hold", method="PATCH", path="/users/")

    def run():
        return export.run(store, settings, ext("u1", "u2", "u3"), creds(app_with_users))

    with pytest.raises(KeyboardInterrupt), ctrl_c_once_held(emulator):
        run() if where == "terminal" else in_a_notebook(run)
    (held,) = emulator.held()
    tries = {r["t"] for r in emulator.requests() if r["method"] == "PATCH" and r["path"] == held["path"]}
    assert len(tries) == 1, "the held update was tried again: the export went on after Ctrl-C"  # one arrival
    assert store.con.execute("SELECT status FROM export_runs").fetchall() == [("interrupted",)]


@pytest.mark.parametrize("where", ["terminal", "notebook"])
@pytest.mark.parametrize("elsewhere", [False, True], ids=["signal to the process", "signal to another thread"])
def test_ctrl_c_stops_a_whole_cycle_at_once(where, elsewhere, tmp_path, monkeypatch, terminal_ctrl_c):
    """Ctrl-C reaches the main thread only; a cycle's runs are threads, sending through the cycle's merged
    sender. Every run stops as one alone does (recorded interrupted) and the request out is cancelled, not
    waited for: before, the cycle ran on to the hung request's timeout, retried it, and recorded "ok". The
    kernel may give the signal to any thread: the cycle's thread then sees it only when it runs Python
    again, which a wait without a timeout put off until the hung request's timeout (1 in 5 under load)."""
    from test_cycle import FAST as QUICK
    from test_cycle import build, credentials

    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app()
        credentials(monkeypatch, tmp_path, app)
        db = build(tmp_path, emu, app, {"A": ["a1", "a2"], "B": ["b1"]}, shared=["s1"])
        # The user both cohorts change (one request carries both): each run is waiting on it. (A user of one
        # cohort held, the other's run may have had every answer, and rightly ends ok.)
        emu.faults.inject("hold", method="PATCH", path="/users/by/external_id/ext-s1")
        with Store(db) as store:

            def cycle():
                return sync.run_due(store, now=NOW, client_options={**QUICK, "timeout": 30.0})

            with pytest.raises(KeyboardInterrupt), ctrl_c_once_held(emu, elsewhere):
                cycle() if where == "terminal" else in_a_notebook(cycle)
            (held,) = emu.held()
            # One arrival: a held request is logged as it arrives and again once served, with the same "t".
            tries = {r["t"] for r in emu.requests() if r["method"] == "PATCH" and r["path"] == held["path"]}
            assert len(tries) == 1, "the held update was tried again: the cycle went on after Ctrl-C"
            assert store.con.execute("SELECT cohort, status, error FROM export_runs ORDER BY cohort").fetchall() == [
                ("A", "interrupted", "stopped by Ctrl-C"), ("B", "interrupted", "stopped by Ctrl-C")]


def test_ctrl_c_stops_a_cycles_runs_before_they_hand_their_sends_over(tmp_path, monkeypatch, terminal_ctrl_c):
    """A run still making its segment waits on no merged sends: the cycle's stop itself (``CycleStop``) tells
    its loop, which cancels it at once; no update is sent."""
    from test_cycle import FAST as QUICK
    from test_cycle import build, credentials

    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app()
        credentials(monkeypatch, tmp_path, app)
        db = build(tmp_path, emu, app, {"A": ["a1", "a2"], "B": ["b1"]})
        emu.faults.inject("hold", method="POST", path="/segments", times=2)     # each run's segment: held
        with Store(db) as store:
            with pytest.raises(KeyboardInterrupt), ctrl_c_once_held(emu):
                sync.run_due(store, now=NOW, client_options={**QUICK, "timeout": 5.0})
            held = {r["t"] for r in emu.held()}
            tries = {r["t"] for r in emu.requests() if r["method"] == "POST" and r["path"].endswith("/segments")}
            assert tries == held, "a held segment request was tried again: the cycle went on after Ctrl-C"
            assert not [r for r in emu.requests() if r["method"] == "PATCH"]
            statuses = store.con.execute("SELECT status, error FROM export_runs").fetchall()
            assert statuses and set(statuses) == {("interrupted", "stopped by Ctrl-C")}


@pytest.mark.parametrize("where", ["terminal", "notebook"])
def test_ctrl_c_stops_a_run_even_if_its_cancellation_is_swallowed(where, terminal_ctrl_c):
    """Ctrl-C cancels the run's task; a library that swallows the cancellation (catches CancelledError and
    goes on) must not turn an interrupted run into a finished one."""
    from toolkit.export.helpers import _run_async

    cancelled = []

    async def swallowing():
        os.kill(os.getpid(), signal.SIGINT)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
        return "finished anyway"

    with pytest.raises(KeyboardInterrupt):
        _run_async(swallowing()) if where == "terminal" else in_a_notebook(lambda: _run_async(swallowing()))
    assert cancelled, "the run was not cancelled: it ran on after Ctrl-C"


def test_ctrl_c_as_a_notebook_run_starts_still_waits_for_its_cleanup(terminal_ctrl_c):
    """A Ctrl-C in the first moment of a run in a notebook: the run's thread may be running before
    ``thread.start()`` has returned. A KeyboardInterrupt inside ``start()`` once left the run going, its
    cleanup not waited for (1 in 4-10 tries on a busy machine); repeated, so that timing cannot hide it."""
    from toolkit.export.helpers import _run_async

    for attempt in range(50):
        steps = []

        async def run(steps=steps):
            os.kill(os.getpid(), signal.SIGINT)
            try:
                await asyncio.sleep(10)
            finally:
                steps.append("cleanup")

        with pytest.raises(KeyboardInterrupt):
            in_a_notebook(lambda run=run: _run_async(run()))
        assert steps == ["cleanup"], f"try {attempt}: the interrupt came back before the run's cleanup ended"


# -- 12.5: a failed or refused export changes nothing; unreachable addresses fail at once ------------

def test_a_failed_once_export_leaves_a_dynamic_sync_running(sample_copy_and_app, unlimited_emulator, no_key):
    db, app = sample_copy_and_app
    with Store(db) as s:
        export.register(s, COHORT, "dynamic", app.app_id, unlimited_emulator.url)
        before = export.registration(s.con, COHORT)
        record = sync.export_cohort(s, export.settings(s, COHORT, mode="once", app_id=app.app_id))  # no key anywhere
        assert record.status == "failed" and "no OneSignal credentials" in record.error
        assert export.registration(s.con, COHORT) == before
        assert export.due(s) == [COHORT]


def test_a_failed_first_export_registers_nothing(sample_copy_and_app, unlimited_emulator):
    db, app = sample_copy_and_app
    dead = f"http://127.0.0.1:{closed_port()}"
    with Store(db) as s:
        record = sync.export_cohort(s, fast(s, COHORT, mode="dynamic", app_id=app.app_id, base_url=dead), creds(app))
        assert record.status == "failed"
        assert export.list_exports(s) == [] and export.due(s) == []
        record = sync.export_cohort(s, fast(s, COHORT, mode="dynamic", app_id=app.app_id,
                                            base_url=unlimited_emulator.url),
                                    creds(app))
        assert record.status == "ok" and export.registration(s.con, COHORT)["mode"] == "dynamic"
        assert export.registration(s.con, COHORT)["segment_id"] == segments(unlimited_emulator, app)[0]["id"]


@pytest.mark.parametrize("address, cause", [
    ("http://127.0.0.1:{port}", "connection refused"),
    ("http://no-such-host.invalid", "cannot be resolved"),
])
def test_an_unreachable_address_fails_at_once_naming_it(empty_file_store, app_with_users, caplog, address, cause):
    address = address.format(port=closed_port())
    caplog.set_level(logging.INFO, logger="toolkit.onesignal")
    export.register(empty_file_store, "Buyers", "once", app_with_users.app_id, address)
    # the default 10 attempts
    record = export.run(empty_file_store, export.settings(empty_file_store, "Buyers"), ext("u1"), creds(app_with_users))
    assert record.status == "failed" and address in record.error and cause in record.error
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]


def test_retries_are_shown_with_the_reason_and_the_wait_without_flooding(caplog):
    waits = []

    async def sleep(seconds):
        waits.append(seconds)

    caplog.set_level(logging.INFO, logger="toolkit.onesignal")
    with Emulator(error_rate=1.0) as emu:
        app = emu.add_app()
        client = OneSignalClient(creds(app), emu.url, max_attempts=5, sleep=sleep)

        async def call():
            async with client:
                await client.get_user("external_id", "u1")

        with pytest.raises(ServerError):
            asyncio.run(call())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "retrying" in r.getMessage()]
    assert len(infos) == 4 and len(waits) == 4
    assert len(warnings) == 1                                          # rate-limited: one notice for a quick burst
    assert "503" in warnings[0] and "Service temporarily unavailable" in warnings[0] and emu.url in warnings[0]
    assert "retrying GET" in warnings[0] and "attempt 2 of 5" in warnings[0]


def test_the_bad_key_message_reads_cleanly(unlimited_emulator, app_with_users):
    async def call():
        async with OneSignalClient(Credentials(app_with_users.app_id, "not-the-key-at-all"),
                                   unlimited_emulator.url) as client:
            await client.validate()

    with pytest.raises(AuthError) as info:
        asyncio.run(call())
    text = str(info.value)
    assert not re.search(r"[^.]\.\.(?!\.)|\. \.", text) and text.endswith(".")     # "..." is OneSignal's own
    assert "Check the App API key" in text


def test_a_hung_request_is_reported_in_words(caplog):
    with Emulator(hang_rate=1.0, hang_seconds=5) as emu:
        app = emu.add_app()

        async def call():
            async with OneSignalClient(creds(app), emu.url, timeout=0.3, max_attempts=1) as client:
                await client.get_user("external_id", "u1")

        with pytest.raises(Exception) as info:
            asyncio.run(call())
    assert "no answer within 0.3s (ReadTimeout)" in str(info.value) and emu.url in str(info.value)
    assert "ReadTimeout: ReadTimeout" not in str(info.value)


def test_an_address_where_something_else_listens_gives_up_after_a_few_tries():
    """Not HTTP at all (an SSH banner, then the connection closes): a few quick tries, then the address."""

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    waits = []

    async def sleep(seconds):
        waits.append(seconds)

    address = f"http://127.0.0.1:{server.getsockname()[1]}"

    async def call():
        async with OneSignalClient(Credentials("app", "k"), address, sleep=sleep) as client:   # 10 attempts
            await client.create_segment("S", [{"field": "tag", "key": "a", "relation": "exists"}])

    try:
        with pytest.raises(Exception) as info:
            asyncio.run(call())
    finally:
        stop.set()
        thread.join()
        server.close()
    assert info.value.attempts == 3 and len(waits) == 2 and address in str(info.value)
