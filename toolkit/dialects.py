"""A compiled query (DuckDB SQL + bound values) -> SQL text for another engine. Pure: no I/O.

The cohort compiler (cohort_sql), matching's classifier and the MTU count stay the one source of each
query; this module only moves their DuckDB text to another dialect with sqlglot's transpiler, after
inlining the bound values as typed literals (``render``). Where sqlglot's translation of what those
modules emit is wrong, a small rule below rewrites the parsed tree first; each has a test
(tests/test_dialects.py), and tests/test_spark_equality.py runs the result on Spark against DuckDB.

JSON on Spark: JSON values travel as JSON text (a STRING column: ``properties``, the typed list column
of toolkit/event_columns.py) and are parsed where read. An extracted property is a VARIANT (Spark 4),
which keeps the value's JSON type as DuckDB's JSON does: ``json_type`` maps its schema to DuckDB's type
names ('VARCHAR', 'DOUBLE', 'ARRAY', 'NULL'...), ``json_extract_string(v, '$')`` casts it to a string,
and a JSON array cast to a typed list casts element by element, a non-convertible element becoming
NULL (as DuckDB's TRY_CAST does). Spark sessions run in UTC (toolkit/spark_session.py): the store's
times are naive UTC.

BigQuery and Snowflake get sqlglot's translation with the same inlining and the JSON pointer turned
into a JSON path; they are printed for analysts (``toolkit cohorts sql``) and not run by the tests.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping

import sqlglot
from sqlglot import exp

from toolkit.errors import UsageError
from toolkit.sql import Query, to_utc_naive

DIALECTS = ("duckdb", "spark", "bigquery", "snowflake")

Rule = Callable[[exp.Expr], exp.Expr]


def render(query: Query, dialect: str = "duckdb", *, pretty: bool = True) -> str:
    """The query's SQL in ``dialect`` with every bound value written in as a literal."""
    if dialect not in DIALECTS:
        raise UsageError(f"unknown SQL dialect \"{dialect}\"; choose one of {', '.join(DIALECTS)}")
    tree = inline(sqlglot.parse_one(query.sql, read="duckdb"), query.params)
    for rule in RULES[dialect]:
        tree = _bottom_up(tree, rule)
    return tree.sql(dialect=dialect, pretty=pretty)


def for_spark(query: Query) -> str:
    """Spark SQL for a compiled query (one line: what ``SparkSession.sql`` runs)."""
    return render(query, "spark", pretty=False)


# -- bound values -> literals --------------------------------------------------------------------------

def inline(tree: exp.Expr, params: Mapping[str, object]) -> exp.Expr:
    """Replace each ``$name`` placeholder by its value as a typed literal."""
    def replace(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Placeholder) and node.this is not None:
            name = str(node.this)
            if name not in params:
                raise KeyError(f"the query names ${name} but binds no value for it")
            return literal(params[name])
        return node
    return _bottom_up(tree, replace)


def literal(value) -> exp.Expr:
    """One Python value as a SQL literal of its type: strings quoted (the generator escapes per
    dialect), floats as DOUBLE (never DECIMAL), times as naive-UTC TIMESTAMP, lists as arrays."""
    if value is None:
        return exp.null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, int):
        return exp.Literal.number(value)
    if isinstance(value, float):
        text = repr(value) if math.isfinite(value) else str(value)    # 'inf', '-inf', 'nan'
        return exp.cast(exp.Literal.string(text), exp.DataType.Type.DOUBLE)
    if isinstance(value, str):
        return exp.Literal.string(value)
    if isinstance(value, dt.datetime):
        return exp.cast(exp.Literal.string(to_utc_naive(value).isoformat(sep=" ")), exp.DataType.Type.TIMESTAMP)
    if isinstance(value, dt.date):
        return exp.cast(exp.Literal.string(value.isoformat()), exp.DataType.Type.DATE)
    if isinstance(value, (list, tuple)):
        array = exp.Array(expressions=[literal(v) for v in value])
        return array if value else exp.cast(array, exp.DataType.build("ARRAY<VARCHAR>"))
    raise TypeError(f"no SQL literal for a bound value of type {type(value).__name__}")


def _bottom_up(tree: exp.Expr, rule: Rule) -> exp.Expr:
    """Apply ``rule`` to every node, children before their parents (sqlglot's transform visits parents
    first and skips what a replacement contains)."""
    for node in reversed(list(tree.dfs())):
        new = rule(node)
        if new is not node:
            if node is tree:
                tree = new
            else:
                node.replace(new)
    return tree


# -- rules: where sqlglot's translation of what the toolkit emits is wrong --------------------------------

