"""Matchability: for every cohort member, exportable to OneSignal or exactly one reason why not.

Reasons (their codes and one-line texts: ``onesignal_ids.REASONS``), checked in this fixed order (the
first that applies is the one reported):

1. ``anonymous``        no profile, or a profile with no properties: Mixpanel exports identified profiles only.
2. ``missing_user_id``  the profile lacks the user-id property (default ``$onesignal_user_id``), or it is null.
3. ``unusable_value``   the value is not a string; is blank (only whitespace); is longer than
                        ``MAX_ID_LENGTH`` (128) characters; or, with ``id_type="subscription_id"``, is not a UUID.
4. ``duplicate``        another profile in the store holds the same id (same id type). One of them keeps
                        it (the winner); the others are duplicates. Winner: the profile the id already
                        resolves to in the identity map (the seed's auto-alias points the id at the first
                        profile that set it, so OneSignal's message events land there too), else the most
                        recently updated profile, else the first distinct_id in sort order. Duplicates are
                        decided over all profiles, not only members: the id means one person whichever
                        cohort is exported.
5. ``over_limit``       exportable, but beyond the first ``limit`` (10,000,000) exportable members in
                        distinct_id order: OneSignal takes at most that many users per exported cohort.

Id types: ``external_id`` (OneSignal External ID, any usable string), ``subscription_id`` (Subscription,
formerly Player, ID: must be a UUID, any version, hyphenated) or ``auto`` (a UUID is a subscription id,
anything else an external id). The length limit counts characters (code points), not bytes. Values are
used exactly as stored: no trimming or case folding.

One engine: `classify_sql` (one query over the members and the profiles' facts), whatever the cohort's
size; tests/matching_oracle.py restates the rules in plain Python and the tests hold the two equal.
The result stays in Arrow up to the export (`Matchability.exportable_table`); pandas only for
`Matchability.members`. `preview` evaluates a cohort and matches it.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from toolkit import cohorts, onesignal_ids
from toolkit.errors import MatchingError
from toolkit.loading.derived import facts_sql, stored_facts
from toolkit.onesignal_ids import COHORT_LIMIT, ID_TYPES, MAX_ID_LENGTH
from toolkit.onesignal_ids import USER_ID_PROPERTY as DEFAULT_USER_ID_PROPERTY
from toolkit.sql import Query, quote_ident, to_utc_naive
from toolkit.store import Store, connection

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["REASONS", "ID_TYPES", "DEFAULT_USER_ID_PROPERTY", "COHORT_LIMIT", "MAX_ID_LENGTH", "COLUMNS",
           "Matchability", "Preview", "classify_sql", "apply_limit", "summarize", "match", "preview"]

REASONS = tuple(onesignal_ids.REASONS)
COLUMNS = ["distinct_id", "onesignal_id", "id_type", "exportable", "reason", "detail"]
SCHEMA = pa.schema([(name, pa.bool_() if name == "exportable" else pa.string()) for name in COLUMNS])
EXPORTED = ["distinct_id", "onesignal_id", "id_type"]     # what an export sends of each exportable member

WINNER_RULE = "the profile the id resolves to, else the most recently updated, else the first distinct_id"
_MEMBERS = "temp._preview_members"   # a preview's evaluated cohort
_SHOWN = 3                        # claimants named in a duplicate's detail before "and N more"
# When each reason applies, over a member ``m`` and its profile's facts ``p``: checked in the order of
# onesignal_ids.REASONS; over_limit is decided after the query, over the exportable members (`apply_limit`).
REASON_SQL = {
    "anonymous": "p.empty IS NULL OR p.empty",
    "missing_user_id": "p.problem = 'missing'",
    "unusable_value": "p.problem IS NOT NULL",
    "duplicate": "p.winner <> m.distinct_id",
}
OVER_LIMIT = "over_limit"




def _over_limit_detail(limit: int) -> str:
    return (f"beyond the first {limit:,} exportable members (by distinct_id): "
            f"a OneSignal cohort export holds at most {limit:,} users")


def _check_options(prop: str, id_type: str, limit: int) -> None:
    if id_type not in ID_TYPES:
        raise MatchingError(f"id_type: expected one of {', '.join(ID_TYPES)}, got {_shown(id_type)}")
    if not isinstance(prop, str) or not prop:
        raise MatchingError(f"user_id_property: expected a property name, got {_shown(prop)}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise MatchingError(f"limit: expected a non-negative integer, got {_shown(limit)}")


# -- the classifier (pure: builds SQL, runs nothing) -----------------------------------------------------

def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _reason_case() -> str:
    """The CASE naming each member's reason (NULL: exportable so far), in onesignal_ids.REASONS order."""
    whens = " ".join(f"WHEN {REASON_SQL[code]} THEN {_sql_text(code)}" for code in REASONS if code in REASON_SQL)
    return f"CASE {whens} END"


