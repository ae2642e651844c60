"""OneSignal's plan limits (issue 15, point 1): the emulator answers each limit as OneSignal does, over
real HTTP; the export respects the app's data-tag cap, makes safe and stable tag keys, and names its
segments as Mixpanel's integration does, against the emulator with a real DuckDB file."""

import json

import httpx
import pytest

from toolkit import export, report, snapshots
from toolkit.emulator import Emulator
from toolkit.emulator.api import RESERVED_TAG_KEYS
from toolkit.onesignal import Credentials
from toolkit.planning import Target
from toolkit.store import Store

# view_rps: the emulator takes views at any pace (the refused users' tags are read back at 50/s, not 1/s)
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 2.0, "max_attempts": 5, "view_rps": 50}
TAG_A = [{"field": "tag", "key": "a", "relation": "exists"}]


@pytest.fixture
def unlimited_emulator():
    with Emulator(user_rate_limit=0) as emu:      # no 1/s per user: runs follow each other at once
        yield emu


def http_for(emulator, app) -> httpx.Client:
    return httpx.Client(base_url=f"{emulator.url}/apps/{app.app_id}", headers={"Authorization": f"Key {app.api_key}"})


def tags(values: dict) -> dict:
    return {"properties": {"tags": values}}


def ext(*ids):
    return {f"d-{i}": Target(i, "external_id") for i in ids}


def run(store, emulator, app, cohort, wanted, mode="dynamic", **kw):
    if export.registration(store.con, cohort) is None:
        export.register(store, cohort, mode, app.app_id, emulator.url)
    return export.run(store, export.settings(store, cohort, client_options=FAST, **kw), wanted,
                      Credentials(app.app_id, app.api_key))


def preview(store, cohort, wanted):
    """The export preview of ``wanted`` (these tests' cohorts are not stored: no evaluation)."""
    found = export.Exportable(len(wanted), snapshots.table_of(wanted), {})
    return export.preview_targets(store, export.settings(store, cohort), found)


def patches_for(emulator, *users) -> int:
    return sum(1 for r in emulator.requests() if r["method"] == "PATCH" and r["path"].rsplit("/", 1)[-1] in users)


def results(store, run_id) -> dict[str, str]:
    return dict(store.con.execute("SELECT distinct_id, outcome FROM export_results WHERE run_id = ?",
                                  [run_id]).fetchall())


def segment_of(emulator, app, cohort) -> dict:
    (segment,) = [s for s in emulator.state["apps"][app.app_id]["segments"] if s["name"] == export.segment_name(cohort)]
    return segment


# -- the emulator, over HTTP ------------------------------------------------------------------------

def test_plans_set_the_caps_and_the_tag_cap_is_answered_with_onesignals_exact_body(unlimited_emulator):
    free, paid = unlimited_emulator.add_app(plan="free"), unlimited_emulator.add_app(plan="paid")
    assert (free.tag_limit, free.segment_limit, paid.tag_limit) == (2, 6, 20)
    unlimited_emulator.add_user(free.app_id, external_id="u", tags={"a": "1", "b": "2"})
    with http_for(unlimited_emulator, free) as http:
        r = http.patch("/users/by/external_id/u", json=tags({"c": "3"}))
        assert r.status_code == 400
        assert r.content == b'{"errors":["App is limited to a maximum of 2 tags on a given player"],"success":false}'
        assert http.patch("/users/by/external_id/u", json=tags({"a": "x"})).status_code == 202   # 2 stay 2
        assert http.patch("/users/by/external_id/u", json=tags({"a": "", "c": "3"})).status_code == 202
    assert unlimited_emulator.user_tags(free.app_id) == {"u": {"b": "2", "c": "3"}}
    unlimited_emulator.add_user(paid.app_id, external_id="v", tags={f"t{n}": "1" for n in range(19)})
    with http_for(unlimited_emulator, paid) as http:
        assert http.patch("/users/by/external_id/v", json=tags({"t19": "1"})).status_code == 202
        r = http.patch("/users/by/external_id/v", json=tags({"t20": "1"}))
        assert r.json() == {"errors": ["App is limited to a maximum of 20 tags on a given player"], "success": False}