def _pointer_key(path: exp.Expr) -> str:
    """The top-level key a JSON pointer literal addresses (the compiler's only kind: sql.json_pointer)."""
    if not isinstance(path, exp.Literal) or not path.is_string or not path.this.startswith("/"):
        raise ValueError(f"expected a one-key JSON pointer, got {path.sql('duckdb')}")
    key = path.this[1:]
    if "/" in key:
        raise ValueError(f"expected a one-key JSON pointer, got {path.this!r}")
    return key.replace("~1", "/").replace("~0", "~")


def pointer_to_path(node: exp.Expr) -> exp.Expr:
    """``json_extract(x, '/key')``: DuckDB reads the pointer; other engines know JSON paths only, and
    sqlglot passes the pointer through as if it were one."""
    if isinstance(node, exp.JSONExtract) and isinstance(node.expression, exp.Literal) \
            and node.expression.this.startswith("/"):
        key = _pointer_key(node.expression)
        path = exp.JSONPath(expressions=[exp.JSONPathRoot(), exp.JSONPathKey(this=key)])
        return exp.JSONExtract(this=node.this, expression=path)
    return node


def _variant(json_text: exp.Expr) -> exp.Expr:
    return exp.Anonymous(this="parse_json", expressions=[json_text])


def spark_json(node: exp.Expr) -> exp.Expr:
    """DuckDB's JSON functions as Spark VARIANT expressions (sqlglot writes GET_JSON_OBJECT, which
    loses the JSON type: the string "5" and the number 5 come out the same; and JSON_TYPE, which Spark
    does not have)."""
    if isinstance(node, exp.JSONExtract) and isinstance(node.expression, exp.Literal):
        # A map of variants, not variant_get: Spark's variant paths cannot name a key holding quotes
        # or backslashes, and a map lookup takes any key as a plain string.
        key = _pointer_key(node.expression)
        as_map = exp.Anonymous(this="from_json", expressions=[node.this, exp.Literal.string("map<string,variant>")])
        return exp.Bracket(this=as_map, expressions=[exp.Literal.string(key)])
    if isinstance(node, exp.JSONType):
        return _spark_json_type(node.this)
    if isinstance(node, exp.JSONExtractScalar):
        if node.expression.sql("duckdb") not in ("'$'", "$"):
            raise ValueError(f"only json_extract_string(x, '$') is translated, got {node.sql('duckdb')}")
        return exp.cast(node.this, exp.DataType.Type.TEXT)
    if isinstance(node, exp.TryCast) and node.to.is_type(exp.DataType.Type.ARRAY):
        # A JSON array as a typed list, element by element (DuckDB's TRY_CAST of JSON): a variant's
        # try_variant_get does the same; sqlglot's FROM_JSON refuses the string "2" as a number.
        return exp.Anonymous(this="try_variant_get", expressions=[
            node.this, exp.Literal.string("$"), exp.Literal.string(node.to.sql("spark").lower())])
    if isinstance(node, exp.Cast) and node.to.is_type(exp.DataType.Type.JSON):
        return _variant(node.this)
    return node


def _spark_json_type(value: exp.Expr) -> exp.Expr:
    """DuckDB's json_type names from a variant's schema (Spark says STRING, DECIMAL(2,1), VOID...)."""
    schema = exp.Anonymous(this="schema_of_variant", expressions=[value])
    sql = ("CASE WHEN s IS NULL THEN NULL WHEN s = 'VOID' THEN 'NULL' WHEN s = 'STRING' THEN 'VARCHAR' "
           "WHEN s = 'BOOLEAN' THEN 'BOOLEAN' WHEN s LIKE 'ARRAY%' THEN 'ARRAY' WHEN s LIKE 'OBJECT%' THEN 'OBJECT' "
           "WHEN s IN ('BIGINT', 'INT', 'SMALLINT', 'TINYINT') THEN 'BIGINT' ELSE 'DOUBLE' END")
    case = sqlglot.parse_one(sql, read="spark")
    for column in list(case.find_all(exp.Column)):
        column.replace(schema.copy())
    return case


def spark_arrays(node: exp.Expr) -> exp.Expr:
    """List functions sqlglot writes as Spark does not know them."""
    if isinstance(node, exp.ArrayOverlaps):          # sqlglot writes `a && b`, a syntax error on Spark
        return exp.Anonymous(this="arrays_overlap", expressions=[node.this, node.expression])
    if isinstance(node, exp.Bracket) and len(node.expressions) == 1 and isinstance(node.expressions[0], exp.Slice):
        # DuckDB's 1-based inclusive slice list[a:b]; sqlglot leaves the brackets, a syntax error on Spark
        piece = node.expressions[0]
        start, end = piece.this, piece.expression
        length = exp.Literal.number(int(end.this) - int(start.this) + 1) if (
            isinstance(start, exp.Literal) and isinstance(end, exp.Literal)) else exp.Add(
            this=exp.Sub(this=end, expression=start), expression=exp.Literal.number(1))
        return exp.Anonymous(this="slice", expressions=[node.this, start, length])
    return node