def classify_sql(members: Query, *, user_id_property: str = DEFAULT_USER_ID_PROPERTY,
                 id_type: str = "auto", facts: str | None = None, carry: Sequence[str] = ()) -> Query:
    """Each member's row with COLUMNS before the cohort limit (`apply_limit`), as one query over
    ``members`` (a query yielding each member's distinct_id once, e.g. a compiled cohort) and the
    profiles' facts: `facts_sql`, or the table ``facts`` that holds them; ``carry``: more columns of
    ``members`` passed through after COLUMNS (a shared pass's masks: joining them back cost a second
    hash join of every member). Pure: builds SQL, runs nothing."""
    _check_options(user_id_property, id_type, COHORT_LIMIT)
    params = dict(members.params)
    clash = [k for k in params if k[:2] in ("m_", "f_")]
    if clash:
        raise MatchingError(f"member query parameters may not start with m_ or f_: {clash}")
    if facts is None:
        facts, facts_params = facts_sql(user_id_property)
        facts = f"({facts})"
        params.update(facts_params)
    params.update({"m_prop": user_id_property, "m_mode": id_type, "m_max": MAX_ID_LENGTH, "m_rule": WINNER_RULE})
    q = quote_ident
    did = q("distinct_id")
    carried = "".join(f", {q(c)}" for c in carry)
    code = {reason: _sql_text(reason) for reason in REASON_SQL}
    # tests/matching_oracle.py states the same rules in Python; the tests keep the two equal.
    # (array_length, not len: len is a string's length elsewhere; toolkit/dialects.py moves this to Spark)
    sql = f"""
WITH {q("m_members")} AS (SELECT {did}{carried} FROM ({members.sql}) {q("m_src")}),
{q("m_inspected")} AS (   -- the id type decides the rest: a UUID is required, and what kind of id it is
    SELECT {did}, jt, v, empty, claimants, names, winner,
           CASE WHEN problem IS NULL AND $m_mode = 'subscription_id' AND NOT is_uuid THEN 'not_uuid'
                ELSE problem END AS problem,
           CASE WHEN jt <> 'VARCHAR' THEN NULL
                WHEN $m_mode <> 'auto' THEN $m_mode
                WHEN is_uuid THEN 'subscription_id' ELSE 'external_id' END AS kind
    FROM {facts} {q("m_facts")}
),
{q("m_rows")} AS (
    SELECT m.{did}{"".join(f", m.{q(c)}" for c in carry)}, p.jt, p.v, p.problem, p.kind, p.claimants, p.winner,
           CASE WHEN p.claimants > 1 THEN list_filter(p.names, lambda x: x <> m.{did}) END AS others,
           {_reason_case()} AS reason
    FROM {q("m_members")} m LEFT JOIN {q("m_inspected")} p ON p.{did} = m.{did}
)
SELECT {did}, CASE WHEN jt = 'VARCHAR' THEN v END AS onesignal_id,
       CASE WHEN reason IS NULL OR reason = {code["duplicate"]} THEN kind END AS id_type,
       reason IS NULL AS exportable, reason,
       CASE reason
         WHEN {code["anonymous"]} THEN 'no profile properties: an anonymous user never exports'
         WHEN {code["missing_user_id"]} THEN CASE WHEN jt IS NULL THEN 'the profile has no ' || $m_prop || ' property'
                                          ELSE $m_prop || ' is null' END
         WHEN {code["unusable_value"]} THEN CASE problem
             WHEN 'not_string' THEN $m_prop || ' is a ' || CASE jt WHEN 'BOOLEAN' THEN 'boolean'
                 WHEN 'ARRAY' THEN 'list' WHEN 'OBJECT' THEN 'object' ELSE 'number' END || ', not a string'
             WHEN 'blank' THEN $m_prop || ' is blank'
             WHEN 'too_long' THEN $m_prop || ' is ' || length(v) || ' characters long; OneSignal ids are at most '
                                  || $m_max
             ELSE $m_prop || ' is not a UUID; id_type subscription_id needs a Subscription (Player) ID' END
         ELSE CASE WHEN claimants > 1 THEN kind || ' also on '
                      || array_to_string(others[1:{_SHOWN}], ', ')
                      || CASE WHEN array_length(others) > {_SHOWN}
                              THEN ' and ' || (array_length(others) - {_SHOWN}) || ' more'
                              ELSE '' END
                      || '; ' || CASE WHEN reason = {code["duplicate"]} THEN winner ELSE 'this profile' END
                      || ' keeps it (' || $m_rule || ')'
                   ELSE '' END
       END AS detail{carried}
FROM {q("m_rows")}"""
    return Query(sql, params)


