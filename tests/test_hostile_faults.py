"""Faults on the export and scheduling side (issue 13, "A standing test"): kill -9 at chosen points,
429s without Retry-After, resets after the server applied a change, hung requests, 500s, and syncs and
exports running at the same time. Each against the real emulator over HTTP and real DuckDB files, the
`toolkit` command as a subprocess where a process must die or race; each asserts a clear message,
nothing lost, nothing half-written, and that the next run converges (the segment and the tags are
the cohort's exportable members). Points are drawn from seeded generators and reached by holding or
hanging the exact request (the emulator's aimed faults), never by sleeping."""

import json
import logging
import os
import random
import subprocess
import sys
import time

import cli_runner
import pytest

from helpers import NOW, ROOT, event, write_lines
from toolkit import Store, cohorts, export, load, sync
from toolkit.emulator import Emulator
from toolkit.onesignal import Credentials
from toolkit.planning import Target

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0, "max_attempts": 4, "concurrency": 4}
COHORT = "Buyers"
USERS = [f"u{i}" for i in range(8)]          # bought, and have a OneSignal external id ext-<user>
FORMER = [f"v{i}" for i in range(4)]         # in OneSignal; an earlier export tagged them, the cohort has not


@pytest.fixture
def world(tmp_path, new_store):
    """A store file with the cohort Buyers (eight users), and an emulator holding them and four more."""
    data = tmp_path / "data"
    data.mkdir()
    write_lines(data / "events.jsonl", [event("Purchase", u, insert_id=f"p{u}") for u in USERS])
    write_lines(data / "profiles.jsonl", [{"$distinct_id": u, "$properties": {"$onesignal_user_id": f"ext-{u}"}}
                                          for u in USERS])
    db = new_store(tmp_path / "store.duckdb")
    with Emulator(user_rate_limit=0, hang_seconds=60) as emu:
        app = emu.add_app()
        for u in USERS + FORMER:
            emu.add_user(app.app_id, f"ext-{u}")
        with Store(db) as store:
            load(store, [data], now=NOW)
            cohorts.save_all(store, [{"name": COHORT, "rules": [{"event": "Purchase"}]},
                                     {"name": "Also buyers", "rules": [{"in_cohort": COHORT}]}])
        yield {"db": db, "emu": emu, "app": app, "tmp": tmp_path,
               "env": {"ONESIGNAL_APP_ID": app.app_id, "ONESIGNAL_API_KEY": app.api_key,
                       "ONESIGNAL_BASE_URL": emu.url, "TOOLKIT_CREDENTIALS": str(tmp_path / "none.json"),
                       "TOOLKIT_STORE_WAIT": "120"}}


def creds(world):
    return Credentials(world["app"].app_id, world["app"].api_key)


def toolkit(*args, env=None):
    return [sys.executable, "-m", "toolkit", *map(str, args)], {**os.environ, **(env or {})}


def run_toolkit(world, *args, **env):
    """The command in this process (cli.main); the runs to kill or to race against are processes (below)."""
    return cli_runner.toolkit(*args, env={**world["env"], **env})


def start_toolkit(world, *args):
    argv, env = toolkit(*args, env=world["env"])
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def wait_for(condition, what, process=None, seconds=120):
    """Poll until ``condition()``; a process that ends first, or a very long wait, fails with ``what``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process ended first ({process.returncode}): "
                                 f"{process.stdout.read()}{process.stderr.read()}")
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def said(process, words, lines=20):
    """The first line of ``process``'s stderr holding ``words`` (it blocks until the line comes)."""
    for _ in range(lines):
        line = process.stderr.readline()
        if words in line or not line:
            return line
    return ""


def faulted(world, status):
    return [r for r in world["emu"].requests() if r["status"] == status]


def tagged(world, cohort=COHORT):
    key = export.tag_key(cohort)
    return {u for u, tags in world["emu"].user_tags(world["app"].app_id).items() if tags.get(key)}


def segment_members(world, cohort=COHORT):
    found = [s for s in world["emu"].state["apps"][world["app"].app_id]["segments"]
             if s["name"] == export.segment_name(cohort)]
    assert len(found) <= 1, f"{len(found)} segments named {cohort!r}"
    return set(found[0]["members"]["external_ids"]) if found else None


