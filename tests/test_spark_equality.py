"""DuckDB and Spark agree, member for member: the compiled cohort queries, the matchability rows and the
MTU per month, run on Spark as toolkit/dialects.py translates them, over the same tables (the store's
views -> Arrow -> Spark temp views), give exactly DuckDB's answer. On the sample and on generated data
with hostile values (numbers as strings, huge integers, lists, objects, nulls, odd keys, dates with
offsets) and hypothesis-generated definitions.

One Spark session for the whole test session (conftest's ``spark``); each data set gets its own
``newSession()`` (same JVM, its own temp views), so data sets never see each other's tables."""

import datetime as dt
import json
import random

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_event_columns import DEFINITIONS as EVENT_DEFINITIONS
from test_event_columns import EVENTS, KEYS, MISSING, RICH_VALUES

from helpers import NOW, event, write_lines
from toolkit import Store, cohorts, dialects, event_columns, load, matching, mtu, spark_session
from toolkit.cohort_model import parse
from toolkit.cohort_sql import compile_cohort, filtered_properties
from toolkit.sql import Query, quote_ident
from toolkit.store import connection

pytestmark = pytest.mark.slow      # Spark: seconds per query

TABLES = ("resolved_events", "resolved_profiles", "identity_map")   # what the compiled queries read
EVERYONE = Query(f"SELECT {quote_ident('distinct_id')} FROM resolved_profiles UNION "
                 f"SELECT {quote_ident('distinct_id')} FROM resolved_events", {})
MATCH_OPTIONS = [("$onesignal_user_id", "auto"), ("$onesignal_user_id", "subscription_id"), ("alt_id", "external_id")]


def on_spark(spark, store):
    """A Spark session (sharing the JVM) whose temp views are the store's tables, as Arrow."""
    session = spark.newSession()
    # Tiny data: one shuffle partition and no adaptive re-planning ran the sample's cohorts in 4.9 s
    # instead of 23.9 s (Spark's defaults are made for large data).
    session.conf.set("spark.sql.shuffle.partitions", "1")
    session.conf.set("spark.sql.adaptive.enabled", "false")
    con = connection(store)
    for table in TABLES:
        spark_session.register(session, table, con.sql(f"SELECT * FROM {table}").to_arrow_table())
    return session


def duck_rows(store, query: Query) -> list[tuple]:
    return connection(store).execute(query.sql, query.params).fetchall()


def spark_rows(session, query: Query) -> list[tuple]:
    return [tuple(row) for row in session.sql(dialects.for_spark(query)).collect()]


def same_members(store, session, query: Query) -> list[str]:
    duck = [r[0] for r in duck_rows(store, query)]
    assert [r[0] for r in spark_rows(session, query)] == duck      # the same members, in the same order
    inlined = [r[0] for r in connection(store).execute(dialects.render(query, "duckdb")).fetchall()]
    assert inlined == duck                                          # and back to DuckDB, values written in
    return duck


def same_matchability(store, session, members: Query, prop: str, id_type: str) -> list[tuple]:
    query = matching.classify_sql(members, user_id_property=prop, id_type=id_type)
    duck = sorted(duck_rows(store, query))
    assert sorted(spark_rows(session, query)) == duck, (prop, id_type)
    return duck


def same_mtu(store, session, month=None, rules="seed") -> list[mtu.MonthMTU]:
    query = mtu.query(month, rules)
    duck = mtu.from_rows(duck_rows(store, query), month, rules)
    assert mtu.from_rows(spark_rows(session, query), month, rules) == duck
    assert duck == mtu.report(store, month, rules)
    return duck


# -- the sample ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample(sample_store, spark):
    names = [c["name"] for c in cohorts.list_cohorts(sample_store)]
    # compiled first: compiling may add the typed event columns, which the Spark tables must then hold
    queries = {(name, now): cohorts.query(sample_store, name, now=now)
               for name in names for now in (NOW, NOW - dt.timedelta(days=20))}
    return sample_store, on_spark(spark, sample_store), queries


def test_every_sample_cohort_has_the_same_members_on_spark(sample):
    store, session, queries = sample
    assert len(queries) >= 20
    assert any('"ep' in q.sql for q in queries.values())           # typed event columns are read too
    sizes = {key: len(same_members(store, session, query)) for key, query in queries.items()}
    assert sum(1 for n in sizes.values() if n) >= 15                # not a comparison of empty answers


