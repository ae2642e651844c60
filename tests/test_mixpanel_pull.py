"""toolkit pull against the Mixpanel emulator over HTTP on 127.0.0.1, then the ordinary loader: a multi-day
pull equals the emulator's data after dedup, incremental pulls catch late events, a pull killed mid-stream
and rerun loses and duplicates nothing, faults are survived, profiles come through Engage, and the secret
never reaches the landing folder, the state file or the store."""

import gzip
import json
import os
import signal
import subprocess
import sys
from datetime import date

import pytest
from mixpanel_fixtures import FIRST_DAY, day_start, events, profiles, write_folder

from helpers import ROOT
from toolkit import load
from toolkit.errors import MixpanelAuthError, PullError
from toolkit.loading.sources import discover
from toolkit.mixpanel.client import ServiceAccount
from toolkit.mixpanel.emulator import MixpanelEmulator
from toolkit.mixpanel.pull import STATE_FILE, plan, project_folder, pull
from toolkit.store import Store

SECRET = "pull-test-secret-8f2b1c9d"
FAST = dict(backoff_base=0.01, backoff_max=0.05, rate_limited_wait=0.05)
LAST_DAY = date(2026, 10, 4)


@pytest.fixture
def emu(tmp_path, mixpanel_seconds):
    with MixpanelEmulator(write_folder(tmp_path / "mp"), project_id="4242", secret=SECRET, page_size=6,
                          **mixpanel_seconds) as e:
        yield e


@pytest.fixture
def account(emu):
    return ServiceAccount(emu.username, emu.secret, emu.project_id)


def stored_events(db) -> list[tuple]:
    with Store(db, read_only=True) as store:
        return sorted(store.con.execute(
            "SELECT event, distinct_id, insert_id FROM events").fetchall())


def expected(records) -> list[tuple]:
    return sorted({(e["event"], e["properties"]["distinct_id"], e["properties"]["$insert_id"]) for e in records})


def load_landing(landing, db):
    with Store(db) as store:
        summary = load(store, [landing])
    assert not summary.refused, summary.to_dict()
    return summary


def test_plan_single_days_for_the_recent_ones_wider_before():
    chunks = plan(date(2026, 1, 1), date(2026, 3, 31), recent_from=date(2026, 3, 29))
    assert len(chunks) <= 8 + 3 and chunks[0].first == date(2026, 1, 1) and chunks[-1].last == date(2026, 3, 31)
    assert [(c.first.day, c.last.day) for c in chunks[-3:]] == [(29, 29), (30, 30), (31, 31)]
    assert sum((c.last - c.first).days + 1 for c in chunks) == 90
    assert all((b.first - a.last).days == 1 for a, b in zip(chunks, chunks[1:], strict=False))


@pytest.mark.slow   # waits out real retries and backoff
def test_a_multi_day_pull_equals_the_emulators_data_then_incremental_catches_late_events(emu, account, tmp_path):
    landing, db = tmp_path / "landing", tmp_path / "s.duckdb"
    first = pull(landing, account, from_date=FIRST_DAY, to_date=LAST_DAY, base_url=emu.url, **FAST)
    assert len(first.chunks) == 4 and first.pulled_through == "2026-10-04" and first.bytes > 0
    load_landing(landing, db)
    assert stored_events(db) == expected(events())

    late = [{"event": "Purchase", "properties": {"time": day_start(date(2026, 10, 3)) + 5, "distinct_id": "late",
                                                 "$insert_id": "late-1"}}]
    new_day = events(days=1, first=date(2026, 10, 5), prefix="n")
    emu.add_events(late + new_day)
    second = pull(landing, account, today=date(2026, 10, 5), base_url=emu.url, **FAST)
    # The last three days again (late events), and the new one.
    assert [c.first.isoformat() for c in second.chunks] == ["2026-10-02", "2026-10-03", "2026-10-04", "2026-10-05"]
    files = sorted(p.name for p in (project_folder(landing, "4242") / "events").iterdir())
    assert len(files) == 5 and sum(f.startswith("2026-10-01") for f in files) == 1   # superseded files gone
    load_landing(landing, db)
    assert stored_events(db) == expected(events() + late + new_day)       # nothing twice, nothing lost