def test_a_user_over_the_cap_is_refused_even_an_update_or_a_delete_that_leaves_it_over(unlimited_emulator):
    """A plan lowered from 10 to 2 tags: the user keeps its 4 tags, and OneSignal has refused such a
    user an update of a key it has, and a delete, while the user stays over the cap."""
    app = unlimited_emulator.add_app(plan="free")
    unlimited_emulator.add_user(app.app_id, external_id="u", tags={"a": "1", "b": "1", "c": "1", "d": "1"})
    cap = {"errors": ["App is limited to a maximum of 2 tags on a given player"], "success": False}
    with http_for(unlimited_emulator, app) as http:
        for change in ({"a": "2"}, {"a": ""}):
            r = http.patch("/users/by/external_id/u", json=tags(change))
            assert (r.status_code, r.json()) == (400, cap)
        assert http.patch("/users/by/external_id/u", json=tags({"a": "", "b": ""})).status_code == 202
    assert unlimited_emulator.user_tags(app.app_id) == {"u": {"c": "1", "d": "1"}}


def test_at_most_100_tag_keys_per_request(unlimited_emulator):
    app = unlimited_emulator.add_app(tag_limit=500)
    unlimited_emulator.add_user(app.app_id, external_id="u")
    with http_for(unlimited_emulator, app) as http:
        r = http.patch("/users/by/external_id/u", json=tags({f"t{n}": "1" for n in range(101)}))
        assert (r.status_code, r.json()) == (400, {"errors": ["Please limit your tag updates to 100 per request"],
                                                   "success": False})
        assert unlimited_emulator.user_tags(app.app_id) == {"u": {}}
        assert http.patch("/users/by/external_id/u", json=tags({f"t{n}": "1" for n in range(100)})).status_code == 202
    assert len(unlimited_emulator.user_tags(app.app_id)["u"]) == 100


@pytest.mark.parametrize("key", sorted(RESERVED_TAG_KEYS))
def test_reserved_tag_keys_are_refused_but_may_be_deleted(unlimited_emulator, key):
    app = unlimited_emulator.add_app()
    unlimited_emulator.add_user(app.app_id, external_id="u", tags={key: "old"})      # set before the rule, say
    with http_for(unlimited_emulator, app) as http:
        r = http.patch("/users/by/external_id/u", json=tags({"fine": "1", key: "1"}))
        assert r.status_code == 400 and r.json()["success"] is False
        assert r.json()["errors"] == [f"Tag key '{key}' is reserved by OneSignal for message personalization "
                                      "(reserved: app, custom_data, data_feed, dynamic_content, journey, message, "
                                      "notification, org, subscription, template, user)"]
        assert unlimited_emulator.user_tags(app.app_id) == {"u": {key: "old"}}  # nothing applied
        assert http.patch("/users/by/external_id/u", json=tags({key: ""})).status_code == 202
    assert unlimited_emulator.user_tags(app.app_id) == {"u": {}}


def test_segment_names_of_at_most_128_characters(unlimited_emulator):
    app = unlimited_emulator.add_app()
    with http_for(unlimited_emulator, app) as http:
        assert http.post("/segments", json={"name": "x" * 128, "filters": TAG_A}).status_code == 201
        r = http.post("/segments", json={"name": "y" * 129, "filters": TAG_A})
        assert (r.status_code, r.json()) == (400, {"errors": ["name must be at most 128 characters"], "success": False})
        segment_id = http.get("/segments").json()["segments"][0]["id"]
        r = http.patch(f"/segments/{segment_id}", json={"name": "z" * 129, "filters": TAG_A})
        assert r.status_code == 400 and r.json()["errors"] == ["name must be at most 128 characters"]
    assert [s["name"] for s in unlimited_emulator.state["apps"][app.app_id]["segments"]] == ["x" * 128]


