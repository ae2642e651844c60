"""Matchability (toolkit/matching.py): exportable, or exactly one reason why not, in a fixed order.

The sample's personas produce every reason; the SQL (matching's only engine) must agree row for row
with the oracle, the same rules in plain Python (tests/matching_oracle.py)."""

import json
from datetime import datetime

import matching_oracle as oracle
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import NOW, SAMPLE
from toolkit import Store, cohorts, matching, onesignal_ids, report
from toolkit.cohort_model import CohortError
from toolkit.loading import derived as user_id_facts
from toolkit.matching import COLUMNS, REASONS, WINNER_RULE
from toolkit.store import profile_facts

GRACE = "$device:0d9b8a7c-6e5f-4a3b-b2c1-d0e9f8a7b6c5"
ERIN_SUB = "5f0d7a2c-1e3b-4c6d-a8e9-0b1c2d3e4f50"
SHARED = "c0ffee00-1234-4abc-8def-0123456789ab"
HEIDI = 'ext/heidi "zoë" ✓'
VIPS = "VIP support list"          # data/sample/cohorts.yaml: a static cohort of every named persona




def by_member(preview) -> dict:
    return {r["distinct_id"]: r for r in preview.to_dict()["members"]}


# -- every reason, from the sample ---------------------------------------------------------------------

def test_every_reason_comes_from_the_sample_personas(sample_store):
    preview = matching.preview(sample_store, VIPS, now=NOW)
    rows = by_member(preview)
    assert len(rows) == 15

    def check(who, exportable, reason, id_type=None, onesignal_id=None):
        row = rows[who]
        assert (row["exportable"], row["reason"], row["id_type"]) == (exportable, reason, id_type), row
        if onesignal_id is not None:
            assert row["onesignal_id"] == onesignal_id

    check("alice@example.com", True, None, "external_id", "alice@example.com")
    check("bob", True, None, "external_id", "ext_bob")
    check("carol", True, None, "external_id", "carol")
    check("dave", True, None, "external_id", "dave")
    check("erin", True, None, "subscription_id", ERIN_SUB)
    check("heidi", True, None, "external_id", HEIDI)            # quotes, slash, unicode: still usable
    check("oscar", True, None, "external_id", "ext_oscar")       # profile from updates only
    check("frank", False, "missing_user_id")
    check(GRACE, False, "anonymous")
    check("peggy", False, "anonymous")                           # her profile was $delete-d
    check("ken", False, "unusable_value")
    check("leo", False, "unusable_value", onesignal_id="   ")
    check("mia", False, "unusable_value")
    check("ivan", True, None, "subscription_id", SHARED)
    check("judy", False, "duplicate", "subscription_id", SHARED)

    assert rows["frank"]["detail"] == "the profile has no $onesignal_user_id property"
    assert rows["ken"]["detail"] == "$onesignal_user_id is a number, not a string"
    assert rows["leo"]["detail"] == "$onesignal_user_id is blank"
    assert rows["mia"]["detail"] == "$onesignal_user_id is 304 characters long; OneSignal ids are at most 128"
    assert rows["judy"]["detail"] == f"subscription_id also on ivan; ivan keeps it ({WINNER_RULE})"
    assert rows["ivan"]["detail"] == f"subscription_id also on judy; this profile keeps it ({WINNER_RULE})"
    assert rows["alice@example.com"]["detail"] == ""

    s = preview.summary
    assert (s["cohort"], s["version"], s["members"], s["exportable"]) == (VIPS, 1, 15, 8)
    assert s["reasons"] == {"anonymous": 2, "missing_user_id": 1, "unusable_value": 3, "duplicate": 1,
                            "over_limit": 0}
    assert s["id_types"] == {"external_id": 6, "subscription_id": 2}
    assert s["match_rate"] == round(8 / 15, 4)
    assert list(preview.members.columns) == COLUMNS
    assert list(preview.exportable["distinct_id"]) == ["alice@example.com", "bob", "carol", "dave", "erin",
                                                       "heidi", "ivan", "oscar"]


