"""Event properties kept as typed columns (toolkit/event_columns.py): a filter reading them answers
exactly as the same filter reading the JSON (the oracle: the compiler given no columns), whatever the
values (numbers, numeric strings, booleans, missing, null, lists, objects, dates) and the key's
characters; columns are backfilled once when a definition needs a new pair, filled by every load
after that, and a failed load or backfill leaves nothing half-written."""

import json
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import NOW, event, rows, write_lines
from toolkit import Store, cohorts, event_columns, load
from toolkit.cohort_model import parse
from toolkit.cohort_sql import compile_cohort, filtered_properties
from toolkit.loading import derived

DAY = 86_400
NOW_S = int(NOW.timestamp())
EVENTS = ("Purchase", "Refund")
KEYS = ("amount", "é ✓ 東京", 'say "hi"', "a.b", "x/y", "~0~1", "", "$price", "it's", "[0]")
MISSING = object()      # the key is not in the event at all

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-1000, 1000), st.integers(2**63 - 2, 2**64 + 2),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from(["25.5", " 7", "1e3", "-0", "true", "FALSE", "True", "2026-10-05", "2026-10-05T12:00:00",
                     "2026-10-05 23:59:59", "abc", "", "ü", "pro", "Pro", "null", "[1]"]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=4))
VALUES = st.one_of(st.just(MISSING), SCALARS, st.lists(SCALARS, max_size=3),
                   st.dictionaries(st.sampled_from(["a", "b"]), SCALARS, max_size=2))

# What a definition compares with: a value of each type the filters accept.
STRINGS = st.sampled_from(["abc", "pro", "25.5", "true", "ü", "", "a", "2026-10-05", "null", "[1]"])
NUMBERS = st.one_of(st.integers(-1000, 1000), st.sampled_from([0, 7, 25.5, 1000, 2**63, -0.5]))
DATES = st.sampled_from(["2026-10-05", "2026-10-04", "2026-10-05T12:00:00", "2026-01-01"])
FILTERS = st.one_of(
    st.builds(lambda k, op: {"property": k, "operator": op}, st.sampled_from(KEYS),
              st.sampled_from(["is_set", "is_not_set"])),
    st.builds(lambda k, op, v: {"property": k, "operator": op, "value": v}, st.sampled_from(KEYS),
              st.sampled_from(["equals", "not_equals", "contains", "not_contains"]),
              st.one_of(STRINGS, NUMBERS, st.booleans())),
    st.builds(lambda k, op, v: {"property": k, "operator": op, "value": v}, st.sampled_from(KEYS),
              st.sampled_from(["equals", "not_equals"]),
              st.one_of(st.lists(STRINGS, min_size=1, max_size=3), st.lists(NUMBERS, min_size=1, max_size=3),
                        st.lists(st.booleans(), min_size=1, max_size=2))),
    st.builds(lambda k, op, v: {"property": k, "operator": op, "value": v}, st.sampled_from(KEYS),
              st.sampled_from(["greater", "less"]), NUMBERS),
    st.builds(lambda k, op, v: {"property": k, "operator": op, "value": v, "type": "datetime"},
              st.sampled_from(KEYS), st.sampled_from(["greater", "less", "equals", "not_equals"]), DATES),
    st.builds(lambda k, pair: {"property": k, "operator": "between", "value": sorted(pair)},
              st.sampled_from(KEYS), st.lists(NUMBERS, min_size=2, max_size=2)),
    st.builds(lambda k, pair: {"property": k, "operator": "between", "value": sorted(pair), "type": "datetime"},
              st.sampled_from(KEYS), st.lists(DATES, min_size=2, max_size=2)),
)
EVENT_RULES = st.builds(
    lambda ev, did, op, count, window, where: {"event": ev, "did": did, "operator": op, "count": count,
                                               **window, "where": where},
    st.sampled_from(EVENTS), st.booleans(), st.sampled_from(["at_least", "at_most", "exactly", "less_than"]),
    st.integers(0, 2), st.sampled_from([{}, {"last_days": 10}, {"first_time_last_days": 20}]),
    st.lists(FILTERS, min_size=1, max_size=2))
