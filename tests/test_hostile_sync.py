"""Hostile tests of the scheduled sync: a broken cohort, a refused file, a missing key or a store that
cannot be opened never stops the rest of the run, and never fails quietly. Real store files, the real
emulator over HTTP, the sync notebook executed by papermill and the `toolkit` command (in this process)."""

import json
from datetime import timedelta

import pytest
from cli_runner import toolkit

from helpers import NOW, ROOT, event, write_lines
from toolkit import Store, cohorts, export, schedule, sync
from toolkit.cohorts import CohortError
from toolkit.emulator import Emulator

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0, "max_attempts": 3}
USERS = ["u1", "u2", "u3", "u4"]
GOOD = ["Buyers", "Also buyers"]


def break_cohort(db, name="Broken", missing="Ghost"):
    """A definition naming a cohort that does not exist, as a store written before references were
    checked holds it (saving it now is refused)."""
    with Store(db) as store:
        store.con.execute("INSERT INTO cohorts VALUES (?, 1, ?, now()::TIMESTAMP)",
                          [name, json.dumps({"name": name, "rules": [{"in_cohort": missing}]})])


def four_buyers(store, folder):
    """Four buyers who have OneSignal ids (and u5, who has one but bought nothing); two good cohorts."""
    from toolkit import load

    data = folder / "data"
    data.mkdir()
    write_lines(data / "events.jsonl", [event("Purchase", u, insert_id=f"p{u}") for u in USERS])
    write_lines(data / "profiles.jsonl", [{"$distinct_id": u, "$properties": {"$onesignal_user_id": f"ext-{u}"}}
                                          for u in USERS + ["u5"]])
    load(store, [data], now=NOW)
    cohorts.save_all(store, [{"name": "Buyers", "rules": [{"event": "Purchase"}]},
                             {"name": "Also buyers", "rules": [{"in_cohort": "Buyers"}]}])


@pytest.fixture
def world(tmp_path, filled_once, users_unspaced):
    """A store file with four buyers who have OneSignal ids, two good cohorts with due dynamic syncs,
    and an emulator app holding the four users. The loaded store is a copy of one loaded once per module."""
    db = filled_once(four_buyers, tmp_path / "store.duckdb")
    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app()
        for u in USERS:
            emu.add_user(app.app_id, f"ext-{u}")
        # u5 (no purchase): OneSignal refuses any update of it with a 400 no retry mends.
        emu.add_user(app.app_id, "ext-u5")
        emu.faults.inject("refuse", method="PATCH", path="/ext-u5", times=1_000_000)
        yield {"db": db, "emu": emu, "app": app, "tmp": tmp_path,
               "env": {"ONESIGNAL_APP_ID": app.app_id, "ONESIGNAL_API_KEY": app.api_key,
                       "TOOLKIT_CREDENTIALS": str(tmp_path / "no-credentials.json")}}


def register(world, *names):
    with Store(world["db"]) as store:
        for name in names:
            export.register(store, name, "dynamic", world["app"].app_id, world["emu"].url, now=NOW)


def tagged(world, cohort):
    key = export.tag_key(cohort)
    return {u for u, tags in world["emu"].user_tags(world["app"].app_id).items() if tags.get(key)}


# -- saving definitions -----------------------------------------------------------------------------

def test_a_reference_to_a_missing_cohort_is_refused_when_saved_and_nothing_is_saved(world):
    with Store(world["db"]) as store:
        before = cohorts.list_cohorts(store)
        with pytest.raises(CohortError) as err:
            cohorts.save_all(store, [{"name": "Fine", "rules": [{"event": "Purchase"}]},
                                     {"name": "Broken", "rules": [{"event": "Purchase"},
                                                                  {"not_in_cohort": "Buyrs"}]}])
        message = str(err.value)
        assert 'cohort "Broken": rules[1].not_in_cohort: no cohort named "Buyrs"' in message
        assert 'did you mean "Buyers"' in message and "nothing was saved" in message
        assert cohorts.list_cohorts(store) == before                  # "Fine" was not saved either
        # a reference to a cohort saved in the same batch, or already stored, is fine
        saved = cohorts.save_all(store, [
            {"name": "Ghost", "rules": [{"event": "Purchase"}]},
            {"name": "Haunted", "rules": [{"in_cohort": "Ghost"}, {"in_cohort": "Buyers"}]}])
        assert saved == {"Ghost": 1, "Haunted": 1}


def test_cohorts_load_names_the_file_cohort_and_missing_name(world):
    path = world["tmp"] / "defs.yaml"
    path.write_text("cohorts:\n  - {name: Good, rules: [{event: Purchase}]}\n"
                    "  - {name: Bad, rules: [{in_cohort: Nowhere}]}\n")
    out = toolkit("cohorts", "load", path, "--db", world["db"])
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f'{path}: cohort "Bad": rules[0].in_cohort: no cohort named "Nowhere"' in out.stderr
    listed = json.loads(toolkit("cohorts", "list", "--db", world["db"], "--json").stdout)["cohorts"]
    assert sorted(c["name"] for c in listed) == sorted(GOOD)


