"""Sync states (toolkit/export/states.py): OneSignal refusing a whole request with 400/401/403/404 pauses a
dynamic sync, the scheduler skips it until a person resumes it, and a transient 429/5xx does not pause.
Real store files, the emulator over HTTP, the `toolkit` command in this process."""

import json
from datetime import timedelta

import pytest
from cli_runner import toolkit

from helpers import NOW, a_new_buyer, event, write_lines
from toolkit import Store, cohorts, export, load, sync
from toolkit.emulator import Emulator
from toolkit.errors import ExportError

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0, "max_attempts": 3}
LATER = [NOW + timedelta(minutes=15 * i) for i in range(8)]


USERS = ["u1", "u2", "u3", "u4"]


def four_buyers(store, folder):
    """Four buyers, three of them with a OneSignal id; the cohort "Buyers"."""
    data = folder / "data"
    data.mkdir()
    write_lines(data / "events.jsonl", [event("Purchase", u, insert_id=f"p{u}") for u in USERS])
    write_lines(data / "profiles.jsonl", [{"$distinct_id": u, "$properties": {"$onesignal_user_id": f"ext-{u}"}}
                                          for u in USERS[:3]])
    load(store, [data], now=NOW)
    cohorts.save_all(store, [{"name": "Buyers", "rules": [{"event": "Purchase"}]}])


@pytest.fixture
def world(tmp_path, filled_once, held_open, users_unspaced, monkeypatch):
    """Four buyers, three of them with a OneSignal id the app knows; Buyers registered as a dynamic sync.
    The loaded store is a copy of one loaded once per module. The emulator takes a user's updates at any
    pace, and so do the runs (users_unspaced: syncs of several cohorts share the users)."""
    db = held_open(filled_once(four_buyers, tmp_path / "store.duckdb"))     # each run reopens it
    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app()
        for u in USERS[:3]:
            emu.add_user(app.app_id, f"ext-{u}")
        monkeypatch.setenv("ONESIGNAL_APP_ID", app.app_id)
        monkeypatch.setenv("ONESIGNAL_API_KEY", app.api_key)
        monkeypatch.setenv("TOOLKIT_CREDENTIALS", str(tmp_path / "no-credentials.json"))
        with Store(db) as store:
            export.register(store, "Buyers", "dynamic", app.app_id, emu.url, now=NOW)
        yield {"db": db, "emu": emu, "app": app}


def due_runs(world, when):
    with Store(world["db"]) as store:
        return sync.run_due(store, now=when, client_options=FAST)


def state(world):
    with Store(world["db"], read_only=True) as store:
        (found,) = export.overview(store)
    return found


def requests(world):
    return len(world["emu"].requests())


@pytest.mark.slow
def test_a_revoked_key_pauses_the_sync_until_a_person_resumes_it(world):
    (first,) = due_runs(world, LATER[0])
    assert first.status == "ok" and state(world)["state"] == "active"
    key = world["app"].api_key
    world["app"].api_key = "revoked-" + key[8:]                   # revoked in OneSignal: 403 from now on
    a_new_buyer(world["db"], world["emu"], world["app"].app_id, "u5", LATER[1])
    (paused,) = due_runs(world, LATER[1])
    assert paused.status == "paused" and "403" in paused.error and key not in paused.error
    found = state(world)
    assert found["state"] == "paused" and found["paused_reason"] == paused.error
    assert found["last_status"] == "paused" and found["last_success_at"] == first.started_at
    # the next scheduled runs skip it, sending nothing, and the sync's record says why
    before = requests(world)
    assert due_runs(world, LATER[2]) == [] and requests(world) == before
    result = sync.run_scheduled(world["db"], now=LATER[3], client_options=FAST)
    assert result.runs == [] and requests(world) == before
    assert '"Buyers" paused, skipped until resumed' in result.summary and "403" in result.summary
    assert result.to_record()["paused"][0]["cohort"] == "Buyers"
    # a person's own run is refused too, naming the way out
    with Store(world["db"]) as store, pytest.raises(ExportError, match="toolkit resume 'Buyers'"):
        sync.export_cohort(store, export.settings(store, "Buyers", now=LATER[3], client_options=FAST))
    # the key is fixed and the sync resumed: the next scheduled run runs it again
    world["app"].api_key = key
    resumed = toolkit("resume", "Buyers", "--db", world["db"])
    assert resumed.returncode == 0 and "resumed" in resumed.stdout and "403" in resumed.stdout
    (again,) = due_runs(world, LATER[4])
    assert again.status == "ok" and state(world)["state"] == "active"