def test_over_limit_keeps_the_first_exportable_members_by_distinct_id(sample_store):
    rows = by_member(matching.preview(sample_store, VIPS, now=NOW, limit=3))
    exported = sorted(d for d, r in rows.items() if r["exportable"])
    assert exported == ["alice@example.com", "bob", "carol"]
    over = sorted(d for d, r in rows.items() if r["reason"] == "over_limit")
    assert over == ["dave", "erin", "heidi", "ivan", "oscar"]
    assert rows["judy"]["reason"] == "duplicate" and rows["frank"]["reason"] == "missing_user_id"
    assert "at most 3 users" in rows["dave"]["detail"]


def test_subscription_ids_must_be_uuids(sample_store):
    rows = by_member(matching.preview(sample_store, VIPS, now=NOW, id_type="subscription_id"))
    assert rows["erin"]["exportable"] and rows["erin"]["id_type"] == "subscription_id"
    assert rows["ivan"]["exportable"] and rows["judy"]["reason"] == "duplicate"
    for who in ("alice@example.com", "bob", "heidi", "oscar"):
        assert rows[who]["reason"] == "unusable_value"
        assert "not a UUID" in rows[who]["detail"]


def test_external_ids_take_uuids_as_they_are(sample_store):
    rows = by_member(matching.preview(sample_store, VIPS, now=NOW, id_type="external_id"))
    assert (rows["erin"]["exportable"], rows["erin"]["id_type"]) == (True, "external_id")
    assert rows["judy"]["detail"].startswith("external_id also on ivan; ivan keeps it")


def test_the_user_id_property_is_configurable(sample_store):
    rows = by_member(matching.preview(sample_store, VIPS, now=NOW, user_id_property="$email"))
    assert rows["frank"]["exportable"] and rows["frank"]["onesignal_id"] == "frank@example.com"
    assert rows["ken"]["exportable"]
    assert rows[GRACE]["reason"] == "anonymous"


def test_the_oracle_and_the_sql_agree_on_the_sample(sample_store):
    for name in [c["name"] for c in cohorts.list_cohorts(sample_store)]:
        members = cohorts.evaluate(sample_store, name, now=NOW)
        fetched = oracle.fetch_profiles(sample_store, list(members), matching.DEFAULT_USER_ID_PROPERTY)
        for id_type in matching.ID_TYPES:
            for limit in (matching.COHORT_LIMIT, 5):
                expected, summary = oracle.match(sample_store, members, id_type=id_type, limit=limit, fetched=fetched)
                b = matching.match(sample_store, members, id_type=id_type, limit=limit)
                pd.testing.assert_frame_equal(expected, b.members)
                assert summary == b.summary


def test_preview_renders_text_and_json(sample_store):
    preview = matching.preview(sample_store, VIPS, now=NOW)
    text = report.preview_text(preview)
    assert text.startswith(f"cohort {VIPS} (v1) as of 2026-11-01T00:00:00Z")
    assert "15 members, 8 exportable (53.3%)" in text and "duplicate: 1" in text
    assert f'"{SHARED}"' in text and "ivan keeps it" in text
    assert "over_limit" not in text                       # reasons with no members are left out
    json.dumps(preview.to_dict())                         # JSON-ready, for `cohorts preview --json`
    assert report.preview_text(preview, rows=5).endswith("... 10 more not shown")
    hinted = report.preview_text(preview, rows=5, more="--rows N shows more")
    assert hinted.endswith("... 10 more not shown (--rows N shows more)") and "Preview." not in hinted
    for rows in (0, -1):          # the summary alone (before: max() of no rows failed)
        assert report.preview_text(preview, rows=rows).endswith("duplicate: 1\n\n  ... 15 more not shown")


def test_the_reasons_are_those_of_onesignal_ids_in_its_order(sample_store):
    """One table of reasons: the SQL checks a condition per code of onesignal_ids.REASONS, in its order
    (over_limit after the query), and a summary counts exactly those codes."""
    assert [*matching.REASON_SQL, matching.OVER_LIMIT] == list(onesignal_ids.REASONS)
    sql = matching.classify_sql(matching._list_query(["bob"])).sql
    whens = [sql.index(f"THEN '{code}'") for code in matching.REASON_SQL]
    assert whens == sorted(whens)
    assert list(matching.preview(sample_store, VIPS, now=NOW).summary["reasons"]) == list(onesignal_ids.REASONS)


