"""Cohort definitions, compilation and evaluation (toolkit/cohorts.py, cohort_model.py, cohort_sql.py).

Every condition is checked against hand-computed answers on small fixtures that are written as real
export files and loaded with toolkit.loading, so identity resolution and dedup apply as in production."""

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import NOW, SAMPLE, event, write_lines
from toolkit import Store, cohorts, load
from toolkit.cohort_model import (
    Cohort,
    CohortCycleError,
    CohortError,
    CohortRule,
    DefinitionError,
    EventRule,
    Group,
    PropertyRule,
    parse,
    to_dict,
)
from toolkit.cohort_sql import compile_cohort, json_pointer

DAY = 86_400
NOW_S = int(NOW.timestamp())


def ago(days: float) -> int:
    """Epoch seconds ``days`` before NOW."""
    return int(NOW_S - days * DAY)


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def build(store, tmp_path, events=(), profiles=None, updates=None):
    folder = tmp_path / "export"
    folder.mkdir(exist_ok=True)
    if events:
        write_lines(folder / "events.jsonl", events)
    if profiles:
        results = [{"$distinct_id": d, "$properties": p} for d, p in profiles.items()]
        (folder / "profiles.json").write_text(json.dumps({"results": results, "status": "ok"}), encoding="utf-8")
    if updates:
        write_lines(folder / "updates.jsonl", updates)
    load(store, [folder], now=NOW)
    return store


def members(store, rules, match="all", definitions=None, now=NOW):
    cohort = {"name": "t", "rules": rules} | ({"match": match} if match != "all" else {})
    return cohorts.evaluate(store, cohort, now=now, definitions=definitions)


# -- behaviour: counts ----------------------------------------------------------------------------

def fill_buyers(store, tmp_path):
    # a: 3 purchases, b: 1, c: none (but known through a Login), d: a profile only.
    return build(store, tmp_path, [
        event("Purchase", "a", ago(1), "a1"), event("Purchase", "a", ago(2), "a2"),
        event("Purchase", "a", ago(3), "a3"), event("Purchase", "b", ago(4), "b1"),
        event("Login", "c", ago(1), "c1"),
    ], profiles={"d": {"plan": "free"}})


@pytest.fixture
def buyers(built_once):
    """The buyers, read only (shared by the module's tests)."""
    return built_once(fill_buyers)


@pytest.fixture
def own_buyers(empty_store, tmp_path):
    """The buyers in a store of the test's own, to write in."""
    return fill_buyers(empty_store, tmp_path)


@pytest.mark.parametrize("operator, count, did, expected", [
    ("at_least", 2, True, ["a"]),
    ("at_most", 1, True, ["b", "c", "d"]),
    ("more_than", 1, True, ["a"]),
    ("less_than", 3, True, ["b", "c", "d"]),
    ("exactly", 1, True, ["b"]),
    ("exactly", 0, True, ["c", "d"]),
    ("at_least", 1, False, ["c", "d"]),     # did not: drawn from every known user
    ("more_than", 2, False, ["b", "c", "d"]),
    ("exactly", 3, True, ["a"]),
])
def test_event_count_operators(buyers, operator, count, did, expected):
    rule = {"event": "Purchase", "operator": operator, "count": count, "did": did}
    assert members(buyers, [rule]) == expected


def test_default_rule_is_did_at_least_once(buyers):
    assert members(buyers, [{"event": "Purchase"}]) == ["a", "b"]


# -- behaviour: windows ---------------------------------------------------------------------------

@pytest.fixture
def timeline(built_once):
    return built_once(fill_timeline)


def fill_timeline(store, tmp_path):
    return build(store, tmp_path, [
        event("Visit", "edge", NOW_S - 7 * DAY, "e1"),            # exactly 7 days before now: inside
        event("Visit", "old", NOW_S - 7 * DAY - 1, "o1"),         # one second earlier: outside
        event("Visit", "future", NOW_S + 60, "f1"),               # after now: ignored everywhere
        event("Visit", "sep30", at("2026-09-30T23:59:59"), "s1"),
        event("Visit", "oct1", at("2026-10-01T00:00:00"), "s2"),
        event("Sign Up", "veteran", ago(40), "v1"), event("Sign Up", "veteran", ago(5), "v2"),
        event("Sign Up", "newbie", ago(5), "n1"),
        event("Sign Up", "early", ago(12), "y1"),
    ])


def test_last_days_is_rolling_and_includes_its_start(timeline):
    assert members(timeline, [{"event": "Visit", "last_days": 7}]) == ["edge"]


def test_between_covers_whole_utc_days(timeline):
    assert members(timeline, [{"event": "Visit", "between": ["2026-09-01", "2026-09-30"]}]) == ["sep30"]
    assert members(timeline, [{"event": "Visit", "between": ["2026-10-01", "2026-10-01"]}]) == ["oct1"]