# Profile rules beside them: with a top-level event rule, the store's query reads only the candidates'
# profiles, from the profiles table (cohort_sql: on_store); the oracle reads the resolved_profiles view.
PROFILE_RULES = st.sampled_from([{"property": "plan", "operator": "equals", "value": "pro"},
                                  {"property": "plan", "operator": "not_equals", "value": "pro"},
                                  {"property": "age", "operator": "greater", "value": 10},
                                  {"property": "age", "operator": "is_not_set"}])
RULES = st.recursive(st.one_of(EVENT_RULES, EVENT_RULES, PROFILE_RULES), lambda inner: st.builds(
    lambda m, rs: {"match": m, "rules": rs}, st.sampled_from(["all", "any"]), st.lists(inner, min_size=1, max_size=2)),
    max_leaves=3)
DEFINITIONS = st.builds(lambda m, rs: {"name": "c", "match": m, "rules": rs},
                        st.sampled_from(["all", "any"]), st.lists(RULES, min_size=1, max_size=3))


def _events(records, first_id: int) -> list[dict]:
    """Events for generated (event, user, days ago, {key: value}) records; MISSING keys are left out."""
    return [event(ev, user, NOW_S - int(days * DAY), f"i{first_id + n}",
                  **{k: v for k, v in props.items() if v is not MISSING})
            for n, (ev, user, days, props) in enumerate(records)]


def _load(store, folder, name, records, first_id=0):
    folder.mkdir(exist_ok=True)
    write_lines(folder / name, _events(records, first_id))
    summary = load(store, [folder / name], now=NOW)
    assert [f.status for f in summary.files] == ["loaded"], summary.files[0].message
    return summary


def _on_json(store, definition) -> list[str]:
    """The oracle: the same cohort compiled without columns, so every filter reads the JSON."""
    return [r[0] for r in store.con.execute(*compile_cohort(parse(definition), NOW)).fetchall()]


def _check(store, definition) -> list[str]:
    got = cohorts.evaluate(store, definition, now=NOW)
    assert got == _on_json(store, definition), json.dumps(definition, ensure_ascii=False)
    return got


def _registered(store) -> set[tuple[str, str, int]]:
    return set(rows(store, "SELECT event, property, id FROM event_columns"))


def _ep_columns(store) -> list[str]:
    return sorted(c for c, in rows(store, "SELECT column_name FROM information_schema.columns "
                                          "WHERE table_name = 'event_rows' AND column_name LIKE 'ep%'"))


# -- identical answers ----------------------------------------------------------------------------

# Every key takes every kind of value somewhere, on both events, at times in and out of the windows.
RICH_VALUES = [MISSING, None, True, False, 0, 7, 25, -3, 25.5, 1e3, 2**63, 2**64 + 1, "25.5", " 7", "1e3", "true",
               "FALSE", "abc", "pro", "", "ü", "2026-10-05", "2026-10-05T12:00:00", "2026-10-04T23:59:59", "null",
               [], ["abc", 25], [1, "2", True], ["true", False], [None], {"a": 1}, {}]


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rich")
    records = []
    for i, value in enumerate(RICH_VALUES):
        for j, key in enumerate(KEYS):
            user = f"u{(i * 7 + j * 3) % 23}"
            ev = EVENTS[(i + j) % 2]
            records.append((ev, user, (i + 2 * j) % 30 + 0.5, {key: value, KEYS[(j + 1) % len(KEYS)]: RICH_VALUES[
                (i + j) % len(RICH_VALUES)]}))
    # Profiles for some users, others merged into u1, u2 and u4 after they were loaded (an alias each):
    # the newest of a canonical id's profiles wins whole (one Engage page: the larger id), whichever
    # holds which property (u2's winner has no age, u4's loser has none).
    profiles = {f"u{n}": {"plan": ["pro", "free", 30][n % 3], "age": n * 3} for n in range(0, 23, 2)}
    profiles |= {"u1-old": {"plan": "pro", "age": 40}, "u2": {"plan": "pro", "age": 30}, "u2-old": {"plan": "free"},
                 "u4": {"plan": "free"}, "u4-old": {"plan": "pro", "age": 40}}
    (folder / "profiles.json").write_text(json.dumps({"status": "ok", "results": [
        {"$distinct_id": d, "$properties": p} for d, p in profiles.items()]}), encoding="utf-8")
    with Store(folder / "rich.duckdb") as store:
        assert [f.status for f in load(store, [folder / "profiles.json"], now=NOW).files] == ["loaded"]
        _load(store, folder, "events.jsonl", records)
        aliases = [event("$create_alias", u, NOW_S - DAY, f"al{u}", alias=f"{u}-old") for u in ("u1", "u2", "u4")]
        write_lines(folder / "aliases.jsonl", aliases)
        assert [f.status for f in load(store, [folder / "aliases.jsonl"], now=NOW).files] == ["loaded"]
        assert rows(store, "SELECT count(*) FROM identity_map WHERE distinct_id LIKE '%-old'") == [(3,)]
        yield store


