"""Many cohorts in one pass (toolkit/cohort_batch.py, cohort_sql.compile_cohorts): every cohort's members and
matchability are exactly what evaluating it on its own gives, for the sample's cohorts and generated ones."""

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cohorts import RULES, crowd  # noqa: F401  (crowd: the generated rules' fixture)

from helpers import NOW
from toolkit import cohort_batch, cohorts, matching
from toolkit.cohort_model import CohortError, parse
from toolkit.cohort_sql import compile_cohort, compile_cohorts


def _sorted(table: pa.Table) -> list[dict]:
    return table.sort_by("distinct_id").to_pylist()


def test_sample_cohorts_in_one_pass_equal_each_alone(sample_store):
    names = [c["name"] for c in cohorts.list_cohorts(sample_store)]
    together = cohort_batch.members_of(sample_store, names, now=NOW)
    assert set(together) == set(names)
    for name in names:
        assert together[name] == cohorts.evaluate(sample_store, name, now=NOW), name
    assert sum(map(len, together.values())) > len(names)          # not a pass of empty cohorts


@pytest.mark.parametrize("bits", [64, 3])             # 3: the cohorts' bits in several mask columns
def test_sample_matchability_in_one_query_equals_each_alone(sample_store, bits, monkeypatch):
    monkeypatch.setattr(cohort_batch, "MASK_BITS", bits)
    names = [c["name"] for c in cohorts.list_cohorts(sample_store)]
    for id_type in ("auto", "external_id"):
        found = cohort_batch.match(sample_store, cohort_batch.evaluate(sample_store, names, now=NOW), id_type=id_type)
        for name in names:
            alone = matching.preview(sample_store, name, now=NOW, id_type=id_type)
            assert found[name].summary == {k: v for k, v in alone.summary.items()
                                           if k not in ("cohort", "version", "now")}, name
            assert _sorted(found[name].table) == _sorted(alone.table), name
            assert found[name].exportable_table.equals(alone.exportable_table), name


def test_the_cohort_limit_applies_to_each_cohort(sample_store):
    names = ["Pro plan in the US", "Purchasers last 30 days"]
    found = cohort_batch.match(sample_store, cohort_batch.evaluate(sample_store, names, now=NOW), limit=1)
    for name in names:
        alone = matching.preview(sample_store, name, now=NOW, limit=1)
        assert found[name].summary["reasons"]["over_limit"] == alone.summary["reasons"]["over_limit"] > 0
        assert _sorted(found[name].table) == _sorted(alone.table)


def test_a_shared_rule_is_counted_once():
    both = [parse({"name": n, "rules": [{"event": "Purchase", "last_days": 30}, extra]})
            for n, extra in (("a", {"property": "plan", "operator": "equals", "value": "pro"}),
                             ("b", {"event": "Login", "did": False}))]
    sql = compile_cohorts(both, NOW).sql
    assert sql.count("FILTER (WHERE") == 2           # Purchase in 30 days once, Login once
    assert sql.count("resolved_events") == 1         # one scan of the events


def test_did_an_event_in_any_window_is_one_aggregate_per_event():
    windows = [parse({"name": f"{days}d", "rules": [{"event": "Purchase", "last_days": days}]})
               for days in (7, 14, 30)]
    not_in_7d = parse({"name": "not 7d", "rules": [{"event": "Purchase", "did": False, "last_days": 7}]})
    ever = parse({"name": "ever", "rules": [{"event": "Purchase"}]})
    sql = compile_cohorts([*windows, not_in_7d, ever], NOW).sql
    assert sql.count("FILTER (WHERE") == 1           # the latest Purchase, compared with each window


def test_profiles_are_read_and_parsed_once_for_every_cohort_and_property():
    chosen = [parse({"name": n, "rules": [rule]}) for n, rule in (
        ("pro", {"property": "plan", "operator": "equals", "value": "pro"}),
        ("us", {"property": "$country_code", "operator": "equals", "value": "US"}),
        ("beta, no login", {"match": "any", "rules": [{"property": "is_beta", "operator": "is_set"},
                                                      {"event": "Login", "did": False}]}))]
    sql = compile_cohorts(chosen, NOW).sql
    assert sql.count("resolved_profiles") == 1       # listed users and their properties from one read
    assert sql.count("json_extract(") == 1           # each profile's JSON parsed once for the three properties
    assert "AS MATERIALIZED" in sql.split('"flags"', 1)[1]     # each cohort's predicate computed once

