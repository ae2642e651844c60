"""A cohort defined in Mixpanel's UI as a toolkit cohort: adopted from the cohorts list, its members from
Engage (filter_by_cohort) stored as a static cohort, fetched again on each refresh (a new version only when
they change), and exported to the OneSignal emulator with exactly its exportable members."""

import pytest
from mixpanel_fixtures import FIRST_DAY, write_folder

from toolkit import cohorts, export, load, matching, sync
from toolkit.errors import CohortError
from toolkit.mixpanel import cohorts as mixpanel_cohorts
from toolkit.mixpanel.client import MixpanelClient, ServiceAccount
from toolkit.mixpanel.emulator import MixpanelEmulator
from toolkit.mixpanel.pull import pull
from toolkit.onesignal import Credentials
from toolkit.store import Store

SECRET = "cohort-test-secret-3d9a"
FAST = dict(backoff_base=0.01, backoff_max=0.05, rate_limited_wait=0.05)


@pytest.fixture
def mp(tmp_path):
    with MixpanelEmulator(write_folder(tmp_path / "mp"), project_id="4242", secret=SECRET, page_size=2) as e:
        yield e


@pytest.fixture
def client(mp):
    with MixpanelClient(ServiceAccount(mp.username, SECRET, "4242"), mp.url, **FAST) as c:
        yield c


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "s.duckdb") as s:
        yield s


def test_adopted_then_refreshed_only_when_members_change(mp, client, store):
    first = mixpanel_cohorts.adopt(store, client, 11)
    assert (first.name, first.members, first.version, first.status) == ("Power users", 3, 1, "saved")
    stored = cohorts.get(store, "Power users")
    assert stored.static_ids == ("u1", "u2", "u3") and stored.static_csv == "mixpanel:4242/cohort/11"
    assert mixpanel_cohorts.linked(store, "4242") == {"Power users": 11}
    assert [r.status for r in mixpanel_cohorts.refresh(store, client)] == ["unchanged"]

    mp.data.add_cohort({"id": 11, "name": "Power users", "members": ["u2", "u3", "u5", "u6"]})
    again = mixpanel_cohorts.refresh(store, client)
    assert [(r.version, r.members, r.status) for r in again] == [(2, 4, "saved")]
    assert cohorts.get(store, "Power users").static_ids == ("u2", "u3", "u5", "u6")

    mp.data.add_cohort({"id": 11, "name": "Power users", "members": []})
    assert [r.status for r in mixpanel_cohorts.refresh(store, client)] == ["empty (kept the previous members)"]
    assert cohorts.version_of(store, "Power users") == 2


def test_an_unknown_cohort_or_a_taken_name_is_refused(client, store):
    with pytest.raises(CohortError, match=r"no cohort 99.*11 \(Power users\), 12 \(Lapsed\)"):
        mixpanel_cohorts.adopt(store, client, 99)
    cohorts.save(store, {"name": "Lapsed", "static_ids": ["x"]})
    with pytest.raises(CohortError, match="already stored"):
        mixpanel_cohorts.adopt(store, client, 12)
    assert mixpanel_cohorts.adopt(store, client, 12, "Mixpanel lapsed").members == 2


@pytest.mark.slow   # waits out real retries and backoff
def test_a_mixpanel_cohort_exports_exactly_its_exportable_members(mp, client, store, tmp_path, emulator, app):
    landing = tmp_path / "landing"
    pull(landing, client.account, from_date=FIRST_DAY, to_date=FIRST_DAY, profiles=True, client=client)
    load(store, [landing])
    for i in (2, 3):                                   # u1's OneSignal user is missing
        emulator.add_user(app.app_id, external_id=f"ext-{i}")
    mixpanel_cohorts.adopt(store, client, 11)
    preview = matching.preview(store, "Power users", id_type="external_id")
    exportable = set(preview.exportable["onesignal_id"])
    assert exportable == {"ext-1", "ext-2", "ext-3"}
    settings = export.settings(store, "Power users", mode="dynamic", app_id=app.app_id, base_url=emulator.url,
                               id_type="external_id", client_options={"backoff_base": 0.01, "backoff_max": 0.05})
    record = sync.export_cohort(store, settings, Credentials(app.app_id, app.api_key))
    key = export.tag_key("Power users")
    tagged = {user for user, tags in emulator.user_tags(app.app_id).items() if tags.get(key)}
    assert tagged == {"ext-2", "ext-3"} and record.added == 2