@pytest.mark.slow   # 200 definitions
@settings(max_examples=200, deadline=None)
@given(definition=DEFINITIONS)
def test_typed_columns_answer_as_the_json_does(rich, definition):
    _check(rich, definition)
    sql = cohorts.query(rich, definition, now=NOW).sql
    assert '"fe"' not in sql                          # every filter read columns, none the JSON
    assert ('"ep' in sql) == bool(filtered_properties([parse(definition)]))


# An event rule that needs an event beside a profile rule, at the top of an AND: the store's query reads
# the candidates' profiles only (cohort_sql: on_store), here against the oracle's resolved_profiles view.
GATED = st.builds(lambda ev, count, window, where, profile, more: {
    "name": "c", "rules": [{"event": ev, "count": count, **window, "where": where}, profile, *more]},
    st.sampled_from(EVENTS), st.integers(1, 2), st.sampled_from([{}, {"last_days": 10}, {"first_time_last_days": 20}]),
    st.lists(FILTERS, min_size=1, max_size=2), PROFILE_RULES, st.lists(RULES, max_size=2))


@pytest.mark.slow   # 100 definitions
@settings(max_examples=100, deadline=None)
@given(definition=GATED)
def test_candidates_profiles_answer_as_the_view_does(rich, definition):
    _check(rich, definition)
    assert '"cand"' in cohorts.query(rich, definition, now=NOW, on_store=True).sql


@pytest.mark.slow   # a store and two loads per example
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.lists(st.tuples(st.sampled_from(EVENTS), st.sampled_from(["a", "b", "c"]), st.floats(0, 30),
                                st.dictionaries(st.sampled_from(KEYS[:4]), VALUES, max_size=3)), max_size=8),
       later=st.lists(st.tuples(st.sampled_from(EVENTS), st.sampled_from(["b", "c", "d"]), st.floats(0, 30),
                                st.dictionaries(st.sampled_from(KEYS[:4]), VALUES, max_size=3)), max_size=8),
       definitions=st.lists(DEFINITIONS, min_size=1, max_size=3))
def test_backfilled_and_loaded_columns_answer_as_the_json_does(tmp_path_factory, new_store, first, later, definitions):
    """Generated values: the columns backfilled for what a first load brought, then filled by a later
    load, give the JSON's answer every time."""
    folder = tmp_path_factory.mktemp("gen")
    with Store(new_store(folder / "s.duckdb")) as store:
        _load(store, folder, "first.jsonl", first or [("Purchase", "a", 1, {})])
        for definition in definitions:
            _check(store, definition)
        _load(store, folder, "later.jsonl", later or [("Refund", "d", 1, {})], first_id=1000)
        for definition in definitions:
            _check(store, definition)


# -- backfill, load, failure -------------------------------------------------------------------------

def _amount_over(value, ev="Purchase", prop="amount"):
    return {"name": "big", "rules": [{"event": ev, "where": [{"property": prop, "operator": "greater",
                                                                "value": value}]}]}


SHOP = [("Purchase", "a", 1, {"amount": 30}), ("Purchase", "b", 2, {"amount": "25.5"}),
        ("Purchase", "c", 3, {"amount": [40]}), ("Refund", "a", 1, {"amount": 50}),
        ("Page View", "d", 1, {"amount": 99})]