def test_the_free_plans_segment_count_and_a_raised_cap(unlimited_emulator):
    app = unlimited_emulator.add_app(segment_limit=6)      # the Free plan's count, on an app whose API makes segments
    with http_for(unlimited_emulator, app) as http:
        for n in range(6):
            assert http.post("/segments", json={"name": f"S{n}", "filters": TAG_A}).status_code == 201
        r = http.post("/segments", json={"name": "S6", "filters": TAG_A})
        assert (r.status_code, r.json()) == (400, {"errors": ["App has reached its limit of 6 segments"],
                                                   "success": False})
        unlimited_emulator.set_limits(app.app_id, segment_limit=7)
        assert http.post("/segments", json={"name": "S6", "filters": TAG_A}).status_code == 201
    unlimited_emulator.reset()                             # a changed cap is part of the app as set up
    assert unlimited_emulator.app(app.app_id).segment_limit == 7
    assert not unlimited_emulator.state["apps"][app.app_id]["segments"]


# -- the export: the app's tag cap ------------------------------------------------------------------

@pytest.fixture
def capped(unlimited_emulator):
    """A 2-tag app: u1 and u2 carry nothing, u3 and u4 two tags set outside the toolkit."""
    app = unlimited_emulator.add_app(tag_limit=2)
    for user in ("u1", "u2"):
        unlimited_emulator.add_user(app.app_id, external_id=user)
    for user in ("u3", "u4"):
        unlimited_emulator.add_user(app.app_id, external_id=user, tags={"vip": "1", "plan": "gold"})
    return app


def test_members_over_the_cap_get_their_reason_are_not_retried_and_go_through_once_it_is_raised(
        empty_file_store, unlimited_emulator, capped):
    wanted = ext("u1", "u2", "u3", "u4")
    first = run(empty_file_store, unlimited_emulator, capped, "Buyers", wanted)
    assert first.status == "ok" and (first.added, first.tag_cap, first.failed) == (2, 2, 0)
    assert set(segment_of(unlimited_emulator, capped, "Buyers")["members"]["external_ids"]) == {"u1", "u2"}
    assert results(empty_file_store, first.run_id) == {"d-u1": "ok", "d-u2": "ok", "d-u3": "tag_cap", "d-u4": "tag_cap"}
    # OneSignal's number replaces the default, and the refused users' tags were read back
    assert export.app_tag_limit(empty_file_store.con, capped.app_id) == {"tag_limit": 2, "source": "onesignal"}
    known = dict(empty_file_store.con.execute("SELECT onesignal_id, tag_keys FROM known_user_tags").fetchall())
    assert known == {"u3": ["plan", "vip"], "u4": ["plan", "vip"]}

    seen = preview(empty_file_store, "Buyers", wanted)
    assert (seen.over_tag_limit, seen.added, seen.unchanged) == (2, 0, 2)
    text = report.export_preview_text(seen)
    assert "data tags per user: at most 2 in this app (as OneSignal said)" in text
    assert "2 member(s) would go over the app's limit of 2 data tags per user" in text

    before = patches_for(unlimited_emulator, "u3", "u4")
    # as a sync passes them
    second = run(empty_file_store, unlimited_emulator, capped, "Buyers", snapshots.table_of(wanted))
    assert patches_for(unlimited_emulator, "u3", "u4") == before                      # not retried: 0 requests
    assert second.status == "ok" and (second.added, second.tag_cap, second.unchanged) == (0, 2, 2)
    assert "2 member(s) went over" in report.run_text(second)

    unlimited_emulator.set_limits(capped.app_id, tag_limit=3)                          # the plan now allows 3
    export.set_tag_limit(empty_file_store, capped.app_id, 3)
    assert preview(empty_file_store, "Buyers", wanted).over_tag_limit == 0
    third = run(empty_file_store, unlimited_emulator, capped, "Buyers", wanted)
    assert third.status == "ok" and (third.added, third.tag_cap) == (2, 0)
    assert set(segment_of(unlimited_emulator, capped, "Buyers")["members"]["external_ids"]) == {"u1", "u2", "u3", "u4"}
    assert empty_file_store.con.execute("SELECT count(*) FROM export_tag_caps").fetchone()[0] == 0


