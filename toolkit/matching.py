"""Matchability: for every cohort member, exportable to OneSignal or exactly one reason why not.

Reasons, checked in this fixed order (the first that applies is the one reported):

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

Two paths compute the same table: `classify` (pure Python over profile rows; the reference) and
`classify_sql` (one query, for big cohorts). `match` picks one; `preview` evaluates a cohort and matches it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from toolkit import cohorts, onesignal_ids
from toolkit.errors import MatchingError
from toolkit.loading.derived import facts_sql, stored_facts
from toolkit.onesignal_ids import BLANKS, COHORT_LIMIT, ID_TYPES, MAX_ID_LENGTH, UUID
from toolkit.onesignal_ids import USER_ID_PROPERTY as DEFAULT_USER_ID_PROPERTY
from toolkit.sql import Query, json_pointer, quote_ident, to_utc_naive

__all__ = ["REASONS", "ID_TYPES", "DEFAULT_USER_ID_PROPERTY", "COHORT_LIMIT", "MAX_ID_LENGTH", "COLUMNS",
           "ProfileRow", "Matchability", "Preview", "classify", "classify_sql", "summarize", "match",
           "preview"]

REASONS = tuple(onesignal_ids.REASONS)
PYTHON_MAX_MEMBERS = 1_000        # above this, `match` classifies inside DuckDB (one query, no row loop)
COLUMNS = ["distinct_id", "onesignal_id", "id_type", "exportable", "reason", "detail"]
SCHEMA = pa.schema([(name, pa.bool_() if name == "exportable" else pa.string()) for name in COLUMNS])

# Patterns shared by both paths (Python re and DuckDB's RE2 agree on these ASCII classes).
_UUID, _BLANK = re.compile(UUID), re.compile(f"[{BLANKS}]*")
WINNER_RULE = "the profile the id resolves to, else the most recently updated, else the first distinct_id"
_MEMBERS = "temp._preview_members"   # a preview's evaluated cohort
_SHOWN = 3                        # claimants named in a duplicate's detail before "and N more"


@dataclass(frozen=True)
class ProfileRow:
    distinct_id: str
    properties: Mapping | str | None      # a dict or its JSON text; None: no profile
    updated_at: dt.datetime | None = None


# -- the pure path ------------------------------------------------------------------------------------

def classify(members: Iterable[str], profiles: Iterable[ProfileRow], *,
             aliases: Mapping[str, str] | None = None, user_id_property: str = DEFAULT_USER_ID_PROPERTY,
             id_type: str = "auto", limit: int = COHORT_LIMIT) -> pd.DataFrame:
    """One row per member (sorted by distinct_id) with COLUMNS. ``profiles`` must hold every member's
    profile and every profile that may share an id with one (duplicates are decided among them);
    ``aliases`` is the identity map (id -> canonical id), used to pick a duplicate's winner."""
    _check_options(user_id_property, id_type, limit)
    aliases = aliases or {}
    by_id: dict[str, tuple[ProfileRow, Mapping | None]] = {}
    for row in profiles:
        props = json.loads(row.properties) if isinstance(row.properties, str) else row.properties
        by_id[row.distinct_id] = (row, props)
    inspected = {did: _inspect(props, user_id_property, id_type) for did, (_, props) in by_id.items()}

    claims: dict[tuple, list[str]] = defaultdict(list)     # (id type, id) -> claimants
    for did, (problem, value, kind) in inspected.items():
        if problem is None:
            claims[(kind, value)].append(did)
    ranked = {key: _rank(dids, key[1], by_id, aliases) for key, dids in claims.items() if len(dids) > 1}

    rows = []
    for did in sorted(set(members)):
        props = by_id.get(did, (None, None))[1]
        problem, value, kind = inspected.get(did, ("missing", None, None))
        reason, detail, usable = _reason(props, problem, value, kind, user_id_property)
        if reason is None and (kind, value) in ranked:
            order = ranked[(kind, value)]
            others = _others([d for d in sorted(order) if d != did])
            if order[0] != did:
                reason = "duplicate"
                detail = f"{kind} also on {others}; {order[0]} keeps it ({WINNER_RULE})"
            else:
                detail = f"{kind} also on {others}; this profile keeps it ({WINNER_RULE})"
        rows.append([did, value if isinstance(value, str) else None, kind if usable else None,
                     reason is None, reason, detail])
    exportable = 0
    for out in rows:      # sorted by distinct_id: the first `limit` exportable members export
        if out[3]:
            exportable += 1
            if exportable > limit:
                out[3:] = [False, "over_limit", _over_limit_detail(limit)]
    return _frame(pa.Table.from_pylist([dict(zip(COLUMNS, out, strict=True)) for out in rows], schema=SCHEMA))