def test_a_new_pair_is_backfilled_once_and_remembered(empty_file_store, tmp_path):
    _load(empty_file_store, tmp_path / "in", "shop.jsonl", SHOP)
    assert _registered(empty_file_store) == set() and _ep_columns(empty_file_store) == []
    assert _check(empty_file_store, _amount_over(20)) == ["a", "b"]
    assert _registered(empty_file_store) == {("Purchase", "amount", 0)}
    assert _ep_columns(empty_file_store) == ["ep0_list", "ep0_number", "ep0_text", "ep0_type"]
    filled = rows(empty_file_store, "SELECT event, distinct_id, ep0_type, ep0_text, ep0_number, ep0_list::VARCHAR "
                              "FROM events ORDER BY ALL")
    assert filled == [("Page View", "d", None, None, None, None),        # rows of other events stay empty
                      ("Purchase", "a", "UBIGINT", "30", 30.0, None),
                      ("Purchase", "b", "VARCHAR", "25.5", 25.5, None),
                      ("Purchase", "c", "ARRAY", "[40]", None, "[40]"),
                      ("Refund", "a", None, None, None, None)]
    # The same property on another event shares the columns; another property gets its own.
    assert _check(empty_file_store, _amount_over(20, ev="Refund")) == ["a"]
    assert _check(empty_file_store, {"name": "x", "rules": [{"event": "Page View", "where": [
        {"property": "currency", "operator": "is_not_set"}]}]}) == ["d"]
    assert _registered(empty_file_store) == {("Purchase", "amount", 0), ("Refund", "amount", 0),
                                       ("Page View", "currency", 1)}
    assert rows(empty_file_store, "SELECT ep0_number FROM events WHERE event = 'Refund'") == [(50.0,)]
    registry = _registered(empty_file_store)
    _check(empty_file_store, _amount_over(20))                                  # already there: nothing added
    assert _registered(empty_file_store) == registry and len(_ep_columns(empty_file_store)) == 8


def test_a_backfill_is_checkpointed_by_itself_leaving_the_stored_events_as_they_were(empty_file_store, tmp_path):
    """The backfill writes its columns into the store file itself (checkpointed, vacuum off, as a load
    does): the next load's checkpoint has no backfill left to write (issue 18: a delta pays for itself),
    and the events' stored JSON keeps its blocks."""
    store = empty_file_store
    _load(store, tmp_path / "in", "shop.jsonl", SHOP)
    blocks = ("SELECT column_name, segment_id, block_id, block_offset FROM pragma_storage_info('event_rows') "
              "WHERE column_name IN ('properties', 'event', 'time') ORDER BY ALL")
    before = rows(store, blocks)
    wal = Path(store.path + ".wal")
    assert _check(store, _amount_over(20)) == ["a", "b"]
    assert not wal.exists() or wal.stat().st_size == 0
    assert rows(store, blocks) == before
    assert rows(store, "SELECT count(*) FROM pragma_storage_info('event_rows') WHERE column_name = 'ep0_number' "
                       "AND block_id >= 0") != [(0,)]      # the backfilled column is in the file
    assert rows(store, "SELECT current_setting('max_vacuum_tasks')") == [(100,)]   # as it was


def test_a_load_after_extraction_fills_the_new_rows(empty_file_store, tmp_path):
    _load(empty_file_store, tmp_path / "in", "shop.jsonl", SHOP)
    assert _check(empty_file_store, _amount_over(20)) == ["a", "b"]
    _load(empty_file_store, tmp_path / "in", "more.jsonl", [("Purchase", "e", 1, {"amount": 21}),
                                                      ("Purchase", "f", 1, {"amount": "x"}),
                                                      ("Refund", "g", 1, {"amount": 70})], first_id=100)
    assert rows(empty_file_store, "SELECT distinct_id, ep0_type, ep0_number FROM events "
                            "WHERE distinct_id IN ('e', 'f', 'g') ORDER BY 1") == [
        ("e", "UBIGINT", 21.0), ("f", "VARCHAR", None), ("g", None, None)]
    assert _check(empty_file_store, _amount_over(20)) == ["a", "b", "e"]