def test_the_export_gets_the_exportable_members_in_arrow(sample_store):
    preview = matching.preview(sample_store, VIPS, now=NOW, limit=6)
    table = preview.exportable_table
    assert table.column_names == ["distinct_id", "onesignal_id", "id_type"]
    assert table.to_pylist() == preview.exportable.to_dict(orient="records")
    assert table.num_rows == preview.summary["exportable"] == 6


def test_matching_needs_no_pandas_until_a_dataframe_is_asked_for(sample_store_file):
    """A preview, its summary, its text, its JSON and what the export sends come from Arrow: a fresh
    interpreter does all of it without importing pandas."""
    import subprocess
    import sys

    code = f"""
import sys
from datetime import datetime, UTC
from toolkit import Store, matching, report
with Store({str(sample_store_file)!r}, read_only=True) as store:
    p = matching.preview(store, {VIPS!r}, now=datetime(2026, 11, 1, tzinfo=UTC))
    m = matching.match(store, ["bob", "ivan", "judy", "nobody"])
    print(p.summary["exportable"], p.exportable_table.num_rows, len(p.to_dict()["members"]),
          len(report.preview_text(p).splitlines()), m.summary["members"], "pandas" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["8", "8", "15", "23", "4", "False"]


def test_no_members_match_to_an_empty_table(sample_store):
    result = matching.match(sample_store, [])
    assert result.summary["members"] == 0 and result.summary["match_rate"] == 0.0
    assert list(result.members.columns) == COLUMNS and result.members.empty


def test_preview_of_an_unknown_cohort_names_the_known_ones(sample_store):
    with pytest.raises(CohortError, match=r'no cohort "Nope" in the store; known: .*Pro plan in the US'):
        matching.preview(sample_store, "Nope", now=NOW)


def test_bad_options_are_refused(sample_store):
    with pytest.raises(matching.MatchingError, match="id_type: expected one of auto, external_id"):
        matching.preview(sample_store, VIPS, now=NOW, id_type="player")
    with pytest.raises(matching.MatchingError, match="limit"):
        matching.match(sample_store, ["bob"], limit=-1)


# -- the rules, case by case: the oracle's answer, which the SQL must give too -----------------------------

def row(did, props, updated=None):
    return oracle.ProfileRow(did, props, updated)


def fill(store, profiles, aliases=None):
    """Replace the store's profiles and identity map with ``profiles`` (a profile without properties is
    no profile) and ``aliases`` (id -> canonical id)."""
    store.con.execute("DELETE FROM profiles")
    store.con.execute("DELETE FROM identity_map")
    for line, p in enumerate(profiles):
        if p.properties is not None:
            store.con.execute(f"INSERT INTO profiles SELECT ?, ?::JSON, ?, 1, ?, {profile_facts('$2::JSON')}",
                              [p.distinct_id, json.dumps(p.properties), p.updated_at or datetime.min, line])
    for value, owner in (aliases or {}).items():
        store.con.execute("INSERT INTO identity_map VALUES (?, ?)", [value, owner])


def classify_both(members, profiles, *, aliases=None, **options):
    """The oracle's table for these rows, after checking that the SQL gives the same from a store of them."""
    expected = oracle.classify(members, profiles, aliases=aliases, **options)
    with Store(":memory:") as store:
        fill(store, profiles, aliases)
        pd.testing.assert_frame_equal(matching.match(store, members, **options).members, expected)
    return expected


def na(value):
    return None if pd.isna(value) else value


def reasons(frame) -> dict:
    return {r.distinct_id: (na(r.reason), na(r.id_type)) for r in frame.itertuples()}


P = "$onesignal_user_id"


