"""toolkit/dialects.py without Spark: bound values become literals of the right type, the DuckDB text
transpiled back to DuckDB gives the same members, and each rule fixes what sqlglot alone gets wrong
(tests/test_spark_equality.py runs the Spark text on Spark)."""

import datetime as dt

import duckdb
import pytest
import sqlglot

from helpers import NOW
from toolkit import cohorts, dialects
from toolkit.errors import UsageError
from toolkit.sql import Query
from toolkit.store import connection

VALUES = [
    "plain", "it's", 'say "hi"', "back\\slash", "two\\\\back", "new\nline", "tab\there", "é — 漢字 🚀", "",
    "$p1", "'; DROP TABLE x; --", "%_like_", 0, -7, 2**62, 1.5, 0.1, -2.5e-300, 1e300, True, False, None,
    dt.datetime(2026, 10, 1, 12, 30, 5, 123456), dt.date(2026, 2, 28),
    ["a", "it's", "é"], [1.5, 2.0], [],
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_a_bound_value_written_in_reads_back_the_same_on_duckdb(value):
    con = duckdb.connect()
    bound = con.execute("SELECT $v AS v", {"v": value}).fetchone()[0]
    inlined = con.execute(dialects.render(Query("SELECT $v AS v", {"v": value}), "duckdb")).fetchone()[0]
    assert inlined == bound
    assert type(inlined) is type(bound)


def test_floats_stay_double_and_times_naive_utc():
    aware = dt.datetime(2026, 1, 1, 4, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    sql = dialects.render(Query("SELECT $f, $t", {"f": 0.1, "t": aware}), "duckdb")
    types = [d[1] for d in duckdb.connect().execute(sql).description]
    assert types == ["DOUBLE", "TIMESTAMP"]
    assert "2026-01-01 02:00:00" in sql


def test_unknown_dialect_and_missing_value_are_refused():
    with pytest.raises(UsageError, match="unknown SQL dialect \"mysql\"; choose one of duckdb, spark"):
        dialects.render(Query("SELECT 1", {}), "mysql")
    with pytest.raises(KeyError, match=r"\$p1"):
        dialects.render(Query("SELECT $p1", {}), "duckdb")


def test_every_sample_cohort_transpiled_back_to_duckdb_has_the_same_members(sample_store):
    con = connection(sample_store)
    names = [c["name"] for c in cohorts.list_cohorts(sample_store)]
    assert len(names) >= 10
    for name in names:
        query = cohorts.query(sample_store, name, now=NOW)
        bound = con.execute(query.sql, query.params).fetchall()
        assert con.execute(dialects.render(query, "duckdb")).fetchall() == bound, name


# -- each rule against what sqlglot writes without it --------------------------------------------------------

def _plain(sql: str, dialect: str) -> str:
    return sqlglot.transpile(sql, read="duckdb", write=dialect)[0]


def test_list_has_any_becomes_arrays_overlap_on_spark():
    sql = "SELECT list_has_any(a, b) FROM t"
    assert "&&" in _plain(sql, "spark")                     # sqlglot: a syntax error on Spark
    assert "ARRAYS_OVERLAP(a, b)" in dialects.render(Query(sql, {}), "spark")


def test_a_list_slice_becomes_slice_on_spark():
    sql = "SELECT others[1:3] FROM t"
    assert "others[1:3]" in _plain(sql, "spark")            # sqlglot: a syntax error on Spark
    assert "SLICE(others, 1, 3)" in dialects.render(Query(sql, {}), "spark")


def test_a_json_pointer_is_read_as_a_key_not_as_a_path():
    sql = "SELECT json_extract(properties, $p) FROM t"
    params = {"p": "/it's a~1b~0c"}                          # the key "it's a/b~c"
    assert "GET_JSON_OBJECT(properties, '/x')" in _plain(sql.replace("$p", "'/x'"), "spark")
    spark = dialects.render(Query(sql, params), "spark")
    assert "FROM_JSON(properties, 'map<string,variant>')['it\\'s a/b~c']" in spark
    bigquery = dialects.render(Query(sql, params), "bigquery")
    assert "/it" not in bigquery and "a/b~c" in bigquery


def test_json_type_text_and_typed_lists_read_a_variant_on_spark():
    sql = ("SELECT json_type(v), json_extract_string(v, '$'), TRY_CAST(v AS DOUBLE[]), "
           "TRY_CAST(CAST(c AS JSON) AS VARCHAR[]) FROM t")
    plain = _plain(sql, "spark")
    # sqlglot: no JSON_TYPE on Spark; GET_JSON_OBJECT gives "5" for the string "5" and the number 5 alike;
    # FROM_JSON refuses the element "2" as a number, which DuckDB's TRY_CAST takes
    assert "JSON_TYPE(v)" in plain and "GET_JSON_OBJECT(v, '$')" in plain and "FROM_JSON(c, 'ARRAY<STRING>')" in plain
    spark = dialects.render(Query(sql, {}), "spark")
    assert "SCHEMA_OF_VARIANT(v)" in spark and "JSON_TYPE" not in spark
    assert "CAST(v AS STRING)" in spark and "GET_JSON_OBJECT" not in spark
    assert "TRY_VARIANT_GET(v, '$', 'array<double>')" in spark
    assert "TRY_VARIANT_GET(PARSE_JSON(c), '$', 'array<string>')" in spark


def test_an_ordered_list_keeps_its_order_and_nulls_on_spark():
    sql = "SELECT list(d ORDER BY (d = 'x') DESC, u DESC NULLS LAST, d)[1] FROM t GROUP BY g"
    assert "COLLECT_LIST(d)" in _plain(sql, "spark")           # sqlglot: the order is gone
    spark = dialects.render(Query(sql, {}), "spark", pretty=False)
    assert "COLLECT_LIST(d)" not in spark
    assert "ARRAY_SORT(COLLECT_LIST(STRUCT((d = 'x') AS k0, u AS k1, d AS k2, d AS v))" in spark
    assert spark.count("NULLIF(CASE") == 3                     # one comparison per key, not nested copies
    assert spark.startswith("SELECT TRY_ELEMENT_AT(TRANSFORM(") and spark.endswith(", 1) FROM t GROUP BY g")


def test_functions_spark_lacks_are_rewritten():
    sql = ("WITH f AS MATERIALIZED (SELECT v FROM t) "
           "SELECT strlen(v), regexp_full_match(v, $re), names[2] FROM f")
    plain = _plain(sql.replace("$re", "'[0-9]+'"), "spark")
    assert "MATERIALIZED" in plain and "STRLEN(v)" in plain and "REGEXP_FULL_MATCH" in plain and "names[1]" in plain
    spark = dialects.render(Query(sql, {"re": "[0-9]+"}), "spark", pretty=False)
    assert "MATERIALIZED" not in spark
    assert "OCTET_LENGTH(v)" in spark                          # DuckDB's strlen counts bytes
    assert "v RLIKE '^(?:[0-9]+)$'" in spark                   # a full match, as RLIKE only finds
    assert "TRY_ELEMENT_AT(names, 2)" in spark                 # NULL past the end, as on DuckDB


def test_lists_unnested_side_by_side_become_rows_of_values_on_spark():
    sql = "WITH n AS (SELECT unnest($names) AS name, unnest($flags) AS flag) SELECT * FROM n"
    params = {"names": ["a", "it's"], "flags": [True, False]}
    assert _plain(sql.replace("$names", "['a']").replace("$flags", "[true]"), "spark").count("EXPLODE") == 2
    spark = dialects.render(Query(sql, params), "spark", pretty=False)
    assert "EXPLODE" not in spark
    assert "FROM VALUES ('a', TRUE), ('it\\'s', FALSE) AS zipped(name, flag)" in spark
    duck = duckdb.connect()
    assert duck.execute(sql, params).fetchall() == [("a", True), ("it's", False)]


# -- toolkit cohorts sql -----------------------------------------------------------------------------------

def test_cohorts_sql_prints_the_query_duckdb_runs(sample_store_file):
    from cli_runner import toolkit

    from toolkit.store import Store

    ran = toolkit("cohorts", "sql", "pro plan in the us", "--db", sample_store_file, "--as-of", "2026-10-20")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith('-- cohort "Pro plan in the US" as of 2026-10-20T23:59:59.999999+00:00, duckdb SQL')
    assert "$p" not in ran.stdout
    with Store(sample_store_file, read_only=True) as store:
        expected = cohorts.evaluate(store, "Pro plan in the US", now=dt.datetime(2026, 10, 20, 23, 59, 59, 999999,
                                                                                  dt.UTC))
        printed = [r[0] for r in connection(store).execute(ran.stdout).fetchall()]
    assert printed == expected and expected


def test_cohorts_sql_for_a_warehouse_reads_the_json_not_the_stores_columns(sample_store_file):
    from cli_runner import toolkit

    ran = toolkit("cohorts", "sql", "Engaged with push", "--db", sample_store_file, "--dialect", "spark", "--json")
    assert ran.returncode == 0, ran.stderr
    out = __import__("json").loads(ran.stdout)
    assert out["cohort"] == "Engaged with push" and out["dialect"] == "spark"
    assert "`resolved_events`" in out["sql"] and "FROM_JSON(" in out["sql"]
    assert "`ep" not in out["sql"] and "$p" not in out["sql"]
    ran = toolkit("cohorts", "sql", "Engaged with push", "--db", sample_store_file, "--dialect", "bigquery")
    assert ran.returncode == 0 and "bigquery SQL" in ran.stdout and "`" in ran.stdout
    assert "-- bigquery: translated but never run by the toolkit's tests" in ran.stdout


def test_cohorts_sql_refuses_an_unknown_dialect_or_cohort(sample_store_file):
    from cli_runner import toolkit

    ran = toolkit("cohorts", "sql", "Engaged with push", "--db", sample_store_file, "--dialect", "mysql")
    assert ran.returncode == 2 and "invalid choice: 'mysql'" in ran.stderr
    ran = toolkit("cohorts", "sql", "Engaged with pusj", "--db", sample_store_file)
    assert ran.returncode == 1 and "Engaged with push" in ran.stderr