def test_events_after_now_do_not_count(timeline):
    assert "future" not in members(timeline, [{"event": "Visit"}])
    later = NOW + timedelta(days=1)
    assert "future" in members(timeline, [{"event": "Visit"}], now=later)


def test_first_time_in_the_last_days(timeline):
    assert members(timeline, [{"event": "Sign Up", "first_time_last_days": 7}]) == ["newbie"]
    assert members(timeline, [{"event": "Sign Up", "first_time_last_days": 14}]) == ["early", "newbie"]
    # did not sign up for the first time lately: everyone else known, veteran included
    got = members(timeline, [{"event": "Sign Up", "did": False, "first_time_last_days": 7}])
    assert "veteran" in got and "newbie" not in got


def test_a_past_now_reproduces_a_past_answer(timeline):
    then = NOW - timedelta(days=30)
    assert members(timeline, [{"event": "Sign Up", "first_time_last_days": 7}], now=then) == []
    assert members(timeline, [{"event": "Sign Up"}], now=then) == ["veteran"]


# -- behaviour: event property filters -------------------------------------------------------------

def test_event_property_filters(empty_store, tmp_path):
    build(empty_store, tmp_path, [
        event("Purchase", "a", ago(1), "a1", amount=30, currency="EUR", tags=["gift"]),
        event("Purchase", "a", ago(2), "a2", amount=5, currency="EUR"),
        event("Purchase", "b", ago(1), "b1", amount="25.5", currency="USD"),     # a numeric string counts
        event("Purchase", "c", ago(1), "c1", amount=100),                         # no currency
    ])
    big = {"event": "Purchase", "where": [{"property": "amount", "operator": "greater", "value": 20}]}
    assert members(empty_store, [big]) == ["a", "b", "c"]
    assert members(empty_store, [{**big, "count": 2}]) == []
    euro = {"event": "Purchase", "operator": "at_least", "count": 2,
            "where": [{"property": "currency", "operator": "equals", "value": "EUR"}]}
    assert members(empty_store, [euro]) == ["a"]
    not_usd = {"event": "Purchase", "where": [{"property": "currency", "operator": "not_equals", "value": "USD"}]}
    assert members(empty_store, [not_usd]) == ["a", "c"]          # not_equals includes a missing property
    gift = {"event": "Purchase", "where": [{"property": "tags", "operator": "contains", "value": "gift"}]}
    assert members(empty_store, [gift]) == ["a"]
    both = {"event": "Purchase", "where": [{"property": "amount", "operator": "greater", "value": 20},
                                           {"property": "currency", "operator": "is_set"}]}
    assert members(empty_store, [both]) == ["a", "b"]


# -- profile properties ----------------------------------------------------------------------------

PROFILES = {
    "p1": {"plan": "pro", "age": 30, "beta": True, "created": "2026-09-15T10:00:00", "tags": ["a", "b"],
           "email": "x@corp.com", "score": "42", "ratio": 0.5},
    "p2": {"plan": "free", "age": 17.5, "beta": False, "created": "2026-10-20", "tags": [],
           "email": "y@example.com", "ratio": 1},
    "p3": {"plan": None, "tags": "a", "age": "unknown", "beta": "true"},
}


def fill_people(store, tmp_path):
    return build(store, tmp_path, [event("Visit", "visitor", ago(1), "x1")], profiles=PROFILES)


@pytest.fixture
def people(built_once):
    return built_once(fill_people)


@pytest.mark.parametrize("prop, operator, value, expected", [
    ("plan", "equals", "pro", ["p1"]),
    ("plan", "equals", ["pro", "free"], ["p1", "p2"]),                  # a list: any of
    ("plan", "not_equals", "pro", ["visitor", "p2", "p3"]),                 # includes not set
    ("email", "contains", "@example", ["p2"]),                           # substring
    ("tags", "contains", "a", ["p1", "p3"]),                             # membership on p1, substring on p3
    ("tags", "not_contains", "a", ["visitor", "p2"]),
    ("tags", "equals", "b", ["p1"]),                                     # equals on a list: an element
    ("age", "greater", 18, ["p1"]),
    ("age", "less", 18, ["p2"]),
    ("age", "between", [17.5, 30], ["p1", "p2"]),                       # inclusive
    ("score", "greater", 40, ["p1"]),                                    # a numeric string is a number
    ("ratio", "equals", 1, ["p2"]),
    ("beta", "equals", True, ["p1", "p3"]),                              # JSON true or the string "true"
    ("beta", "equals", False, ["p2"]),
    ("beta", "not_equals", True, ["visitor", "p2"]),
    ("plan", "is_set", None, ["p1", "p2"]),                              # JSON null is not set
    ("plan", "is_not_set", None, ["visitor", "p3"]),
    ("nothing", "is_not_set", None, ["visitor", "p1", "p2", "p3"]),
])
def test_profile_property_operators(people, prop, operator, value, expected):
    rule = {"property": prop, "operator": operator}
    if value is not None:
        rule["value"] = value
    assert members(people, [rule]) == sorted(expected)


