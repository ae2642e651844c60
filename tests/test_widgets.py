"""toolkit/widgets.py driven headlessly: set control values, click buttons, read labels and outputs,
against a real store built from data/sample and the OneSignal emulator over real HTTP."""

import json
import re
import shutil

import pytest

from helpers import NOW
from toolkit import Store, cohorts, demo, export, matching, sync
from toolkit.emulator import Emulator

w = pytest.importorskip("ipywidgets")
from toolkit import widgets  # noqa: E402  (needs ipywidgets)

CHURN = "Churn risk: active in September, silent in October"
PRO = "Pro plan in the US"
TECH = "Tech fans worth a call"


@pytest.fixture
def sample_store_copy(sample_store_file, tmp_path):
    shutil.copy(sample_store_file, tmp_path / "s.duckdb")
    with Store(tmp_path / "s.duckdb") as s:
        yield s


@pytest.fixture
def unlimited_emulator():
    with Emulator(user_rate_limit=0) as emu:
        yield emu


@pytest.fixture
def sample_app(unlimited_emulator, sample_store_copy):
    app = unlimited_emulator.add_app()
    unlimited_emulator.add_users(app.app_id, demo.seed_users(sample_store_copy))
    return app


@pytest.fixture
def connection(sample_store_copy, unlimited_emulator, sample_app):
    panel = widgets.connect_panel(sample_store_copy, base_url=unlimited_emulator.url)
    panel.app_id.value, panel.api_key.value = sample_app.app_id, sample_app.api_key
    panel.connect_button.click()
    assert panel.status.value == "Connected"
    return panel


def tree(widget):
    """The widget and everything under it."""
    yield widget
    for child in getattr(widget, "children", ()):
        yield from tree(child)


def saved_state(panel) -> str:
    """What a notebook would save for the panel: every widget's state (Output contents included),
    plus every live widget's state as the kernel's widget manager holds it."""
    states = [w.get_state() for w in tree(panel.widget)] + [w.Widget.get_manager_state()]
    return json.dumps(states, default=str) + repr(panel)


def reasons_shown(explorer) -> dict[str, int]:
    return {r: int(n) for r, n in re.findall(r"<tr><td>(\w+)</td><td>(\d+)</td>", explorer.reasons.value)}


def seeded(store) -> set[tuple[str, str]]:
    """(id type, id) of every user demo.seed_users puts in the emulator."""
    return {("subscription_id", u["subscription_ids"][0]) if "subscription_ids" in u
            else ("external_id", u["external_id"]) for u in demo.seed_users(store)}


def tagged(emulator, app, cohort) -> set[tuple[str, str]]:
    """(id type, id) of every emulator user carrying the cohort's tag."""
    key = export.tag_key(cohort)
    found = set()
    for user in emulator.state["apps"][app.app_id]["users"]:
        if user["tags"].get(key):
            found |= ({("external_id", user["external_id"])} if user["external_id"] is not None else
                      {("subscription_id", s["id"]) for s in user["subscriptions"]})
    return found


def expected_tagged(store, cohort) -> set[tuple[str, str]]:
    """Exportable members of the cohort who exist in the emulator."""
    wanted = export.targets(matching.preview(store, cohort, now=NOW))
    return {(t.id_type, t.onesignal_id) for t in wanted.values()} & seeded(store)


# -- connect ------------------------------------------------------------------------------------

def test_connect_with_a_good_key_keeps_it_only_in_memory(sample_store_copy, unlimited_emulator, sample_app):
    panel = widgets.connect_panel(sample_store_copy, base_url=unlimited_emulator.url)
    assert panel.status.value == "Not connected" and panel.credentials is None
    panel.app_id.value, panel.api_key.value = sample_app.app_id, sample_app.api_key
    panel.connect_button.click()
    assert panel.status.value == "Connected" and panel.connected
    assert panel.credentials.app_id == sample_app.app_id and panel.credentials.api_key == sample_app.api_key
    assert panel.api_key.value == ""
    assert sample_app.api_key not in saved_state(panel)
    status = sample_store_copy.con.execute("SELECT status FROM connections WHERE app_id = ?",
                                           [sample_app.app_id]).fetchone()
    assert status == ("connected",)


def test_connect_with_a_bad_key_says_why_and_leaks_nothing(sample_store_copy, unlimited_emulator, sample_app):
    secret = "wrong-key-s3cr3t-0123456789abcdef"
    panel = widgets.connect_panel(sample_store_copy, base_url=unlimited_emulator.url)
    panel.app_id.value, panel.api_key.value = sample_app.app_id, secret
    panel.connect_button.click()
    assert panel.status.value.startswith("Not connected: ") and len(panel.status.value) > len("Not connected: ")
    assert panel.credentials is None and panel.api_key.value == ""
    assert secret not in saved_state(panel)