def test_each_value_problem():
    profiles = [
        row("null", {P: None, "x": 1}), row("bool", {P: True}), row("list", {P: ["a"]}), row("obj", {P: {}}),
        row("tab", {P: "\t\n "}), row("padded", {P: " a "}), row("at128", {P: "é" * 128}), row("at129", {P: "x" * 129}),
        row("empty", {}), row("nothing", None), row("uuid-upper", {P: ERIN_SUB.upper()}),
    ]
    frame = classify_both([p.distinct_id for p in profiles] + ["no-profile"], profiles)
    got = reasons(frame)
    assert got["null"] == ("missing_user_id", None)
    assert got["bool"] == got["list"] == got["obj"] == got["tab"] == got["at129"] == ("unusable_value", None)
    assert got["padded"] == (None, "external_id")                     # used as stored: not blank
    assert got["at128"] == (None, "external_id")                      # characters, not bytes
    assert got["uuid-upper"] == (None, "subscription_id")
    assert got["empty"] == got["nothing"] == got["no-profile"] == ("anonymous", None)
    details = dict(zip(frame["distinct_id"], frame["detail"], strict=True))
    assert details["null"] == f"{P} is null"
    assert details["bool"] == f"{P} is a boolean, not a string"
    assert details["list"] == f"{P} is a list, not a string"


def test_duplicate_winner_rules():
    t = datetime(2026, 10, 1)
    later = datetime(2026, 10, 2)
    profiles = [row("a", {P: "X"}, t), row("b", {P: "X"}, later), row("c", {P: "X"}, t),     # newest: b
                row("d", {P: "Y"}, t), row("e", {P: "Y"}, t),                               # tie: first name
                row("f", {P: "Z"}, later), row("g", {P: "Z"}, t)]                           # g owns Z
    frame = classify_both("abcdefg", profiles, aliases={"Z": "g"})
    assert reasons(frame) == {"a": ("duplicate", "external_id"), "b": (None, "external_id"),
                              "c": ("duplicate", "external_id"), "d": (None, "external_id"),
                              "e": ("duplicate", "external_id"), "f": ("duplicate", "external_id"),
                              "g": (None, "external_id")}
    detail = dict(zip(frame["distinct_id"], frame["detail"], strict=True))
    assert detail["a"].startswith("external_id also on b, c; b keeps it")
    # an id equal to a profile's own distinct_id belongs to that profile
    frame = classify_both(["h", "k"], [row("h", {P: "k"}, later), row("k", {P: "k"}, t)])
    assert reasons(frame) == {"h": ("duplicate", "external_id"), "k": (None, "external_id")}


def test_duplicates_are_decided_over_all_profiles_not_only_members():
    profiles = [row(f"u{i}", {P: "same"}) for i in range(6)]
    frame = classify_both(["u3"], profiles)
    assert reasons(frame) == {"u3": ("duplicate", "external_id")}
    assert frame["detail"][0].startswith("external_id also on u0, u1, u2 and 2 more; u0 keeps it")


def test_a_subscription_id_and_an_external_id_with_the_same_text_do_not_clash():
    frame = classify_both(["a", "b"], [row("a", {P: ERIN_SUB}), row("b", {P: ERIN_SUB})], id_type="auto")
    assert reasons(frame)["b"] == ("duplicate", "subscription_id")


def test_each_load_stores_the_facts_and_they_agree_with_computing_them(new_store, tmp_path):
    """The facts a load stores (user_id_facts.refresh) give the table computing them would, for
    each id type; a load that changes ids refreshes them; another property or a stale stamp computes."""
    from toolkit import load
    from toolkit.cohort_sql import Query

    everyone = Query("SELECT distinct_id FROM resolved_profiles UNION SELECT 'nobody'", {})

    def both(store, id_type):
        stored = matching.match(store, everyone, id_type=id_type).members
        sql, params = matching.classify_sql(everyone, id_type=id_type)          # facts computed inline
        computed = matching._frame(store.con.sql(sql, params=params).to_arrow_table()
                                   .select(COLUMNS).sort_by("distinct_id"))
        pd.testing.assert_frame_equal(stored, computed)
        return stored

    with Store(new_store(tmp_path / "s.duckdb")) as store:
        load(store, [SAMPLE / "events.jsonl", SAMPLE / "profiles.json"], now=NOW)
        assert user_id_facts.stored_facts(store.con, matching.DEFAULT_USER_ID_PROPERTY) == user_id_facts.FACTS_TABLE
        before = {id_type: both(store, id_type) for id_type in matching.ID_TYPES}
        assert set(before["auto"]["reason"].dropna()) >= {"anonymous", "missing_user_id", "unusable_value", "duplicate"}
        load(store, [SAMPLE / "profile_updates.jsonl"], now=NOW)
        assert user_id_facts.stored_facts(store.con, matching.DEFAULT_USER_ID_PROPERTY) == user_id_facts.FACTS_TABLE
        after = both(store, "auto")
        assert not after.equals(before["auto"])       # the updates set and change user ids
        assert user_id_facts.stored_facts(store.con, "$email") is None
        store.con.execute(f"COMMENT ON TABLE {user_id_facts.FACTS_TABLE} IS 'generation 0'")
        assert user_id_facts.stored_facts(store.con, matching.DEFAULT_USER_ID_PROPERTY) is None
        pd.testing.assert_frame_equal(matching.match(store, everyone).members, after)