# -- one broken cohort in the sync --------------------------------------------------------------------

@pytest.mark.slow
def test_a_broken_cohort_fails_alone_and_the_others_and_mtu_still_run(world, monkeypatch):
    for k, v in world["env"].items():
        monkeypatch.setenv(k, v)
    break_cohort(world["db"])
    register(world, "Broken", *GOOD)
    result = sync.run_scheduled(world["db"], now=NOW + timedelta(minutes=1), client_options=FAST)
    by_cohort = {r.cohort: r for r in result.runs}
    assert by_cohort["Broken"].status == "failed" and 'no cohort named "Ghost"' in by_cohort["Broken"].error
    assert [by_cohort[c].status for c in GOOD] == ["ok", "ok"]
    assert tagged(world, "Buyers") == tagged(world, "Also buyers") == {f"ext-{u}" for u in USERS}
    assert result.mtu is not None and result.mtu_error is None and result.status == "partial"
    record = result.to_record()
    # due in name order: the broken cohort runs between the other two, and the one after it still ran
    assert [(c["cohort"], c["status"]) for c in record["cohorts"]] == [("Also buyers", "ok"), ("Broken", "failed"),
                                                                       ("Buyers", "ok")]
    assert record["mtu"] == {"ok": True, "error": None}
    with Store(world["db"]) as store:                      # the failure is a run record like any other
        (run,) = [r for r in export.runs(store) if r["cohort"] == "Broken"]
        assert run["status"] == "failed" and "Ghost" in run["error"]
        assert export.due(store, NOW + timedelta(minutes=2)) == ["Broken"]    # and it is tried again
    with pytest.raises(sync.SyncFailed, match='"Broken" failed'):
        result.finish()