def spark_functions(node: exp.Expr) -> exp.Expr:
    """Functions and clauses sqlglot passes to Spark unchanged though Spark lacks them."""
    if isinstance(node, exp.Anonymous) and str(node.this).lower() == "strlen":     # DuckDB: bytes
        return exp.Anonymous(this="octet_length", expressions=node.expressions)
    if isinstance(node, exp.RegexpFullMatch) and isinstance(node.expression, exp.Literal):
        anchored = exp.Literal.string(f"^(?:{node.expression.this})$")
        return exp.RegexpLike(this=node.this, expression=anchored)
    if isinstance(node, exp.CTE) and node.args.get("materialized"):
        node.set("materialized", None)        # a planner hint DuckDB honours; Spark's parser refuses it
        return node
    if isinstance(node, exp.Bracket) and len(node.expressions) == 1 and isinstance(node.expressions[0], exp.Literal) \
            and not node.expressions[0].is_string:
        # list[i]: DuckDB gives NULL past the end; Spark's list[i] is an error there (ANSI mode)
        index = exp.Literal.number(int(node.expressions[0].this) + 1)     # sqlglot holds it 0-based
        return exp.Anonymous(this="try_element_at", expressions=[node.this, index])
    return node


def spark_ordered_lists(node: exp.Expr) -> exp.Expr:
    """``list(x ORDER BY k1 DESC, k2...)``: sqlglot writes COLLECT_LIST(x), dropping the order (and
    COLLECT_LIST drops NULLs, which DuckDB's list keeps). Spark has no ordered collect: collect structs
    of the keys and the value, sort them with a comparator following DuckDB's order (NULLS LAST unless
    said otherwise), keep the values."""
    if not (isinstance(node, exp.ArrayAgg) and isinstance(node.this, exp.Order)):
        return node
    order = node.this
    keys = [o if isinstance(o, exp.Ordered) else exp.Ordered(this=o) for o in order.expressions]
    fields = [exp.PropertyEQ(this=exp.to_identifier(f"k{i}"), expression=k.this) for i, k in enumerate(keys)]
    fields.append(exp.PropertyEQ(this=exp.to_identifier("v"), expression=order.this))
    collected = exp.Anonymous(this="collect_list", expressions=[exp.Struct(expressions=fields)])
    steps = []        # each key's comparison (-1, 0, 1); the first that is not 0 decides
    for i, key in enumerate(keys):
        first, before = (-1 if key.args.get("nulls_first") else 1), (1 if key.args.get("desc") else -1)
        left, right = f"l.k{i}", f"r.k{i}"
        steps.append(f"nullif(CASE WHEN {left} IS NULL AND {right} IS NULL THEN 0 WHEN {left} IS NULL THEN {first} "
                     f"WHEN {right} IS NULL THEN {-first} WHEN {left} < {right} THEN {before} "
                     f"WHEN {left} > {right} THEN {-before} ELSE 0 END, 0)")
    compare = f"coalesce({', '.join(steps)}, 0)"
    tree = sqlglot.parse_one(f"transform(array_sort(collected, (l, r) -> {compare}), e -> e.v)", read="spark")
    for column in tree.find_all(exp.Column):
        if column.name == "collected" and not column.table:
            column.replace(collected)
            break
    return tree


def zip_literal_unnests(node: exp.Expr) -> exp.Expr:
    """``SELECT unnest([...]) AS a, unnest([...]) AS b`` (no FROM: lists zipped into rows, as DuckDB
    does). sqlglot writes two EXPLODEs in one SELECT, which Spark refuses: write the rows as VALUES."""
    if not isinstance(node, exp.Select) or node.args.get("from_") or len(node.expressions) < 2:
        return node
    columns = []
    for item in node.expressions:
        inner = item.this if isinstance(item, exp.Alias) else None
        if not isinstance(inner, (exp.Explode, exp.Unnest)):
            return node
        array = inner.this if isinstance(inner, exp.Explode) else (inner.expressions or [None])[0]
        if not isinstance(array, exp.Array):
            return node
        columns.append((item.alias, array.expressions))
    lengths = {len(values) for _, values in columns}
    if len(lengths) != 1:
        return node
    rows = [exp.Tuple(expressions=[values[i] for _, values in columns]) for i in range(lengths.pop())]
    values = exp.Values(expressions=rows, alias=exp.TableAlias(
        this=exp.to_identifier("zipped"), columns=[exp.to_identifier(name) for name, _ in columns]))
    return exp.select(*[exp.column(name) for name, _ in columns]).from_(values)


RULES: dict[str, tuple[Rule, ...]] = {
    "duckdb": (),
    "spark": (spark_json, spark_arrays, spark_ordered_lists, spark_functions, zip_literal_unnests),
    "bigquery": (pointer_to_path,),
    "snowflake": (pointer_to_path,),
}
