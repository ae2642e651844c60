"""Reconciliation against the emulator over HTTP with a real DuckDB file: export a cohort, change OneSignal
behind the toolkit's back through OneSignal's own API (clear a member's tag, tag another user, delete a
member), then `toolkit reconcile` reports exactly those users and `--repair` makes both sides true."""

import json
import shutil

import httpx
import pytest
from cli_runner import toolkit

from toolkit import export, matching, sync
from toolkit.demo import seed_users
from toolkit.emulator import Emulator
from toolkit.onesignal import Credentials
from toolkit.store import Store

pytestmark = pytest.mark.slow     # end to end: exports changed behind the toolkit's back, reconciled and repaired

COHORT = "Tech fans worth a call"
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0, "max_attempts": 30, "view_rps": 50}


@pytest.fixture
def world(sample_store_file, tmp_path, held_open):
    """The sample in a store file, its OneSignal users in an emulator (a subscription each but for a few
    External ID users, whom only the View user API shows), and the cohort exported once."""
    db = tmp_path / "s.duckdb"
    held_open(shutil.copy(sample_store_file, db))      # each command reopens it
    with Store(db) as store:
        users = seed_users(store)
    for n, user in enumerate(users):
        if "external_id" in user and n % 5:
            user["subscription_ids"] = [f"sub-{n}"]
    with Emulator(user_rate_limit=0, view_rate_limit=1) as emu:
        emu.limits.csv_records_per_second = 1e9        # the file is ready at once: no polling waits
        app = emu.add_app()
        emu.add_users(app.app_id, users)
        env = {"ONESIGNAL_API_KEY": app.api_key, "TOOLKIT_CREDENTIALS": str(tmp_path / "none.json"),
               "ONESIGNAL_APP_ID": app.app_id}
        done = toolkit("export", COHORT, "--once", "--db", db, "--app-id", app.app_id, "--base-url", emu.url,
                       "--json", env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        yield db, emu, app, env


def tagged_in_onesignal(emu, app) -> set[str]:
    """The users carrying the cohort's tag, by the id the toolkit tags them by (External ID, else Player ID)."""
    key = export.tag_key(COHORT)
    return {u["external_id"] or u["subscriptions"][0]["id"] for u in emu.state["apps"][app.app_id]["users"]
            if u["tags"].get(key)}


def behind_the_back(emu, app, db):
    """A person's edits through OneSignal's API: returns (lost the tag, tagged outside, deleted) as the
    reconcile names them."""
    with Store(db, read_only=True) as store:
        rows = store.con.execute("SELECT distinct_id, onesignal_id, id_type FROM export_members WHERE cohort = ? "
                                 "AND status = 'tagged' AND id_type = 'external_id' ORDER BY 1",
                                 [COHORT]).fetchall()
    in_export = {u["external_id"] for u in emu.state["apps"][app.app_id]["users"] if u["subscriptions"]}
    lost = next(r for r in rows if r[1] in in_export)
    gone = next(r for r in rows if r[1] not in in_export)            # a user only View user shows
    outsider = next(u for u in emu.state["apps"][app.app_id]["users"]
                    if u["external_id"] and u["subscriptions"] and not u["tags"])["external_id"]
    headers = {"Authorization": f"Key {app.api_key}", "Content-Type": "application/json"}
    users = f"{emu.url}/apps/{app.app_id}/users/by/external_id"
    key = export.tag_key(COHORT)
    assert httpx.patch(f"{users}/{lost[1]}", json={"properties": {"tags": {key: ""}}},
                       headers=headers).status_code == 202
    assert httpx.patch(f"{users}/{outsider}", json={"properties": {"tags": {key: "1"}}},
                       headers=headers).status_code == 202
    assert httpx.delete(f"{users}/{gone[1]}", headers=headers).status_code == 200
    as_member = lambda r: {"distinct_id": r[0], "onesignal_id": r[1], "id_type": r[2]}  # noqa: E731
    return [as_member(lost)], [{"alias_label": "external_id", "alias_id": outsider}], [as_member(gone)]


def test_reconcile_reports_each_kind_of_drift_and_repair_makes_both_sides_true(world):
    db, emu, app, env = world
    clean = toolkit("reconcile", COHORT, "--db", db, "--json", env=env)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["drifted"] is False

    lost, outside, deleted = behind_the_back(emu, app, db)
    found = toolkit("reconcile", COHORT, "--db", db, "--json", env=env)
    assert found.returncode == 1, found.stderr
    result = json.loads(found.stdout)
    assert (result["lost_tag"], result["tagged_outside"], result["deleted"]) == (lost, outside, deleted)
    assert result["repair"] is None
    text = toolkit("reconcile", COHORT, "--db", db, env=env).stdout
    assert "lost the tag: 1" in text and "tagged outside the toolkit: 1" in text and "deleted from OneSignal: 1" in text
    assert "--repair" in text

    repaired = toolkit("reconcile", COHORT, "--repair", "--db", db, "--json", env=env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    run = json.loads(repaired.stdout)["repair"]
    assert (run["status"], run["added"], run["removed"]) == ("ok", 1, 1)     # re-tagged one, cleared one

    again = json.loads(toolkit("reconcile", COHORT, "--db", db, "--json", env=env).stdout)
    assert again["drifted"] is False and again["in_sync"] == again["snapshot"]
    with Store(db, read_only=True) as store:
        exportable = set(matching.preview(store, COHORT).exportable["onesignal_id"])
        snapshot = {o for o, in store.con.execute("SELECT onesignal_id FROM export_members WHERE cohort = ? "
                                                  "AND status = 'tagged'", [COHORT]).fetchall()}
        absent = {o for o, in store.con.execute("SELECT onesignal_id FROM export_members WHERE cohort = ? "
                                                "AND status = 'absent'", [COHORT]).fetchall()}
    tagged = tagged_in_onesignal(emu, app)
    assert tagged == snapshot                                   # the snapshot is true
    assert outside[0]["alias_id"] not in tagged and lost[0]["onesignal_id"] in tagged
    assert deleted[0]["onesignal_id"] in absent
    in_onesignal = {u["external_id"] or u["subscriptions"][0]["id"] for u in emu.state["apps"][app.app_id]["users"]}
    assert tagged == exportable & in_onesignal                  # OneSignal holds the cohort's exportable set
    runs = json.loads(toolkit("runs", "--db", db, "--json").stdout)["runs"]
    assert runs[0]["run_id"] == run["run_id"]                   # the repair is a recorded run
    correction = runs[1]                                        # and so is the snapshot's correction before it
    assert (correction["status"], correction["added"], correction["removed"], correction["not_in_onesignal"]) == (
        "reconciled", 1, 1, 1)
    with Store(db, read_only=True) as store:                    # so every member's fate in the repair is exact
        fates = export.member_fates(store.reader(), run["run_id"])
    assert fates.note is None and fates.counts()[("add", "ok")] == 1 and fates.counts()[("remove", "ok")] == 1


def test_read_back_survives_429_and_500(world, retries_unwaited):
    db, emu, app, env = world
    lost, outside, deleted = behind_the_back(emu, app, db)
    emu.faults.inject("crash", method="POST", path="csv_export")
    emu.faults.inject("throttle", method="POST", path="csv_export")
    emu.faults.inject("crash", method="GET", path="/csv_exports/")
    emu.faults.inject("throttle", method="GET", path="/users/by/")
    emu.faults.inject("crash", method="GET", path="/users/by/")
    before = emu.counters
    with Store(db, read_only=True) as store:
        found = sync.reconcile_cohort(store, COHORT, Credentials(app.app_id, app.api_key), client_options=FAST)
    assert (found.lost_tag, found.tagged_outside, found.deleted) == (lost, outside, deleted)
    after = emu.counters
    assert after["rate_limited"] - before["rate_limited"] == 2 and after["server_errors"] - before["server_errors"] == 3
    assert retries_unwaited.count(1.0) >= 2 * 2           # each 429 (no Retry-After) held the budget and waited 1 s


def test_the_key_never_shows_and_never_goes_to_the_file_host(world, caplog, retries_unwaited):
    db, emu, app, env = world
    behind_the_back(emu, app, db)
    emu.faults.inject("crash", method="POST", path="csv_export")       # a retry is logged
    caplog.set_level("DEBUG")
    for args in (("--json",), (), ("--repair",)):
        out = toolkit("reconcile", COHORT, "--db", db, *args, env=env)
        assert app.api_key not in out.stdout + out.stderr
    assert app.api_key not in caplog.text
    with Store(db, read_only=True) as store:
        assert not any(app.api_key in str(row) for row in store.con.execute("SELECT * FROM export_runs").fetchall())


def test_a_bad_key_fails_with_a_clear_error_and_no_key(world):
    db, emu, app, env = world
    out = toolkit("reconcile", COHORT, "--db", db, env={**env, "ONESIGNAL_API_KEY": "wrong-key-1234567"})
    assert out.returncode == 1 and "403" in out.stderr and "wrong-key-1234567" not in out.stdout + out.stderr


def test_an_unexported_cohort_is_refused_by_name(world):
    db, emu, app, env = world
    out = toolkit("reconcile", "Engaged with push", "--db", db, env=env)
    assert out.returncode == 1 and "Engaged with push" in out.stderr and "no export" in out.stderr


def test_a_repair_the_removal_guard_stops_changes_nothing_until_forced(world):
    db, emu, app, env = world
    key = export.tag_key(COHORT)
    headers = {"Authorization": f"Key {app.api_key}", "Content-Type": "application/json"}
    outsiders = [u["external_id"] for u in emu.state["apps"][app.app_id]["users"]
                 if u["external_id"] and u["subscriptions"] and not u["tags"]][:30]
    for external_id in outsiders:          # more than the segment holds: clearing them all trips the guard
        assert httpx.patch(f"{emu.url}/apps/{app.app_id}/users/by/external_id/{external_id}",
                           json={"properties": {"tags": {key: "1"}}}, headers=headers).status_code == 202

    def members():
        with Store(db, read_only=True) as store:
            return store.con.execute("SELECT * FROM export_members ORDER BY ALL").fetchall()

    snapshot, tagged = members(), tagged_in_onesignal(emu, app)

    stopped = toolkit("reconcile", COHORT, "--repair", "--db", db, env=env)
    assert stopped.returncode == 1 and "stopped" in stopped.stdout and "--force" in stopped.stdout
    assert members() == snapshot and tagged_in_onesignal(emu, app) == tagged
    with Store(db, read_only=True) as store:                    # and no record of a correction that was undone
        assert store.con.execute("SELECT count(*) FROM export_runs WHERE status = 'reconciled'").fetchone() == (0,)
    still = json.loads(toolkit("reconcile", COHORT, "--db", db, "--json", env=env).stdout)
    assert len(still["tagged_outside"]) == len(outsiders)

    forced = toolkit("reconcile", COHORT, "--repair", "--force", "--db", db, "--json", env=env)
    assert forced.returncode == 0 and json.loads(forced.stdout)["repair"]["removed"] == len(outsiders)
    assert json.loads(toolkit("reconcile", COHORT, "--db", db, "--json", env=env).stdout)["drifted"] is False
    assert not set(outsiders) & tagged_in_onesignal(emu, app)


def test_the_sync_overview_shows_each_syncs_last_reconcile(world):
    from toolkit import widgets

    db, emu, app, env = world

    def last():
        data = json.loads(toolkit("runs", COHORT, "--db", db, "--json").stdout)
        (found,) = data["syncs"]
        with Store(db, read_only=True) as store:
            (row,) = widgets.sync_table(export.overview(store)).to_dict("records")
        line = [s for s in toolkit("runs", COHORT, "--db", db).stdout.splitlines() if "last reconciled" in s]
        return found["last_reconcile"], row["last reconcile"], line

    assert last() == (None, None, [])                           # never reconciled
    assert toolkit("reconcile", COHORT, "--db", db, env=env).returncode == 0
    found, row, (line,) = last()
    assert (found["tagged_outside"], found["lost_tag"], found["deleted"], found["repair_run_id"]) == (0, 0, 0, None)
    assert line.startswith(f"{COHORT} last reconciled ") and line.endswith(", no drift") and row in line
    behind_the_back(emu, app, db)
    assert toolkit("reconcile", COHORT, "--db", db, env=env).returncode == 1
    found, row, (line,) = last()
    assert (found["tagged_outside"], found["lost_tag"], found["deleted"]) == (1, 1, 1)
    assert row.endswith("drift: 1 tagged outside, 1 lost the tag, 1 deleted; not repaired") and row in line
    repaired = json.loads(toolkit("reconcile", COHORT, "--repair", "--db", db, "--json", env=env).stdout)["repair"]
    found, row, _ = last()
    assert (found["repair_run_id"], found["repair_status"]) == (repaired["run_id"], "ok")
    assert row.endswith(f"drift: 1 tagged outside, 1 lost the tag, 1 deleted; repaired (run #{repaired['run_id']} ok)")


def test_toolkit_runs_lists_a_repairs_correction_as_the_drift_it_recorded_then_the_repair_run(world):
    """A repair writes two runs: the correction of the toolkit's record (status reconciled: its counts are the
    drift, nothing was sent) and the export run that sends the difference. `toolkit runs` tells them apart."""
    from toolkit import reconcile, report

    db, emu, app, env = world
    behind_the_back(emu, app, db)
    repaired = json.loads(toolkit("reconcile", COHORT, "--repair", "--db", db, "--json", env=env).stdout)["repair"]
    listed = toolkit("runs", COHORT, "--db", db).stdout.splitlines()
    (correction,) = [line for line in listed if f" {reconcile.RECONCILED}: " in line]
    assert correction.endswith(f"{COHORT} once reconciled: toolkit reconcile --repair found 1 tagged outside the "
                               "toolkit, 1 who lost the tag, 1 deleted from OneSignal; the record now says so, "
                               "nothing sent (the next run sends the difference)")
    (repair,) = [line for line in listed if line.startswith(f"#{repaired['run_id']} ")]
    assert f"{COHORT} once ok: +{repaired['added']} -{repaired['removed']} " in repair
    assert listed.index(repair) < listed.index(correction)          # newest first: the repair came after
    assert report.RECONCILED == reconcile.RECONCILED
    (found,) = json.loads(toolkit("runs", COHORT, "--db", db, "--json").stdout)["syncs"]
    assert (found["last_reconcile"]["repair_run_id"], found["last_run_id"]) == (repaired["run_id"], repaired["run_id"])


def test_a_repair_refused_before_its_run_keeps_the_record_and_still_shows_the_drift_found(world, monkeypatch):
    """The repair's export is refused before it starts (here another run of the cohort holds its lock): nothing
    is sent, so the correction of the record is undone, and the reconciliation still shows, not repaired."""
    db, emu, app, env = world
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    behind_the_back(emu, app, db)
    with Store(db) as store:
        snapshot = store.con.execute("SELECT * FROM export_members ORDER BY ALL").fetchall()
        runs = store.con.execute("SELECT run_id, status FROM export_runs ORDER BY 1").fetchall()
        with export._run_lock(store, COHORT), pytest.raises(export.ExportError, match="already running"):
            sync.reconcile_cohort(store, COHORT, repair=True, client_options=FAST)
        assert store.con.execute("SELECT * FROM export_members ORDER BY ALL").fetchall() == snapshot
        assert store.con.execute("SELECT run_id, status FROM export_runs ORDER BY 1").fetchall() == runs
        (found,) = export.overview(store, COHORT)
    last = found["last_reconcile"]
    assert (last["tagged_outside"], last["lost_tag"], last["deleted"], last["repair_run_id"]) == (1, 1, 1, None)
    line = [s for s in toolkit("runs", COHORT, "--db", db).stdout.splitlines() if "last reconciled" in s]
    assert line and line[0].endswith("drift: 1 tagged outside, 1 lost the tag, 1 deleted; not repaired")