@pytest.mark.parametrize("operator, value, expected", [
    ("greater", "2026-10-01", ["p2"]),
    ("less", "2026-10-01", ["p1"]),
    ("equals", "2026-09-15", ["p1"]),                       # a date is the whole day
    ("between", ["2026-09-15", "2026-09-15"], ["p1"]),
    ("between", ["2026-09-15T10:00:01", "2026-12-31"], ["p2"]),
    ("greater", "2026-09-15T09:59:59", ["p1", "p2"]),
    ("less", "2026-09-15T10:00:00", []),
])
def test_profile_dates(people, operator, value, expected):
    rule = {"property": "created", "operator": operator, "value": value, "type": "datetime"}
    assert members(people, [rule]) == expected


def test_yaml_dates_are_datetimes_without_a_type():
    rule = parse({"name": "x", "rules": [{"property": "created", "operator": "less",
                                          "value": datetime(2026, 1, 1).date()}]}).rules[0]
    assert rule.type == "datetime"


# -- groups and other cohorts ----------------------------------------------------------------------

def test_nested_and_or_groups(buyers):
    rules = [{"match": "any", "rules": [
        {"event": "Purchase", "count": 3},
        {"match": "all", "rules": [{"event": "Login"}, {"event": "Purchase", "did": False}]},
    ]}]
    assert members(buyers, rules) == ["a", "c"]
    assert members(buyers, [{"event": "Purchase", "count": 3}, {"event": "Login"}], match="any") == ["a", "c"]


def test_include_and_exclude_other_cohorts(buyers):
    defs = [Cohort("buyers", rules=(EventRule("Purchase"),)),
            Cohort("big", rules=(EventRule("Purchase", count=2),))]
    assert members(buyers, [{"in_cohort": "buyers"}, {"not_in_cohort": "big"}], definitions=defs) == ["b"]
    assert members(buyers, [{"not_in_cohort": "buyers"}], definitions=defs) == ["c", "d"]


def test_referenced_cohorts_come_from_the_store(own_buyers):
    cohorts.save(own_buyers, Cohort("buyers", rules=(EventRule("Purchase"),)))
    assert members(own_buyers, [{"not_in_cohort": "buyers"}]) == ["c", "d"]


def test_unknown_referenced_cohort_names_the_field(buyers):
    with pytest.raises(CohortError, match=r'cohort "t": rules\[1\]\.in_cohort: no cohort named "ghost"'):
        members(buyers, [{"event": "Purchase"}, {"in_cohort": "ghost"}])


def test_cycles_are_refused_with_the_cycle_named(own_buyers, tmp_path):
    a = Cohort("A", rules=(CohortRule("B"),))
    b = Cohort("B", rules=(EventRule("Purchase"), Group((CohortRule("C", include=False),), "any")))
    c = Cohort("C", rules=(CohortRule("A"),))
    with pytest.raises(CohortCycleError, match='cohort cycle: "A" -> "B" -> "C" -> "A"') as err:
        cohorts.evaluate(own_buyers, "A", now=NOW, definitions=[a, b, c])
    assert err.value.cycle == ["A", "B", "C", "A"]
    with pytest.raises(CohortCycleError, match='"A" -> "B" -> "C" -> "A"'):
        cohorts.save_all(own_buyers, [a, b, c])
    assert cohorts.list_cohorts(own_buyers) == []               # nothing half-saved
    with pytest.raises(CohortCycleError, match='"self" -> "self"'):
        cohorts.save(own_buyers, Cohort("self", rules=(CohortRule("self"),)))
    # a cycle closed against the stored cohorts is refused too
    cohorts.save_all(own_buyers, [a, Cohort("B", rules=(EventRule("Purchase"),))])
    with pytest.raises(CohortCycleError, match='"A" -> "B" -> "A"'):
        cohorts.save(own_buyers, Cohort("B", rules=(CohortRule("A"),)))
    path = tmp_path / "loop.yaml"
    path.write_text("cohorts:\n  - {name: X, rules: [{in_cohort: Y}]}\n  - {name: Y, rules: [{not_in_cohort: X}]}\n")
    with pytest.raises(CohortCycleError, match=r'loop\.yaml: cohort cycle: "X" -> "Y" -> "X"'):
        cohorts.load_definitions(path)