def test_sample_matchability_is_the_same_on_spark(sample):
    store, session, _ = sample
    reasons = {}
    for prop, id_type in MATCH_OPTIONS:
        rows = same_matchability(store, session, EVERYONE, prop, id_type)
        assert len(rows) > 100
        reasons[prop, id_type] = {r[4] for r in rows}
    assert reasons["$onesignal_user_id", "auto"] >= {None, "anonymous", "missing_user_id", "unusable_value"}
    assert "not_uuid" not in reasons and len(reasons["$onesignal_user_id", "subscription_id"]) >= 3


def test_sample_mtu_per_month_is_the_same_on_spark(sample):
    store, session, _ = sample
    for rules in mtu.RULE_SETS:
        months = same_mtu(store, session, rules=rules)
        assert len(months) >= 2 and all(m.mtu for m in months)
    assert same_mtu(store, session, month="2026-10")[0].users_counted > 0


# -- generated data -------------------------------------------------------------------------------------------

DAY = 86_400
NOW_S = int(NOW.timestamp())
PROFILE_KEYS = ("plan", "score", "tags", "signup", "é ✓", "it's")
PROFILE_VALUES = [MISSING, None, True, False, 0, 7, 25.5, -3, 2**63, 2**64 + 1, 1e3, "25.5", " 7", "1e3", "true",
                  "pro", "Pro", "", "ü", "2026-10-05", "2026-10-05T12:00:00", "2026-10-05T12:00:00+02:00",
                  "2026-10-04T23:59:59Z", "null", [], ["pro", 25], [1, "2", True], ["true", False], [None], {"a": 1}]
UUID = "3b6f0c3e-8c1d-4f5a-9e2b-7d4c1a0f5e21"
ID_VALUES = [MISSING, None, "ext_1", "ext_1", "ext_2", UUID, UUID.upper(), "", "   ", "\t", "x" * 129, "é" * 128,
             "é" * 129, 12, True, ["a"], {"a": 1}, "a'b\"c", "shared", "shared", "shared", "shared", "shared"]


def _generated_files(folder):
    rng = random.Random(17)
    records, users = [], [f"u{i}" for i in range(40)]
    for i, value in enumerate(RICH_VALUES):
        for j, key in enumerate(KEYS):
            props = {key: value, KEYS[(j + 1) % len(KEYS)]: RICH_VALUES[(i + j) % len(RICH_VALUES)]}
            records.append(event(EVENTS[(i + j) % 2], users[(i * 7 + j * 3) % 40], NOW_S - int(((i + 2 * j) % 30 + .5)
                                                                                               * DAY),
                                 f"i{len(records)}", **{k: v for k, v in props.items() if v is not MISSING}))
    for n in range(400):      # other events over three months, some after `now`, some exempt from MTU
        name = rng.choice(["Login", "Page View", "$identify", "$campaign_delivery", "$app_open", "Message Opened"])
        user = rng.choice(users + [f"anon{k}" for k in range(10)])
        extra = {"$anon_id": f"anon{n % 10}", "$identified_id": user} if name == "$identify" else {}
        records.append(event(name, user, NOW_S - rng.randrange(-5 * DAY, 80 * DAY), f"o{n}", **extra))
    write_lines(folder / "events.jsonl", records)
    profiles = []
    for i, user in enumerate(users[:34]):
        props = {key: PROFILE_VALUES[(i * 5 + k * 3) % len(PROFILE_VALUES)] for k, key in enumerate(PROFILE_KEYS)}
        props["$onesignal_user_id"] = ID_VALUES[i % len(ID_VALUES)]
        props["alt_id"] = ID_VALUES[(i * 7) % len(ID_VALUES)]
        props = {k: v for k, v in props.items() if v is not MISSING}
        profiles.append({"$distinct_id": user, "$properties": props if i % 11 else {}})
    (folder / "profiles.json").write_text(json.dumps({"results": profiles}, ensure_ascii=False), encoding="utf-8")
    return [folder / "events.jsonl", folder / "profiles.json"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory, spark):
    folder = tmp_path_factory.mktemp("generated")
    with Store(folder / "g.duckdb") as store:
        summary = load(store, _generated_files(folder), now=NOW)
        assert [f.status for f in summary.files] == ["loaded", "loaded"], [f.message for f in summary.files]
        # every (event, key) pair typed up front, so what Spark holds is what any definition may read
        columns = event_columns.ensure(store, [(e, k) for e in EVENTS for k in KEYS])
        assert len(columns) == len(EVENTS) * len(KEYS)
        yield store, on_spark(spark, store), columns


