"""Identity signals found while loading, and what downstream queries see."""

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import NOW, T0, emptied, event, rows, write_lines
from toolkit.loading import derived, identity, readers, run
from toolkit.store import Store

ANON = "2f1b3c4d-1234-4abc-8def-0123456789ab"


def load_events(store, tmp_path, records, name="e.jsonl"):
    run.load(store, [str(write_lines(tmp_path / name, records))], now=NOW)


def canonical(store):
    return dict(rows(store, "SELECT distinct_id, canonical_id FROM identity_map"))


def test_identify_merges_the_anonymous_history(empty_store, tmp_path):
    # Mixpanel's Original ID Merge example: anonymous events, then $identify, then identified events.
    load_events(empty_store, tmp_path, [
        event("Page View", ANON, T0),
        event("$identify", "alice", T0 + 1, **{"$identified_id": "alice", "$anon_id": ANON}),
        event("Purchase", "alice", T0 + 2)])
    assert canonical(empty_store) == {ANON: "alice"}
    assert rows(empty_store, "SELECT DISTINCT distinct_id FROM resolved_events") == [("alice",)]


def test_identify_ignores_a_non_uuid_anon_id(empty_store, tmp_path):
    load_events(empty_store, tmp_path,
                [event("$identify", "bob", **{"$identified_id": "bob", "$anon_id": "not-a-uuid"})])
    assert canonical(empty_store) == {}
    (refused,), = rows(empty_store, "SELECT refused FROM identity_links")
    assert "not-a-uuid" in refused


def test_identity_event_fields_are_read_by_name_not_by_place(tmp_path, monkeypatch, new_store):
    """The reader pulls key and link fields out of `properties` in one list each; reordering those
    fields must change nothing a load stores (they were once read by position in the list)."""
    records = [event("Page View", "anon-dev", T0, **{"$device_id": "dev-1"}),
               event("$identify", "alice", T0 + 1, **{"$identified_id": "alice", "$anon_id": ANON}),
               event("$create_alias", "alice", T0 + 2, alias="alice@example.com"),
               event("$merge", "alice", T0 + 3, **{"$distinct_ids": ["alice", "alice-phone"]}),
               event("Open", "carol", T0 + 4, **{"$device_id": "dev-2", "$user_id": "carol", "$insert_id": "i-1"})]
    path = write_lines(tmp_path / "e.jsonl", records)

    def stored():
        with Store(new_store(tmp_path / "s.duckdb")) as s:
            run.load(s, [str(path)], now=NOW)
            return (rows(s, "SELECT kind, source, target FROM identity_links ORDER BY ALL"),
                    rows(s, "SELECT event, distinct_id, time, insert_id, device_id, user_id FROM events ORDER BY ALL"))

    before = stored()
    assert before[0] == [("alias", "alice@example.com", "alice"), ("identify", ANON, "alice"),
                         ("merge", "alice-phone", "alice"), ("simplified", "$device:dev-2", "carol")]
    monkeypatch.setattr(readers, "LINK_FIELDS", dict(reversed(readers.LINK_FIELDS.items())))
    monkeypatch.setattr(readers, "KEY_FIELDS", dict(reversed(readers.KEY_FIELDS.items())))
    assert stored() == before


def test_alias_chain_and_merge(empty_store, tmp_path):
    load_events(empty_store, tmp_path, [
        event("$create_alias", "bob", T0, alias="bob-alias"),
        event("$create_alias", "bob-alias", T0 + 1, alias="bob-alias-2"),
        event("$merge", "carol", T0 + 2, **{"$distinct_ids": ["carol", "carol-old"]}),
        event("Page View", "bob-alias-2", T0 + 3), event("Page View", "carol-old", T0 + 4)])
    assert canonical(empty_store) == {"bob-alias": "bob", "bob-alias-2": "bob", "carol-old": "carol"}
    assert sorted(rows(empty_store, "SELECT distinct_id FROM resolved_events WHERE event = 'Page View'")) == [
        ("bob",), ("carol",)]


def test_simplified_merge_is_retroactive_and_one_user_per_cluster(empty_store, tmp_path):
    load_events(empty_store, tmp_path, [
        event("Page View", "$device:d1", T0, **{"$device_id": "d1"}),
        event("Sign Up", "dave", T0 + 1, **{"$device_id": "d1", "$user_id": "dave"}),
        event("Sign Up", "eve", T0 + 2, **{"$device_id": "d1", "$user_id": "eve"})])
    assert canonical(empty_store) == {"$device:d1": "dave"}
    assert rows(empty_store, "SELECT count(*) FROM identity_links WHERE refused IS NOT NULL") == [(1,)]
    assert (rows(empty_store, "SELECT distinct_id FROM resolved_events ORDER BY time")
            == [("dave",), ("dave",), ("eve",)])


def test_links_from_a_later_file_resolve_earlier_events(empty_store, tmp_path):
    load_events(empty_store, tmp_path, [event("Page View", ANON, T0)], "1.jsonl")
    load_events(empty_store, tmp_path, [event("$identify", "frank", T0 + 5,
                                        **{"$identified_id": "frank", "$anon_id": ANON})], "2.jsonl")
    assert rows(empty_store, "SELECT DISTINCT distinct_id FROM resolved_events") == [("frank",)]