def test_save_all_is_all_or_nothing_and_takes_the_store_not_its_connection(own_buyers, monkeypatch):
    defs = [Cohort("one", rules=(EventRule("Purchase"),)), Cohort("two", rules=(EventRule("Login"),))]
    canonical, calls = cohorts._canonical, []

    def fail_on_the_second(data):     # after the first cohort's row is written, in the same transaction
        calls.append(data)
        if len(calls) == 2:
            raise OSError("disk full")
        return canonical(data)

    monkeypatch.setattr(cohorts, "_canonical", fail_on_the_second)
    with pytest.raises(OSError, match="disk full"):
        cohorts.save_all(own_buyers, defs)
    monkeypatch.undo()
    assert cohorts.list_cohorts(own_buyers) == []               # the first one's row was rolled back
    # a bare connection has no transaction of the Store's: refused, rather than saved piecemeal
    with pytest.raises(TypeError, match="expected a toolkit Store, got DuckDBPyConnection"):
        cohorts.save_all(own_buyers.con, defs)
    assert cohorts.list_cohorts(own_buyers) == []
    assert cohorts.save_all(own_buyers, defs) == {"one": 1, "two": 1}


# -- identity ----------------------------------------------------------------------------------------

ANON = "3f2b8c1e-9d4a-4e6b-a1c2-7f8e9d0a1b2c"


def test_identity_merges_change_membership_like_mixpanel(empty_store, tmp_path):
    build(empty_store, tmp_path, [
        # before $identify, an anonymous browser views two pages and buys
        event("Page View", ANON, ago(10), "v1"), event("Page View", ANON, ago(9), "v2"),
        event("Purchase", ANON, ago(9), "p1"),
        event("$identify", "u@example.com", ago(8), "i1",
              **{"$identified_id": "u@example.com", "$anon_id": ANON}),
        event("Page View", "u@example.com", ago(1), "v3"),
        # an alias: events sent under it belong to the aliased user
        event("$create_alias", "kim", ago(5), "al", alias="kim-old"),
        event("Purchase", "kim-old", ago(2), "p2"),
        # a non-UUID anon id is never merged, so it stays its own user
        event("Page View", "not-a-uuid", ago(10), "v4"),
        event("$identify", "sam", ago(8), "i2", **{"$identified_id": "sam", "$anon_id": "not-a-uuid"}),
    ])
    assert members(empty_store, [{"event": "Purchase"}]) == ["kim", "u@example.com"]
    assert members(empty_store, [{"event": "Page View", "count": 3}]) == ["u@example.com"]
    everyone = members(empty_store, [{"event": "Purchase", "did": False}])
    assert ANON not in everyone and "kim-old" not in everyone
    assert "not-a-uuid" in everyone and "sam" in everyone


def test_profile_conditions_read_the_canonical_profile(empty_store, tmp_path):
    build(empty_store, tmp_path, [event("$create_alias", "kim", ago(5), "al", alias="kim-old")],
          updates=[{"$token": "t", "$distinct_id": "kim-old", "$set": {"plan": "pro"}}])
    assert members(empty_store, [{"property": "plan", "operator": "equals", "value": "pro"}]) == ["kim"]


# -- static cohorts ----------------------------------------------------------------------------------

def test_static_cohort_from_csv_resolves_ids(empty_store, tmp_path):
    build(empty_store, tmp_path, [
        event("Page View", ANON, ago(10), "v1"),
        event("$identify", "u@example.com", ago(8), "i1", **{"$identified_id": "u@example.com", "$anon_id": ANON}),
        event("$create_alias", "kim", ago(5), "al", alias="kim-old"),
    ])
    (tmp_path / "panel.csv").write_text(f"\ufeff$distinct_id,$email\n{ANON},u@example.com\n\nkim-old,k@x\n"
                                        "stranger,s@x\nkim,k@x\n", encoding="utf-8")
    (tmp_path / "defs.json").write_text(json.dumps({"cohorts": [
        {"name": "panel", "static_csv": "panel.csv"},
        {"name": "panel who visited", "rules": [{"in_cohort": "panel"}, {"event": "Page View"}]},
    ]}))
    defs = cohorts.load_definitions(tmp_path / "defs.json")
    assert defs[0].static_ids == (ANON, "kim", "kim-old", "stranger")
    cohorts.save_all(empty_store, defs)
    # canonical ids, de-duplicated; an id the store never saw is still a member of the static cohort
    assert cohorts.evaluate(empty_store, "panel", now=NOW) == ["kim", "stranger", "u@example.com"]
    assert cohorts.evaluate(empty_store, "panel who visited", now=NOW) == ["u@example.com"]


def test_static_csv_without_header_and_its_errors(tmp_path):
    (tmp_path / "ids.csv").write_text("a\nb,extra\n\n c \n")
    assert cohorts.read_ids_csv(tmp_path / "ids.csv") == ["a", "b", "c"]
    (tmp_path / "bad.csv").write_text("distinct_id,name\nx,1\n,2\n")
    with pytest.raises(CohortError, match=r"bad\.csv: line 3: empty distinct_id"):
        cohorts.read_ids_csv(tmp_path / "bad.csv")
    (tmp_path / "empty.csv").write_text("\n\n")
    with pytest.raises(CohortError, match="no distinct_ids"):
        cohorts.read_ids_csv(tmp_path / "empty.csv")
    (tmp_path / "defs.yaml").write_text("cohorts:\n  - {name: s, static_csv: missing.csv}\n")
    with pytest.raises(CohortError, match=r'defs\.yaml: cohort "s": static_csv: .*missing\.csv: cannot read'):
        cohorts.load_definitions(tmp_path / "defs.yaml")


