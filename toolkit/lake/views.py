"""The relations a lake engine defines, as SQL text in DuckDB's dialect (the compiler's), so the
Spark engine runs them through the same transpiler as the cohort queries: one text per relation.

An engine's reader provides the sources (``lake_events_src``: event, distinct_id, time, insert_id,
device_id, user_id, properties as JSON text, source_file; ``lake_profiles_src``: distinct_id,
properties, updated_at, sequence; ``lake_mappings_src``: distinct_id, resolved_distinct_id); the
relations below give what the store's views give, under the store's names and columns.
"""

from __future__ import annotations

from toolkit.onesignal_ids import USER_ID_PROPERTY
from toolkit.sql import Query, json_pointer

EVENT_COLUMNS = ("event", "distinct_id", "time", "insert_id", "device_id", "user_id", "properties")


def _text(column: str, pointer: str) -> str:
    """A property's text, as the compiler reads one (cohort_sql._Json.text)."""
    return f"json_extract_string(json_extract({column}, {pointer}), '$')"


def pipeline_events() -> Query:
    """Data Pipelines' event records (every field read as text, ``lake_events_text``) as
    ``lake_events_src``. Fields missing at the top level are read from ``properties`` (the shape of
    Mixpanel's export API). ``time``: a number above 1e11 is milliseconds, else seconds (kept to the
    millisecond), as the loader reads it; otherwise an ISO-8601 timestamp."""
    t = f"coalesce(time, {_text('properties', '$p_time')})"
    number = f"TRY_CAST({t} AS DOUBLE)"
    time = (f"CASE WHEN {number} IS NULL THEN CAST(TRY_CAST({t} AS TIMESTAMPTZ) AS TIMESTAMP) "
            f"WHEN {number} > 1e11 THEN make_timestamp(CAST(round({number}) AS BIGINT) * 1000) "
            f"ELSE make_timestamp(CAST(round({number} * 1000) AS BIGINT) * 1000) END")
    sql = f"""SELECT coalesce(event_name, event) AS event,
       coalesce(distinct_id, {_text('properties', '$p_did')}) AS distinct_id,
       {time} AS time,
       coalesce(insert_id, {_text('properties', '$p_iid')}) AS insert_id,
       coalesce(device_id, {_text('properties', '$p_dev')}) AS device_id,
       coalesce(user_id, {_text('properties', '$p_uid')}) AS user_id,
       properties, source_file
FROM lake_events_text"""
    return Query(sql, {"p_time": json_pointer("time"), "p_did": json_pointer("distinct_id"),
                       "p_iid": json_pointer("$insert_id"), "p_dev": json_pointer("$device_id"),
                       "p_uid": json_pointer("$user_id")})


def pipeline_profiles() -> Query:
    """Data Pipelines' people records (``lake_profiles_text``) as ``lake_profiles_src``: one per
    distinct_id (the table is replaced whole by every export), last seen as its update time."""
    sql = f"""SELECT distinct_id, properties,
       TRY_CAST({_text('properties', '$p_seen')} AS TIMESTAMP) AS updated_at,
       CAST(NULL AS BIGINT) AS sequence
FROM lake_profiles_text WHERE distinct_id IS NOT NULL"""
    return Query(sql, {"p_seen": json_pointer("$last_seen")})


def events(deduplicated: bool) -> Query:
    """``lake_events``: the events with a name, a distinct_id and a time, one copy per Mixpanel key
    (event, distinct_id, time, $insert_id): the latest ``mp_processing_time_ms``, then the later file,
    then by content (as the loader ranks copies within a file). Events without $insert_id are kept
    as they are, as the loader keeps them. A lake written from a store skips the ranking."""
    columns = ", ".join(EVENT_COLUMNS)
    valid = "event IS NOT NULL AND distinct_id IS NOT NULL AND time IS NOT NULL"
    if deduplicated:
        return Query(f"SELECT {columns} FROM lake_events_src WHERE {valid}", {})
    sql = f"""SELECT {columns} FROM (
    SELECT {columns}, row_number() OVER (
        PARTITION BY event, distinct_id, time, insert_id
        ORDER BY TRY_CAST({_text('properties', '$p_mpt')} AS DOUBLE) DESC NULLS LAST,
                 source_file DESC, properties DESC) AS copy
    FROM lake_events_src WHERE {valid} AND insert_id IS NOT NULL) ranked
WHERE copy = 1
UNION ALL
SELECT {columns} FROM lake_events_src WHERE {valid} AND insert_id IS NULL"""
    return Query(sql, {"p_mpt": json_pointer("mp_processing_time_ms")})