def snapshot(world, cohort=COHORT):
    with Store(world["db"], read_only=True) as store:
        return {d: o for d, o in store.con.execute("SELECT distinct_id, onesignal_id FROM export_members "
                                                   "WHERE cohort = ? AND status = 'tagged'", [cohort]).fetchall()}


def patches(world):
    return [r for r in world["emu"].requests() if r["method"] == "PATCH" and "/users/" in r["path"]
            and isinstance(r["status"], int)]


def assert_converged(world, cohort=COHORT):
    """OneSignal holds exactly the cohort's exportable members, and the store's snapshot says so."""
    wanted = {f"ext-{u}" for u in USERS}
    assert tagged(world, cohort) == wanted
    assert segment_members(world, cohort) == wanted
    assert snapshot(world, cohort) == {u: f"ext-{u}" for u in USERS}


def export_now(world, cohort=COHORT, **options):
    with Store(world["db"]) as store:
        return sync.export_cohort(store, export.settings(store, cohort, mode="once", app_id=world["app"].app_id,
                                                         base_url=world["emu"].url, client_options={**FAST, **options}),
                                  creds(world))


def tag_former_members_too(world):
    """An earlier export that also tagged FORMER: the next export of the cohort removes them."""
    with Store(world["db"]) as store:
        export.register(store, COHORT, "once", world["app"].app_id, world["emu"].url)
        wanted = {u: Target(f"ext-{u}", "external_id") for u in USERS + FORMER}
        settings = export.settings(store, COHORT, client_options=FAST)
        assert export.run(store, settings, wanted, creds(world)).status == "ok"
    assert tagged(world) == {f"ext-{u}" for u in USERS + FORMER}


# -- 1. kill -9 at a point of the export, then the next run --------------------------------------

KILL_POINTS = [("before the segment exists", 0), ("mid-adds", 1), ("mid-adds", 2), ("mid-adds", 3),
               ("mid-removes", 4), ("mid-removes", 5)]


def kill_export_at(world, point, seed):
    """Start `toolkit export`, hang the request at ``point`` (the k-th add or removal, k drawn from
    ``seed``), kill -9 the process while that request is in flight. Returns the killed process."""
    rng = random.Random(seed)
    faults = world["emu"].faults
    if point == "before the segment exists":
        faults.inject("hang", method="POST", path="/segments")
    elif point == "mid-adds":
        faults.inject("hang", method="PATCH", path="/users/", skip=rng.randrange(len(USERS)))
    else:
        tag_former_members_too(world)
        faults.inject("hang", method="PATCH", path="/users/", skip=rng.randrange(len(FORMER)))  # removals go first
    process = start_toolkit(world, "export", COHORT, "--once", "--db", world["db"])
    wait_for(lambda: faulted(world, "hung"), f"the export reaching {point}", process)
    process.kill()
    process.wait()
    return process


@pytest.mark.slow
@pytest.mark.parametrize("point, seed", KILL_POINTS)
def test_kill_9_mid_export_loses_nothing_and_the_next_run_converges(world, point, seed):
    before = tagged(world)
    kill_export_at(world, point, seed)

    # Nothing half-written: the store opens; its snapshot claims no user OneSignal was not told about,
    # and drops no former member OneSignal still tags; the killed run reads interrupted, in words.
    with Store(world["db"], read_only=True) as store:
        (killed,) = [r for r in export.runs(store) if r["pid"] and r["status"] != "ok"]
        registered = export.list_exports(store)
    assert killed["status"] == "interrupted" and "killed or crashed" in killed["error"]
    now_tagged = tagged(world)
    assert {f"ext-{u}" for u in snapshot(world) if u in USERS} <= now_tagged
    assert set(snapshot(world)) >= {u for u in FORMER if f"ext-{u}" in now_tagged}
    if point == "before the segment exists":
        assert segment_members(world) is None and now_tagged == before == set()
        assert registered == []                          # a first export that never ended registers nothing

    rerun = run_toolkit(world, "export", COHORT, "--once", "--db", world["db"])
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{COHORT}: once export ok" in rerun.stdout
    assert_converged(world)
    with Store(world["db"], read_only=True) as store:
        statuses = [r["status"] for r in export.runs(store)]
        stored = store.con.execute("SELECT status FROM export_runs WHERE run_id = ?", [killed["run_id"]]).fetchone()
    assert statuses[0] == "ok" and stored == ("interrupted",)