def _frame(table: pa.Table) -> pd.DataFrame:
    """The per-member DataFrame, the same dtypes whichever path made it."""
    return table.cast(SCHEMA).to_pandas()


def _inspect(props, prop: str, id_type: str) -> tuple[str | None, object, str | None]:
    """(problem or None, value, id type) of one profile's user-id property."""
    if not props or prop not in props or props[prop] is None:
        return "missing", None, None
    value = props[prop]
    if not isinstance(value, str):
        return "not_string", value, None
    is_uuid = _UUID.fullmatch(value) is not None
    kind = id_type if id_type != "auto" else ("subscription_id" if is_uuid else "external_id")
    if _BLANK.fullmatch(value):
        return "blank", value, kind
    if len(value) > MAX_ID_LENGTH:
        return "too_long", value, kind
    if id_type == "subscription_id" and not is_uuid:
        return "not_uuid", value, kind
    return None, value, kind


def _reason(props, problem, value, kind, prop: str) -> tuple[str | None, str, bool]:
    """(reason, detail, usable) before duplicates and the limit are considered."""
    if not props:
        return "anonymous", "no profile properties: an anonymous user never exports", False
    if problem == "missing":
        absent = props.get(prop, ...) is ...
        return "missing_user_id", (f"the profile has no {prop} property" if absent else f"{prop} is null"), False
    if problem is None:
        return None, "", True
    return "unusable_value", _unusable_detail(problem, value, prop), False


def _unusable_detail(problem: str, value, prop: str) -> str:
    if problem == "not_string":
        kind = ("boolean" if isinstance(value, bool) else "number" if isinstance(value, (int, float))
                else "list" if isinstance(value, list) else "object")
        return f"{prop} is a {kind}, not a string"
    if problem == "blank":
        return f"{prop} is blank"
    if problem == "too_long":
        return f"{prop} is {len(value)} characters long; OneSignal ids are at most {MAX_ID_LENGTH}"
    return f"{prop} is not a UUID; id_type subscription_id needs a Subscription (Player) ID"


def _rank(dids: list[str], value: str, by_id, aliases: Mapping[str, str]) -> list[str]:
    """Claimants of one id, winner first (see the module docstring)."""
    owner = aliases.get(value, value)
    oldest = dt.datetime.min
    by_name = sorted(dids)
    by_recency = sorted(by_name, key=lambda d: by_id[d][0].updated_at or oldest, reverse=True)
    return sorted(by_recency, key=lambda d: d != owner)        # stable sorts: owner, recency, name