# -- storage and versions ----------------------------------------------------------------------------

def test_saving_versions_only_on_change(empty_store):
    first = Cohort("buyers", rules=[EventRule("Purchase", last_days=30)], description="d")
    assert cohorts.save(empty_store, first, now=NOW) == 1
    assert cohorts.save(empty_store, first, now=NOW) == 1
    same = {"name": "buyers", "description": "d", "match": "all",
            "rules": [{"event": "Purchase", "did": True, "operator": "at_least", "count": 1, "last_days": 30}]}
    assert cohorts.save(empty_store, same) == 1                       # explicit defaults mean the same
    assert cohorts.save(empty_store, Cohort("buyers", rules=[EventRule("Purchase", last_days=7)], description="d")) == 2
    assert cohorts.save(empty_store, first) == 3                      # back to the old meaning: a new version
    listed = cohorts.list_cohorts(empty_store)
    assert [(c["name"], c["version"], c["versions"], c["kind"]) for c in listed] == [("buyers", 3, 3, "dynamic")]
    assert "in the last 30 days" in listed[0]["summary"]
    assert cohorts.get(empty_store, "buyers", version=2).rules[0].last_days == 7
    with pytest.raises(CohortError, match='no cohort "nope" in the store; known: buyers'):
        cohorts.get(empty_store, "nope")


def test_static_versions_follow_the_set_of_ids(empty_store):
    assert cohorts.save(empty_store, {"name": "s", "static_ids": ["b", "a"]}) == 1
    assert cohorts.save(empty_store, {"name": "s", "static_ids": ["a", "b", "a"]}) == 1   # same set
    assert cohorts.save(empty_store, {"name": "s", "static_ids": ["a", "b", "c"]}) == 2


def test_the_stored_definition_is_the_canonical_json(empty_store):
    cohorts.save(empty_store, {"name": "x", "rules": [{"property": "age", "operator": "greater", "value": 20.0}]})
    stored = json.loads(empty_store.con.execute("SELECT definition FROM cohorts").fetchone()[0])
    assert stored == {"name": "x", "rules": [{"property": "age", "operator": "greater", "value": 20,
                                              "type": "number"}]}


def test_round_trip_of_every_rule_kind():
    cohort = Cohort("all kinds", match="any", description="text", rules=(
        EventRule("Purchase", did=False, operator="exactly", count=2, between=(datetime(2026, 9, 1).date(),
                                                                             datetime(2026, 9, 30).date()),
                  where=(PropertyRule("amount", "between", (1, 2.5)),)),
        EventRule("Sign Up", first_time_last_days=7),
        PropertyRule("created", "greater", datetime(2026, 1, 2, 3, 4, 5)),
        PropertyRule("plan", "equals", ("pro", "team")),
        PropertyRule("beta", "is_set"),
        Group((CohortRule("other", include=False), PropertyRule("n", "less", 3)), "all"),
    ))
    canonical = cohorts.parse(cohort)
    assert cohorts.parse(json.loads(json.dumps(to_dict(canonical)))) == canonical


# -- invalid definitions name the field ----------------------------------------------------------------