ONE_AT_A_TIME = """
from toolkit import export, sync
from toolkit.store import Store
export.results.FLUSH_EVERY = 1              # each user's outcome is committed as it arrives
with Store({db!r}) as store:
    sync.export_cohort(store, export.settings(store, {cohort!r}, mode="once", client_options={{"concurrency": 1}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("point, seed", [("mid-adds", 21), ("mid-adds", 22), ("mid-removes", 23)])
def test_kill_9_between_committed_users_leaves_the_snapshot_exactly_what_onesignal_confirmed(world, point, seed):
    """One request at a time, each outcome committed: the k-th request hangs, the process is killed. The
    snapshot then holds exactly the users OneSignal confirmed: not one more, not one fewer."""
    if point == "mid-removes":
        tag_former_members_too(world)
    k = random.Random(seed).randrange(len(FORMER) if point == "mid-removes" else len(USERS))
    world["emu"].faults.inject("hang", method="PATCH", path="/users/", skip=k)
    argv, env = toolkit(env=world["env"])
    process = subprocess.Popen([sys.executable, "-c", ONE_AT_A_TIME.format(db=str(world["db"]), cohort=COHORT)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    wait_for(lambda: faulted(world, "hung"), f"the export reaching request {k + 1}", process)
    process.kill()
    process.wait()
    confirmed = {r["path"].rsplit("/", 1)[1] for r in patches(world) if r["status"] == 202}
    now_tagged, claimed = tagged(world), snapshot(world)
    if point == "mid-adds":
        assert len(confirmed) == k and now_tagged == confirmed
        assert {f"ext-{u}" for u in claimed} == confirmed
    else:
        untagged = {f"ext-{u}" for u in FORMER} - now_tagged
        assert len(untagged) == k and {f"ext-{u}" for u in FORMER if u not in claimed} == untagged
    assert export_now(world).status == "ok"
    assert_converged(world)


@pytest.mark.slow
def test_a_killed_run_is_marked_interrupted_by_the_next_export_of_any_cohort(world):
    """A one-time export killed and never run again must not read "running" for ever."""
    kill_export_at(world, "mid-adds", 7)
    record = export_now(world, "Also buyers")
    assert record.status == "ok", record.error
    with Store(world["db"], read_only=True) as store:
        rows = store.con.execute("SELECT cohort, status, error FROM export_runs ORDER BY run_id").fetchall()
    assert rows[0][:2] == (COHORT, "interrupted") and "killed or crashed" in rows[0][2]
    assert rows[-1][:2] == ("Also buyers", "ok")


# -- 2. what the server does wrong -----------------------------------------------------------------

@pytest.mark.slow   # waits out real retries and backoff
def test_429_without_retry_after_backs_off_and_loses_no_user(world, caplog):
    caplog.set_level(logging.INFO, logger="toolkit.onesignal")
    waits = []

    async def sleep(seconds):
        waits.append(seconds)

    world["emu"].faults.inject("throttle", method="PATCH", path="/users/", times=5)
    world["emu"].faults.inject("throttle", method="POST", path="/segments", times=2)
    record = export_now(world, sleep=sleep)
    assert record.status == "ok" and record.added == len(USERS), record.error
    assert len(faulted(world, 429)) == 7
    assert len(waits) == 7 and min(waits) >= 1.0          # no Retry-After: still a real pause, never 0
    assert "429 API rate limit exceeded." in caplog.text
    assert_converged(world)


@pytest.mark.slow   # waits out real retries and backoff
def test_a_reset_after_the_server_applied_a_change_is_retried_idempotently(world):
    tag_former_members_too(world)
    emu = world["emu"]
    # Applied, then the connection reset: the segment's update, two removals and an add.
    emu.faults.inject("reset_after", method="PATCH", path="/segments/")
    emu.faults.inject("reset_after", method="PATCH", path="/external_id/ext-u3")
    emu.faults.inject("reset_after", method="PATCH", path="/external_id/ext-v", times=2)
    with Store(world["db"]) as store:             # u3 left the snapshot (but not OneSignal): added again
        store.con.execute("DELETE FROM export_members WHERE distinct_id = 'u3'")
    record = export_now(world)
    assert record.status == "ok", record.error
    assert (record.removed, record.added) == (len(FORMER), 1)
    assert len(faulted(world, "reset after 202")) == 3 and len(faulted(world, "reset after 200")) == 1
    assert_converged(world)


def test_a_reset_after_the_segment_was_created_adopts_it(world):
    world["emu"].faults.inject("reset_after", method="POST", path="/segments")
    record = export_now(world)
    assert record.status == "ok", record.error
    assert faulted(world, "reset after 201") and any(r["status"] == 409 for r in world["emu"].requests())
    assert_converged(world)                              # one segment, not two


@pytest.mark.slow   # waits out real retries and backoff
def test_a_hung_request_is_reported_in_words_and_the_next_run_converges(world):
    world["emu"].faults.inject("hang", method="PATCH", path="/users/by/external_id/ext-u5", times=FAST["max_attempts"])
    record = export_now(world, timeout=0.3)
    assert record.status == "partial" and (record.added, record.failed) == (len(USERS) - 1, 1)
    assert record.error.startswith("1 user(s) not updated in OneSignal, the next run retries them: ")
    assert "user 'u5' (OneSignal id 'ext-u5', tag): no answer from OneSignal" in record.error
    assert "no answer within 0.3s (ReadTimeout)" in record.error
    assert snapshot(world) == {u: f"ext-{u}" for u in USERS if u != "u5"}    # u5 is not claimed
    again = export_now(world, timeout=0.3)
    assert again.status == "ok" and again.added == 1 and again.unchanged == len(USERS) - 1
    assert_converged(world)


@pytest.mark.slow   # waits out real retries and backoff
def test_500s_are_retried_and_one_that_persists_fails_that_user_alone(world):
    emu = world["emu"]
    emu.faults.inject("crash", method="PATCH", path="/users/by/external_id/ext-u1", times=FAST["max_attempts"] - 1)
    emu.faults.inject("crash", method="PATCH", path="/users/by/external_id/ext-u6", times=FAST["max_attempts"])
    record = export_now(world)
    assert record.status == "partial" and record.failed == 1
    assert "user 'u6' (OneSignal id 'ext-u6', tag): OneSignal answered 500" in record.error
    assert "Internal server error" in record.error
    assert export_now(world).status == "ok"
    assert_converged(world)


def test_500s_on_the_segment_fail_the_run_before_any_user_and_the_next_converges(world):
    world["emu"].faults.inject("crash", method="POST", path="/segments", times=FAST["max_attempts"])
    record = export_now(world)
    assert record.status == "failed" and "OneSignal answered 500 to POST" in record.error
    assert patches(world) == [] and snapshot(world) == {}
    with Store(world["db"], read_only=True) as store:
        assert export.list_exports(store) == []
    assert export_now(world).status == "ok"
    assert_converged(world)


@pytest.mark.slow
def test_the_cli_exits_3_on_a_partial_export_and_names_the_user(world):
    # OneSignal refuses u2's update (a 400 no retry mends; the tag cap has its own outcome, tag_cap)
    world["emu"].faults.inject("refuse", method="PATCH", path="/ext-u2")
    out = run_toolkit(world, "export", COHORT, "--once", "--db", world["db"])
    assert out.returncode == 3, out.stdout + out.stderr
    assert "user 'u2' (OneSignal id 'ext-u2', tag): OneSignal answered 400" in out.stdout
    assert "Request refused" in out.stdout
    rerun = run_toolkit(world, "export", COHORT, "--db", world["db"])
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert_converged(world)


# -- 3. at the same time ---------------------------------------------------------------------------

def register_dynamic(world, *names):
    with Store(world["db"]) as store:
        for name in names:
            export.register(store, name, "dynamic", world["app"].app_id, world["emu"].url, now=NOW)


@pytest.mark.slow
def test_two_syncs_at_once_one_runs_the_other_says_busy_with_its_own_exit_code(world):
    register_dynamic(world, COHORT)
    runs = world["tmp"] / "runs"
    world["emu"].faults.inject("hold", method="PATCH", path="/users/")     # the first sync, caught mid-export
    first = start_toolkit(world, "sync", "--db", world["db"], "--runs-dir", runs)
    wait_for(lambda: world["emu"].held(), "the first sync exporting", first)
    second = run_toolkit(world, "sync", "--db", world["db"], "--runs-dir", runs, "--json")
    assert second.returncode == 4, second.stdout + second.stderr
    answer = json.loads(second.stdout)
    assert answer["status"] == "busy" and f"another sync is running (process {first.pid})" in answer["error"]
    assert "this one did nothing" in answer["error"]
    text = run_toolkit(world, "sync", "--db", world["db"], "--runs-dir", runs)
    assert text.returncode == 4 and text.stdout.startswith("sync skipped: another sync is running")
    world["emu"].release()
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    assert len(list(runs.glob("sync-*.ipynb"))) == 1                      # the busy ones ran nothing
    assert len(patches(world)) == len(USERS)
    assert_converged(world)


@pytest.mark.slow
def test_two_exports_of_one_cohort_from_two_processes_never_double_send(world):
    world["emu"].faults.inject("hold", method="PATCH", path="/users/")
    first = start_toolkit(world, "export", COHORT, "--once", "--db", world["db"])
    wait_for(lambda: world["emu"].held(), "the first export sending", first)
    impatient = run_toolkit(world, "export", COHORT, "--once", "--db", world["db"], TOOLKIT_STORE_WAIT="0")
    assert impatient.returncode == 1 and impatient.stderr.startswith("error: store ")
    assert f"is in use by process {first.pid}" in impatient.stderr and "then try again" in impatient.stderr
    second = start_toolkit(world, "export", COHORT, "--once", "--db", world["db"])
    waiting = said(second, "is in use by")               # the second waits for the store, and says so
    assert f"is in use by process {first.pid}" in waiting and "waiting up to 120s" in waiting
    world["emu"].release()
    results = [p.communicate(timeout=300) + (p.returncode,) for p in (first, second)]
    assert [code for *_, code in results] == [0, 0], results
    assert "added 8" in results[0][0] and "added 0" in results[1][0] and "unchanged 8" in results[1][0]
    assert len(patches(world)) == len(USERS)             # each user told once
    assert_converged(world)


@pytest.mark.slow
def test_an_export_from_the_cli_while_a_sync_runs_waits_then_sends_only_what_is_left(world):
    register_dynamic(world, COHORT)
    world["emu"].faults.inject("hold", method="PATCH", path="/users/")
    syncing = start_toolkit(world, "sync", "--db", world["db"], "--runs-dir", world["tmp"] / "runs")
    wait_for(lambda: world["emu"].held(), "the sync exporting", syncing)
    exporting = start_toolkit(world, "export", COHORT, "--db", world["db"])
    waiting = said(exporting, "is in use by")
    assert "is in use by process" in waiting and "a Jupyter notebook kernel" in waiting
    world["emu"].release()
    synced, exported = (p.communicate(timeout=300) + (p.returncode,) for p in (syncing, exporting))
    assert (synced[2], exported[2]) == (0, 0), (synced, exported)
    assert f"{COHORT}: dynamic export ok" in exported[0] and "unchanged 8" in exported[0]
    assert len(patches(world)) == len(USERS)
    assert_converged(world)


@pytest.mark.slow
def test_kill_9_of_a_sync_mid_export_then_the_next_sync_converges(world):
    register_dynamic(world, COHORT)
    runs = world["tmp"] / "runs"
    world["emu"].faults.inject("hang", method="PATCH", path="/users/", skip=random.Random(11).randrange(len(USERS)))
    killed = start_toolkit(world, "sync", "--db", world["db"], "--runs-dir", runs)
    wait_for(lambda: faulted(world, "hung"), "the sync exporting", killed)
    killed.kill()
    killed.wait()
    # Its notebook's kernel outlives it for a moment (it stops when it sees its parent gone); the next
    # sync waits for the store meanwhile.
    out = run_toolkit(world, "sync", "--db", world["db"], "--runs-dir", runs, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["status"] == "ok"
    assert_converged(world)
    with Store(world["db"], read_only=True) as store:
        statuses = [r["status"] for r in export.runs(store)]
    assert statuses == ["ok", "interrupted"]
    first, second = sorted(runs.glob("sync-*.ipynb"))      # the killed run has a verdict too
    record = json.loads(first.with_suffix(".json").read_text())
    assert record["status"] == "failed" and record["interrupted"] and "killed" in record["summary"]
    assert json.loads(second.with_suffix(".json").read_text())["status"] == "ok"