def _pull_in_a_subprocess(landing, emu):
    code = ("import sys; from datetime import date; from toolkit.mixpanel.client import ServiceAccount;"
            "from toolkit.mixpanel.pull import pull;"
            f"pull({str(landing)!r}, ServiceAccount({emu.username!r}, __import__('os').environ['MIXPANEL_SECRET'], "
            f"'4242'), from_date=date(2026, 10, 1), to_date=date(2026, 10, 4), base_url={emu.url!r}, "
            "on_chunk=lambda c: print('chunk', c.key, flush=True))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MIXPANEL_SECRET": SECRET}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)


@pytest.mark.slow   # a pull process killed
def test_a_pull_killed_mid_stream_and_rerun_loses_and_duplicates_nothing(emu, account, tmp_path):
    landing, db = tmp_path / "landing", tmp_path / "s.duckdb"
    emu.inject("stall", api="export", skip=1, at_byte=300)      # the second export stops half-way
    child = _pull_in_a_subprocess(landing, emu)
    try:
        assert emu.stalled.wait(60)
        first = child.stdout.readline()                         # the other ranges in flight become whole
        assert first.startswith("chunk ")
        child.send_signal(signal.SIGKILL)
        child.wait(60)
        whole = [line.split()[1] for line in [first, *child.stdout.read().splitlines()]]
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
    events_dir = project_folder(landing, "4242") / "events"
    visible = sorted(p.name.split(".")[0] for p in discover([landing]))
    assert set(whole) <= set(visible) and len(visible) < 4                  # the stalled range is hidden
    assert ".part" in [p.suffix for p in events_dir.glob(".*")]
    load_landing(landing, db)                               # a sync between the kill and the rerun
    emu.release()

    rerun = pull(landing, account, base_url=emu.url, **FAST)
    all_days = {f"2026-10-0{d}_2026-10-0{d}" for d in range(1, 5)}
    assert rerun.resumed and rerun.skipped >= len(whole) and rerun.skipped + len(rerun.chunks) == 4
    assert set(visible) | {c.key for c in rerun.chunks} == all_days         # none lost
    assert not list(events_dir.glob(".*"))                  # the part files of the killed run are replaced
    load_landing(landing, db)
    assert stored_events(db) == expected(events())
    for path in discover([landing]):
        gzip.decompress(path.read_bytes())                 # every visible file is whole


@pytest.mark.slow   # waits out real retries and backoff
def test_faults_during_a_pull_are_survived(emu, account, tmp_path):
    emu.inject("error", api="export", times=2)
    emu.inject("throttle", api="export", skip=1, times=3)
    emu.inject("cut", api="export", skip=2, at_byte=500)
    emu.inject("drop", api="export", skip=3)
    result = pull(tmp_path / "landing", account, from_date=FIRST_DAY, to_date=LAST_DAY, base_url=emu.url, **FAST)
    assert len(result.chunks) == 4
    assert emu.counters["injected_503"] == 2 and emu.counters["injected_429"] == 3 and emu.counters["cut"] == 1
    assert emu.counters["rate_limited"] == 0
    load_landing(tmp_path / "landing", tmp_path / "s.duckdb")
    assert stored_events(tmp_path / "s.duckdb") == expected(events())


def test_a_malformed_line_reaches_quarantine_with_its_file(emu, account, tmp_path):
    emu.inject("malformed", api="export")
    pull(tmp_path / "landing", account, from_date=FIRST_DAY, to_date=FIRST_DAY, base_url=emu.url, **FAST)
    summary = load_landing(tmp_path / "landing", tmp_path / "s.duckdb")
    assert summary.to_dict()["files"][0]["quarantined"] == 1
    assert len(stored_events(tmp_path / "s.duckdb")) == 50


