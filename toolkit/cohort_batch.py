"""Many cohorts evaluated in one pass, then matched in one query: what a sync cycle of sixty cohorts needs.

Evaluating cohorts one by one scans the events once per cohort. ``cohort_sql.compile_cohorts`` puts the
event rules of every dynamic cohort in one aggregation (a rule several cohorts share is counted once):
``evaluate`` runs it into a temp table, one row per user who is a member of any of them, each cohort a
bit of a 64-bit mask column (``Members.bit``: sixty boolean columns made every copy of the table and
every read of it sixty columns wide; classifying the members at 1M took 0.21 s, with masks 0.08 s; 64-bit
masks, not 128: reading sixty bits of a UHUGEINT per row took planning at 10M from 3.0 to 4.0 s of CPU).
``match`` classifies those users once (matchability does not depend on the cohort, only on the user-id
property and id type) and then gives each cohort its own ``Matchability``, the
same as ``matching.match`` of that cohort alone. Static cohorts read no events: each is evaluated on
its own, its members need not be known users. Tests hold every answer equal to the cohort's own.

    members = cohort_batch.evaluate(store, ["Pro plan in the US", "Purchasers last 30 days"], now=now)
    found = cohort_batch.match(store, members)          # cohort -> Matchability
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from toolkit import cohorts, event_columns, kept_pass, matching
from toolkit.cohort_model import Cohort, normalize
from toolkit.cohort_sql import EVENTS_VIEW, PROFILES_VIEW, compile_cohorts, filtered_properties
from toolkit.loading.derived import stored_facts
from toolkit.sql import Query, quote_ident
from toolkit.store import Store, connection

MEMBERS_TABLE = "temp._batch_members"       # the shared pass: distinct_id and the cohorts' masks (k0, k1...)
MATCHED_TABLE = "temp._batch_matched"       # its users classified, with the same masks
MASK_BITS = 64                              # cohorts per mask column (UBIGINT)

_DID = quote_ident("distinct_id")


@dataclass
class Members:
    """Where each cohort's members are, after ``evaluate``: a query per cohort yielding its distinct_ids."""
    flags: dict[str, tuple[str, int]] = field(default_factory=dict)  # dynamic cohort -> (mask column, its bit)
    static: dict[str, Query] = field(default_factory=dict)   # static cohort -> its own query
    refreshed: int | None = None    # kept pass brought up to date: the users evaluated again (None: whole)
    refreshed_from: dt.datetime | None = None   # and the moment it was brought up from (kept_pass.USERS: who)
    kept_at: dt.datetime | None = None      # the pass is kept in the store, as of this moment

    def bit(self, name: str) -> str:
        """SQL of the dynamic cohort's bit in a row of MEMBERS_TABLE (or a table with its masks): 1 for
        a member, else 0 (UBIGINT: compare it, or cast it)."""
        column, k = self.flags[name]
        return f"(({quote_ident(column)} >> {k}) & 1)"

    def query(self, name: str) -> Query:
        if name in self.static:
            return self.static[name]
        return Query(f"SELECT {_DID} FROM {MEMBERS_TABLE} WHERE {self.bit(name)} = 1", {})

    @property
    def masks(self) -> list[str]:
        """The mask columns, in order."""
        return sorted({column for column, _ in self.flags.values()}, key=lambda c: int(c[1:]))

    @property
    def names(self) -> list[str]:
        return [*self.flags, *self.static]