@pytest.mark.slow
def test_the_sync_notebook_records_each_cohort_and_exits_3_on_partial_failure(world):
    break_cohort(world["db"])
    register(world, "Broken", *GOOD)
    out = toolkit("sync", "--db", world["db"], "--runs-dir", world["tmp"] / "runs", env=world["env"])
    assert out.returncode == 3, out.stdout + out.stderr
    assert 'sync partial: 2 of 3 cohort export(s) ok; "Broken" failed (' in out.stdout
    (record_path,) = (world["tmp"] / "runs").glob("sync-*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "partial" and record["mtu"]["ok"] is True
    assert {c["cohort"]: c["status"] for c in record["cohorts"]} == {"Broken": "failed", "Buyers": "ok",
                                                                     "Also buyers": "ok"}
    assert {c["cohort"]: c["added"] for c in record["cohorts"]}["Buyers"] == 4
    # The executed notebook fails in its last cell, after showing the tables, with the summary.
    import nbformat  # here, not at collection: its import builds a URI grammar (about 1 s)

    executed = nbformat.read(record_path.with_suffix(".ipynb"), 4)
    outputs = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "SyncFailed" in outputs and "Also buyers" in outputs and "mtu" in outputs.lower()
    assert world["app"].api_key not in record_path.read_text() + json.dumps(executed)


@pytest.mark.slow
def test_a_clean_sync_exits_0_and_a_sync_where_every_export_fails_exits_1(world):
    register(world, *GOOD)
    runs = world["tmp"] / "runs"
    ok = toolkit("sync", "--db", world["db"], "--runs-dir", runs, "--json", env=world["env"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["status"] == "ok"
    # No key: every export fails. Loud, and the record says why.
    no_key = {**world["env"], "ONESIGNAL_API_KEY": ""}
    failed = toolkit("sync", "--db", world["db"], "--runs-dir", runs, "--cohorts", "all", "--json", env=no_key)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    data = json.loads(failed.stdout)
    assert data["status"] == "failed" and "no OneSignal credentials" in data["error"]
    record = json.loads(open(data["record"]).read())
    assert [c["status"] for c in record["cohorts"]] == ["failed", "failed"] and record["mtu"]["ok"]


@pytest.mark.slow
def test_a_notebook_that_fails_before_its_record_is_a_failed_run_with_a_record(tmp_path):
    not_a_store = tmp_path / "store.duckdb"
    not_a_store.write_text("this is not a store")
    out = toolkit("sync", "--db", not_a_store, "--runs-dir", tmp_path / "runs", "--json")
    assert out.returncode == 1, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert data["status"] == "failed" and data["error"].startswith("the sync notebook failed: ")
    assert json.loads(open(data["record"]).read())["status"] == "failed"


@pytest.mark.slow
def test_fail_on_error_false_lets_the_notebook_finish_but_the_record_still_says_partial(world, monkeypatch):
    for k, v in world["env"].items():
        monkeypatch.setenv(k, v)
    break_cohort(world["db"])
    register(world, "Broken", *GOOD)
    # What Airflow's PapermillOperator does: execute the notebook with parameters, nothing else.
    import papermill
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(ROOT / "notebooks" / "sync.ipynb"), str(world["tmp"] / "airflow.ipynb"),
                                   parameters={"store_path": str(world["db"])}, kernel_name="python3",
                                   progress_bar=False, cwd=str(ROOT))
    assert err.value.ename == "SyncFailed" and '"Broken" failed' in err.value.evalue
    register(world, "Broken")                   # due again (the good two ran and are not due now)
    run = schedule.run_once(world["tmp"] / "runs", {"store_path": str(world["db"]), "fail_on_error": False,
                                                    "cohorts": "all"})
    assert run.status == "partial" and '"Broken" failed' in run.error
    import nbformat

    executed = json.dumps(nbformat.read(run.notebook, 4).cells[-1].get("outputs", []))
    assert "SyncFailed" not in executed                          # the notebook itself succeeded


@pytest.mark.slow
def test_a_refused_landing_file_and_a_missing_landing_folder_are_reported(world, monkeypatch):
    for k, v in world["env"].items():
        monkeypatch.setenv(k, v)
    register(world, *GOOD)
    landing = world["tmp"] / "landing"
    landing.mkdir()
    write_lines(landing / "more.jsonl", [event("Purchase", "u6", insert_id="p6")])
    (landing / "noise.parquet").write_bytes(b"not a parquet file")
    result = sync.run_scheduled(world["db"], landing=landing, now=NOW + timedelta(minutes=1), client_options=FAST)
    record = result.to_record()
    assert result.status == "partial" and "noise.parquet" in result.summary
    assert record["load"]["files_loaded"] == 1 and record["load"]["files_refused"] == 1
    assert record["load"]["refused"][0]["path"].endswith("noise.parquet") and record["load"]["ok"] is False
    assert [c["status"] for c in record["cohorts"]] == ["ok", "ok"] and record["mtu"]["ok"]
    missing = sync.run_scheduled(world["db"], landing=world["tmp"] / "nowhere", cohorts="all",
                                 now=NOW + timedelta(minutes=2), client_options=FAST)
    assert missing.status == "partial" and "nowhere does not exist" in missing.summary
    assert missing.to_record()["load"]["ok"] is False


# -- exit codes of export and schedule ----------------------------------------------------------------

@pytest.mark.slow
def test_export_exit_codes_ok_partial_failed(world):
    with Store(world["db"]) as store:
        cohorts.save_all(store, [{"name": "Mixed", "static_ids": ["u1", "u5"]},
                                 {"name": "Only full", "static_ids": ["u5"]}])
    common = ["--db", world["db"], "--app-id", world["app"].app_id, "--base-url", world["emu"].url]
    ok = toolkit("export", "buyers", "--once", *common, env=world["env"])      # any case finds it
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("Buyers: once export ok")
    partial = toolkit("export", "Mixed", "--once", *common, env=world["env"])
    assert partial.returncode == 3, partial.stdout + partial.stderr
    assert "added 1" in partial.stdout and "failed 1" in partial.stdout
    nothing = toolkit("export", "Only full", "--once", *common, env=world["env"])
    assert nothing.returncode == 1, nothing.stdout + nothing.stderr
    no_key = toolkit("export", "Buyers", *common, env={**world["env"], "ONESIGNAL_API_KEY": ""})
    assert no_key.returncode == 1 and "no OneSignal credentials" in no_key.stdout
    unknown = toolkit("export", "Buyer", "--once", *common, env=world["env"])
    assert unknown.returncode == 1 and 'no cohort "Buyer" in the store; did you mean "Buyers"' in unknown.stderr
    assert toolkit("export", "Buyers", "--once", "--dynamic", *common).returncode == 2        # usage


@pytest.mark.slow
def test_schedule_exits_non_zero_when_its_runs_failed_and_logs_each_outcome(world):
    break_cohort(world["db"])
    register(world, "Broken", *GOOD)
    out = toolkit("schedule", "--db", world["db"], "--runs-dir", world["tmp"] / "runs", "--every", "1s",
                  "--max-runs", "2", env=world["env"])
    # Run 1: Broken failed, the good two ok (partial). Run 2: only Broken is still due (failed).
    assert out.returncode == 3, out.stdout + out.stderr
    assert "sync PARTIAL" in out.stderr and "sync FAILED" in out.stderr
    assert "stopped after 2 run(s), 2 not ok" in out.stdout
    assert len(list((world["tmp"] / "runs").glob("sync-*.json"))) == 2


def test_named_cohorts_are_found_in_any_case_and_an_unknown_one_fails_alone(world, monkeypatch):
    for k, v in world["env"].items():
        monkeypatch.setenv(k, v)
    register(world, *GOOD)
    result = sync.run_scheduled(world["db"], cohorts="BUYERS, Buyres, also buyers",
                                now=NOW + timedelta(minutes=1), client_options=FAST)
    assert [(r.cohort, r.status) for r in result.runs] == [("Buyers", "ok"), ("Buyres", "failed"),
                                                           ("Also buyers", "ok")]
    assert 'no cohort "Buyres" in the store; did you mean "Buyers"' in result.runs[1].error
    assert result.status == "partial"