def test_the_preview_counts_the_toolkits_own_tags_and_the_run_sends_nothing_it_knows_would_be_refused(
        empty_file_store, unlimited_emulator):
    app = unlimited_emulator.add_app(tag_limit=2)
    for user in ("u1", "u2"):
        unlimited_emulator.add_user(app.app_id, external_id=user)
    export.set_tag_limit(empty_file_store, app.app_id, 2)
    assert run(empty_file_store, unlimited_emulator, app, "A", ext("u1", "u2")).added == 2
    assert run(empty_file_store, unlimited_emulator, app, "B", ext("u1")).added == 1  # u1 now carries 2 tags
    export.register(empty_file_store, "C", "dynamic", app.app_id, unlimited_emulator.url)
    seen = preview(empty_file_store, "C", ext("u1", "u2"))
    assert (seen.added, seen.over_tag_limit) == (2, 1)                        # u1 carries A's and B's tags
    assert "1 member(s) would go over the app's limit of 2 data tags per user" in report.export_preview_text(seen)

    before = patches_for(unlimited_emulator, "u1")
    record = run(empty_file_store, unlimited_emulator, app, "C", ext("u1", "u2"))
    assert patches_for(unlimited_emulator, "u1") == before                             # known to be refused: not sent
    assert (record.added, record.tag_cap) == (1, 1)
    assert empty_file_store.con.execute("SELECT error FROM export_results WHERE run_id = ? AND distinct_id = 'd-u1'",
                             [record.run_id]).fetchone()[0] == ("not sent: the app allows 2 data tags per user and "
                                                                "this user carries 2 other(s)")
    assert run(empty_file_store, unlimited_emulator, app, "C", ext("u1", "u2")).tag_cap == 1  # held, still nothing sent
    assert patches_for(unlimited_emulator, "u1") == before

    # B lets u1 go: it has room again
    assert run(empty_file_store, unlimited_emulator, app, "B", {}, force=True).removed == 1
    record = run(empty_file_store, unlimited_emulator, app, "C", ext("u1", "u2"))
    assert (record.added, record.tag_cap) == (1, 0)
    assert unlimited_emulator.user_tags(app.app_id)["u1"] == {export.tag_key("A"): "1", export.tag_key("C"): "1"}


def test_a_dry_run_of_a_stored_cohort_says_how_many_would_go_over_the_cap(sample_store_file, tmp_path):
    """The sample's cohort, evaluated: three of its exportable members are known (from OneSignal's view
    of them) to carry two tags already, in an app that allows two."""
    import shutil

    path = tmp_path / "copy.duckdb"
    shutil.copy(sample_store_file, path)
    with Store(path) as sample:
        export.set_tag_limit(sample, "app-1", 2)
        cohort = next(name for name, in sample.con.execute("SELECT DISTINCT name FROM cohorts ORDER BY name").fetchall()
                      if export.exportable(sample, export.settings(sample, name, dry_run=True)).wanted)
        chosen = export.settings(sample, cohort, dry_run=True, app_id="app-1")
        assert chosen.tag_limit == 2 and export.settings(sample, cohort, dry_run=True, tag_limit=7).tag_limit == 7
        ids = sorted(t.onesignal_id for t in export.exportable(sample, chosen).wanted.values())[:3]
        for onesignal_id in ids:
            sample.con.execute("INSERT INTO known_user_tags VALUES ('app-1', ?, ['vip', 'plan'], now()::TIMESTAMP)",
                               [onesignal_id])
        seen = export.preview_export(sample, chosen)
        assert seen.over_tag_limit == 3 and seen.to_dict()["tag_cap"] == 3
        assert seen.to_dict()["tag_limit"] == {"tag_limit": 2, "source": "set"}
        assert "as set with toolkit connect --tag-limit" in report.export_preview_text(seen)
        assert "3 member(s) would go over the app's limit of 2 data tags per user" in report.dry_run_text(seen)
        record = export.run(sample, chosen, export.exportable(sample, chosen).wanted, None)
        assert record.dry_run and record.tag_cap == 3