def query(store: Store, chosen: Sequence[Cohort | str], *, now: dt.datetime,
          definitions: Iterable[Cohort] | Mapping[str, Cohort] | None = None,
          events: str = EVENTS_VIEW, profiles: str = PROFILES_VIEW) -> tuple[Query, list[Cohort]]:
    """The one query of the dynamic cohorts among ``chosen`` (by name or definition; referenced cohorts
    from ``definitions``, then the store), and those cohorts in its column order (m0, m1...). Their event
    property filters get typed columns first, as ``cohorts.query`` does for one. ``events``, ``profiles``:
    the relations read instead of the resolved views (``compile_cohorts``)."""
    defs = cohorts.by_name(definitions)
    roots = [_definition(store, c, defs) for c in chosen]
    closure: dict[str, Cohort] = {}
    for root in roots:
        closure.update(cohorts._closure(store, root, {**defs, **closure}))
    dynamic = [c for c in roots if not c.is_static]
    columns = event_columns.ensure(store, filtered_properties(closure.values()))
    return compile_cohorts(dynamic, now, closure, columns=columns, events=events, profiles=profiles), dynamic


def evaluate(store: Store, chosen: Sequence[Cohort | str], *, now: dt.datetime,
             definitions: Iterable[Cohort] | Mapping[str, Cohort] | None = None, keep: bool = False) -> Members:
    """Evaluate ``chosen`` as of ``now``: the dynamic ones in one pass into MEMBERS_TABLE (replacing the
    last), the static ones compiled on their own. ``keep`` (a sync cycle, on a store it may write): the
    pass is kept in the store, and brought up to date from the one kept before where it can be
    (toolkit/kept_pass.py): only the users who may have changed since are evaluated."""
    con = connection(store)
    defs = _with_stored(store, chosen, cohorts.by_name(definitions))
    roots = [_definition(store, c, defs) for c in chosen]
    members = Members(static={c.name: cohorts.query(store, c, now=now, definitions=definitions)
                              for c in roots if c.is_static})
    dynamic = [c for c in roots if not c.is_static]
    if dynamic:
        members.flags = {c.name: (f"k{i // MASK_BITS}", i % MASK_BITS) for i, c in enumerate(dynamic)}
        masks: dict[str, list[str]] = {}
        for i, (column, k) in enumerate(members.flags.values()):     # the pass's flag columns m0, m1... as bits
            masks.setdefault(column, []).append(f"({quote_ident(f'm{i}')}::UBIGINT << {k})")
        listed = ", ".join(f"{' | '.join(bits)} AS {quote_ident(column)}" for column, bits in masks.items())

        def select(at: dt.datetime, events: str = EVENTS_VIEW, profiles: str = PROFILES_VIEW) -> Query:
            sql, params = query(store, dynamic, now=at, definitions=defs, events=events, profiles=profiles)[0]
            return Query(f"SELECT {_DID}, {listed} FROM ({sql})", params)

        if keep and len(masks) <= kept_pass.MASKS and not getattr(store, "read_only", True):
            kept_from = kept_pass.since(con)
            members.refreshed = kept_pass.refresh(con, select, now, MEMBERS_TABLE, members.masks)
            members.refreshed_from = kept_from if members.refreshed is not None else None
            members.kept_at = now
        else:
            sql, params = select(now)
            con.execute(f"CREATE OR REPLACE TEMP TABLE {MEMBERS_TABLE.split('.')[1]} AS {sql}", params)
    return members


def members_of(store: Store, chosen: Sequence[Cohort | str], *, now: dt.datetime,
               definitions: Iterable[Cohort] | Mapping[str, Cohort] | None = None) -> dict[str, list[str]]:
    """Each cohort's members, sorted, as ``cohorts.evaluate`` gives them one by one."""
    con = connection(store)
    found = evaluate(store, chosen, now=now, definitions=definitions)
    return {name: [r[0] for r in con.execute(f"SELECT * FROM ({found.query(name).sql}) ORDER BY 1",
                                             found.query(name).params).fetchall()]
            for name in found.names}


