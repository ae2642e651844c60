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

SECRET = "cohort-test-secret-3d9a"
FAST = dict(backoff_base=0.01, backoff_max=0.05, rate_limited_wait=0.05)


@pytest.fixture
def mp(tmp_path, mixpanel_seconds):
    with MixpanelEmulator(write_folder(tmp_path / "mp"), project_id="4242", secret=SECRET, page_size=2,
                          **mixpanel_seconds) as e:
        yield e


@pytest.fixture
def client(mp):
    with MixpanelClient(ServiceAccount(mp.username, SECRET, "4242"), mp.url, **FAST) as c:
        yield c


def test_adopted_then_refreshed_only_when_members_change(mp, client, empty_file_store):
    first = mixpanel_cohorts.adopt(empty_file_store, client, 11)
    assert (first.name, first.members, first.version, first.status) == ("Power users", 3, 1, "saved")
    stored = cohorts.get(empty_file_store, "Power users")
    assert stored.static_ids == ("u1", "u2", "u3") and stored.static_csv == "mixpanel:4242/cohort/11"
    assert mixpanel_cohorts.linked(empty_file_store, "4242") == {"Power users": 11}
    assert [r.status for r in mixpanel_cohorts.refresh(empty_file_store, client)] == ["unchanged"]

    mp.data.add_cohort({"id": 11, "name": "Power users", "members": ["u2", "u3", "u5", "u6"]})
    again = mixpanel_cohorts.refresh(empty_file_store, client)
    assert [(r.version, r.members, r.status) for r in again] == [(2, 4, "saved")]
    assert cohorts.get(empty_file_store, "Power users").static_ids == ("u2", "u3", "u5", "u6")

    mp.data.add_cohort({"id": 11, "name": "Power users", "members": []})
    assert ([r.status for r in mixpanel_cohorts.refresh(empty_file_store, client)]
            == ["empty (kept the previous members)"])
    assert cohorts.version_of(empty_file_store, "Power users") == 2


def test_an_unknown_cohort_or_a_taken_name_is_refused(client, empty_file_store):
    with pytest.raises(CohortError, match=r"no cohort 99.*11 \(Power users\), 12 \(Lapsed\)"):
        mixpanel_cohorts.adopt(empty_file_store, client, 99)
    cohorts.save(empty_file_store, {"name": "Lapsed", "static_ids": ["x"]})
    with pytest.raises(CohortError, match="already stored"):
        mixpanel_cohorts.adopt(empty_file_store, client, 12)
    assert mixpanel_cohorts.adopt(empty_file_store, client, 12, "Mixpanel lapsed").members == 2


@pytest.mark.slow   # waits out real retries and backoff
def test_a_mixpanel_cohort_exports_exactly_its_exportable_members(mp, client, empty_file_store, tmp_path,
                                                                  running_emulator, emulator_app):
    landing = tmp_path / "landing"
    pull(landing, client.account, from_date=FIRST_DAY, to_date=FIRST_DAY, profiles=True, client=client)
    load(empty_file_store, [landing])
    for i in (2, 3):                                   # u1's OneSignal user is missing
        running_emulator.add_user(emulator_app.app_id, external_id=f"ext-{i}")
    mixpanel_cohorts.adopt(empty_file_store, client, 11)
    preview = matching.preview(empty_file_store, "Power users", id_type="external_id")
    exportable = set(preview.exportable["onesignal_id"])
    assert exportable == {"ext-1", "ext-2", "ext-3"}
    settings = export.settings(empty_file_store, "Power users", mode="dynamic", app_id=emulator_app.app_id,
                               base_url=running_emulator.url, id_type="external_id",
                               client_options={"backoff_base": 0.01, "backoff_max": 0.05})
    record = sync.export_cohort(empty_file_store, settings, Credentials(emulator_app.app_id, emulator_app.api_key))
    key = export.tag_key("Power users")
    tagged = {user for user, tags in running_emulator.user_tags(emulator_app.app_id).items() if tags.get(key)}
    assert tagged == {"ext-2", "ext-3"} and record.added == 2