def test_cluster_cap_is_enforced_through_loading(empty_store, tmp_path):
    aliases = [event("$create_alias", "big", T0 + i, alias=f"a{i}") for i in range(505)]
    load_events(empty_store, tmp_path, aliases)
    assert len(canonical(empty_store)) == 499
    assert rows(empty_store, "SELECT count(*) FROM identity_links WHERE refused LIKE '%500%'") == [(6,)]


def test_ids_with_quotes_slashes_and_unicode(empty_store, tmp_path):
    weird = "o'brien/\"zoë\" 🚀"
    load_events(empty_store, tmp_path, [event("$create_alias", weird, alias="x/y'z"), event("Page View", "x/y'z")])
    assert rows(empty_store, "SELECT distinct_id FROM resolved_events WHERE event = 'Page View'") == [(weird,)]


def test_resolved_profiles_one_row_per_user_the_newest_profile_of_a_merge_wins(empty_store, tmp_path):
    import json
    from datetime import timedelta

    (tmp_path / "p1.json").write_text(json.dumps([
        {"$distinct_id": "u1", "$properties": {"plan": "old"}},
        {"$distinct_id": "dev-9", "$properties": {"plan": "device"}},
        {"$distinct_id": "alone", "$properties": {"plan": "solo"}}]))
    run.load(empty_store, [str(tmp_path / "p1.json")], now=NOW)
    (tmp_path / "p2.json").write_text(json.dumps([{"$distinct_id": "u2", "$properties": {"plan": "new"}}]))
    run.load(empty_store, [str(tmp_path / "p2.json")], now=NOW + timedelta(minutes=1))
    load_events(empty_store, tmp_path, [   # merge u1, dev-9 and u2 into one user (canonical: u2's cluster)
        event("$merge", "u1", T0, **{"$distinct_ids": ["u1", "dev-9"]}),
        event("$merge", "u2", T0 + 1, **{"$distinct_ids": ["u2", "u1"]})])
    got = rows(empty_store, "SELECT distinct_id, properties->>'plan' FROM resolved_profiles ORDER BY 1")
    merged = canonical(empty_store)["u1"]
    assert got == sorted([("alone", "solo"), (merged, "new")])


def test_resolved_profiles_tie_between_merged_profiles_of_one_page_is_settled_by_profile_id(tmp_path, new_store):
    """Both profiles sit on the same Engage page (same file, line and time): the greater distinct_id wins,
    whichever comes first on the page."""
    import json

    got = set()
    for order, name in ((["a-user", "b-user"], "p1.json"), (["b-user", "a-user"], "p2.json")):
        with Store(new_store(tmp_path / f"{name}.duckdb")) as s:
            (tmp_path / name).write_text(json.dumps({"results": [
                {"$distinct_id": d, "$properties": {"who": d}} for d in order]}))
            run.load(s, [str(tmp_path / name)], now=NOW)
            load_events(s, tmp_path, [event("$merge", "a-user", T0, **{"$distinct_ids": ["a-user", "b-user"]})])
            got.update(rows(s, "SELECT properties->>'who' FROM resolved_profiles"))
    assert got == {("b-user",)}


UUIDS = [str(uuid.UUID(int=i, version=4)) for i in range(1, 9)]
ID_POOL = UUIDS + [f"u{i}" for i in range(12)] + [f"$device:d{i}" for i in range(6)] + ["", "a/b", "it's", "🙂",
                                                                                       UUIDS[0].upper()]
stored_link = st.tuples(st.sampled_from(sorted(identity.KINDS)), st.sampled_from(ID_POOL),
                        st.sampled_from(ID_POOL), st.integers(0, 4), st.sampled_from([1, 2]))


@pytest.fixture(scope="module")
def scratch(new_store, tmp_path_factory):
    with Store(new_store(tmp_path_factory.mktemp("scratch") / "s.duckdb")) as store:
        yield store


@pytest.mark.slow
@settings(max_examples=120, deadline=None)
@given(st.lists(stored_link, max_size=40), st.booleans())
def test_refresh_identity_equals_resolving_every_link_in_python(scratch, links, second_file_is_newer):
    """Two files of links. refresh_identity maps star links in SQL and folds the rest in Python; for
    the second file, only the components its links reach (its links may come before or after the
    first file's). The map and refusals must be what resolving every link in one Python pass gives."""
    s = emptied(scratch)        # one store, emptied per example: opening one per example is slow
    for file_id in (1, 2):
        for kind, source, target, time_ms, in_file in links:
            if in_file == file_id:
                time_ms += 10 if file_id == 2 and second_file_is_newer else 0
                s.con.execute("INSERT INTO identity_links (kind, source, target, time_ms, file_id, line) "
                              "VALUES (?, ?, ?, ?, ?, NULL)", [kind, source, target, time_ms, file_id])
        derived.refresh_identity(s.con, file_id)
    stored = s.con.execute("SELECT rowid, kind, source, target, time_ms, file_id FROM identity_links").fetchall()
    expected = identity.resolve([(kind, source, target, (time_ms, file_id, 0, kind, source, target, rowid))
                                 for rowid, kind, source, target, time_ms, file_id in stored])
    mapped = rows(s, "SELECT distinct_id, canonical_id FROM identity_map")
    assert len(mapped) == len(dict(mapped)) and dict(mapped) == expected.canonical
    assert dict(rows(s, "SELECT rowid, refused FROM identity_links WHERE refused IS NOT NULL")) == {
        r.link.order[-1]: r.reason for r in expected.refused}