def test_set_tag_limit_refuses_nonsense(empty_file_store):
    for bad in (0, -1, 2.5, True, "20"):
        with pytest.raises(export.ExportError, match="tag limit"):
            export.set_tag_limit(empty_file_store, "app", bad)


# -- tag keys ---------------------------------------------------------------------------------------

NAMES = ["app", "user", "message", "Buyers", "buyers", "BUYERS", "zoë ✓ café", "quote\"'s", "a/b\\c", "../..",
         "x" * 300, "x" * 299 + "y", "  ", "日本語のコホート", "custom_data"]


def test_tag_keys_are_safe_stable_and_distinct():
    keys = [export.tag_key(name) for name in NAMES]
    assert keys == [export.tag_key(name) for name in NAMES]                   # stable
    assert len(set(keys)) == len(NAMES)                                       # case, length, script: all distinct
    for name, key in zip(NAMES, keys, strict=True):
        assert export.tag_key_problem(key) is None, (name, key)
        assert key.lower() not in RESERVED_TAG_KEYS and len(key) <= 50
    assert export.tag_key("Buyers") == "mp_buyers_" + __import__("hashlib").sha1(b"Buyers").hexdigest()[:6]
    assert export.tag_key_problem("app") and export.tag_key_problem("a b") and export.tag_key_problem("x" * 65)


@pytest.mark.slow
def test_cohorts_with_hostile_names_export_with_their_keys_and_segments(empty_file_store, unlimited_emulator):
    app = unlimited_emulator.add_app()
    unlimited_emulator.add_user(app.app_id, external_id="u1")
    for name in NAMES:
        record = run(empty_file_store, unlimited_emulator, app, name, ext("u1"), mode="once")
        assert record.status == "ok" and record.added == 1, (name, record.error)
    assert unlimited_emulator.user_tags(app.app_id)["u1"] == {export.tag_key(name): "1" for name in NAMES}
    segments = unlimited_emulator.state["apps"][app.app_id]["segments"]
    assert sorted(s["name"] for s in segments) == sorted(export.segment_name(n) for n in NAMES)
    assert len({s["name"] for s in segments}) == len(NAMES) and all(len(s["name"]) <= 128 for s in segments)
    assert all(s["name"].startswith("(Mixpanel) ") for s in segments)


def test_a_registered_key_is_kept_when_the_export_is_registered_again(empty_file_store, unlimited_emulator):
    app = unlimited_emulator.add_app()
    export.register(empty_file_store, "Buyers", "once", app.app_id, unlimited_emulator.url)
    empty_file_store.con.execute("UPDATE exports SET tag_key = 'mp_from_before' WHERE cohort = 'Buyers'")
    again = export.settings(empty_file_store, "Buyers", mode="dynamic", app_id=app.app_id,
                            base_url=unlimited_emulator.url)
    assert again.tag_key == "mp_from_before"
    empty_file_store.con.execute("UPDATE exports SET tag_key = 'app' WHERE cohort = 'Buyers'")
    with pytest.raises(export.ExportError, match="reserved by OneSignal"):
        export.settings(empty_file_store, "Buyers")


# -- segments ---------------------------------------------------------------------------------------

def test_segment_names_are_mixpanels_within_128_characters_and_unique():
    assert export.segment_name("Buyers") == "(Mixpanel) Buyers"
    long_a, long_b = "Users who " + "x" * 200 + " bought", "Users who " + "x" * 200 + " browsed"
    a, b = export.segment_name(long_a), export.segment_name(long_b)
    assert len(a) == len(b) == 128 and a != b and a.startswith("(Mixpanel) Users who xxx")
    assert export.segment_name(long_a) == a                                   # stable
    exact = "y" * (128 - len("(Mixpanel) "))
    assert export.segment_name(exact) == "(Mixpanel) " + exact and len(export.segment_name(exact + "z")) == 128