@pytest.mark.parametrize("breakage", ["app gone (400 app_id not found)", "wrong address (404)", "free plan (402)"])
def test_a_refused_app_pauses_the_sync(world, breakage):
    emu, app = world["emu"], world["app"]
    if breakage.startswith("app gone"):
        del emu.world.apps[app.app_id]
        expected = "app_id not found"
    elif breakage.startswith("wrong address"):
        with Store(world["db"]) as store:
            store.con.execute("UPDATE exports SET base_url = ?", [emu.url + "/nowhere"])
        expected = "404"
    else:
        app.plan = "free"
        expected = export.FREE_PLAN_MESSAGE
    (record,) = due_runs(world, LATER[0])
    assert record.status == "paused" and expected in record.error
    assert state(world)["state"] == "paused" and due_runs(world, LATER[1]) == []


@pytest.mark.parametrize("fault, status", [("crash", "500"), ("throttle", "429")])
def test_a_transient_error_fails_the_run_but_does_not_pause(world, fault, status, retries_unwaited):
    world["emu"].faults.inject(fault, path="/segments", times=FAST["max_attempts"])
    (record,) = due_runs(world, LATER[0])
    assert record.status == "failed" and status in record.error
    assert len(retries_unwaited) == (2 * 2 if status == "429" else 2)   # a 429 holds the budget and waits too
    assert status != "429" or 1.0 in retries_unwaited                   # a second: the 429 had no Retry-After
    assert state(world)["state"] == "active"
    (again,) = due_runs(world, LATER[1])          # still due: the next run tries again, and it works
    assert again.status == "ok"


def test_one_users_refusal_does_not_pause(world):
    world["emu"].faults.inject("refuse", method="PATCH", path="/ext-u2", times=1_000)
    (record,) = due_runs(world, LATER[0])
    assert record.status == "partial" and state(world)["state"] == "active"


def test_pause_and_resume_by_a_person(world):
    paused = toolkit("pause", "buyers", "--db", world["db"])       # any case, as other commands
    assert paused.returncode == 0 and "paused the dynamic sync of Buyers" in paused.stdout
    assert state(world)["state"] == "paused" and state(world)["paused_reason"] == "paused by a person"
    assert due_runs(world, LATER[0]) == []
    again = toolkit("pause", "Buyers", "--db", world["db"])
    assert again.returncode == 1 and "already paused" in again.stderr
    assert toolkit("resume", "Buyers", "--db", world["db"]).returncode == 0
    (record,) = due_runs(world, LATER[1])
    assert record.status == "ok"
    assert toolkit("resume", "Buyers", "--db", world["db"]).returncode == 1     # not paused
    assert toolkit("export", "Buyers", "--stop", "--db", world["db"]).returncode == 0
    assert state(world)["state"] == "stopped"
    stopped = toolkit("pause", "Buyers", "--db", world["db"])
    assert stopped.returncode == 1 and "stopped" in stopped.stderr


@pytest.mark.slow
def test_resume_all_resumes_every_paused_sync_of_an_app_naming_each(world):
    other = world["emu"].add_app()
    with Store(world["db"]) as store:
        cohorts.save_all(store, [{"name": "Spenders", "rules": [{"event": "Purchase"}]},
                                 {"name": "Elsewhere", "rules": [{"event": "Purchase"}]}])
        export.register(store, "Spenders", "dynamic", world["app"].app_id, world["emu"].url, now=NOW)
        export.register(store, "Elsewhere", "dynamic", other.app_id, world["emu"].url, now=NOW)
    nothing = toolkit("resume", "--all", "--db", world["db"])
    assert nothing.returncode == 1 and "no paused dynamic sync: nothing to resume" in nothing.stderr
    assert toolkit("resume", "--db", world["db"]).returncode == 2                    # which sync?
    assert toolkit("resume", "Buyers", "--all", "--db", world["db"]).returncode == 2
    assert toolkit("resume", "Buyers", "--app", world["app"].app_id, "--db", world["db"]).returncode == 2
    with Store(world["db"]) as store:
        export.pause(store, "Elsewhere", "a person's pause")
    # the app's key is revoked: the run that meets it pauses every dynamic sync of the app
    world["app"].api_key, key = "revoked", world["app"].api_key
    a_new_buyer(world["db"], world["emu"], world["app"].app_id, "u5", LATER[0])
    assert {r.status for r in due_runs(world, LATER[0])} == {"paused"}
    with Store(world["db"], read_only=True) as store:
        assert [p["cohort"] for p in export.paused(store.con)] == ["Buyers", "Elsewhere", "Spenders"]
    world["app"].api_key = key
    resumed = toolkit("resume", "--all", "--app", world["app"].app_id, "--db", world["db"])
    assert resumed.returncode == 0 and resumed.stdout.startswith("resumed 2 dynamic sync(s)")
    assert [line.split(" (")[0].strip() for line in resumed.stdout.splitlines()[1:]] == ["Buyers", "Spenders"]
    assert "403" in resumed.stdout
    with Store(world["db"], read_only=True) as store:       # the other app's sync stays paused
        assert [p["cohort"] for p in export.paused(store.con)] == ["Elsewhere"]
    assert {r.cohort: r.status for r in due_runs(world, LATER[1])} == {"Buyers": "ok", "Spenders": "ok"}
    mine = toolkit("resume", "--all", "--app", world["app"].app_id, "--db", world["db"])
    assert mine.returncode == 1 and f"no paused dynamic sync of app {world['app'].app_id}" in mine.stderr
    rest = toolkit("resume", "--all", "--json", "--db", world["db"])
    assert rest.returncode == 0 and [r["cohort"] for r in json.loads(rest.stdout)["resumed"]] == ["Elsewhere"]