def apply_limit(table: pa.Table, limit: int) -> pa.Table:
    """Mark exportable members beyond the first ``limit`` by distinct_id over_limit (sorting the table
    by distinct_id only when there are that many)."""
    if (pc.sum(table.column("exportable")).as_py() or 0) <= limit:
        return table
    table = table.sort_by("distinct_id")
    exportable = table.column("exportable")
    over = pc.and_(exportable, pc.greater(pc.cumulative_sum(pc.cast(exportable, pa.int64())), limit))
    for name, value in (("exportable", False), ("reason", OVER_LIMIT), ("detail", _over_limit_detail(limit))):
        column = pc.if_else(over, pa.scalar(value, table.schema.field(name).type), table.column(name))
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


# -- the shell: run the query, summarise, preview a cohort -------------------------------------------------

class Matchability:
    """``summary`` (counts per reason, match rate) and ``table``, the per-member Arrow table with COLUMNS
    (in no particular order). The DataFrame (``members``) is made on first use: for a million members
    that conversion alone takes longer than classifying them."""

    def __init__(self, summary: dict, table: pa.Table):
        self.summary = summary
        self.table = table
        self._members: pd.DataFrame | None = None

    @property
    def members(self) -> pd.DataFrame:
        """One row per member, sorted by distinct_id."""
        if self._members is None:
            self._members = _frame(self.table.sort_by("distinct_id"))
        return self._members

    def first_rows(self, rows: int) -> list[dict]:
        """The first ``rows`` members by distinct_id as dicts (None for an empty cell), without pandas."""
        return _first(self.table, rows).to_pylist()

    def head(self, rows: int) -> pd.DataFrame:
        """The first ``rows`` members by distinct_id, without converting the whole table."""
        return self._members.head(rows) if self._members is not None else _frame(_first(self.table, rows))

    @property
    def exportable(self) -> pd.DataFrame:
        """What an export sends: distinct_id, onesignal_id, id_type of exportable members."""
        return self.members.loc[self.members["exportable"], EXPORTED]

    @property
    def exportable_table(self) -> pa.Table:
        """The same as Arrow, sorted by distinct_id, without pandas: what `sync.targets` hands the export."""
        return self.table.filter(self.table.column("exportable")).select(EXPORTED).sort_by("distinct_id")


class Preview(Matchability):
    """A cohort's matchability as of ``now``, with the seconds its evaluation and matching took."""

    def __init__(self, summary: dict, table: pa.Table, *, cohort: str = "",
                 version: int | None = None, now: dt.datetime | None = None, seconds: dict | None = None):
        super().__init__(summary, table)
        self.cohort, self.version, self.now, self.seconds = cohort, version, now, seconds or {}

    def to_dict(self, rows: int | None = None) -> dict:
        """The summary and the members (all, or the first ``rows`` by distinct_id) as JSON-ready records."""
        shown = self.table.sort_by("distinct_id") if rows is None else _first(self.table, rows)
        return {"summary": self.summary, "members": shown.to_pylist()}


def _frame(table: pa.Table) -> pd.DataFrame:
    """The per-member DataFrame (pandas is imported by pyarrow only here)."""
    return table.cast(SCHEMA).to_pandas()