def test_profiles_come_through_engage_pages(emu, account, tmp_path):
    landing, db = tmp_path / "landing", tmp_path / "s.duckdb"
    result = pull(landing, account, from_date=FIRST_DAY, to_date=FIRST_DAY, profiles=True, base_url=emu.url, **FAST)
    assert result.profiles == 20
    assert [e["path"] for e in emu.log].count("/api/query/engage") == 4         # pages of 6: 6, 6, 6, 2
    load_landing(landing, db)
    with Store(db, read_only=True) as store:
        rows = store.con.execute("""SELECT distinct_id, json_extract_string(properties, '$."$email"')
                                    FROM profiles ORDER BY 1""").fetchall()
    assert rows == sorted((p["$distinct_id"], p["$properties"]["$email"]) for p in profiles())


def test_the_first_pull_needs_a_start_and_a_wrong_secret_writes_nothing(emu, tmp_path):
    landing = tmp_path / "landing"
    with pytest.raises(PullError, match="--from"):
        pull(landing, ServiceAccount(emu.username, SECRET, "4242"), base_url=emu.url)
    with pytest.raises(MixpanelAuthError):
        pull(landing, ServiceAccount(emu.username, "not-the-secret-at-all", "4242"), from_date=FIRST_DAY,
             to_date=FIRST_DAY, base_url=emu.url, **FAST)
    assert discover([landing]) == [] and not list(landing.rglob("*.part"))
    # Corrected, with other dates: the failed plan (nothing of it pulled) gives way to the new one.
    again = pull(landing, ServiceAccount(emu.username, SECRET, "4242"), from_date=date(2026, 10, 2),
                 to_date=date(2026, 10, 3), base_url=emu.url, **FAST)
    assert not again.resumed and [c.key for c in again.chunks] == ["2026-10-02_2026-10-02", "2026-10-03_2026-10-03"]


@pytest.mark.slow   # waits out real retries and backoff
def test_the_secret_never_reaches_the_landing_folder_state_or_store(emu, account, tmp_path, caplog):
    caplog.set_level("DEBUG")
    landing, db = tmp_path / "landing", tmp_path / "s.duckdb"
    emu.inject("error", times=1)
    pull(landing, account, from_date=FIRST_DAY, to_date=LAST_DAY, profiles=True, base_url=emu.url, **FAST)
    load_landing(landing, db)
    state = json.loads((landing / STATE_FILE).read_text())
    assert state["4242"]["pulled_through"] == "2026-10-04"
    assert len(state["4242"]["requests"]["export"]) == 5          # four days and one retry: each counts
    for path in [*landing.rglob("*"), db]:
        if path.is_file():
            data = path.read_bytes()
            assert SECRET.encode() not in (gzip.decompress(data) if path.suffix == ".gz" else data), path
            assert SECRET.encode() not in data, path
    assert SECRET not in caplog.text


def test_a_second_pull_into_the_same_landing_folder_waits_for_none(emu, account, tmp_path):
    import fcntl

    from toolkit.mixpanel.pull import LOCK_FILE

    landing = tmp_path / "landing"
    landing.mkdir()
    with (landing / LOCK_FILE).open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(PullError, match="another pull"):
            pull(landing, account, from_date=FIRST_DAY, to_date=FIRST_DAY, base_url=emu.url)
    assert discover([landing]) == [] and emu.counters["requests"] == 0


def test_part_files_of_runs_given_up_are_removed(emu, account, tmp_path):
    events_dir = project_folder(tmp_path / "landing", "4242") / "events"
    events_dir.mkdir(parents=True)
    stale = events_dir / ".2026-10-01_2026-10-01.20260101T000000000000Z.part"
    stale.write_bytes(b"half of an old export")
    pull(tmp_path / "landing", account, from_date=FIRST_DAY, to_date=FIRST_DAY, base_url=emu.url, **FAST)
    assert not stale.exists() and not list(events_dir.glob(".*"))