def test_registering_the_sync_again_clears_a_pause(world):
    world["app"].api_key, key = "revoked", world["app"].api_key
    assert due_runs(world, LATER[0])[0].status == "paused"
    world["app"].api_key = key
    with Store(world["db"]) as store:
        chosen = export.settings(store, "Buyers", mode="dynamic", app_id=world["app"].app_id,
                                 base_url=world["emu"].url, now=LATER[1], client_options=FAST)
        assert sync.export_cohort(store, chosen).status == "ok"
    assert state(world)["state"] == "active"


@pytest.mark.slow
def test_toolkit_runs_shows_each_syncs_state_and_match_rate_and_writes_the_members_csv(world, tmp_path):
    import csv
    import json

    (first,) = due_runs(world, LATER[0])                     # 4 members, 3 with a OneSignal id
    world["emu"].add_user(world["app"].app_id, "ext-u4")
    more = tmp_path / "more"
    more.mkdir()
    write_lines(more / "profiles.jsonl", [{"$distinct_id": "u4", "$properties": {"$onesignal_user_id": "ext-u4"}}])
    with Store(world["db"]) as store:
        load(store, [more], now=NOW)
    (second,) = due_runs(world, LATER[1])                    # now all 4 match
    data = json.loads(toolkit("runs", "--json", "--db", world["db"]).stdout)
    (found,) = data["syncs"]
    assert [p["match_rate"] for p in found["series"]] == [0.75, 1.0]
    assert [(p["members"], p["exportable"]) for p in found["series"]] == [(4, 3), (4, 4)]
    assert (found["state"], found["members"], found["exportable"], found["in_segment"]) == ("active", 4, 4, 4)
    text = toolkit("runs", "buyers", "--db", world["db"]).stdout
    (row,) = [line for line in text.splitlines() if line.startswith("Buyers ")]
    assert "active" in row and f"#{second.run_id} ok" in row and row.endswith("100.0% ▇█")
    # every member's fate in the last run, then in the first
    out = tmp_path / "members.csv"
    written = toolkit("runs", "Buyers", "--members", out, "--db", world["db"])
    assert written.returncode == 0 and f"run #{second.run_id} of Buyers" in written.stdout
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert {(r["distinct_id"], r["onesignal_id"], r["operation"], r["outcome"]) for r in rows} == {
        ("u1", "ext-u1", "no-op", "ok"), ("u2", "ext-u2", "no-op", "ok"), ("u3", "ext-u3", "no-op", "ok"),
        ("u4", "ext-u4", "add", "ok")}
    to_stdout = toolkit("runs", "--run", first.run_id, "--members", "-", "--db", world["db"])
    rows = list(csv.DictReader(to_stdout.stdout.splitlines()))
    assert [(r["distinct_id"], r["operation"]) for r in rows] == [("u1", "add"), ("u2", "add"), ("u3", "add")]
    assert "3 member(s) written to stdout" in to_stdout.stderr
    assert toolkit("runs", "--members", "-", "--db", world["db"]).returncode == 2     # which run?