def test_static_cohorts_are_refused_by_the_compiler_and_evaluated_alone(sample_store):
    static = cohorts.get(sample_store, "VIP support list")
    with pytest.raises(CohortError, match="VIP support list.*static"):
        compile_cohorts([static], NOW)
    together = cohort_batch.members_of(sample_store, [static, "Pro plan in the US"], now=NOW)
    assert together["VIP support list"] == cohorts.evaluate(sample_store, static, now=NOW)


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(definitions=st.lists(st.tuples(st.lists(RULES, min_size=1, max_size=3), st.sampled_from(["all", "any"])),
                            min_size=1, max_size=5))
def test_generated_cohorts_in_one_pass_equal_each_alone(crowd, definitions):  # noqa: F811
    chosen = [parse({"name": f"c{i}", "match": match, "rules": rules}) for i, (rules, match) in enumerate(definitions)]
    con = crowd.con
    rows = con.execute(*compile_cohorts(chosen, NOW)).fetchall()
    for i, cohort in enumerate(chosen):
        alone = [r[0] for r in con.execute(*compile_cohort(cohort, NOW)).fetchall()]
        assert sorted(r[0] for r in rows if r[i + 1]) == alone, cohort
    # and through the store, with the filtered properties kept as typed columns
    together = cohort_batch.members_of(crowd, chosen, now=NOW)
    assert together == {c.name: cohorts.evaluate(crowd, c, now=NOW) for c in chosen}


# Profiles whose property ``x`` takes every JSON shape a condition meets: strings (of numbers, booleans, dates),
# numbers, booleans, null, lists (of each), an object, absent.
_SHAPES = ["pro", "42", "true", "2026-10-05", "2026-10-05T10:00:00", "", 42, 41.5, 0, True, False, None,
           ["pro", "x"], [42, 7], [True], ["2026-10-05"], [], {"a": 1}, "MISSING"]
_VALUES = {"string": ["pro", "42", "true", "x", ["pro", "free"]], "number": [42, 0, 41.5, [7, 42]],
           "boolean": [True, False], "datetime": ["2026-10-05", "2026-10-05T10:00:00"]}


def _shapes(store, folder):
    from test_cohorts import build

    build(store, folder, profiles={f"u{i}": ({} if shape == "MISSING" else {"x": shape, "n": i})
                                   for i, shape in enumerate(_SHAPES)})


def _property_rule(operator: str, kind: str, value) -> dict:
    rule = {"property": "x", "operator": operator}
    if operator not in ("is_set", "is_not_set"):
        rule |= {"value": value, "type": kind}
    return rule


_RULES = [(op, kind, v) for op in ("equals", "not_equals", "contains", "not_contains") for kind in
          ("string", "number", "boolean", "datetime") for v in _VALUES[kind]
          if (op in ("equals", "not_equals") or kind != "datetime")
          and (op.endswith("equals") or not isinstance(v, list))]
_RULES += [(op, kind, v) for op in ("greater", "less") for kind in ("number", "datetime") for v in _VALUES[kind]
           if not isinstance(v, list)]
_RULES += [("between", "number", [0, 42]), ("between", "datetime", ["2026-10-01", "2026-10-05"]),
           ("is_set", None, None), ("is_not_set", None, None)]


def test_every_profile_condition_in_one_pass_equals_it_alone(built_once):
    """The pass computes each profile property's type, text, number and list once (cohort_sql._typed_columns)
    where a cohort alone reads its JSON value: the same members for every operator, type and JSON shape."""
    store = built_once(_shapes)
    chosen = [parse({"name": f"c{i}", "rules": [_property_rule(*rule), {"property": "n", "operator": "is_set"}]})
              for i, rule in enumerate(_RULES)]
    rows = store.con.execute(*compile_cohorts(chosen, NOW)).fetchall()
    nonempty = 0
    for i, cohort in enumerate(chosen):
        alone = [r[0] for r in store.con.execute(*compile_cohort(cohort, NOW)).fetchall()]
        assert sorted(r[0] for r in rows if r[i + 1]) == alone, _RULES[i]
        nonempty += bool(alone)
    assert nonempty > len(chosen) // 2             # not a comparison of empty sets
