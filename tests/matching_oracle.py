"""The matching rules restated in plain Python over profile rows: the oracle toolkit/matching.py's SQL
(its only engine) is checked against. Written for clarity, not speed; see matching's docstring for the
rules. `classify` takes the rows themselves; `match` fetches them from a store, the way the runtime's
Python path did before SQL became the only one."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from toolkit.matching import COLUMNS, SCHEMA, WINNER_RULE, _check_options, _frame, _over_limit_detail
from toolkit.onesignal_ids import BLANKS, COHORT_LIMIT, MAX_ID_LENGTH, REASONS, USER_ID_PROPERTY, UUID
from toolkit.sql import Query, json_pointer
from toolkit.store import Store

_UUID, _BLANK = re.compile(UUID), re.compile(f"[{BLANKS}]*")
_SHOWN = 3                        # claimants named in a duplicate's detail before "and N more"


@dataclass(frozen=True)
class ProfileRow:
    distinct_id: str
    properties: Mapping | str | None      # a dict or its JSON text; None: no profile
    updated_at: dt.datetime | None = None


def classify(members: Iterable[str], profiles: Iterable[ProfileRow], *,
             aliases: Mapping[str, str] | None = None, user_id_property: str = USER_ID_PROPERTY,
             id_type: str = "auto", limit: int = COHORT_LIMIT) -> pd.DataFrame:
    """One row per member (sorted by distinct_id) with COLUMNS. ``profiles`` must hold every member's
    profile and every profile that may share an id with one (duplicates are decided among them);
    ``aliases`` is the identity map (id -> canonical id), used to pick a duplicate's winner."""
    return _frame(classify_table(members, profiles, aliases=aliases, user_id_property=user_id_property,
                                 id_type=id_type, limit=limit))


def classify_table(members: Iterable[str], profiles: Iterable[ProfileRow], *,
                   aliases: Mapping[str, str] | None = None, user_id_property: str = USER_ID_PROPERTY,
                   id_type: str = "auto", limit: int = COHORT_LIMIT) -> pa.Table:
    """`classify` as an Arrow table (what `matching.summarize` counts)."""
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
    return pa.Table.from_pylist([dict(zip(COLUMNS, out, strict=True)) for out in rows], schema=SCHEMA)


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
    """Claimants of one id, winner first (see matching's docstring)."""
    owner = aliases.get(value, value)
    oldest = dt.datetime.min
    by_name = sorted(dids)
    by_recency = sorted(by_name, key=lambda d: by_id[d][0].updated_at or oldest, reverse=True)
    return sorted(by_recency, key=lambda d: d != owner)        # stable sorts: owner, recency, name


def _others(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


# -- against a store --------------------------------------------------------------------------------------

def match(store: Store, members: Iterable[str] | Query, *, user_id_property: str = USER_ID_PROPERTY,
          id_type: str = "auto", limit: int = COHORT_LIMIT,
          fetched: tuple[list[ProfileRow], dict[str, str]] | None = None) -> tuple[pd.DataFrame, dict]:
    """What `matching.match` must give (its members and summary), computed by `classify` over the
    profiles fetched from the store (``fetched``: what `fetch_profiles` gave for these members, to try
    several id types and limits on one fetch)."""
    options = {"user_id_property": user_id_property, "id_type": id_type, "limit": limit}
    con = store.con
    ids = [r[0] for r in con.execute(*members).fetchall()] if isinstance(members, Query) else list(members)
    profiles, aliases = fetched or fetch_profiles(store, ids, user_id_property)
    table = classify_table(ids, profiles, aliases=aliases, **options)
    return _frame(table), summarize(table.to_pylist(), **options)


def summarize(rows: list[dict], **options) -> dict:
    """What `matching.summarize` must count, from the rows one by one."""
    exported = [r for r in rows if r["exportable"]]
    return {"members": len(rows), "exportable": len(exported),
            "match_rate": round(len(exported) / len(rows), 4) if rows else 0.0,
            "reasons": {code: sum(r["reason"] == code for r in rows) for code in REASONS},
            "id_types": {kind: sum(r["id_type"] == kind for r in exported)
                         for kind in ("external_id", "subscription_id")},
            **options}


def fetch_profiles(store: Store, ids: list[str], prop: str) -> tuple[list[ProfileRow], dict[str, str]]:
    """Members' profiles plus every profile sharing a user-id value with one, and the aliases of those values."""
    con = store.con
    rows = con.execute("""
        WITH m AS (SELECT DISTINCT unnest($ids::VARCHAR[]) AS distinct_id),
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