@pytest.mark.slow
def test_the_export_panel_shows_states_charts_the_match_rate_writes_the_csv_and_resumes(world, tmp_path):
    import base64
    import csv
    import re

    pytest.importorskip("ipywidgets")
    from toolkit import widgets

    panel = widgets.export_panel(world["db"], now=LATER[0], csv_dir=tmp_path / "csv")
    panel.cohort.value, panel.mode.value = "Buyers", "dynamic"
    panel.export_button.click()                               # the key from the environment
    assert panel.last_record.status == "ok"
    assert "<td>active</td>" in panel.syncs.value and "<td>75.0%</td>" in panel.syncs.value
    assert "<svg" in panel.chart.value and "75.0% at the last: ▇" in panel.chart.value
    # the members of the last run as CSV: a file, and a link holding the same bytes
    panel.members_button.click()
    path = tmp_path / "csv" / f"Buyers-run-{panel.last_record.run_id}-members.csv"
    assert panel.last_csv == path
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert [(r["distinct_id"], r["onesignal_id"], r["operation"], r["outcome"]) for r in rows] == [
        ("u1", "ext-u1", "add", "ok"), ("u2", "ext-u2", "add", "ok"), ("u3", "ext-u3", "add", "ok")]
    (link,) = re.findall(r"href='data:text/csv;charset=utf-8;base64,([^']+)'", panel.download.value)
    assert base64.b64decode(link) == path.read_bytes() and "3 member(s) written" in panel.status.value
    # OneSignal refuses the key: the panel shows the sync paused and why, and Resume brings it back
    world["app"].api_key, key = "revoked", world["app"].api_key
    a_new_buyer(world["db"], world["emu"], world["app"].app_id, "u5", LATER[1])
    assert due_runs(world, LATER[1])[0].status == "paused"
    panel.refresh()
    assert "paused (OneSignal answered 403" in panel.syncs.value and list(panel.sync_choice.options) == ["Buyers"]
    world["app"].api_key = key
    panel.resume_button.click()
    assert panel.status.value == "choose the dynamic sync first" and state(world)["state"] == "paused"
    panel.sync_choice.value = "Buyers"
    panel.resume_button.click()
    assert panel.status.value.startswith("resumed the dynamic sync of Buyers") and state(world)["state"] == "active"
    assert "<td>active</td>" in panel.syncs.value
    assert due_runs(world, LATER[2])[0].status == "ok"
    panel.sync_choice.value = "Buyers"
    panel.pause_button.click()
    assert state(world)["state"] == "paused" and "paused by a person" in panel.syncs.value
    # three runs evenly spaced: 3 of 4 members exportable (75%), then 4 of 5 (80%: the fifth buyer has an id)
    assert "points='30.0,37.5 240.0,32.0 450.0,32.0'" in panel.chart.value


def test_the_chart_draws_each_runs_match_rate():
    from datetime import datetime

    pytest.importorskip("ipywidgets")
    from toolkit import widgets

    series = [{"started_at": datetime(2026, 11, 1, 0, 15 * i), "match_rate": rate}
              for i, rate in enumerate([0.5, None, 1.0])]
    assert widgets.chart_points(series) == [(30.0, 65.0), (450.0, 10.0)]     # an empty cohort's run has no point
    svg = widgets.match_rate_svg(series, "Buyers & co")
    assert "points='30.0,65.0 450.0,10.0'" in svg and "Buyers &amp; co" in svg
    assert "100.0% at the last: ▅·█" in svg and "2026-11-01 00:00" in svg and "2026-11-01 00:30" in svg


@pytest.mark.parametrize("status, messages, pauses", [
    (400, ["app_id not found. You may be missing a Content-Type: application/json header."], True),
    (400, ["Segment name too long"], True),
    (401, ["Access denied.  Please include an 'Authorization: ...' header with a valid API key"], True),
    (403, ["Access denied"], True),
    (404, ["Not Found"], True),
    (402, ["Payment required"], True),
    (429, ["API rate limit exceeded"], False),
    (500, ["Internal server error"], False),
    (503, ["Service unavailable"], False),
    (409, ["conflict"], False),
])
def test_which_answers_pause_a_sync(status, messages, pauses):
    from toolkit.export import states
    from toolkit.onesignal import error_for

    error = error_for(status, messages, method="PATCH", path="/apps/x/segments/y")
    assert (states.pause_cause(error) is error) is pauses
    wrapped = ExportError("worded for a person")
    wrapped.__context__ = error                       # as the segment step raises a plan's refusal
    assert (states.pause_cause(wrapped) is error) is pauses


def test_the_scheduled_sync_names_a_sync_it_paused_once_and_fails_for_it(world):
    world["app"].api_key = "revoked"
    result = sync.run_scheduled(world["db"], now=LATER[0], client_options=FAST)
    assert [r.status for r in result.runs] == ["paused"] and result.status == "failed"
    assert result.summary.count('"Buyers"') == 1 and '"Buyers" paused (OneSignal answered 403' in result.summary
    record = result.to_record()
    assert record["cohorts"][0]["status"] == "paused" and record["paused"][0]["cohort"] == "Buyers"


def test_toolkit_export_of_a_sync_that_gets_paused_says_what_to_do(world):
    world["app"].api_key = "revoked"
    ran = toolkit("export", "Buyers", "--db", world["db"])
    assert ran.returncode == 1 and "Buyers: dynamic export paused" in ran.stdout
    assert "403" in ran.stdout and "toolkit resume Buyers" in ran.stdout
    again = toolkit("export", "Buyers", "--db", world["db"])             # refused, naming the pause
    assert again.returncode == 1 and "is paused since" in again.stderr and "toolkit resume" in again.stderr