class Matched:
    """The users of a shared pass classified once (``classify``); ``of(name)`` is one cohort's matchability."""

    def __init__(self, store: Store, members: Members, table: str, options: dict):
        self.store, self.members, self.table, self.options = store, members, table, options

    def of(self, name: str) -> matching.Matchability:
        """The cohort's ``Matchability``, equal to ``matching.match`` of its members alone."""
        if name in self.members.static:
            return matching.match(self.store, self.members.static[name], **self.options)
        listed = ", ".join(quote_ident(c) for c in matching.COLUMNS)
        table = connection(self.store).sql(f"SELECT {listed} FROM {self.table} WHERE {self.members.bit(name)} = 1"
                                           ).to_arrow_table()
        table = matching.apply_limit(table.cast(matching.SCHEMA), self.options["limit"])
        return matching.Matchability(matching.summarize(table, **self.options), table)


def classify(store: Store, members: Members, *, user_id_property: str = matching.DEFAULT_USER_ID_PROPERTY,
             id_type: str = "auto", limit: int = matching.COHORT_LIMIT, table: str = MATCHED_TABLE,
             keep: bool = False) -> Matched:
    """Classify the users of the shared pass in one query, into the temp ``table`` with their masks.
    ``keep`` (a cycle's first classification of a kept pass, by the default user-id property): into the
    store instead, brought up to date from the last cycle's (``kept_pass.classified``)."""
    con = connection(store)
    if members.flags:
        def classified(relation: str) -> Query:
            return matching.classify_sql(Query(relation, {}), user_id_property=user_id_property, id_type=id_type,
                                         facts=stored_facts(con, user_id_property), carry=members.masks)

        if keep and members.kept_at is not None and user_id_property == matching.DEFAULT_USER_ID_PROPERTY:
            table = kept_pass.classified(con, classified, MEMBERS_TABLE, f"{id_type} {user_id_property}",
                                         members.kept_at, members.refreshed_from)
        else:
            sql, params = classified(f"SELECT * FROM {MEMBERS_TABLE}")
            con.execute(f"CREATE OR REPLACE TEMP TABLE {table.split('.')[1]} AS {sql}", params)
    return Matched(store, members, table,
                   {"user_id_property": user_id_property, "id_type": id_type, "limit": limit})


def match(store: Store, members: Members, *, user_id_property: str = matching.DEFAULT_USER_ID_PROPERTY,
          id_type: str = "auto", limit: int = matching.COHORT_LIMIT) -> dict[str, matching.Matchability]:
    """Each evaluated cohort's matchability, as ``matching.match`` gives it (all at once: for a few
    cohorts; a cycle takes them one by one from ``classify``)."""
    found = classify(store, members, user_id_property=user_id_property, id_type=id_type, limit=limit)
    return {name: found.of(name) for name in members.names}


def drop(store: Store, *tables: str) -> None:
    """Free the temp tables of the last pass (and the classified ``tables`` besides the default one; a
    kept one stays)."""
    con = connection(store)
    for table in (*tables, MATCHED_TABLE, MEMBERS_TABLE):
        if table.startswith("temp."):
            con.execute(f"DROP TABLE IF EXISTS {table}")
    kept_pass.drop(con)


def _with_stored(store: Store, chosen: Sequence[Cohort | str], defs: dict[str, Cohort]) -> dict[str, Cohort]:
    """``defs`` and the latest stored definitions of the names chosen, read in one query (a cycle names
    sixty: one look-up each took longer than compiling them all). A name not stored exactly is left to
    ``cohorts.get``, which resolves its case or says what is wrong."""
    names = [c for c in chosen if isinstance(c, str) and c not in defs]
    con = connection(store)
    if not names:
        return defs
    rows = con.execute("SELECT name, arg_max(definition, version) FROM cohorts "
                       "WHERE name IN (SELECT unnest($names::VARCHAR[])) GROUP BY name", {"names": names}).fetchall()
    return {**{name: cohorts.parse(json.loads(text), "store") for name, text in rows}, **defs}


def _definition(store: Store, cohort: Cohort | str, defs: Mapping[str, Cohort]) -> Cohort:
    if not isinstance(cohort, str):
        return normalize(cohort)
    return defs.get(cohort) or cohorts.get(store, cohort)