def test_connect_panel_shows_the_api_address_env_first(sample_store_copy, monkeypatch):
    monkeypatch.delenv("ONESIGNAL_BASE_URL", raising=False)
    assert widgets.connect_panel(sample_store_copy).address.value == "https://api.onesignal.com"
    monkeypatch.setenv("ONESIGNAL_BASE_URL", "http://127.0.0.1:9/")
    panel = widgets.connect_panel(sample_store_copy)
    assert panel.address.value == "http://127.0.0.1:9/" and "127.0.0.1:9" in repr(panel)
    # a parameter wins
    assert widgets.connect_panel(sample_store_copy, base_url="http://given").base_url == "http://given"
    assert panel.address in tree(panel.widget)


def test_connect_panel_address_can_be_changed(sample_store_copy, unlimited_emulator, sample_app):
    panel = widgets.connect_panel(sample_store_copy, base_url="http://127.0.0.1:9")     # nothing listens there
    panel.app_id.value, panel.api_key.value = sample_app.app_id, sample_app.api_key
    panel.connect_button.click()
    assert panel.status.value.startswith("Not connected: ") and not panel.connected
    assert widgets.WRAP in panel.status._dom_classes                         # a long reason wraps in the browser

    panel.address.value = unlimited_emulator.url                                       # typed into the field
    panel.api_key.value = sample_app.api_key
    panel.connect_button.click()
    assert panel.status.value == "Connected" and panel.base_url == unlimited_emulator.url
    assert sample_store_copy.con.execute("SELECT base_url, status FROM connections ORDER BY checked_at DESC LIMIT 1"
                             ).fetchone() == (unlimited_emulator.url, "connected")

    # A new address is not trusted on the old one's word; Connect with a blank key checks the key in use.
    panel.address.value = "http://127.0.0.1:9"
    assert not panel.connected and "address changed" in panel.status.value
    panel.address.value = unlimited_emulator.url
    panel.connect_button.click()
    assert panel.status.value == "Connected" and panel.credentials.api_key == sample_app.api_key
    assert sample_app.api_key not in saved_state(panel)


def test_connect_without_a_key_says_what_is_missing(sample_store_copy, unlimited_emulator):
    panel = widgets.connect_panel(sample_store_copy, base_url=unlimited_emulator.url)
    panel.app_id.value = "some-app"
    panel.connect_button.click()
    assert panel.status.value.startswith("Not connected: ") and "API key" in panel.status.value


# -- explore ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_explorer_shows_each_cohort_as_matching_does(sample_store_copy):
    explorer = widgets.cohort_explorer(sample_store_copy, now=NOW)
    names = list(explorer.cohort.options)
    assert names == [c["name"] for c in cohorts.list_cohorts(sample_store_copy)] and len(names) >= 10
    for name in names:
        explorer.cohort.value = name
        summary = matching.preview(sample_store_copy, name, now=NOW).summary
        assert explorer.size.value.startswith(f"{summary['members']:,} members, {summary['exportable']:,} exportable")
        assert reasons_shown(explorer) == summary["reasons"]
        (chart,) = explorer.funnel.outputs
        steps = widgets.funnel(summary)
        assert chart["data"]["text/plain"] == " -> ".join(f"{label} {n:,}" for label, n in steps)
        assert chart["data"]["image/png"]
        assert [n for _, n in steps] == sorted((n for _, n in steps), reverse=True)
        assert steps[0][1] == summary["members"] and steps[-1][1] == summary["exportable"]
        assert explorer.matches.value.startswith(f"{summary['members']:,} of {summary['members']:,} members")


def test_explorer_search_narrows_the_table(sample_store_copy, funnel_as_text):
    explorer = widgets.cohort_explorer(sample_store_copy, now=NOW)
    explorer.cohort.value = CHURN
    preview = matching.preview(sample_store_copy, CHURN, now=NOW)
    total = len(preview.members)

    explorer.search.value = "missing_user_id"
    count = preview.summary["reasons"]["missing_user_id"]
    assert 0 < count < total
    assert len(explorer.shown) == count and set(explorer.shown["status"]) == {"missing_user_id"}
    assert explorer.matches.value.startswith(f"{count:,} of {total:,} members")
    assert explorer.table.value.count("<tr") == count + 1            # header + rows

    one = preview.members["distinct_id"].iloc[3]
    explorer.search.value = one.upper()                                # any case
    assert list(explorer.shown["distinct_id"]) == [d for d in preview.members["distinct_id"] if one in d]
    assert one in explorer.table.value

    explorer.search.value = ""
    assert len(explorer.shown) == total
    assert explorer.table.value.count("<tr") == min(total, widgets.ROWS) + 1