def test_a_load_without_profiles_or_identity_links_only_moves_the_facts_stamp(new_store, tmp_path, monkeypatch):
    from toolkit import load

    built = []
    facts_sql = user_id_facts.facts_sql
    monkeypatch.setattr(user_id_facts, "facts_sql", lambda *a: built.append(a) or facts_sql(*a))
    plain = {"event": "Page View", "properties": {"distinct_id": "bob", "time": int(NOW.timestamp()) - 60}}
    merge = {"event": "$merge", "properties": {"distinct_id": "bob", "time": int(NOW.timestamp()) - 30,
                                               "$distinct_ids": ["bob", "bob-phone"]}}
    with Store(new_store(tmp_path / "s.duckdb")) as store:
        load(store, [SAMPLE / "events.jsonl", SAMPLE / "profiles.json"], now=NOW)
        assert len(built) == 2
        for name, record, rebuilt in (("plain.jsonl", plain, 0), ("merge.jsonl", merge, 1)):
            (tmp_path / name).write_text(json.dumps(record) + "\n")
            built.clear()
            assert load(store, [tmp_path / name], now=NOW).files[0].status == "loaded"
            assert len(built) == rebuilt, name
            assert user_id_facts.stored_facts(store.con, matching.DEFAULT_USER_ID_PROPERTY) == user_id_facts.FACTS_TABLE


# -- the oracle and the SQL agree on anything ---------------------------------------------------------

VALUES = st.one_of(
    st.sampled_from(["ext_1", "ext_2", ERIN_SUB, SHARED, "", "   ", "x" * 129, "é" * 128, " a", "a'b\"c"]),
    st.integers(), st.booleans(), st.none(), st.lists(st.text(max_size=2), max_size=2),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6),
)
PROFILE = st.one_of(st.just(None), st.just({}), st.fixed_dictionaries({}, optional={P: VALUES, "other": VALUES}))


@pytest.fixture(scope="module")
def scratch(new_store, tmp_path_factory):
    with Store(new_store(tmp_path_factory.mktemp("scratch") / "s.duckdb")) as store:
        yield store


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(profiles=st.lists(PROFILE, min_size=1, max_size=8),
       updated=st.lists(st.integers(0, 2), min_size=8, max_size=8),
       picked=st.lists(st.booleans(), min_size=9, max_size=9),
       owner=st.integers(0, 8), id_type=st.sampled_from(matching.ID_TYPES), limit=st.integers(0, 4))
def test_the_oracle_and_the_sql_classify_the_same(scratch, profiles, updated, picked, owner, id_type, limit):
    store = scratch                 # one store, emptied per example: creating one per example is slow
    rows_ = [oracle.ProfileRow(f"u{i}", props, datetime(2026, 10, 1 + updated[i]))
             for i, props in enumerate(profiles) if props is not None]
    # the first profile's id, if a string, is aliased to another user: the identity owner rule
    first = next((p.get(P) for p in profiles if p), None)
    aliases = {first: f"u{owner}"} if isinstance(first, str) and first else {}
    fill(store, rows_, aliases)
    members = [f"u{i}" for i in range(9) if picked[i]]
    options = {"id_type": id_type, "limit": limit}
    expected = oracle.classify(members, rows_, aliases=aliases, **options)
    fetched, summary = oracle.match(store, members, **options)        # the oracle over the store's rows
    sql = matching.match(store, members, **options)
    pd.testing.assert_frame_equal(fetched, expected)
    pd.testing.assert_frame_equal(sql.members, expected)
    assert sql.summary == summary
    assert sum(sql.summary["reasons"].values()) + sql.summary["exportable"] == len(members)
    assert set(sql.members["reason"].dropna()) <= set(REASONS)