def test_a_failed_load_leaves_nothing_half_written(empty_file_store, tmp_path, monkeypatch):
    _load(empty_file_store, tmp_path / "in", "shop.jsonl", SHOP)
    _check(empty_file_store, _amount_over(20))
    before = rows(empty_file_store, "SELECT * EXCLUDE (properties) FROM event_rows ORDER BY ALL")

    def fail(*args, **kwargs):      # after the columns were filled, in the same transaction
        raise duckdb.IOException("disk full")

    monkeypatch.setattr(derived, "refresh_facts", fail)
    folder = tmp_path / "in"
    write_lines(folder / "more.jsonl", _events([("Purchase", "e", 1, {"amount": 21})], 100))
    summary = load(empty_file_store, [folder / "more.jsonl"], now=NOW)
    assert summary.files[0].status == "refused" and "disk full" in summary.files[0].message
    assert rows(empty_file_store, "SELECT * EXCLUDE (properties) FROM event_rows ORDER BY ALL") == before
    monkeypatch.undo()
    _load(empty_file_store, folder, "more.jsonl", [("Purchase", "e", 1, {"amount": 21})], first_id=100)
    assert _check(empty_file_store, _amount_over(20)) == ["a", "b", "e"]


def test_a_failed_backfill_adds_no_column_registers_nothing_and_answers(empty_file_store, tmp_path, monkeypatch):
    _load(empty_file_store, tmp_path / "in", "shop.jsonl", SHOP)
    calls = []

    def fail_on_the_second(*args):
        calls.append(args)
        if len(calls) == 2:
            raise duckdb.IOException("disk full")
        original(*args)

    original = event_columns._update
    monkeypatch.setattr(event_columns, "_update", fail_on_the_second)
    two = {"name": "two", "rules": [{"event": "Purchase", "where": [
        {"property": "amount", "operator": "greater", "value": 20},
        {"property": "currency", "operator": "is_not_set"}]}]}
    assert _check(empty_file_store, two) == ["a", "b"]             # on the JSON: a backfill is only a speed-up
    assert len(calls) == 2 and _registered(empty_file_store) == set() and _ep_columns(empty_file_store) == []
    monkeypatch.undo()
    assert _check(empty_file_store, two) == ["a", "b"]


def test_a_read_only_store_reads_the_json(tmp_path):
    path = tmp_path / "s.duckdb"
    with Store(path) as store:
        _load(store, tmp_path / "in", "shop.jsonl", SHOP)
        assert _check(store, _amount_over(20)) == ["a", "b"]              # registers Purchase/amount
    with Store(path, read_only=True) as store:
        assert _check(store, _amount_over(20, ev="Refund")) == ["a"]      # not registered: JSON
        assert '"fe"' in cohorts.query(store, _amount_over(20, ev="Refund"), now=NOW).sql
        assert '"fe"' not in cohorts.query(store, _amount_over(20), now=NOW).sql
        assert _registered(store) == {("Purchase", "amount", 0)}


def test_past_the_limit_filters_stay_on_json(empty_file_store, tmp_path, monkeypatch):
    monkeypatch.setattr(event_columns, "MAX_PROPERTIES", 1)
    _load(empty_file_store, tmp_path / "in", "shop.jsonl",
          SHOP + [("Purchase", "a", 1, {"amount": 30, "currency": "EUR"})], first_id=0)
    both = {"name": "both", "rules": [{"event": "Purchase", "where": [
        {"property": "amount", "operator": "greater", "value": 20},
        {"property": "currency", "operator": "equals", "value": "EUR"}]}]}
    assert _check(empty_file_store, both) == ["a"]
    assert _registered(empty_file_store) == {("Purchase", "amount", 0)}
    assert '"fe"' in cohorts.query(empty_file_store, both, now=NOW).sql     # a rule with one JSON filter reads JSON
    assert _check(empty_file_store, _amount_over(20)) == ["a", "b"]


def test_the_window_still_applies_on_columns(empty_file_store, tmp_path):
    _load(empty_file_store, tmp_path / "in", "shop.jsonl", SHOP + [("Purchase", "old", 40, {"amount": 99})], first_id=0)
    recent = {"name": "r", "rules": [{"event": "Purchase", "last_days": 30, "where": [
        {"property": "amount", "operator": "greater", "value": 20}]}]}
    assert _check(empty_file_store, recent) == ["a", "b"]
    assert _check(empty_file_store, {**recent, "rules": [{**recent["rules"][0], "last_days": 60}]}) == ["a", "b", "old"]