def _others(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


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


# -- the SQL path --------------------------------------------------------------------------------------

def classify_sql(members: Query, *, user_id_property: str = DEFAULT_USER_ID_PROPERTY,
                 id_type: str = "auto", facts: str | None = None) -> Query:
    """The same table as `classify` before the cohort limit (`apply_limit`), as one query over
    ``members`` (a query yielding each member's distinct_id once, e.g. a compiled cohort) and the
    profiles' facts: `facts_sql`, or the table ``facts`` that holds them. Pure: builds SQL, runs nothing."""
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
    # Each CASE mirrors _inspect / _reason / _unusable_detail above; tests keep the two paths equal.
    sql = f"""
WITH {q("m_members")} AS (SELECT {did} FROM ({members.sql}) {q("m_src")}),
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
    SELECT m.{did}, p.jt, p.v, p.problem, p.kind, p.claimants, p.winner,
           list_filter(p.names, lambda x: x <> m.{did}) AS others,
           CASE WHEN p.empty IS NULL OR p.empty THEN 'anonymous'
                WHEN p.problem = 'missing' THEN 'missing_user_id'
                WHEN p.problem IS NOT NULL THEN 'unusable_value'
                WHEN p.winner <> m.{did} THEN 'duplicate'
           END AS reason
    FROM {q("m_members")} m LEFT JOIN {q("m_inspected")} p ON p.{did} = m.{did}
)
SELECT {did}, CASE WHEN jt = 'VARCHAR' THEN v END AS onesignal_id,
       CASE WHEN reason IS NULL OR reason = 'duplicate' THEN kind END AS id_type, reason IS NULL AS exportable,
       reason,
       CASE reason
         WHEN 'anonymous' THEN 'no profile properties: an anonymous user never exports'
         WHEN 'missing_user_id' THEN CASE WHEN jt IS NULL THEN 'the profile has no ' || $m_prop || ' property'
                                          ELSE $m_prop || ' is null' END
         WHEN 'unusable_value' THEN CASE problem
             WHEN 'not_string' THEN $m_prop || ' is a ' || CASE jt WHEN 'BOOLEAN' THEN 'boolean'
                 WHEN 'ARRAY' THEN 'list' WHEN 'OBJECT' THEN 'object' ELSE 'number' END || ', not a string'
             WHEN 'blank' THEN $m_prop || ' is blank'
             WHEN 'too_long' THEN $m_prop || ' is ' || length(v) || ' characters long; OneSignal ids are at most '
                                  || $m_max
             ELSE $m_prop || ' is not a UUID; id_type subscription_id needs a Subscription (Player) ID' END
         ELSE CASE WHEN claimants > 1 THEN kind || ' also on '
                      || array_to_string(others[1:{_SHOWN}], ', ')
                      || CASE WHEN len(others) > {_SHOWN} THEN ' and ' || (len(others) - {_SHOWN}) || ' more'
                              ELSE '' END
                      || '; ' || CASE WHEN reason = 'duplicate' THEN winner ELSE 'this profile' END
                      || ' keeps it (' || $m_rule || ')'
                   ELSE '' END
       END AS detail
FROM {q("m_rows")}"""
    return Query(sql, params)


def apply_limit(table: pa.Table, limit: int) -> pa.Table:
    """Mark exportable members beyond the first ``limit`` by distinct_id over_limit (sorting the table
    by distinct_id only when there are that many)."""
    if (pc.sum(table.column("exportable")).as_py() or 0) <= limit:
        return table
    table = table.sort_by("distinct_id")
    exportable = table.column("exportable").to_numpy(zero_copy_only=False)
    over = pa.array(exportable & (np.cumsum(exportable) > limit))
    for name, value in (("exportable", False), ("reason", "over_limit"), ("detail", _over_limit_detail(limit))):
        column = pc.if_else(over, pa.scalar(value, table.schema.field(name).type), table.column(name))
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


# -- the shell: run one path, summarise, preview a cohort -------------------------------------------------

class Matchability:
    """``summary`` (counts per reason, match rate) and ``members``, the per-member table with COLUMNS.
    The SQL path keeps the table in Arrow and makes the DataFrame on first use: for a million members
    that conversion alone takes longer than classifying them."""

    def __init__(self, summary: dict, members: pd.DataFrame | pa.Table):
        self.summary = summary
        self._members = members

    @property
    def members(self) -> pd.DataFrame:
        """One row per member, sorted by distinct_id."""
        if isinstance(self._members, pa.Table):
            self._members = _frame(self._members.sort_by("distinct_id"))
        return self._members

    def head(self, rows: int) -> pd.DataFrame:
        """The first ``rows`` members by distinct_id, without converting the whole table."""
        if isinstance(self._members, pa.Table):
            return _frame(_first(self._members, rows))
        return self._members.head(rows)

    @property
    def exportable(self) -> pd.DataFrame:
        """What an export sends: distinct_id, onesignal_id, id_type of exportable members."""
        return self.members.loc[self.members["exportable"], ["distinct_id", "onesignal_id", "id_type"]]


class Preview(Matchability):
    """A cohort's matchability as of ``now``, with the seconds its evaluation and matching took."""

    def __init__(self, summary: dict, members: pd.DataFrame | pa.Table, *, cohort: str = "",
                 version: int | None = None, now: dt.datetime | None = None, seconds: dict | None = None):
        super().__init__(summary, members)
        self.cohort, self.version, self.now, self.seconds = cohort, version, now, seconds or {}

    def to_dict(self, rows: int | None = None) -> dict:
        frame = self.members if rows is None else self.head(rows)
        records = [{k: (None if not isinstance(v, (bool, str)) and pd.isna(v) else v) for k, v in r.items()}
                   for r in frame.to_dict(orient="records")]
        return {"summary": self.summary, "members": records}


def _first(table: pa.Table, rows: int) -> pa.Table:
    """The first ``rows`` members by distinct_id, without sorting them all."""
    return table.take(pc.select_k_unstable(table, rows, [("distinct_id", "ascending")])).sort_by("distinct_id")


def summarize(members: pd.DataFrame | pa.Table, *, user_id_property: str = DEFAULT_USER_ID_PROPERTY,
              id_type: str = "auto", limit: int = COHORT_LIMIT) -> dict:
    if isinstance(members, pa.Table):
        exportable = members.column("exportable")
        total, exported = members.num_rows, int(pc.sum(exportable).as_py() or 0)
        counts = _value_counts(members.column("reason"))
        kinds = _value_counts(pc.filter(members.column("id_type"), exportable))
    else:
        total, exported = len(members), int(members["exportable"].sum())
        counts = members["reason"].value_counts()
        kinds = members.loc[members["exportable"], "id_type"].value_counts()
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


def match(con, members: Iterable[str] | Query, *, user_id_property: str = DEFAULT_USER_ID_PROPERTY,
          id_type: str = "auto", limit: int = COHORT_LIMIT, engine: str = "auto") -> Matchability:
    """Classify members (a list of canonical ids, or a query producing them) against the store.
    engine: "python" (fetch rows, run `classify`), "sql" (`classify_sql` in DuckDB) or "auto" (python
    for a list of at most PYTHON_MAX_MEMBERS ids, else sql)."""
    con = getattr(con, "con", con)
    if engine not in ("auto", "python", "sql"):
        raise MatchingError(f"engine: expected auto, python or sql, got {_shown(engine)}")
    options: dict[str, Any] = {"user_id_property": user_id_property, "id_type": id_type, "limit": limit}
    _check_options(user_id_property, id_type, limit)
    if engine == "auto":
        engine = "python" if not isinstance(members, Query) and len(members := list(members)) <= PYTHON_MAX_MEMBERS \
            else "sql"
    if engine == "sql":
        source = members if isinstance(members, Query) else _list_query(members)
        sql, params = classify_sql(source, user_id_property=user_id_property, id_type=id_type,
                                   facts=stored_facts(con, user_id_property))
        table = apply_limit(con.sql(sql, params=params).to_arrow_table().select(COLUMNS).cast(SCHEMA), limit)
        return Matchability(summarize(table, **options), table)
    ids = [r[0] for r in con.execute(*members).fetchall()] if isinstance(members, Query) else list(members)
    profiles, aliases = _fetch_profiles(con, ids, user_id_property)
    frame = classify(ids, profiles, aliases=aliases, **options)
    return Matchability(summarize(frame, **options), frame.reset_index(drop=True))


def _list_query(ids: Iterable[str]) -> Query:
    return Query(f"SELECT unnest($ids) AS {quote_ident('distinct_id')}", {"ids": list(dict.fromkeys(ids))})


def _fetch_profiles(con, ids: list[str], prop: str) -> tuple[list[ProfileRow], dict[str, str]]:
    """Members' profiles plus every profile sharing a user-id value with one, and the aliases of those values."""
    rows = con.execute("""
        WITH m AS (SELECT DISTINCT unnest($ids) AS distinct_id),
        p AS (SELECT distinct_id, properties, updated_at, json_extract(properties, $path) AS x
              FROM resolved_profiles),
        s AS MATERIALIZED (SELECT *, CASE WHEN json_type(x) = 'VARCHAR' THEN json_extract_string(x, '$') END AS v
                           FROM p),
        mine AS (SELECT DISTINCT v FROM s JOIN m USING (distinct_id) WHERE v IS NOT NULL)
        SELECT distinct_id, properties, updated_at FROM s
        WHERE distinct_id IN (SELECT distinct_id FROM m) OR v IN (SELECT v FROM mine)""",
                       {"ids": ids, "path": json_pointer(prop)}).fetchall()
    profiles = [ProfileRow(*row) for row in rows]
    values = sorted({v for _, text, _ in rows if isinstance(v := json.loads(text).get(prop), str)})
    aliases = dict(con.execute("SELECT distinct_id, canonical_id FROM identity_map "
                               "WHERE distinct_id IN (SELECT unnest($v))", {"v": values}).fetchall()) if values else {}
    return profiles, aliases


def preview(store, name: str | cohorts.Cohort, *, now: dt.datetime | None = None, definitions=None,
            user_id_property: str = DEFAULT_USER_ID_PROPERTY, id_type: str = "auto",
            limit: int = COHORT_LIMIT, engine: str = "auto") -> Preview:
    """Evaluate a cohort as of ``now`` and say, for each member, whether it exports to OneSignal."""
    con = getattr(store, "con", store)
    now = now or dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    if isinstance(name, str) and name not in cohorts.by_name(definitions):
        name = cohorts.resolve_name(con, name)      # "pro plan in the us" finds "Pro plan in the US"
    # The members stay in DuckDB: a million ids through Python cost more than classifying them.
    sql, params = cohorts.query(con, name, now=now, definitions=definitions)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_MEMBERS} AS {sql}", params)
    evaluated = time.perf_counter()
    try:
        result = match(con, Query(f"SELECT {quote_ident('distinct_id')} FROM {_MEMBERS}", {}),
                       user_id_property=user_id_property, id_type=id_type, limit=limit, engine=engine)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {_MEMBERS}")
    matched = time.perf_counter()
    cohort_name = name if isinstance(name, str) else name.name
    from_store = isinstance(name, str) and name not in cohorts.by_name(definitions)
    version = cohorts.version_of(con, cohort_name) if from_store else None
    summary = {"cohort": cohort_name, "version": version, "now": to_utc_naive(now).isoformat() + "Z",
               **result.summary}
    return Preview(summary, result._members, cohort=cohort_name, version=version, now=now,
                   seconds={"evaluate": round(evaluated - started, 4), "match": round(matched - evaluated, 4)})


def _shown(value) -> str:
    """A value as JSON, the way a person wrote it (never Python's repr)."""
    return json.dumps(value, ensure_ascii=False, default=str)