@pytest.mark.parametrize("rules, field, phrase", [
    ([{"event": "A"}, {"event": "B", "count": -1}], "rules[1].count", "expected a non-negative integer"),
    ([{"event": "A", "count": True}], "rules[0].count", "expected a non-negative integer"),
    ([{"event": "A", "operator": "lots"}], "rules[0].operator", "at_least, at_most, more_than"),
    ([{"event": "A", "last_days": 0}], "rules[0].last_days", "positive whole number of days"),
    ([{"event": "A", "last_days": 7, "between": ["2026-01-01", "2026-01-02"]}], "rules[0].between",
     "only one time window"),
    ([{"event": "A", "between": ["2026-02-01", "2026-01-01"]}], "rules[0].between", "is after end"),
    ([{"event": "A", "between": ["soon", "2026-01-01"]}], "rules[0].between[0]", "expected a date"),
    ([{"event": "A", "last_day": 7}], "rules[0].last_day", "unknown key for an event rule"),
    ([{"event": ""}], "rules[0].event", "expected an event name"),
    ([{"event": "A", "did": "no"}], "rules[0].did", "true or false"),
    ([{"event": "A", "where": [{"property": "x", "operator": "like", "value": 1}]}], "rules[0].where[0].operator",
     "equals, not_equals, contains"),
    ([{"match": "any", "rules": [{"event": "A"}, {"event": 5}]}], "rules[0].rules[1].event", "event name"),
    ([{"match": "some", "rules": [{"event": "A"}]}], "rules[0].match", "all, any"),
    ([{"property": "age", "operator": "between", "value": [30]}], "rules[0].value", "between needs [low, high]"),
    ([{"property": "age", "operator": "between", "value": [30, 20]}], "rules[0].value", "is above high"),
    ([{"property": "age", "operator": "greater", "value": "old"}], "rules[0].value",
     "greater compares number or datetime values, not string"),
    ([{"property": "age", "operator": "greater", "value": "x", "type": "number"}], "rules[0].value",
     "expected a number value"),
    ([{"property": "c", "operator": "equals", "value": False, "type": "string"}], "rules[0].value",
     "quote it"),
    ([{"property": "c", "operator": "equals", "value": "x", "type": "text"}], "rules[0].type",
     "string, number, boolean, datetime"),
    ([{"property": "c", "operator": "is_set", "value": 1}], "rules[0].value", "is_set takes no value"),
    ([{"property": "c", "operator": "equals"}], "rules[0].value", "equals needs a value"),
    ([{"property": "c", "operator": "equals", "value": {"a": 1}}], "rules[0].value", "string, number, boolean or date"),
    ([{"event": "A", "property": "p", "operator": "is_set"}], "rules[0]", "expected exactly one of"),
    ([{"evnt": "A"}], "rules[0]", "expected exactly one of"),
    ([{"in_cohort": ""}], "rules[0].in_cohort", "expected a cohort name"),
    ([], "rules", "expected a non-empty list"),
])
def test_invalid_definitions_name_the_field(rules, field, phrase):
    with pytest.raises(DefinitionError) as err:
        parse({"name": "x", "rules": rules}, "cohorts.yaml")
    assert err.value.field == field
    assert str(err.value).startswith(f'cohorts.yaml: cohort "x": {field}: ')
    assert phrase in str(err.value)


def test_invalid_definition_in_a_file(tmp_path):
    path = tmp_path / "cohorts.yaml"
    path.write_text("cohorts:\n  - name: x\n    rules:\n      - {event: A}\n      - {event: B, count: -1}\n")
    with pytest.raises(DefinitionError, match=r'cohorts\.yaml: cohort "x": rules\[1\]\.count: '
                                              r"expected a non-negative integer, got -1"):
        cohorts.load_definitions(path)
    path.write_text("cohorts:\n  - {name: x, rules: [{event: A}]}\n  - {name: x, rules: [{event: B}]}\n")
    with pytest.raises(DefinitionError, match=r'cohorts\[1\]\.name: cohort "x" is defined twice'):
        cohorts.load_definitions(path)
    path.write_text("cohorts:\n  - {rules: [{event: A}]}\n")
    with pytest.raises(DefinitionError, match=r"cohorts\[0\]\.name: expected a non-empty cohort name"):
        cohorts.load_definitions(path)
    path.write_text("cohorts: [\n")
    with pytest.raises(CohortError, match="not valid YAML"):
        cohorts.load_definitions(path)


def test_python_api_is_checked_like_files(empty_store):
    with pytest.raises(DefinitionError, match=r'cohort "py": rules\[0\]\.count'):
        cohorts.save(empty_store, Cohort("py", rules=[EventRule("A", count=-2)]))
    with pytest.raises(DefinitionError, match=r"rules\[0\]\.rules\[0\]\.value"):
        cohorts.evaluate(empty_store, Cohort("py", rules=[Group([PropertyRule("age", "greater", "x")])]), now=NOW)


# -- hostile names and values ---------------------------------------------------------------------------

HOSTILE = ["a'; drop table events; --", 'say "hi"', "a.b", "x[0]", "$.y", "~/0", "", " ", "é ✓ 東京",
           "\\", "%_", "$onesignal_user_id", "a\nb"]


def _hostile_store(tmp_path, name, value, store=None):
    store = store or Store(":memory:")
    build(store, tmp_path, [event("Ev'ent\"", "u1", ago(1), "e1", **{name: value}),
                            event("Ev'ent\"", "u2", ago(1), "e2", **{name: value + "~"})],
          profiles={"u1": {name: value}, "u2": {name: value + "~"}})
    return store


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_property_names_are_just_names(tmp_path, empty_store, name):
    value = "v'); DELETE FROM profiles; --"
    store = _hostile_store(tmp_path, name, value, empty_store)
    query = compile_cohort(parse({"name": "h", "rules": [{"property": name, "operator": "equals", "value": value}]}),
                           NOW)
    assert value not in query.sql and (not name.strip() or name not in query.sql)
    assert json_pointer(name) in query.params.values()
    assert members(store, [{"property": name, "operator": "equals", "value": value}]) == ["u1"]
    assert members(store, [{"event": "Ev'ent\"", "where": [{"property": name, "operator": "contains",
                                                             "value": value + "~"}]}]) == ["u2"]
    assert store.con.execute("SELECT count(*) FROM events").fetchone()[0] == 2


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
       value=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12))
