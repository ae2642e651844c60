"""The scheduled sync with a Mixpanel project configured: one run of notebooks/sync.ipynb (papermill, through
`toolkit sync`) pulls, loads, fetches the Mixpanel cohort's members from Engage again and exports, so a cohort
defined in Mixpanel reaches the OneSignal emulator with no human step. A failed pull (wrong secret) fails the
run loudly and the local cohorts still sync."""

import json
from datetime import UTC, datetime

import pytest
from cli_runner import toolkit
from mixpanel_fixtures import write_folder

from toolkit import Store, cohorts, export
from toolkit.emulator import Emulator
from toolkit.mixpanel import cohorts as mixpanel_cohorts
from toolkit.mixpanel.client import MixpanelClient, ServiceAccount
from toolkit.mixpanel.emulator import MixpanelEmulator

SECRET = "sync-test-secret-51fa"
PROJECT = "4242"
REGISTERED = datetime(2026, 10, 1, tzinfo=UTC)


@pytest.fixture
def world(tmp_path):
    with MixpanelEmulator(write_folder(tmp_path / "mp"), project_id=PROJECT, secret=SECRET, page_size=2) as mp, \
            Emulator(user_rate_limit=0) as onesignal:
        app = onesignal.add_app()
        for i in (0, 2, 3, 5):            # ext-1 (u1's) is not in OneSignal
            onesignal.add_user(app.app_id, f"ext-{i}")
        db = tmp_path / "store.duckdb"
        with Store(db) as store, MixpanelClient(ServiceAccount(mp.username, SECRET, PROJECT), mp.url) as client:
            mixpanel_cohorts.adopt(store, client, 11)           # kept once: "Power users", u1-u3 today
            cohorts.save(store, {"name": "Buyers", "rules": [{"event": "Purchase"}]})
            for name in ("Power users", "Buyers"):
                export.register(store, name, "dynamic", app.app_id, onesignal.url, id_type="external_id",
                                now=REGISTERED)
        env = {"ONESIGNAL_APP_ID": app.app_id, "ONESIGNAL_API_KEY": app.api_key,
               "TOOLKIT_CREDENTIALS": str(tmp_path / "none.json"),
               "TOOLKIT_MIXPANEL_CREDENTIALS": str(tmp_path / "none-mixpanel.json"),
               "MIXPANEL_USERNAME": mp.username, "MIXPANEL_SECRET": SECRET, "MIXPANEL_BASE_URL": mp.url,
               "TOOLKIT_SETTLE_SECONDS": "0"}
        yield {"db": db, "mp": mp, "onesignal": onesignal, "app": app, "env": env, "tmp": tmp_path}


def tagged(world, cohort):
    key = export.tag_key(cohort)
    return {u for u, tags in world["onesignal"].user_tags(world["app"].app_id).items() if tags.get(key)}


def sync(world, *extra, env=None):
    out = toolkit("sync", "--db", world["db"], "--runs-dir", world["tmp"] / "runs", "--landing",
                  world["tmp"] / "landing", "--mixpanel-project", PROJECT, "--mixpanel-from", "2026-10-01", "--json",
                  *extra, env={**world["env"], **(env or {})})
    data = json.loads(out.stdout)
    return out, data, json.loads(open(data["record"]).read())


@pytest.mark.slow
def test_a_mixpanel_cohort_reaches_onesignal_through_one_scheduled_run(world):
    # Changed in Mixpanel's UI after it was kept: the run must fetch u5 itself.
    (cohort,) = [c for c in world["mp"].data.cohorts if c["id"] == 11]
    cohort["members"] = ["u1", "u2", "u3", "u5"]
    out, data, record = sync(world)
    assert out.returncode == 0, out.stdout + out.stderr
    assert record["mixpanel"]["ok"] and record["mixpanel"]["pulled_through"]
    assert record["load"]["events"] > 0 and record["load"]["profiles"] == 20
    assert [(c["name"], c["members"], c["status"]) for c in record["mixpanel"]["cohorts"]] == [
        ("Power users", 4, "saved")]
    # Exactly the exportable members that OneSignal has: ext-1 is exportable but absent from OneSignal.
    assert tagged(world, "Power users") == {"ext-2", "ext-3", "ext-5"}
    runs = {c["cohort"]: c for c in record["cohorts"]}
    assert runs["Power users"]["exportable"] == 4 and runs["Power users"]["not_in_onesignal"] == 1
    assert SECRET not in json.dumps(record) + open(data["record"].replace(".json", ".ipynb")).read()


@pytest.mark.slow
def test_a_failed_pull_fails_the_run_loudly_and_local_cohorts_still_sync(world):
    landing = world["tmp"] / "landing"       # files dropped there by hand still load
    landing.mkdir()
    for name in ("events.jsonl", "profiles.json"):
        (landing / name).write_bytes((world["tmp"] / "mp" / name).read_bytes())
    out, data, record = sync(world, "--cohorts", "all", env={"MIXPANEL_SECRET": "wrong-secret"})
    assert out.returncode == 3, out.stdout + out.stderr          # partial: the local cohort synced
    assert record["status"] == "partial" and record["mixpanel"]["ok"] is False
    assert "secret" in record["mixpanel"]["error"].lower() or "401" in record["mixpanel"]["error"]
    assert "pulling from Mixpanel failed" in record["summary"]
    runs = {c["cohort"]: c for c in record["cohorts"]}
    assert runs["Buyers"]["status"] == "ok" and runs["Buyers"]["added"] > 0
    assert runs["Power users"]["status"] == "failed"
    assert "could not be fetched from Mixpanel" in runs["Power users"]["error"]
    assert tagged(world, "Power users") == set()                  # no stale members exported
    assert "wrong-secret" not in json.dumps(record)