def _first(table: pa.Table, rows: int) -> pa.Table:
    """The first ``rows`` members by distinct_id, without sorting them all."""
    rows = max(rows, 0)
    if rows >= table.num_rows:
        return table.sort_by("distinct_id")
    return table.take(pc.select_k_unstable(table, rows, [("distinct_id", "ascending")])).sort_by("distinct_id")


def summarize(members: pa.Table, *, user_id_property: str = DEFAULT_USER_ID_PROPERTY,
              id_type: str = "auto", limit: int = COHORT_LIMIT) -> dict:
    """Counts of a per-member table (Arrow, COLUMNS): members, exportable, match rate, per reason
    (every code of onesignal_ids.REASONS) and per exported id type."""
    exportable = members.column("exportable")
    total, exported = members.num_rows, int(pc.sum(exportable).as_py() or 0)
    counts = _value_counts(members.column("reason"))
    kinds = _value_counts(pc.filter(members.column("id_type"), exportable))
    return {
        "members": total, "exportable": exported,
        "match_rate": round(exported / total, 4) if total else 0.0,
        "reasons": {r: int(counts.get(r, 0)) for r in REASONS},
        "id_types": {k: int(kinds.get(k, 0)) for k in ("external_id", "subscription_id")},
        "user_id_property": user_id_property, "id_type": id_type, "limit": limit,
    }


def _value_counts(column) -> dict:
    counted = pc.value_counts(column)
    return dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True))


def match(store: Store, members: Iterable[str] | Query, *, user_id_property: str = DEFAULT_USER_ID_PROPERTY,
          id_type: str = "auto", limit: int = COHORT_LIMIT) -> Matchability:
    """Classify members (canonical ids, or a query producing them) against the store, in one query."""
    con = connection(store)
    options: dict[str, Any] = {"user_id_property": user_id_property, "id_type": id_type, "limit": limit}
    _check_options(user_id_property, id_type, limit)
    source = members if isinstance(members, Query) else _list_query(members)
    sql, params = classify_sql(source, user_id_property=user_id_property, id_type=id_type,
                               facts=stored_facts(con, user_id_property))
    table = apply_limit(con.sql(sql, params=params).to_arrow_table().select(COLUMNS).cast(SCHEMA), limit)
    return Matchability(summarize(table, **options), table)


def _list_query(ids: Iterable[str]) -> Query:
    return Query(f"SELECT unnest($ids::VARCHAR[]) AS {quote_ident('distinct_id')}",
                 {"ids": list(dict.fromkeys(ids))})


def preview(store: Store, name: str | cohorts.Cohort, *, now: dt.datetime | None = None, definitions=None,
            user_id_property: str = DEFAULT_USER_ID_PROPERTY, id_type: str = "auto",
            limit: int = COHORT_LIMIT) -> Preview:
    """Evaluate a cohort as of ``now`` and say, for each member, whether it exports to OneSignal."""
    con = connection(store)
    now = now or dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    if isinstance(name, str) and name not in cohorts.by_name(definitions):
        name = cohorts.resolve_name(store, name)      # "pro plan in the us" finds "Pro plan in the US"
    # The members stay in DuckDB: a million ids through Python cost more than classifying them.
    sql, params = cohorts.query(store, name, now=now, definitions=definitions, on_store=True)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_MEMBERS} AS {sql}", params)
    evaluated = time.perf_counter()
    try:
        result = match(store, Query(f"SELECT {quote_ident('distinct_id')} FROM {_MEMBERS}", {}),
                       user_id_property=user_id_property, id_type=id_type, limit=limit)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {_MEMBERS}")
    matched = time.perf_counter()
    cohort_name = name if isinstance(name, str) else name.name
    from_store = isinstance(name, str) and name not in cohorts.by_name(definitions)
    version = cohorts.version_of(store, cohort_name) if from_store else None
    summary = {"cohort": cohort_name, "version": version, "now": to_utc_naive(now).isoformat() + "Z",
               **result.summary}
    return Preview(summary, result.table, cohort=cohort_name, version=version, now=now,
                   seconds={"evaluate": round(evaluated - started, 4), "match": round(matched - evaluated, 4)})


def _shown(value) -> str:
    """A value as JSON, the way a person wrote it (never Python's repr)."""
    return json.dumps(value, ensure_ascii=False, default=str)