def test_any_property_name_and_value_round_trip(tmp_path_factory, new_store, name, value):
    folder = tmp_path_factory.mktemp("h")
    store = _hostile_store(folder, name, value, Store(new_store(folder / "s.duckdb")))
    assert members(store, [{"property": name, "operator": "equals", "value": value}]) == ["u1"]
    assert members(store, [{"property": name, "operator": "is_set"}]) == ["u1", "u2"]
    assert members(store, [{"event": "Ev'ent\"", "where": [{"property": name, "operator": "not_equals",
                                                             "value": value}]}]) == ["u2"]
    assert store.con.execute("SELECT count(*) FROM profiles").fetchone()[0] == 2


def test_compiling_is_pure_and_binds_every_value():
    cohort = parse({"name": "c", "rules": [
        {"event": "Purchase'--", "last_days": 3, "where": [{"property": "p'q", "operator": "less", "value": 7}]},
        {"property": "plan", "operator": "equals", "value": "pro'"},
    ]})
    sql, params = compile_cohort(cohort, NOW)
    for text in ("Purchase'--", "p'q", "pro'", "2026"):
        assert text not in sql
    assert "Purchase'--" in params.values() and "pro'" in params.values()
    assert compile_cohort(cohort, NOW) == compile_cohort(cohort, NOW)


# -- the sample's definitions -------------------------------------------------------------------------



def test_sample_definitions_use_every_feature():
    defs = cohorts.load_definitions(SAMPLE / "cohorts.yaml")
    assert len(defs) >= 6
    text = json.dumps([to_dict(c) for c in defs])
    for feature in ('"last_days"', '"between"', '"first_time_last_days"', '"did": false', '"where"',
                    '"match": "any"', '"not_in_cohort"', '"in_cohort"', '"static_ids"', '"contains"',
                    '"not_equals"', '"less"', '"greater"'):
        assert feature in text, feature


PERSONAS = {"alice@example.com", "bob", "carol", "dave", "erin", "frank", "heidi", "ivan", "judy", "ken", "leo",
            "mia", "oscar", "peggy", "$device:0d9b8a7c-6e5f-4a3b-b2c1-d0e9f8a7b6c5"}


@pytest.mark.parametrize("name, expected", [
    ("Purchasers last 30 days", {"bob", "dave", "frank"}),
    ("Churn risk: active in September, silent in October", {"carol", "erin", "ivan", "ken", "peggy"}),
    ("Pro plan in the US", {"alice@example.com"}),
    ("Engaged with push", {"bob", "dave", "erin"}),
    ("New sign-ups", {"oscar"}),
    ("Long-time users gone quiet", {"erin", "frank", "ivan", "ken", "leo", "mia"}),
    ("VIP support list", PERSONAS),
    ("VIPs engaged with push", {"bob", "dave", "erin"}),
])
def test_sample_cohorts_pick_the_expected_personas(sample_store, name, expected):
    got = cohorts.evaluate(sample_store, name, now=NOW)
    assert set(got) & PERSONAS == expected
    assert got == sorted(got) and len(got) == len(set(got))


def test_sample_beta_testers_exclude_purchasers(sample_store):
    beta = set(cohorts.evaluate(sample_store, {"name": "b", "rules": [{"property": "is_beta", "operator": "equals",
                                                                 "value": True}]}, now=NOW))
    buyers = set(cohorts.evaluate(sample_store, "Purchasers last 30 days", now=NOW))
    assert set(cohorts.evaluate(sample_store, "Beta testers excluding purchasers", now=NOW)) == beta - buyers
    assert beta & buyers                                       # the exclusion does remove someone


def test_sample_is_listed_with_versions(sample_store):
    listed = {c["name"]: c for c in cohorts.list_cohorts(sample_store)}
    assert listed["VIP support list"]["kind"] == "static" and listed["VIP support list"]["version"] == 1
    assert "15 ids" in listed["VIP support list"]["summary"]
    assert cohorts.save_all(sample_store, cohorts.load_definitions(SAMPLE / "cohorts.yaml"))["Pro plan in the US"] == 1


# -- the planner: a restricted candidate set never changes the answer ----------------------------------

