"""The panels with a Mixpanel project: its cohorts are listed beside the local ones; picking one not kept yet
keeps it (members from Engage); the explorer shows it and the export panel previews and exports it to the
OneSignal emulator. Driven headlessly, as tests/test_widgets.py does."""

import pytest
from mixpanel_fixtures import FIRST_DAY, write_folder

from toolkit import Store, cohorts, export, load
from toolkit.emulator import Emulator
from toolkit.mixpanel import cohorts as mixpanel_cohorts
from toolkit.mixpanel.client import MixpanelClient, ServiceAccount
from toolkit.mixpanel.emulator import MixpanelEmulator
from toolkit.mixpanel.pull import pull

pytest.importorskip("ipywidgets")
from toolkit import widgets  # noqa: E402  (needs ipywidgets)

SECRET = "widget-test-secret-0b7d"
PROJECT = "4242"


pytestmark = pytest.mark.slow     # each test starts both emulators and loads a store: 5-8 s

@pytest.fixture
def world(tmp_path, monkeypatch):
    with MixpanelEmulator(write_folder(tmp_path / "mp"), project_id=PROJECT, secret=SECRET, page_size=2) as mp, \
            Emulator(user_rate_limit=0) as onesignal:
        monkeypatch.setenv("MIXPANEL_USERNAME", mp.username)
        monkeypatch.setenv("MIXPANEL_SECRET", SECRET)
        monkeypatch.setenv("MIXPANEL_BASE_URL", mp.url)
        monkeypatch.setenv("TOOLKIT_MIXPANEL_CREDENTIALS", str(tmp_path / "none.json"))
        app = onesignal.add_app()
        for i in (4, 2):
            onesignal.add_user(app.app_id, f"ext-{i}")
        db = tmp_path / "store.duckdb"
        with Store(db) as store, MixpanelClient(ServiceAccount(mp.username, SECRET, PROJECT), mp.url) as client:
            pull(tmp_path / "landing", client.account, from_date=FIRST_DAY, to_date=FIRST_DAY, profiles=True,
                 client=client)
            load(store, [tmp_path / "landing"])
            mixpanel_cohorts.adopt(store, client, 11)
            cohorts.save(store, {"name": "Buyers", "rules": [{"event": "Purchase"}]})
        yield {"db": db, "mp": mp, "onesignal": onesignal, "app": app}


def test_mixpanel_cohorts_are_listed_beside_local_ones_and_one_picked_is_kept_and_shown(world):
    explorer = widgets.cohort_explorer(world["db"], mixpanel=PROJECT)
    assert explorer.cohort.options == (("Buyers", "Buyers"), ("Power users (Mixpanel cohort 11)", "Power users"),
                                       ("Lapsed (Mixpanel cohort 12, 2 members: pick to use it here)", "mixpanel:12"))
    assert explorer.cohort.value == "Buyers"                 # never a Mixpanel cohort unasked
    explorer.cohort.value = "mixpanel:12"
    assert explorer.cohort.value == "Lapsed"
    assert explorer.size.value.startswith("2 members, 1 exportable")   # u4, and a ghost without a profile
    with Store(world["db"], read_only=True) as store:
        assert cohorts.get(store, "Lapsed").static_ids == ("ghost-without-profile", "u4")
        assert mixpanel_cohorts.linked(store, PROJECT) == {"Power users": 11, "Lapsed": 12}
    assert ("Lapsed (Mixpanel cohort 12)", "Lapsed") in explorer.cohort.options


def test_the_export_panel_previews_and_exports_a_picked_mixpanel_cohort(world, monkeypatch):
    monkeypatch.setenv("ONESIGNAL_APP_ID", world["app"].app_id)
    monkeypatch.setenv("ONESIGNAL_API_KEY", world["app"].api_key)
    monkeypatch.setenv("ONESIGNAL_BASE_URL", world["onesignal"].url)
    panel = widgets.export_panel(world["db"], mixpanel={"project_id": PROJECT})
    panel.cohort.value = "mixpanel:12"
    assert panel.cohort.value == "Lapsed" and 'kept as "Lapsed"' in panel.status.value
    panel.preview_button.click()
    assert panel.status.value.startswith("Preview: add 1, remove 0"), panel.status.value
    panel.export_button.click()
    assert panel.status.value == "Export ok", panel.status.value
    key = export.tag_key("Lapsed")
    assert {u for u, tags in world["onesignal"].user_tags(world["app"].app_id).items() if tags.get(key)} == {"ext-4"}


def test_a_wrong_secret_is_said_in_the_panel_and_local_cohorts_still_show(world, monkeypatch):
    monkeypatch.setenv("MIXPANEL_SECRET", "wrong")
    explorer = widgets.cohort_explorer(world["db"], mixpanel=PROJECT)
    assert [value for _, value in explorer.cohort.options] == ["Buyers", "Power users"]
    assert explorer.cohort.value == "Buyers" and " members, " in explorer.size.value
    assert "Mixpanel cohorts not listed: " in explorer.size.value and "secret" in explorer.size.value.lower()
    assert "wrong" not in explorer.size.value