def test_explorer_tables_name_every_column_and_fit_the_panel(sample_store_copy, funnel_as_text):
    explorer = widgets.cohort_explorer(sample_store_copy, now=NOW)
    explorer.cohort.value = CHURN
    for table in (explorer.table.value, explorer.reasons.value):
        headers = re.findall(r"<th[^>]*>(.*?)</th>", table, re.S)
        assert headers and all(h.strip() for h in headers), headers
    # The member table scrolls sideways inside its own box instead of running off the panel's edge.
    assert explorer.table.value.startswith("<div style='overflow-x:auto; max-width:100%'><table")
    # A 260-character "id" is cut in the table (its length named); the search still sees all of it.
    members = explorer.preview.members
    (long_id, *_) = [i for i in members["onesignal_id"].dropna() if len(i) > widgets.LONGEST]
    explorer.search.value = members.loc[members["onesignal_id"] == long_id, "distinct_id"].iloc[0]
    assert long_id not in explorer.table.value and f"{long_id[:20]}" in explorer.table.value
    assert f"({len(long_id):,} characters)" in explorer.table.value
    assert long_id in set(explorer.shown["onesignal_id"])


# -- export -------------------------------------------------------------------------------------

def counts_shown(panel) -> tuple[int, int, int]:
    m = re.search(r"add ([\d,]+), remove ([\d,]+), no-op ([\d,]+)", panel.status.value)
    return tuple(int(x.replace(",", "")) for x in m.groups())


@pytest.mark.slow
def test_preview_export_and_preview_again(sample_store_copy, unlimited_emulator, sample_app, connection):
    panel = widgets.export_panel(sample_store_copy, connection, now=NOW)
    panel.cohort.value = CHURN
    panel.preview_button.click()
    shown = counts_shown(panel)
    assert not export.runs(sample_store_copy)                                      # previewing registered nothing
    # The same diff as the real dry run.
    record = sync.export_cohort(sample_store_copy, export.settings(sample_store_copy, CHURN, mode="once",
                                                                   app_id=sample_app.app_id,
                                                                   base_url=unlimited_emulator.url, dry_run=True,
                                                                   now=NOW))
    assert shown == (record.added, record.removed, record.unchanged) and shown[0] == record.exportable > 0
    assert "guard passes" in panel.status.value and f"add {shown[0]}" in panel.diff.value

    panel.export_button.click()
    run = panel.last_record
    assert panel.status.value == "Export ok" and run.status == "ok" and not run.dry_run
    assert f"{CHURN}: once export ok" in panel.result.value
    expected = expected_tagged(sample_store_copy, CHURN)
    assert 0 < len(expected) < run.exportable                          # some members are not in OneSignal
    assert tagged(unlimited_emulator, sample_app, CHURN) == expected
    assert (run.added, run.not_in_onesignal) == (len(expected), run.exportable - len(expected))
    assert panel.progress.value == panel.progress.max == run.exportable
    assert CHURN in panel.syncs.value

    panel.preview_button.click()
    assert counts_shown(panel) == (0, 0, run.exportable)


def test_dynamic_export_then_stop(sample_store_copy, unlimited_emulator, sample_app, connection):
    panel = widgets.export_panel(sample_store_copy, connection, now=NOW)
    panel.cohort.value, panel.mode.value = PRO, "dynamic"
    panel.export_button.click()
    assert panel.last_record.status == "ok" and panel.last_record.mode == "dynamic"
    assert tagged(unlimited_emulator, sample_app, PRO) == expected_tagged(sample_store_copy, PRO)
    later = NOW.replace(hour=1)
    assert export.due(sample_store_copy, later) == [PRO]
    assert list(panel.sync_choice.options) == [PRO]

    cohorts.save(sample_store_copy, {"name": "Another cohort", "rules": [{"event": "Purchase", "last_days": 7}]})
    panel.refresh()                                                    # a new cohort keeps the selection
    assert "Another cohort" in panel.cohort.options and panel.cohort.value == PRO

    assert panel.sync_choice.value is None                           # nothing chosen for the user
    panel.stop_button.click()
    assert "choose the dynamic sync" in panel.status.value and export.due(sample_store_copy, later) == [PRO]

    panel.sync_choice.value = PRO
    panel.stop_button.click()                                          # asks first, naming the cohort
    assert panel.confirm.layout.display is None and PRO in panel.confirm_text.value
    assert export.due(sample_store_copy, later) == [PRO]
    panel.cancel_button.click()
    assert panel.confirm.layout.display == "none" and export.due(sample_store_copy, later) == [PRO]

    panel.stop_button.click()
    panel.confirm_button.click()
    assert panel.status.value.startswith(f"Stopped the dynamic sync of {PRO}")
    assert panel.confirm.layout.display == "none"
    assert export.due(sample_store_copy, later) == [] and list(panel.sync_choice.options) == []
    # OneSignal keeps the last export
    assert tagged(unlimited_emulator, sample_app, PRO) == expected_tagged(sample_store_copy, PRO)