@pytest.fixture(scope="module")
def crowd(tmp_path_factory, new_store):
    """Users with and without events and profiles; h, k and m have profiles merged after they were
    loaded (aliases), so a canonical id holds two profile rows (or only one moved under it), and the
    newest (here: the larger id, as one Engage page ties on time, file and line) is the whole profile:
    h's winner has no age, though its other profile has one."""
    tmp = tmp_path_factory.mktemp("crowd")
    with Store(new_store(tmp / "s.duckdb")) as store:
        build(store, tmp, [
            event("Purchase", "a", ago(2), "a1", amount=30), event("Purchase", "a", ago(35), "a2", amount=5),
            event("Login", "a", ago(1), "a3"), event("Visit", "b", ago(3), "b1"),
            event("Purchase", "d", ago(12), "d1"), event("Login", "d", ago(50), "d2"),
            event("Purchase", "e", ago(55), "e1", amount=90), event("Purchase", "e", ago(5), "e2", amount=25),
            event("Visit", "$device:x", ago(1), "x1"), event("Login", "f", ago(15), "f1"),
        ], profiles={"a": {"plan": "pro", "age": 30, "tags": ["a"]}, "c": {"plan": "free"},
                     "e": {"plan": "pro", "age": 19}, "g": {"tags": "abc", "age": None},
                     "h": {"plan": "free", "age": 40}, "h-old": {"plan": "pro", "tags": ["a"]},
                     "k-old": {"plan": "pro", "age": 50}, "m": {"plan": "pro", "age": 22}, "m-old": {"age": 25}})
        later = tmp / "later"
        later.mkdir()
        build(store, later, [
            event("$create_alias", "h", ago(6), "h0", alias="h-old"), event("$create_alias", "k", ago(6), "k0",
                                                                            alias="k-old"),
            event("$create_alias", "m", ago(6), "m0", alias="m-old"),
            event("Purchase", "h-old", ago(3), "h1", amount=50), event("Login", "h", ago(2), "h2"),
            event("Purchase", "k-old", ago(8), "k1", amount=30), event("Visit", "k", ago(20), "k2"),
            event("Purchase", "m", ago(4), "m1", amount=10), event("Login", "m-old", ago(30), "m2"),
        ])
        assert sorted(store.con.execute("SELECT distinct_id FROM identity_map WHERE canonical_id IN ('h', 'k', 'm') "
                                        "AND distinct_id <> canonical_id").fetchall()) == [("h-old",), ("k-old",),
                                                                                          ("m-old",)]
        yield store


EVENT_RULES = st.builds(
    lambda event_, did, op, count, window, where: {"event": event_, "did": did, "operator": op, "count": count,
                                                   **window, **({"where": where} if where else {})},
    st.sampled_from(["Purchase", "Login", "Visit"]), st.booleans(),
    st.sampled_from(["at_least", "at_most", "more_than", "less_than", "exactly"]), st.integers(0, 2),
    st.sampled_from([{}, {"last_days": 10}, {"last_days": 40}, {"between": ["2026-10-01", "2026-10-31"]},
                     {"first_time_last_days": 20}]),
    st.sampled_from([None, [{"property": "amount", "operator": "greater", "value": 20}],
                     [{"property": "amount", "operator": "is_not_set"}]]))
PROFILE_RULES = st.sampled_from([
    {"property": "plan", "operator": "equals", "value": "pro"},
    {"property": "plan", "operator": "not_equals", "value": "pro"},
    {"property": "plan", "operator": "is_set"}, {"property": "age", "operator": "is_not_set"},
    {"property": "tags", "operator": "contains", "value": "a"},
    {"property": "age", "operator": "greater", "value": 20},
])
RULES = st.recursive(st.one_of(EVENT_RULES, PROFILE_RULES),
                     lambda inner: st.builds(lambda m, rs: {"match": m, "rules": rs},
                                             st.sampled_from(["all", "any"]), st.lists(inner, min_size=1, max_size=3)),
                     max_leaves=5)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(rules=st.lists(RULES, min_size=1, max_size=4), match=st.sampled_from(["all", "any"]))
def test_restricted_candidates_never_change_membership(crowd, rules, match):
    """Restricted candidates and the rows read narrowed to the rules' windows (and, on the store, only
    the candidates' profiles read from the profiles table) give what every known user, every event and
    the resolved_profiles view give."""
    cohort = parse({"name": "r", "match": match, "rules": rules})
    full = crowd.con.execute(*compile_cohort(cohort, NOW, restrict=False)).fetchall()
    assert crowd.con.execute(*compile_cohort(cohort, NOW)).fetchall() == full
    assert crowd.con.execute(*compile_cohort(cohort, NOW, on_store=True)).fetchall() == full


def test_on_the_store_only_the_candidates_profiles_are_read(crowd):
    """The newest profile of a merged user is the whole profile (h's has no age; k has only its moved
    profile), as resolved_profiles has it; the query reads the profiles table, not the view."""
    cohort = parse({"name": "r", "rules": [{"event": "Purchase", "last_days": 10},
                                            {"property": "age", "operator": "is_not_set"}]})
    query = compile_cohort(cohort, NOW, on_store=True)
    assert '"resolved_profiles"' not in query.sql and '"profiles"' in query.sql and '"cand"' in query.sql
    assert [r[0] for r in crowd.con.execute(*query).fetchall()] == ["h"]
    aged = parse({"name": "r", "rules": [{"event": "Purchase", "last_days": 10},
                                          {"property": "age", "operator": "greater", "value": 20}]})
    assert [r[0] for r in crowd.con.execute(*compile_cohort(aged, NOW, on_store=True)).fetchall()] == ["a", "k", "m"]
    assert '"profiles"' not in compile_cohort(cohort, NOW).sql       # what other engines run: the view