PROFILE_RULES = st.one_of(
    st.builds(lambda k, op: {"property": k, "operator": op}, st.sampled_from(PROFILE_KEYS),
              st.sampled_from(["is_set", "is_not_set"])),
    st.builds(lambda k, op, v: {"property": k, "operator": op, "value": v}, st.sampled_from(PROFILE_KEYS),
              st.sampled_from(["equals", "not_equals", "contains", "not_contains"]),
              st.sampled_from(["pro", "25.5", "true", "", "ü", "2026-10-05", 7, 25.5, -3, True, False])),
    st.builds(lambda k, op, v: {"property": k, "operator": op, "value": v}, st.sampled_from(PROFILE_KEYS),
              st.sampled_from(["greater", "less"]), st.sampled_from([0, 7, 25.5, 1000, -0.5])),
    st.builds(lambda k, op, v: {"property": k, "operator": op, "value": v, "type": "datetime"},
              st.sampled_from(PROFILE_KEYS), st.sampled_from(["greater", "less", "equals", "not_equals"]),
              st.sampled_from(["2026-10-05", "2026-10-05T10:00:00", "2026-10-04"])),
)
PLAIN_EVENT_RULES = st.builds(
    lambda ev, did, op, count, window: {"event": ev, "did": did, "operator": op, "count": count, **window},
    st.sampled_from(["Login", "Page View", "$app_open", *EVENTS]), st.booleans(),
    st.sampled_from(["at_least", "at_most", "exactly", "more_than", "less_than"]), st.integers(0, 3),
    st.sampled_from([{}, {"last_days": 7}, {"first_time_last_days": 30}, {"between": ["2026-09-01", "2026-09-30"]}]))
MIXED = st.builds(lambda m, rs: {"name": "c", "match": m, "rules": rs}, st.sampled_from(["all", "any"]),
                  st.lists(st.one_of(PROFILE_RULES, PLAIN_EVENT_RULES), min_size=1, max_size=3))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(definition=st.one_of(EVENT_DEFINITIONS, MIXED), typed=st.booleans(),
       now=st.sampled_from([NOW, NOW - dt.timedelta(days=10)]))
def test_generated_definitions_have_the_same_members_on_spark(generated, definition, typed, now):
    store, session, columns = generated
    cohort = parse(definition)
    used = {pair: columns[pair] for pair in filtered_properties([cohort])} if typed else {}
    same_members(store, session, compile_cohort(cohort, now, columns=used))     # typed columns or the JSON


def test_generated_matchability_is_the_same_on_spark(generated):
    store, session, _ = generated
    seen = set()
    for prop, id_type in MATCH_OPTIONS:
        seen |= {r[4] for r in same_matchability(store, session, EVERYONE, prop, id_type)}
    assert seen >= {None, "anonymous", "missing_user_id", "unusable_value", "duplicate"}


def test_generated_mtu_per_month_is_the_same_on_spark(generated):
    store, session, _ = generated
    for rules in mtu.RULE_SETS:
        assert len(same_mtu(store, session, rules=rules)) >= 3


def test_arrow_tables_arrive_with_their_types(spark):
    """What registration relies on: Arrow strings, naive timestamps (UTC) and nulls keep their values."""
    table = pa.table({"s": ["it's", "é 🚀", None], "t": pa.array([dt.datetime(2026, 10, 1, 23, 59, 59, 999999),
                                                                  None, dt.datetime(1970, 1, 1)], pa.timestamp("us"))})
    session = spark.newSession()
    spark_session.register(session, "t", table)
    assert [tuple(r) for r in session.sql("SELECT s, t FROM t").collect()] == list(zip(*table.to_pydict().values(),
                                                                                         strict=True))


def test_every_kind_of_bound_value_reads_back_the_same_on_spark(spark):
    """Spark's string literals escape with backslashes (DuckDB's do not): quotes, backslashes, newlines,
    unicode, numbers, times and lists written in by dialects.literal come back as the values bound."""
    from test_dialects import VALUES

    names = [f"v{i}" for i in range(len(VALUES))]
    query = Query("SELECT " + ", ".join(f"${n} AS {n}" for n in names), dict(zip(names, VALUES, strict=True)))
    (row,) = spark.sql(dialects.for_spark(query)).collect()
    assert list(row) == VALUES
