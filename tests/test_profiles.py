"""Profile snapshots and Mixpanel's profile update operations, pure and loaded."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import NOW, event, rows, write_lines
from toolkit import load as load_files
from toolkit.loading import profile_ops


def load(store, *paths, **kw):
    return load_files(store, [str(p) for p in paths], now=NOW, **kw)


def props(store, distinct_id):
    found = rows(store, "SELECT properties FROM profiles WHERE distinct_id = ?", [distinct_id])
    return json.loads(found[0][0]) if found else None


# -- the pure fold -------------------------------------------------------------------------------

@pytest.mark.parametrize("before,op,value,after", [
    ({"a": 1}, "$set", {"a": 2, "b": "x"}, {"a": 2, "b": "x"}),
    ({"a": 1}, "$set_once", {"a": 2, "b": "x"}, {"a": 1, "b": "x"}),
    ({"n": 1}, "$add", {"n": 2.5, "m": -1}, {"n": 3.5, "m": -1}),
    ({"n": "text"}, "$add", {"n": 1}, {"n": "text"}),                  # not a number: left alone
    ({"l": [1, 2]}, "$union", {"l": [2, 3, 3], "k": ["a"]}, {"l": [1, 2, 3], "k": ["a"]}),
    ({"l": "scalar"}, "$union", {"l": [1]}, {"l": "scalar"}),
    ({"l": [1]}, "$append", {"l": 1, "k": "a"}, {"l": [1, 1], "k": ["a"]}),
    ({"l": [1, 2, 1]}, "$remove", {"l": 1, "missing": 3}, {"l": [2]}),
    ({"a": 1, "b": 2}, "$unset", ["a", "zzz"], {"b": 2}),
    ({"a": 1}, "$delete", None, None),
    (None, "$set", {"a": 1}, {"a": 1}),
])
def test_operations(before, op, value, after):
    assert profile_ops.check(op, value) is None
    assert profile_ops.apply(before, op, value) == after


@pytest.mark.parametrize("op,value,message", [
    ("$set", ["a"], "object"), ("$add", {"n": "1"}, "not a number"), ("$add", {"n": True}, "not a number"),
    ("$union", {"l": 1}, "not a list"), ("$unset", "a", "list of property names"),
])
def test_malformed_arguments(op, value, message):
    assert message in profile_ops.check(op, value)


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=5),
       st.dictionaries(st.text(max_size=5), st.integers(), max_size=5))
def test_fold_never_mutates_its_input(before, value):
    frozen = json.dumps(before, sort_keys=True)
    for op in ("$set", "$set_once", "$add", "$unset"):
        argument = list(value) if op == "$unset" else value
        profile_ops.apply(before, op, argument)
    assert json.dumps(before, sort_keys=True) == frozen


# -- loading -------------------------------------------------------------------------------------

def test_engage_page_bare_list_and_json_lines(empty_store, tmp_path):
    (tmp_path / "page.json").write_text(json.dumps({"results": [{"$distinct_id": "u1", "$properties": {"a": 1}}],
                                                    "page": 0, "page_size": 1000, "status": "ok", "total": 1}))
    (tmp_path / "list.json").write_text(json.dumps([{"$distinct_id": "u2", "$properties": {"a": 2}}]))
    write_lines(tmp_path / "lines.jsonl", [{"$distinct_id": "u3", "$properties": {"a": 3}}])
    summary = load(empty_store, tmp_path)
    assert {f.kind for f in summary.files} == {"profiles"}
    assert rows(empty_store, "SELECT distinct_id, properties->>'$.a' FROM profiles ORDER BY 1") == [
        ("u1", "1"), ("u2", "2"), ("u3", "3")]


@pytest.mark.slow
@pytest.mark.all_cores
def test_a_large_engage_page_loads_within_the_load_memory(empty_store, tmp_path, monkeypatch):
    """One Engage page holding 20,000 profiles (8 MB) under a 600 MB load memory, which the page's
    unnesting used to exceed (a 22 MB page failed under the default 1 GB)."""
    page = {"results": [{"$distinct_id": f"user_{i:06d}", "$properties": {
        "$email": f"user{i}@example.com", "$name": "Zoë Example", "plan": "pro", "bio": "x" * 300}}
        for i in range(20_000)], "page": 0, "page_size": 20_000, "status": "ok", "total": 20_000}
    (tmp_path / "page.json").write_text(json.dumps(page, ensure_ascii=False), encoding="utf-8")
    monkeypatch.setenv("TOOLKIT_LOAD_MEMORY", "600MB")
    summary = load(empty_store, tmp_path / "page.json")
    assert summary.files[0].status == "loaded", summary.files[0].message
    assert rows(empty_store, "SELECT count(*), count(*) FILTER (WHERE properties->>'$.$name' = 'Zoë Example') "
                       "FROM profiles") == [(20_000, 20_000)]


@pytest.mark.slow
@pytest.mark.all_cores
def test_many_engage_pages_load_within_the_load_memory(empty_store, tmp_path, monkeypatch):
    """Forty pages of 1,000 profiles (16 MB) under a 300 MB load memory: parsing all the pages of one
    DuckDB vector at once used to need several times the file (a 45 MB export failed under 1 GB)."""
    with open(tmp_path / "pages.json", "w", encoding="utf-8") as out:
        for n in range(40):
            out.write(json.dumps({"results": [{"$distinct_id": f"user_{n}_{i}", "$properties": {
                "$name": "Zoë Example", "plan": "pro", "bio": "x" * 300}} for i in range(1000)],
                "page": n, "page_size": 1000, "status": "ok", "total": 40_000}, ensure_ascii=False) + "\n")
    monkeypatch.setenv("TOOLKIT_LOAD_MEMORY", "300MB")
    summary = load(empty_store, tmp_path / "pages.json")
    assert summary.files[0].status == "loaded", summary.files[0].message
    assert rows(empty_store, "SELECT count(*), count(DISTINCT distinct_id), min(line), max(line) FROM profiles "
                       "WHERE properties->>'$.plan' = 'pro'") == [(40_000, 40_000, 1, 40)]


def test_snapshot_replaces_properties_and_last_record_wins(empty_store, tmp_path):
    write_lines(tmp_path / "p1.jsonl", [{"$distinct_id": "u1", "$properties": {"a": 1, "b": 1}}])
    load(empty_store, tmp_path / "p1.jsonl")
    write_lines(tmp_path / "p2.jsonl", [{"$distinct_id": "u1", "$properties": {"a": 2}},
                                        {"$distinct_id": "u1", "$properties": {"a": 3}}])
    load(empty_store, tmp_path / "p2.jsonl")
    assert props(empty_store, "u1") == {"a": 3}


def test_updates_apply_in_order(empty_store, tmp_path):
    write_lines(tmp_path / "updates.jsonl", [
        {"$token": "t", "$distinct_id": "u1", "$set": {"plan": "free", "n": 1}},
        {"$token": "t", "$distinct_id": "u1", "$set_once": {"plan": "pro", "first": "web"}},
        {"$token": "t", "$distinct_id": "u1", "$add": {"n": 4}},
        {"$token": "t", "$distinct_id": "u1", "$union": {"tags": ["a", "b"]}},
        {"$token": "t", "$distinct_id": "u1", "$append": {"tags": "a"}},
        {"$token": "t", "$distinct_id": "u1", "$remove": {"tags": "b"}},
        {"$token": "t", "$distinct_id": "u1", "$unset": ["first"]},
        {"$token": "t", "$distinct_id": "u2", "$set": {"x": 1}},
        {"$token": "t", "$distinct_id": "u2", "$delete": None},
        {"$token": "t", "$distinct_id": "u3", "$delete": ""},
        {"$token": "t", "$distinct_id": "u3", "$set": {"back": True}},
    ])
    summary = load(empty_store, tmp_path)
    assert summary.files[0].kind == "profile_updates"
    assert props(empty_store, "u1") == {"plan": "free", "n": 5, "tags": ["a", "a"]}
    assert props(empty_store, "u2") is None
    assert props(empty_store, "u3") == {"back": True}


def test_updates_reach_the_canonical_profile_unless_ignore_alias(empty_store, tmp_path):
    write_lines(tmp_path / "e.jsonl", [event("$create_alias", "user-1", alias="alias-1")])
    write_lines(tmp_path / "profiles.jsonl", [{"$distinct_id": "user-1", "$properties": {"a": 1}},
                                              {"$distinct_id": "alias-1", "$properties": {"own": 1}}])
    load(empty_store, tmp_path / "e.jsonl")
    write_lines(tmp_path / "updates.jsonl", [{"$distinct_id": "alias-1", "$set": {"b": 2}},
                                             {"$distinct_id": "alias-1", "$delete": None, "$ignore_alias": True}])
    load(empty_store, tmp_path / "updates.jsonl")
    assert props(empty_store, "user-1") == {"b": 2}
    assert props(empty_store, "alias-1") is None


def test_bad_updates_are_quarantined(empty_store, tmp_path):
    write_lines(tmp_path / "updates.jsonl", [
        {"$distinct_id": "u1", "$set": {"a": 1}},
        {"$distinct_id": "u1"},
        {"$distinct_id": "u1", "$set": {"a": 1}, "$add": {"n": 1}},
        {"$distinct_id": "null", "$set": {"a": 1}},
        {"$set": {"a": 1}},
        {"$distinct_id": "u1", "$add": {"n": "one"}},
        "{broken",
    ])
    summary = load(empty_store, tmp_path)
    reasons = rows(empty_store, "SELECT line, reason FROM quarantine ORDER BY line")
    assert [line for line, _ in reasons] == [2, 3, 4, 5, 6, 7]
    for (_, got), want in zip(reasons, ["no operation", "more than one operation", "refused $distinct_id",
                                       "missing $distinct_id", "not a number", "malformed JSON"], strict=True):
        assert want in got
    assert summary.files[0].rows_loaded == 1 and props(empty_store, "u1") == {"a": 1}


def test_bad_profiles_are_quarantined_with_their_page_position(empty_store, tmp_path):
    (tmp_path / "page.json").write_text(json.dumps({"results": [
        {"$distinct_id": "u1", "$properties": {}}, {"$distinct_id": "u2", "$properties": "x"},
        {"$properties": {}}]}))
    load(empty_store, tmp_path)
    assert [r for _, r in rows(empty_store, "SELECT line, reason FROM quarantine ORDER BY reason")] == [
        '"$properties" must be an object, got string (results[1])', "missing $distinct_id (results[2])"]


def test_onesignal_user_id_aliases_to_the_profile(empty_store, tmp_path):
    write_lines(tmp_path / "e.jsonl", [event("$campaign_delivery", "os-ext-1"), event("Page View", "u1")])
    load(empty_store, tmp_path / "e.jsonl")
    write_lines(tmp_path / "updates.jsonl", [{"$distinct_id": "u1", "$set": {"$onesignal_user_id": "os-ext-1"}}])
    load(empty_store, tmp_path / "updates.jsonl")
    assert rows(empty_store, "SELECT event, distinct_id, sent_distinct_id FROM resolved_events ORDER BY event") == [
        ("$campaign_delivery", "u1", "os-ext-1"), ("Page View", "u1", "u1")]


def test_onesignal_id_in_a_profile_snapshot_aliases_too(empty_store, tmp_path):
    write_lines(tmp_path / "profiles.jsonl", [
        {"$distinct_id": "u1", "$properties": {"$onesignal_user_id": "4e1f2c7a-0000-4000-8000-00000000abcd"}},
        {"$distinct_id": "u2", "$properties": {"$onesignal_user_id": "u2"}},          # itself: no link
        {"$distinct_id": "u3", "$properties": {"$onesignal_user_id": 42}}])           # not a string: no link
    load(empty_store, tmp_path)
    assert rows(empty_store, "SELECT * FROM identity_map") == [("4e1f2c7a-0000-4000-8000-00000000abcd", "u1")]