def test_stopping_one_sync_does_not_select_another(sample_store_copy, unlimited_emulator, sample_app, connection):
    panel = widgets.export_panel(sample_store_copy, connection, now=NOW)
    for name in (PRO, TECH):
        panel.cohort.value, panel.mode.value = name, "dynamic"
        panel.export_button.click()
        assert panel.last_record.status == "ok"
    assert list(panel.sync_choice.options) == [PRO, TECH] and panel.sync_choice.value is None

    panel.sync_choice.value = PRO
    panel.stop_button.click()
    panel.sync_choice.value = TECH                                     # changing the choice cancels the question
    assert panel.confirm.layout.display == "none"
    panel.confirm_button.click()
    assert export.due(sample_store_copy, NOW.replace(hour=1)) == [PRO, TECH]      # nothing stopped

    panel.stop_button.click()
    assert TECH in panel.confirm_text.value and PRO not in panel.confirm_text.value
    panel.confirm_button.click()
    assert export.due(sample_store_copy, NOW.replace(hour=1)) == [PRO]
    assert list(panel.sync_choice.options) == [PRO] and panel.sync_choice.value is None


def test_removal_guard_trips_and_force_passes(sample_store_copy, unlimited_emulator, sample_app, connection):
    panel = widgets.export_panel(sample_store_copy, connection, now=NOW)
    panel.cohort.value = TECH
    panel.export_button.click()
    before = tagged(unlimited_emulator, sample_app, TECH)
    assert panel.last_record.status == "ok" and len(before) >= 4

    # Someone narrows the cohort's definition: most of the exported members would leave the segment.
    cohorts.save(sample_store_copy, {"name": TECH, "rules": [{"property": "plan", "operator": "equals", "value": "pro"},
                                                 {"property": "$country_code", "operator": "equals", "value": "US"}]})
    panel.preview_button.click()
    assert not panel.last_preview.verdict.ok and "STOPS" in panel.status.value
    assert "would remove" in panel.diff.value
    panel.export_button.click()
    assert panel.last_record.status == "stopped" and "rerun with force" in panel.status.value
    assert tagged(unlimited_emulator, sample_app, TECH) == before                       # nothing was touched

    panel.force.value = True
    panel.preview_button.click()
    assert panel.last_preview.verdict.ok and "forced" in panel.diff.value
    panel.export_button.click()
    assert panel.last_record.status == "ok" and panel.last_record.removed > 0
    assert tagged(unlimited_emulator, sample_app, TECH) == expected_tagged(sample_store_copy, TECH) != before


def test_export_without_a_connection_or_key_says_so(sample_store_copy, monkeypatch, tmp_path):
    monkeypatch.delenv("ONESIGNAL_API_KEY", raising=False)
    monkeypatch.delenv("ONESIGNAL_APP_ID", raising=False)
    monkeypatch.setenv("TOOLKIT_CREDENTIALS", str(tmp_path / "none.json"))
    panel = widgets.export_panel(sample_store_copy, now=NOW)
    panel.cohort.value = PRO
    panel.export_button.click()
    assert panel.status.value.startswith("Not connected") and export.list_exports(sample_store_copy) == []


def test_panels_display_as_their_container(sample_store_copy, monkeypatch, funnel_as_text):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs, **kw: shown.append((objs, kw)))
    for panel in (widgets.connect_panel(sample_store_copy), widgets.cohort_explorer(sample_store_copy, now=NOW),
                  widgets.export_panel(sample_store_copy, now=NOW)):
        assert isinstance(panel.widget, w.Box)
        panel._ipython_display_()
        ((bundle,), kw) = shown.pop()
        # The live widget, and as plain text (a run without a browser) the panel's state, not "VBox(...)".
        assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == panel.widget.model_id
        assert bundle["text/plain"] == repr(panel) and kw == {"raw": True}