def mappings() -> Query:
    """Mixpanel's identity mappings as the store's ``identity_map`` (only ids that resolve elsewhere)."""
    return Query("""SELECT distinct_id, resolved_distinct_id AS canonical_id FROM lake_mappings_src
WHERE resolved_distinct_id IS NOT NULL AND distinct_id IS NOT NULL AND distinct_id <> resolved_distinct_id""", {})


def links() -> Query:
    """The identity links of the lake, as the loader records them (loading/events.py and profiles.py):
    $identify, $create_alias, $merge, the first event with both $device_id and $user_id, and profiles
    carrying $onesignal_user_id (``late`` = 1: ordered after every event, as a load of profiles after
    events orders them). Few rows: the caller resolves them in Python (loading.identity)."""
    sql = f"""SELECT kind, source, target, time, late FROM (
    SELECT CASE event WHEN '$identify' THEN 'identify' WHEN '$create_alias' THEN 'alias' ELSE 'merge' END AS kind,
           CASE event WHEN '$identify' THEN {_text('properties', '$p_anon')}
                      WHEN '$create_alias' THEN {_text('properties', '$p_alias')}
                      ELSE TRY_CAST(json_extract(properties, $p_merge) AS VARCHAR[])[2] END AS source,
           CASE event WHEN '$identify' THEN {_text('properties', '$p_ident')}
                      WHEN '$create_alias' THEN distinct_id
                      ELSE TRY_CAST(json_extract(properties, $p_merge) AS VARCHAR[])[1] END AS target,
           time, 0 AS late
    FROM lake_events WHERE event IN ('$identify', '$create_alias', '$merge')
    UNION ALL
    SELECT 'simplified' AS kind, '$device:' || device_id AS source, user_id AS target, min(time) AS time, 0 AS late
    FROM lake_events WHERE device_id IS NOT NULL AND user_id IS NOT NULL
    GROUP BY device_id, user_id
    UNION ALL
    SELECT 'onesignal' AS kind, {_text('properties', '$p_os')} AS source, distinct_id AS target,
           CAST(NULL AS TIMESTAMP) AS time, 1 AS late
    FROM lake_profiles_src WHERE json_type(json_extract(properties, $p_os)) = 'VARCHAR'
                             AND trim({_text('properties', '$p_os')}) <> ''
) found
WHERE source IS NOT NULL AND target IS NOT NULL AND source <> target"""
    return Query(sql, {"p_anon": json_pointer("$anon_id"), "p_alias": json_pointer("alias"),
                       "p_merge": json_pointer("$distinct_ids"),
                       "p_ident": json_pointer("$identified_id"), "p_os": json_pointer(USER_ID_PROPERTY)})


def resolved_events() -> Query:
    """The store's ``resolved_events`` over the lake (store migration 10, without typed columns)."""
    return Query("""SELECT e.event, coalesce(m.canonical_id, e.distinct_id) AS distinct_id,
       e.distinct_id AS sent_distinct_id, e.time, e.insert_id, e.properties
FROM lake_events e LEFT JOIN identity_map m ON m.distinct_id = e.distinct_id""", {})


def resolved_profiles() -> Query:
    """The store's ``resolved_profiles`` over the lake: one profile per canonical id, the newest
    (then the later written, then the greater id: the store's tie-break), with the columns the
    store keeps beside each profile (store migration 5)."""
    value = "json_extract(properties, $p_os)"
    sql = f"""WITH placed AS (
    SELECT coalesce(m.canonical_id, p.distinct_id) AS distinct_id, p.properties, p.updated_at, p.sequence,
           p.distinct_id AS profile_id
    FROM lake_profiles_src p LEFT JOIN identity_map m ON m.distinct_id = p.distinct_id),
ranked AS (
    SELECT distinct_id, properties, profile_id,
           row_number() OVER (PARTITION BY distinct_id
                              ORDER BY updated_at DESC NULLS LAST, sequence DESC NULLS LAST, profile_id DESC) AS r,
           max(updated_at) OVER (PARTITION BY distinct_id) AS latest
    FROM placed)
SELECT distinct_id, properties, latest AS updated_at,
       json_type({value}) AS onesignal_user_id_type,
       json_extract_string({value}, '$') AS onesignal_user_id,
       regexp_full_match(properties, '\\s*\\{{\\s*\\}}\\s*') AS empty
FROM ranked WHERE r = 1"""
    return Query(sql, {"p_os": json_pointer(USER_ID_PROPERTY)})


def no_profiles() -> Query:
    """``lake_profiles_src`` for a lake without profiles: the columns, no rows."""
    return Query("""SELECT CAST(NULL AS VARCHAR) AS distinct_id, CAST(NULL AS VARCHAR) AS properties,
       CAST(NULL AS TIMESTAMP) AS updated_at, CAST(NULL AS BIGINT) AS sequence
FROM (SELECT 1 AS x) one WHERE 1 = 0""", {})
