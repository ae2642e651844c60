"""Reading back the tags of users OneSignal refused over the app's data-tag cap (``runner._learn_tags``) keeps to
OneSignal's View user limit, as every other read does: the app's View rate (``rate_budget.ViewBudget``, shared
by the cycle's runs; a run's own client outside a cycle) and at most ``VIEWS_PER_CYCLE`` users a cycle, each
once. Real store files, the emulator over HTTP with its View user limit on and a short look-back, so a
burst is answered 429."""

import pytest

from helpers import NOW, event, write_lines
from toolkit import Store, cohorts, export, load, sync
from toolkit.emulator import Emulator, limits
from toolkit.onesignal import Credentials, SyncOneSignalClient
from toolkit.rate_budget import VIEWS_PER_CYCLE

pytestmark = pytest.mark.slow     # end to end: View-rate reads paced in real time

VIEW_RPS = 4.0            # the app's View user rate in these tests (OneSignal's is 1/s: 10 views would take 10 s)
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0, "max_attempts": 3, "view_rps": VIEW_RPS}
USERS = [f"u{i:02}" for i in range(14)]       # more than a cycle may view
GROUPS = ["A", "B", "C"]


def refused_everywhere(tmp_path, emu, app):
    """Fourteen buyers in cohorts A, B and C (dynamic syncs), each already carrying a tag set outside the
    toolkit on an app allowing one: OneSignal refuses every cohort's tag over the cap."""
    data = tmp_path / "data"
    data.mkdir()
    write_lines(data / "events.jsonl", [event("Purchase", u, insert_id=f"p{u}") for u in USERS])
    write_lines(data / "profiles.jsonl", [{"$distinct_id": u, "$properties": {"$onesignal_user_id": f"ext-{u}"}}
                                          for u in USERS])
    for u in USERS:
        emu.add_user(app.app_id, f"ext-{u}")
    with SyncOneSignalClient(Credentials(app.app_id, app.api_key), emu.url) as client:
        for u in USERS:
            client.update_tags("external_id", f"ext-{u}", {"vip": "1"})
    db = tmp_path / "store.duckdb"
    with Store(db) as store:
        load(store, [data], now=NOW)
        cohorts.save_all(store, [{"name": g, "rules": [{"event": "Purchase"}]} for g in GROUPS])
        for g in GROUPS:
            export.register(store, g, "dynamic", app.app_id, emu.url, now=NOW)
    return db


@pytest.fixture
def world(tmp_path, users_unspaced, monkeypatch):
    monkeypatch.setattr(limits, "VIEW_BURST", 3)       # the emulator answers 429 to views bunched closer
    with Emulator(user_rate_limit=0, view_rate_limit=VIEW_RPS) as emu:
        app = emu.add_app(tag_limit=1)
        for name, value in {"ONESIGNAL_APP_ID": app.app_id, "ONESIGNAL_API_KEY": app.api_key,
                            "TOOLKIT_CREDENTIALS": str(tmp_path / "no-credentials.json")}.items():
            monkeypatch.setenv(name, value)
        yield {"db": refused_everywhere(tmp_path, emu, app), "emu": emu, "app": app}


def views(emu):
    return [r for r in emu.requests() if r["method"] == "GET" and "/users/by/" in r["path"]]


def assert_paced(seen):
    """None answered 429 by OneSignal's View user limit, and the views spread over as long as the app's View
    rate needs (over the whole series: a loaded machine may bunch two arrivals, not shorten the series)."""
    assert [r["status"] for r in seen] == [200] * len(seen)
    assert seen[-1]["t"] - seen[0]["t"] > 0.8 * (len(seen) - 1) / VIEW_RPS


def test_a_cycle_reads_refused_users_tags_at_the_apps_view_rate_and_at_most_its_allowance(world):
    with Store(world["db"]) as store:
        runs = sync.run_due(store, now=NOW, client_options=FAST)
        assert [(r.status, r.tag_cap) for r in runs] == [("ok", len(USERS))] * len(GROUPS), [r.error for r in runs]
        known = dict(store.con.execute("SELECT onesignal_id, tag_keys FROM known_user_tags").fetchall())
    seen = views(world["emu"])
    viewed = [r["path"].rsplit("/", 1)[1] for r in seen]
    assert len(viewed) == VIEWS_PER_CYCLE == len(set(viewed))     # each once, however many runs it met
    assert known == {user: ["vip"] for user in viewed}            # what was read is kept for the previews
    assert_paced(seen)


def test_one_export_reads_refused_users_tags_at_the_apps_view_rate(world):
    with Store(world["db"]) as store:
        record = sync.export_cohort(store, export.settings(store, "A", now=NOW, client_options=FAST))
    assert (record.status, record.tag_cap) == ("ok", len(USERS))
    seen = views(world["emu"])
    assert 0 < len(seen) <= VIEWS_PER_CYCLE
    assert_paced(seen)
