"""The facts matching needs of every profile: a load stores them (``refresh``, in its own transaction)
and a preview reads them, so loading needs neither the cohort compiler nor matching's Arrow and pandas
code. The id rules they apply are in toolkit/onesignal_ids.py.
"""

from __future__ import annotations

from toolkit.onesignal_ids import BLANKS, MAX_ID_LENGTH, UUID
from toolkit.onesignal_ids import USER_ID_PROPERTY as DEFAULT_USER_ID_PROPERTY
from toolkit.sql import Query, json_pointer, quote_ident

FACTS_TABLE = "user_id_facts"        # refresh: the default property's facts, as of a load


def facts_sql(user_id_property: str = DEFAULT_USER_ID_PROPERTY) -> Query:
    """What matching needs of every resolved profile, whatever the cohort and id type: distinct_id,
    updated_at, empty, the value's JSON type (jt) and text (v), ``problem`` (missing, not_string,
    blank, too_long or NULL), is_uuid, and for a value held by several profiles its claimants, their
    sorted names and the winner (tests/matching_oracle.py's _rank: the same rule in Python). Pure.

    Claimants are counted by value alone: a value's id type follows from its text (auto), or is the
    same for all, and subscription_id only refuses the non-UUIDs, whose claimants are all non-UUIDs.
    Only values held by several profiles are ranked: a sorted list per value costs more than the rest."""
    params = {"f_uuid": UUID, "f_blanks": BLANKS, "f_max": MAX_ID_LENGTH}
    q = quote_ident
    did = q("distinct_id")
    # The default property is kept beside each profile (store migration 5): no profile JSON is parsed.
    values = f"""SELECT {did}, {q("updated_at")} AS updated_at, {q("empty")} AS empty,
                        {q("onesignal_user_id_type")} AS jt, {q("onesignal_user_id")} AS v
                 FROM {q("resolved_profiles")}"""
    if user_id_property != DEFAULT_USER_ID_PROPERTY:
        params["f_path"] = json_pointer(user_id_property)
        values = f"""SELECT {did}, updated_at, empty, json_type(x) AS jt, json_extract_string(x, '$') AS v
            FROM (SELECT {did}, {q("updated_at")} AS updated_at, {q("empty")} AS empty,
                         json_extract({q("properties")}, $f_path) AS x FROM {q("resolved_profiles")})"""
    sql = f"""
WITH {q("f_checked")} AS MATERIALIZED (
    SELECT *,
        CASE WHEN jt IS NULL OR jt = 'NULL' THEN 'missing'
             WHEN jt <> 'VARCHAR' THEN 'not_string'
             WHEN ltrim(v, $f_blanks) = '' THEN 'blank'
             WHEN length(v) > $f_max THEN 'too_long'
        END AS problem,
        -- the regular expression only for values of a UUID's length: most ids are not
        jt = 'VARCHAR' AND strlen(v) = 36 AND regexp_full_match(v, $f_uuid) AS is_uuid
    FROM ({values})
),
{q("f_shared")} AS (
    SELECT v, count(*) AS claimants FROM {q("f_checked")} WHERE problem IS NULL GROUP BY v HAVING count(*) > 1
),
{q("f_groups")} AS (
    SELECT c.v, any_value(s.claimants) AS claimants, list(c.{did} ORDER BY c.{did}) AS names,
           list(c.{did} ORDER BY (c.{did} = coalesce(a.{q("canonical_id")}, c.v)) DESC,
                                 c.updated_at DESC NULLS LAST, c.{did})[1] AS winner
    FROM {q("f_checked")} c JOIN {q("f_shared")} s ON s.v = c.v
    LEFT JOIN {q("identity_map")} a ON a.{did} = c.v
    WHERE c.problem IS NULL
    GROUP BY c.v
)
SELECT c.{did}, c.updated_at, c.empty, c.jt, c.v, c.problem, c.is_uuid, g.claimants, g.names, g.winner
FROM {q("f_checked")} c LEFT JOIN {q("f_groups")} g ON g.v = c.v AND c.problem IS NULL"""
    return Query(sql, params)


def refresh(con, generation: int, *, changed: bool = True) -> None:
    """Store `facts_sql` of the default user-id property as of load ``generation``, in the load's own
    transaction before its manifest row, so a preview reads the facts instead of recomputing them from
    every profile (1M profiles: 0.5 s instead of 1 s; the rebuild costs a load 2 s). A load that
    changed no profile and no identity link (``changed``) only moves the stamp of current facts."""
    if changed or stored_facts(con, DEFAULT_USER_ID_PROPERTY) is None:
        sql, params = facts_sql()
        con.execute(f"CREATE OR REPLACE TABLE {FACTS_TABLE} AS {sql}", params)
    con.execute(f"COMMENT ON TABLE {FACTS_TABLE} IS 'generation {int(generation)}'")


def stored_facts(con, user_id_property: str) -> str | None:
    """The stored facts table if it holds this property as of the newest load, else None."""
    if user_id_property != DEFAULT_USER_ID_PROPERTY:
        return None
    current = con.execute(f"""
        SELECT (SELECT comment FROM duckdb_tables() WHERE schema_name = 'main' AND table_name = '{FACTS_TABLE}')
               = 'generation ' || coalesce((SELECT max(file_id) FROM loads), 0)""").fetchall()[0][0]
    return FACTS_TABLE if current else None