def test_a_segment_an_earlier_version_made_is_adopted_and_renamed_not_duplicated(empty_file_store, unlimited_emulator):
    app = unlimited_emulator.add_app()
    unlimited_emulator.add_user(app.app_id, external_id="u1")
    mine = [{"field": "tag", "key": export.tag_key("Buyers"), "relation": "exists"}]
    with http_for(unlimited_emulator, app) as http:  # made under the old name; its id never saved (rebuilt store)
        old = http.post("/segments", json={"name": "Buyers", "filters": mine}).json()["id"]
        hand_made = http.post("/segments", json={"name": "Sellers", "filters": TAG_A}).json()["id"]
    assert run(empty_file_store, unlimited_emulator, app, "Buyers", ext("u1")).status == "ok"
    record = run(empty_file_store, unlimited_emulator, app, "Sellers", ext("u1"))
    assert record.status == "ok"
    by_name = {s["name"]: s["id"] for s in unlimited_emulator.state["apps"][app.app_id]["segments"]}
    assert by_name["(Mixpanel) Buyers"] == old and "Buyers" not in by_name       # renamed in place
    assert by_name["Sellers"] == hand_made and "(Mixpanel) Sellers" in by_name     # a person's own: left alone
    assert export.registration(empty_file_store.con, "Buyers")["segment_name"] == "(Mixpanel) Buyers"


def test_a_registered_segment_under_its_old_name_is_renamed_with_its_id(empty_file_store, unlimited_emulator):
    app = unlimited_emulator.add_app()
    unlimited_emulator.add_user(app.app_id, external_id="u1")
    assert run(empty_file_store, unlimited_emulator, app, "Buyers", ext("u1")).status == "ok"
    (segment,) = unlimited_emulator.state["apps"][app.app_id]["segments"]
    with http_for(unlimited_emulator, app) as http:           # as the previous version left it
        http.patch(f"/segments/{segment['id']}", json={"name": "Buyers", "filters": segment["filters"]})
    empty_file_store.con.execute("UPDATE exports SET segment_name = 'Buyers'")
    assert run(empty_file_store, unlimited_emulator, app, "Buyers", ext("u1")).status == "ok"
    assert [(s["id"], s["name"]) for s in unlimited_emulator.state["apps"][app.app_id]["segments"]] == [
        (segment["id"], "(Mixpanel) Buyers")]


def test_the_seventh_segment_of_a_six_segment_plan_is_refused_before_any_user_and_says_what_to_do(
        empty_file_store, unlimited_emulator):
    app = unlimited_emulator.add_app(segment_limit=6)
    unlimited_emulator.add_user(app.app_id, external_id="u1")
    for n in range(6):
        assert run(empty_file_store, unlimited_emulator, app, f"Cohort {n}", ext("u1"), mode="once").status == "ok"
    before = patches_for(unlimited_emulator, "u1")
    record = run(empty_file_store, unlimited_emulator, app, "Cohort 6", ext("u1"), mode="once")
    assert record.status == "failed" and patches_for(unlimited_emulator, "u1") == before
    assert record.error == (
        f"cohort 'Cohort 6': OneSignal app {app.app_id} already has 6 segments, as many as its plan allows "
        "(Free: 6), so the segment '(Mixpanel) Cohort 6' cannot be created and no user was updated. Delete a "
        "segment the app no longer uses in OneSignal (Audience > Segments), or move the app to a plan with more "
        "segments; then run the export again.")
    refused = [r for r in unlimited_emulator.requests() if r["method"] == "POST" and r["status"] == 400]
    assert len(refused) == 1
    unlimited_emulator.set_limits(app.app_id, segment_limit=7)
    assert run(empty_file_store, unlimited_emulator, app, "Cohort 6", ext("u1"), mode="once").status == "ok"


def test_a_run_record_and_its_json_carry_the_tag_cap_count(empty_file_store, unlimited_emulator, capped):
    record = run(empty_file_store, unlimited_emulator, capped, "Buyers", ext("u1", "u3"))
    assert record.to_dict()["tag_cap"] == 1
    assert export.runs(empty_file_store, "Buyers")[0]["tag_cap"] == 1
    assert "failed 0 over tag cap 1" in report.runs_text(export.runs(empty_file_store, "Buyers"))
    json.dumps(record.to_dict(), default=str)
