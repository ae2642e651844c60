"""Cohort definition -> one SQL query. Pure: no I/O, no connection; the caller executes it.

Safety: every value (event names, property values, dates, counts, ids, JSON paths) is a bound
parameter (``$p0``, ``$p1``...); every identifier is quoted. A property name only ever travels as a
bound JSON Pointer (RFC 6901: ``/`` + name with ``~`` -> ``~0`` and ``/`` -> ``~1``), so quotes, dots,
brackets, dollars and ``'; drop table`` are just characters of a key.

Shape (one query):
- ``ev``: the events the rules name (up to ``now``, identity resolved) grouped by user, with one
  ``count(*) FILTER (...)`` column per event rule: any number of behavioural rules costs one pass,
  and never over the JSON ``properties`` column.
- ``fe``/``fa``: the same for rules with event property filters on JSON, over the rows of their events
  only; each property is extracted once per row (reading ``properties`` means decompressing and parsing
  JSON). A filter on a property kept in typed columns (``columns``, toolkit/event_columns.py) reads them
  instead, and its rule is counted in ``ev`` with the others: one pass over the events.
- Each of those reads only the rows some aggregate can count (its event, in its window): a cohort on
  the last 30 days of a year of events groups a twelfth of them, and extracts from a twelfth of their JSON
  (not when ``ev`` also lists who has an event, ``every_event``).
- ``known``: one row per candidate user, with the profile properties the rules read (each extracted
  once) and the aggregates. Candidates are all known users (anyone with an event up to now, or a
  profile), which "did not" and profile rules draw from; when a top-level AND condition needs a
  profile or an event (``plan equals pro``, ``did Purchase``), only those users are listed, which gives
  the same members far more cheaply (``restrict=False`` turns this off; tests compare both).
- On the store (``on_store``), when an event rule restricts the candidates, the users passing the
  top-level event rules (``cand``) are found first, and only their profiles are read (``pr``: from the
  ``profiles`` table, resolved exactly as the ``resolved_profiles`` view resolves them). The view
  resolves every profile with its JSON before any filter can reach it: at 1M profiles that was most of
  a "plan equals pro AND did Purchase" cohort's time, for the few percent of profiles it needs.
- The cohort's rules become one boolean expression over a ``known`` row; rules of referenced cohorts
  are inlined the same way; a static cohort is an ``IN`` over its bound id list, resolved to canonical
  ids through the identity map.

Portability: the query is plain SQL (CTEs, FILTER, FULL OUTER JOIN, COALESCE) except the JSON and list
functions, which are confined to the ``_j*`` helpers below: the one place to change for another engine.
The many-cohort query (``compile_cohorts``, DuckDB only: a sync cycle on the store) also materializes CTEs
and extracts a list of JSON paths at once.

Semantics chosen where Mixpanel's docs leave room (also in docs, see toolkit/cohorts.py):
- Windows: ``last_days: N`` is the rolling [now - N days, now]; ``between: [d1, d2]`` covers whole UTC
  days d1..d2; ``first_time_last_days: N``: the user's first matching event ever falls in the last N days
  (count then applies to matching events in that window). No window: all time up to now.
- Events after ``now`` are ignored everywhere, so a past ``now`` reproduces a past answer (profiles are
  always their current values, as in Mixpanel).
- ``did: false`` is the complement of the same condition among all known users. ``less_than`` /
  ``at_most`` include users with zero matching events.
- Profile and event properties: ``not_equals`` / ``not_contains`` include users without the property;
  ``equals`` with a list means "any of"; on a list property, ``equals`` and ``contains`` mean "some
  element equals" (list membership); ``contains`` with a string on a string property is a
  case-sensitive substring test. Numbers compare numerically (numeric strings count); booleans
  match JSON true/false or the strings "true"/"false"; datetime values compare with ISO-8601 strings
  (UTC), a date-only value meaning that whole day. JSON null counts as not set.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence

from toolkit.cohort_model import (
    COUNT_OPERATORS,
    Cohort,
    CohortCycleError,
    CohortError,
    CohortRule,
    EventRule,
    Group,
    PropertyRule,
)
from toolkit.sql import Query, json_pointer, quote_ident, to_utc_naive

__all__ = ["Query", "compile_cohort", "compile_cohorts", "filtered_properties", "json_pointer", "quote_ident",
           "to_utc_naive"]

EVENTS_VIEW = "resolved_events"
PROFILES_VIEW = "resolved_profiles"
PROFILES_TABLE = "profiles"           # read by ``on_store`` queries only (the store's own table)
IDENTITY_MAP = "identity_map"


_q = quote_ident
DID, TIME, PROPS = _q("distinct_id"), _q("time"), _q("properties")


def compile_cohort(cohort: Cohort, now: dt.datetime,
                   lookup: Mapping[str, Cohort] | Callable[[str], Cohort | None] | None = None, *,
                   restrict: bool = True, columns: Mapping[tuple[str, str], str] | None = None,
                   on_store: bool = False) -> Query:
    """SQL returning the cohort's members (column ``distinct_id``, sorted) as of ``now``.
    ``lookup`` finds cohorts referenced by in_cohort / not_in_cohort (a mapping or a function).
    ``restrict=False`` always draws candidates from every known user and reads every row of the events
    the rules name (the plan tests compare against).
    ``columns``: (event, property) -> prefix of the typed columns holding that property for that event's
    rows (toolkit/event_columns.py); a filter on any other pair reads the JSON.
    ``on_store``: the query runs on the store itself, so it may read the ``profiles`` table (not only
    the relations another engine holds, toolkit/dialects.py): candidates' profiles are read, not all."""
    if lookup is None:
        lookup = {}
    find = lookup.get if isinstance(lookup, Mapping) else lookup
    return _Compiler(to_utc_naive(now), find, restrict, columns or {}, on_store).cohort(cohort)


def compile_cohorts(cohorts: Sequence[Cohort], now: dt.datetime,
                    lookup: Mapping[str, Cohort] | Callable[[str], Cohort | None] | None = None, *,
                    restrict: bool = True, columns: Mapping[tuple[str, str], str] | None = None,
                    events: str = EVENTS_VIEW, profiles: str = PROFILES_VIEW) -> Query:
    """SQL evaluating several dynamic cohorts in one pass over the events: one row per user who is a
    member of any of them, with ``distinct_id`` and one boolean column per cohort, ``m0``, ``m1``... in
    the order given. Every event rule of every cohort is one aggregate of the same ``ev`` (a rule that
    several cohorts share is counted once), so sixty cohorts cost one scan, not sixty. Each column holds
    exactly what ``compile_cohort`` would return for that cohort. Static cohorts are refused: their
    members need not be known users, so they are evaluated on their own (no events are read).
    ``events``, ``profiles``: the relations read instead of the resolved views, with their columns (a
    kept pass re-evaluates some users only: toolkit/kept_pass.py)."""
    if lookup is None:
        lookup = {}
    find = lookup.get if isinstance(lookup, Mapping) else lookup
    compiler = _Compiler(to_utc_naive(now), find, restrict, columns or {})
    compiler.events_view, compiler.profiles_view = events, profiles
    return compiler.many(list(cohorts))


def filtered_properties(cohorts: Iterable[Cohort]) -> set[tuple[str, str]]:
    """The (event, property) pairs the event property filters of ``cohorts`` read."""
    found: set[tuple[str, str]] = set()

    def walk(rules):
        for r in rules:
            if isinstance(r, Group):
                walk(r.rules)
            elif isinstance(r, EventRule):
                found.update((r.event, f.property) for f in r.where)

    for cohort in cohorts:
        walk(cohort.rules)
    return found


class _Compiler:
    def __init__(self, now: dt.datetime, find, restrict: bool = True,
                 columns: Mapping[tuple[str, str], str] | None = None, on_store: bool = False):
        self.now, self.find, self.restrict, self.on_store = now, find, restrict, on_store
        self.columns = columns or {}
        self.params: dict = {}
        self.bound: dict = {}                 # (type, value) -> its parameter: a value bound once
        self.aggregates: dict = {}            # (filtered, expression) -> its column: counted once
        self.plain: list[str] = []            # aggregates in `ev` (no properties read)
        self.filtered: list[str] = []         # aggregates in `fa` (over `filtered_events` only)
        self.plain_events: list[str] = []     # bound event names of rules without property filters
        self.filtered_events: list[str] = []  # bound event names of rules that filter on properties
        self.counted: dict[bool, list[str]] = {False: [], True: []}   # rows an aggregate of `ev` / `fa` reads
        self.event_props: dict[str, str] = {}     # event property name -> extracted column
        self.profile_props: dict[str, str] = {}   # profile property name -> extracted column (batch: prefix)
        self.stack: list[str] = []            # cohorts being inlined, for cycle detection
        self.batch = False                    # many cohorts in one pass (``many``)
        self.events_view, self.profiles_view = EVENTS_VIEW, PROFILES_VIEW   # what the rules read

    def bind(self, value) -> str:
        key = _value_key(value)
        if key is not None and key in self.bound:
            return self.bound[key]
        name = "$" + f"p{len(self.params)}"
        self.params[name[1:]] = value
        if key is not None:
            self.bound[key] = name
        return name

    def aggregate(self, expr: str, filtered: bool, rows: str) -> str:
        """The column of ``expr`` in ``ev`` (or ``fa``); the same expression twice is one column (values
        are bound once each, so two cohorts' identical rules compile to the same text). ``rows``: a
        condition true on every row the aggregate counts (its event and window)."""
        if rows not in self.counted[filtered]:
            self.counted[filtered].append(rows)
        if (filtered, expr) in self.aggregates:
            return self.aggregates[(filtered, expr)]
        target = self.filtered if filtered else self.plain
        name = quote_ident(f"{'f' if filtered else 'a'}{len(target)}")
        target.append(f"{expr} AS {name}")
        self.aggregates[(filtered, expr)] = name
        return name

    def prop(self, name: str, on_event: bool) -> str:
        """The column holding property ``name`` extracted once per row (JSON; NULL when absent)."""
        columns = self.event_props if on_event else self.profile_props
        if name not in columns:
            columns[name] = f"{'e' if on_event else 'v'}{len(columns)}"
        return quote_ident(columns[name]) if on_event or not self.batch else columns[name]

    # -- whole query ---------------------------------------------------------------------------
    def cohort(self, cohort: Cohort) -> Query:
        if cohort.is_static:
            return Query(f"SELECT DISTINCT {self.static(cohort)} ORDER BY 1", self.params)
        predicate = self.members_of(cohort)
        base = self.universe(cohort) if self.restrict else "u"
        gate = None
        if self.on_store and self.profile_props and base in ("e", "f"):
            # the top-level event rules compiled again: the same columns, the same text
            gate = " AND ".join(self.event(r) for r in cohort.rules if isinstance(r, EventRule))
        ctes = self.known(base, gate=gate)
        sql = f"""WITH {", ".join(ctes)}
SELECT {DID} FROM {_q("known")}
WHERE {predicate}
ORDER BY {DID}"""
        return Query(sql, self.params)

    def many(self, cohorts: list[Cohort]) -> Query:
        """Several cohorts over one ``known``: one boolean column each (see ``compile_cohorts``)."""
        static = [c.name for c in cohorts if c.is_static]
        if static:
            raise CohortError(f'cohort "{static[0]}" is static: evaluate it on its own')
        if not cohorts:
            raise CohortError("no cohorts to evaluate")
        self.batch = True
        predicates = [self.members_of(c) for c in cohorts]
        bases = {self.universe(c) if self.restrict else "u" for c in cohorts}
        # Candidates must cover every cohort's: one shared restriction, else everyone known.
        ctes = self.known(bases.pop() if len(bases) == 1 else "u", every_event=True, batch=True)
        flags = [_q(f"m{i}") for i in range(len(cohorts))]
        selected = "".join(f",\n       {p} AS {f}" for p, f in zip(predicates, flags, strict=True))
        # Materialized: else the filter below is pushed into it and every cohort's predicate computed twice.
        sql = f"""WITH {", ".join(ctes)}, {_q("flags")} AS MATERIALIZED (
SELECT {DID}{selected}
FROM {_q("known")}
)
SELECT * FROM {_q("flags")}
WHERE {" OR ".join(flags)}"""
        return Query(sql, self.params)

    def known(self, base: str, every_event: bool = False, batch: bool = False, gate: str | None = None) -> list[str]:
        """The CTEs up to ``known``: one row per candidate (drawn from ``base``: "u" everyone known, or
        the restricting "p", "e", "f"), with the profile properties and aggregates the rules read.
        ``every_event``: when candidates are everyone known, ``ev`` groups every event up to now (its
        aggregates filter by name anyway), so the same scan also lists the users with an event.
        ``batch`` (many cohorts, many properties): each profile's JSON is parsed once for all the
        properties (``pv``), and the profiles are read once; each property's type, text, number and
        list are computed there once (the typed columns of ``_Columns``), not in every cohort's
        condition (sixty cohorts' conditions re-reading the JSON values took 0.58 s of CPU at 100k users).
        ``gate`` (on the store, an event relation leading): the cohort's top-level event rules, which pick
        the candidates whose profiles are read."""
        shared = every_event and base == "u"
        now = self.bind(self.now) if (self.plain or self.filtered or base == "u") else None
        ctes, sources = self.event_ctes(now, every_event=shared)     # sources: alias -> relation joined into `known`
        if gate is not None:
            return ctes + self.candidates_first(base, sources, gate)
        profiles = view = _q(self.profiles_view)
        if batch and self.profile_props:
            paths = self.bind([json_pointer(n) for n in self.profile_props])
            values = ", ".join(_typed_columns(f"{_q('_v')}[{i + 1}]", c)
                               for i, c in enumerate(self.profile_props.values()))
            ctes.append(f"""{_q("pv")} AS {"" if shared else "MATERIALIZED "}(
    SELECT {DID}, {values}
    FROM (SELECT {DID}, json_extract({PROPS}, {paths}) AS {_q("_v")} FROM {view})
)""")
            profiles = _q("pv")
        if self.profile_props:
            sources["p"] = profiles
        if shared:                      # everyone known, listed by joining the events' users and the profiles
            return [*ctes, self.known_shared(sources, profiles, view)]
        if base == "u":                 # everyone known: anyone with an event up to now, or a profile
            events = (f"SELECT {DID} FROM {_q('ev')}" if shared
                      else f"SELECT {DID} FROM {_q(self.events_view)} WHERE {TIME} <= {now}")
            ctes.append(f"""{_q("users")} AS (
    {events}
    UNION SELECT {DID} FROM {profiles}
)""")
            sources = {"u": _q("users"), **sources}
        else:                           # the restricting relation leads; the others join to it
            sources = {base: sources.get(base, profiles), **sources}
        (lead, relation), *rest = sources.items()
        joins = "".join(f"\n    LEFT JOIN {rel} {alias} ON {alias}.{DID} = {lead}.{DID}" for alias, rel in rest)
        ctes.append(f"""{_q("known")} AS (
    SELECT {lead}.{DID}{self.known_columns(profiles != view)}
    FROM {relation} {lead}{joins}
)""")
        return ctes

    def known_shared(self, sources: dict[str, str], profiles: str, view: str) -> str:
        """``known`` when ``ev`` groups every event: one outer join of ``ev`` (a row per user with an event)
        and the profiles lists everyone known with their aggregates and properties (a UNION of the two
        users' lists, then a join to each, took three hash tables of every user instead of one)."""
        did = f"coalesce(e.{DID}, p.{DID})"
        people = profiles if self.profile_props else f"(SELECT {DID} FROM {profiles})"
        joins = "".join(f"\n    LEFT JOIN {rel} {alias} ON {alias}.{DID} = {did}"
                        for alias, rel in sources.items() if alias not in ("e", "p"))
        return f"""{_q("known")} AS (
    SELECT {did} AS {DID}{self.known_columns(profiles != view)}
    FROM {_q("ev")} e FULL JOIN {people} p ON p.{DID} = e.{DID}{joins}
)"""

    def known_columns(self, typed: bool) -> str:
        """``known``'s columns after the id: each profile property (``typed``: its columns of ``pv``, else
        extracted from the profile ``p``'s JSON), then the aggregates of ``ev`` (``e``) and ``fa`` (``f``)."""
        profile = [", ".join(f"p.{quote_ident(f'{c}_{s}')}" for s in _SUFFIXES) if typed
                   else f"json_extract(p.{PROPS}, {self.bind(json_pointer(n))}) AS {quote_ident(c)}"
                   for n, c in self.profile_props.items()]
        return _listed(profile) + _listed(_names(self.plain), "e.") + _listed(_names(self.filtered), "f.")

    def counted_rows(self, filtered: bool) -> str:
        """`` AND (...)``: the rows some aggregate of ``fa`` (or ``ev``) counts, when windows narrow them
        beyond the events' names; a row no aggregate counts changes no aggregate."""
        rows = self.counted[filtered]
        if not self.restrict or all(r.startswith(_q("event")) for r in rows):   # names only: the IN list says it
            return ""
        return f" AND ({' OR '.join(rows)})"

    def candidates_first(self, base: str, sources: dict[str, str], gate: str) -> list[str]:
        """``cand``: the users of the leading event relation who pass the cohort's top-level event rules
        (``gate``: each is necessary, as the cohort matches all its rules); ``pr``: their profiles alone,
        resolved as the ``resolved_profiles`` view resolves every profile (store migration 5: the newest
        profile of a canonical id wins; ties go by file, line, then the profile's own id) but read from
        the ``profiles`` table, found through the identity map's sent ids, so that DuckDB reads only
        these profiles' JSON; ``known``: the candidates with their profile properties."""
        (lead, relation), *rest = {base: sources[base], **sources}.items()
        joins = "".join(f"\n        LEFT JOIN {rel} {alias} ON {alias}.{DID} = {lead}.{DID}" for alias, rel in rest)
        events = _listed(_names(self.plain), "e.") + _listed(_names(self.filtered), "f.")
        cand, sent, canonical, m = _q("cand"), _q("sent"), _q("canonical_id"), _q(IDENTITY_MAP)
        order = ", ".join(f"p.{_q(c)}" for c in ("updated_at", "file_id", "line", "distinct_id"))
        # Each profile parsed once, into a list that is never NULL: arg_max skips a NULL value, so one
        # property extracted alone would fall back to an older profile's value when the newest lacks it.
        paths = self.bind([json_pointer(n) for n in self.profile_props])
        values = _q("_v")
        profile = [f"p.{values}[{i + 1}] AS {quote_ident(c)}" for i, c in enumerate(self.profile_props.values())]
        columns = _listed(profile) + _listed(_names(self.plain + self.filtered), "c.")
        return [f"""{cand} AS (
    SELECT * FROM (
        SELECT {lead}.{DID}{events}
        FROM {relation} {lead}{joins}
    ) WHERE {gate}
)""", f"""{_q("pr")} AS (
    SELECT s.{canonical} AS {DID}, arg_max(json_extract(p.{PROPS}, {paths}), ({order})) AS {values}
    FROM (SELECT {DID} AS {sent}, {canonical} FROM {m} WHERE {canonical} IN (SELECT {DID} FROM {cand})
          UNION ALL
          SELECT {DID}, {DID} FROM {cand} c WHERE NOT EXISTS (SELECT 1 FROM {m} WHERE {m}.{DID} = c.{DID})) s
    JOIN {_q(PROFILES_TABLE)} p ON p.{DID} = s.{sent}
    GROUP BY s.{canonical}
)""", f"""{_q("known")} AS (
    SELECT c.{DID}{columns}
    FROM {cand} c LEFT JOIN {_q("pr")} p ON p.{DID} = c.{DID}
)"""]

    def event_ctes(self, now: str | None, every_event: bool = False) -> tuple[list[str], dict[str, str]]:
        ctes, sources = [], {}
        if self.plain or every_event:
            named = "" if every_event else (f" AND {_q('event')} IN ({', '.join(self.plain_events)})"
                                            + self.counted_rows(False))
            ctes.append(f"""{_q("ev")} AS (
    SELECT {DID}{_listed(self.plain)}
    FROM {_q(self.events_view)}
    WHERE {TIME} <= {now}{named}
    GROUP BY {DID}
)""")
            sources["e"] = _q("ev")
        if self.filtered:
            extracted = [f"json_extract({PROPS}, {self.bind(json_pointer(n))}) AS {quote_ident(c)}"
                         for n, c in self.event_props.items()]
            ctes.append(f"""{_q("fe")} AS (
    SELECT {DID}, {_q("event")}, {TIME}{_listed(extracted)}
    FROM {_q(self.events_view)}
    WHERE {TIME} <= {now} AND {_q("event")} IN ({", ".join(self.filtered_events)}){self.counted_rows(True)}
), {_q("fa")} AS (
    SELECT {DID}{_listed(self.filtered)}
    FROM {_q("fe")}
    GROUP BY {DID}
)""")
            sources["f"] = _q("fa")
        return ctes, sources

    def universe(self, cohort: Cohort) -> str:
        """Where candidates come from. Members are drawn from all known users, but when a top-level AND
        condition is false for anyone without a profile ("p") or without an event the rules name ("e",
        "f"), those users are a superset of the members and far cheaper to list than every user."""
        if cohort.match != "all":
            return "u"
        found = set()
        for r in cohort.rules:
            if isinstance(r, PropertyRule) and r.operator in _NEEDS_A_VALUE:
                found.add("p")
            elif isinstance(r, EventRule) and _needs_an_event(r):
                found.add("f" if self.on_json(r) else "e")
        # On the store, events lead when they can: then only the candidates' profiles are read.
        order = ("e", "f", "p") if self.on_store and self.profile_props and not self.batch else ("p", "e", "f")
        return next((k for k in order if k in found), "u")

    def members_of(self, cohort: Cohort) -> str:
        """A boolean expression over a row of ``known``: is this user a member?"""
        if cohort.name in self.stack:
            raise CohortCycleError(self.stack[self.stack.index(cohort.name):] + [cohort.name])
        if cohort.is_static:
            return f"{quote_ident('distinct_id')} IN (SELECT {self.static(cohort)})"
        self.stack.append(cohort.name)
        expr = self.group(cohort.rules, cohort.match, "rules")
        self.stack.pop()
        return expr

    def static(self, cohort: Cohort) -> str:
        """FROM-less select list of a static cohort's canonical ids (used after SELECT [DISTINCT])."""
        did = quote_ident("distinct_id")
        return (f"coalesce(m.{quote_ident('canonical_id')}, s.{quote_ident('id')}) AS {did} "
                f"FROM (SELECT unnest({self.bind(list(cohort.static_ids or ()))}) AS {quote_ident('id')}) s "
                f"LEFT JOIN {quote_ident(IDENTITY_MAP)} m ON m.{did} = s.{quote_ident('id')}")

    # -- rules ---------------------------------------------------------------------------------
    def group(self, rules, match: str, path: str) -> str:
        parts = [self.rule(r, f"{path}[{i}]") for i, r in enumerate(rules)]
        return "(" + (" AND " if match == "all" else " OR ").join(parts) + ")"

    def rule(self, r, path: str) -> str:
        if isinstance(r, Group):
            return self.group(r.rules, r.match, f"{path}.rules")
        if isinstance(r, PropertyRule):
            column = self.prop(r.property, on_event=False)
            return _boolean(self.condition(r, _Columns(column) if self.batch else _Json(column)))
        if isinstance(r, EventRule):
            return self.event(r)
        if isinstance(r, CohortRule):
            other = self.find(r.cohort)
            if other is None:
                key = "in_cohort" if r.include else "not_in_cohort"
                where = f'cohort "{self.stack[-1]}"' if self.stack else "cohort"
                raise CohortError(f'{where}: {path}.{key}: no cohort named "{r.cohort}" '
                                  "in the store (load its definition first)")
            inner = self.members_of(other)
            return inner if r.include else f"(NOT {inner})"
        raise CohortError(f"{path}: not a rule: {r!r}")

    def on_json(self, r: EventRule) -> bool:
        """Whether the rule's filters read the JSON (in ``fe``), not typed columns (in ``ev``)."""
        return any((r.event, f.property) not in self.columns for f in r.where)

    def event(self, r: EventRule) -> str:
        time = quote_ident("time")
        filtered = self.on_json(r)
        event = self.bind(r.event)
        names = self.filtered_events if filtered else self.plain_events
        if event not in names:
            names.append(event)
        matches = [f"{quote_ident('event')} = {event}"]
        matches += [_boolean(self.condition(f, _Json(self.prop(f.property, on_event=True)) if filtered
                                            else _Columns(self.columns[(r.event, f.property)])))
                    for f in r.where]
        window = []
        start = None
        if r.last_days is not None:
            start = self.bind(self.now - dt.timedelta(days=r.last_days))
        elif r.first_time_last_days is not None:
            start = self.bind(self.now - dt.timedelta(days=r.first_time_last_days))
        elif r.between is not None:
            first, last = r.between
            window = [f"{time} >= {self.bind(_midnight(first))}",
                      f"{time} < {self.bind(_midnight(last) + dt.timedelta(days=1))}"]
        if start is not None:
            window = [f"{time} >= {start}"]
        named = matches[0]
        if self.batch and r.operator == "at_least" and r.count == 1 and r.first_time_last_days is None \
                and r.between is None:
            # "did E (in the last N days)": the latest such event is in the window. One aggregate per
            # event (and filters) whatever the windows: a pass of sixty cohorts has a dozen windows of each.
            latest = self.aggregate(f"max({time}) FILTER (WHERE {' AND '.join(matches)})", filtered, named)
            expr = _boolean(f"{latest} >= {start}" if start is not None else f"{latest} IS NOT NULL")
            return expr if r.did else f"(NOT {expr})"
        count = self.aggregate(f"count(*) FILTER (WHERE {' AND '.join(matches + window)})", filtered,
                               f"({' AND '.join([named, *window])})" if window else named)
        expr = f"coalesce({count}, 0) {COUNT_OPERATORS[r.operator]} {self.bind(r.count)}"
        if r.first_time_last_days is not None:   # the first matching event ever is inside the window
            first_seen = self.aggregate(f"min({time}) FILTER (WHERE {' AND '.join(matches)})", filtered, named)
            expr = f"{first_seen} >= {start} AND {expr}"
        expr = _boolean(expr)
        return expr if r.did else f"(NOT {expr})"

    def condition(self, r: PropertyRule, value: _Value) -> str:
        """SQL for one property condition on ``value``, the property (extracted JSON or typed columns;
        NULL when absent); the result may be NULL (callers wrap it in _boolean)."""
        jtype = value.type()
        if r.operator in ("is_set", "is_not_set"):
            is_set = f"coalesce({jtype} <> 'NULL', false)"
            return is_set if r.operator == "is_set" else f"NOT {is_set}"
        values = list(r.value) if isinstance(r.value, tuple) else [r.value]
        scalar = value.typed(r.type)
        if r.operator in ("equals", "not_equals"):
            expr = self.equals(value, jtype, scalar, r.type, values)
        elif r.operator in ("contains", "not_contains"):
            expr = self.contains(value, jtype, r.type, values[0])
        elif r.operator == "between":   # inclusive; a date-only high bound includes its whole day
            expr = f"{scalar} >= {self.bind(_param(_start(values[0])))} AND {scalar} {self.until(values[1])}"
        elif r.operator == "greater":
            expr = f"{scalar} {self.after(values[0])}"
        else:   # less: before the value (a date: before that day starts)
            expr = f"{scalar} < {self.bind(_param(_start(values[0])))}"
        return f"NOT {_boolean(expr)}" if r.operator.startswith("not_") else expr

    def equals(self, value, jtype, scalar, kind, values) -> str:
        if kind == "datetime":   # a date-only value is a whole day: [day, day + 1)
            ors = []
            for v in values:
                low, high = self.bounds(v)
                ors.append(f"({scalar} >= {low} AND {scalar} {high})")
            return "(" + " OR ".join(ors) + ")"
        bound = [self.bind(_param(v)) for v in values]
        in_list = f"list_has_any({value.list(kind)}, [{', '.join(bound)}])"
        on_scalar = " OR ".join(f"{scalar} = {b}" for b in bound)
        return f"CASE WHEN {jtype} = 'ARRAY' THEN {in_list} ELSE ({on_scalar}) END"

    def contains(self, value, jtype, kind, needle) -> str:
        bound = self.bind(_param(needle))
        in_list = f"list_contains({value.list(kind)}, {bound})"
        substring = f"strpos({value.text()}, {bound}) > 0" if kind == "string" else "false"
        return (f"CASE WHEN {jtype} = 'ARRAY' THEN {in_list} "
                f"WHEN {jtype} = 'VARCHAR' THEN {substring} ELSE false END")

    def bounds(self, v) -> tuple[str, str]:
        """(low parameter, 'op high' closing the range) for one value; a date covers its whole day."""
        if _is_day(v):
            return self.bind(_midnight(v)), self.until(v)
        bound = self.bind(_param(v))
        return bound, f"<= {bound}"

    def until(self, v) -> str:
        """'op high' for an inclusive upper bound."""
        if _is_day(v):
            return f"< {self.bind(_midnight(v) + dt.timedelta(days=1))}"
        return f"<= {self.bind(_param(v))}"

    def after(self, v) -> str:
        if _is_day(v):   # after the whole day
            return f">= {self.bind(_midnight(v) + dt.timedelta(days=1))}"
        return f"> {self.bind(_param(v))}"


# -- the engine-specific part: JSON access -----------------------------------------------------------
# A property's value as the conditions read it: its JSON type, its text, the text as a typed scalar,
# and a JSON array as a typed list. `_Json` computes these from the property extracted with
# json_extract (small JSON, NULL when absent), so they never re-parse the whole document; `_Columns`
# reads the same expressions computed once at load (toolkit/event_columns.py fills them with these).

class _Value:
    def type(self) -> str:
        raise NotImplementedError

    def text(self) -> str:
        raise NotImplementedError

    def list(self, kind: str) -> str:
        raise NotImplementedError

    def number(self) -> str:
        return f"TRY_CAST({self.text()} AS DOUBLE)"

    def typed(self, kind: str | None) -> str:
        """The property as a SQL value of ``kind``; NULL when absent or not convertible."""
        text = self.text()
        if kind == "number":
            return self.number()
        if kind == "boolean":
            return f"CASE lower({text}) WHEN 'true' THEN true WHEN 'false' THEN false END"
        if kind == "datetime":
            return f"TRY_CAST({text} AS TIMESTAMP)"
        return f"CASE WHEN {self.type()} NOT IN ('ARRAY', 'OBJECT') THEN {text} END"


class _Json(_Value):
    def __init__(self, value: str):
        self.value = value

    def type(self) -> str:
        return f"json_type({self.value})"

    def text(self) -> str:
        return f"json_extract_string({self.value}, '$')"

    def list(self, kind: str) -> str:
        """A JSON array as a typed SQL list (elements that do not convert become NULL)."""
        return f"TRY_CAST({self.value} AS {_LIST_TYPES.get(kind, 'VARCHAR')}[])"


class _Columns(_Value):
    """The typed columns ``<prefix>_type``, ``_text``, ``_number`` and ``_list`` (the value when an array)."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def column(self, suffix: str) -> str:
        return quote_ident(f"{self.prefix}_{suffix}")

    def type(self) -> str:
        return self.column("type")

    def text(self) -> str:
        return self.column("text")

    def number(self) -> str:
        return self.column("number")

    def list(self, kind: str) -> str:
        # The cast to JSON (a no-op here) says the column holds JSON: on Spark it is JSON text (toolkit/dialects.py)
        return f"TRY_CAST(CAST({self.column('list')} AS JSON) AS {_LIST_TYPES.get(kind, 'VARCHAR')}[])"


_LIST_TYPES = {"number": "DOUBLE", "boolean": "BOOLEAN"}
_SUFFIXES = ("type", "text", "number", "list")


def _typed_columns(value: str, prefix: str) -> str:
    """The select list of ``_Columns(prefix)`` computed from ``value`` (a JSON value, NULL when absent):
    the expressions of ``_Json`` (and event_columns' fill), once per row."""
    text = f"json_extract_string({value}, '$')"
    return (f"json_type({value}) AS {quote_ident(prefix + '_type')}, {text} AS {quote_ident(prefix + '_text')}, "
            f"TRY_CAST({text} AS DOUBLE) AS {quote_ident(prefix + '_number')}, "
            f"CASE WHEN json_type({value}) = 'ARRAY' THEN {value} END AS {quote_ident(prefix + '_list')}")


# -- helpers -----------------------------------------------------------------------------------------

# Profile operators that are false when the property is absent (so they need a profile).
_NEEDS_A_VALUE = ("equals", "contains", "greater", "less", "between", "is_set")


def _needs_an_event(r: EventRule) -> bool:
    """True when the rule is false for a user with no event of its name."""
    if not r.did:
        return False
    if r.first_time_last_days is not None:
        return True
    zero = {"at_least": 0 >= r.count, "at_most": True, "more_than": False, "less_than": 0 < r.count,
            "exactly": r.count == 0}
    return not zero[r.operator]


def _value_key(value):
    """What makes two bound values the same parameter: equal and of one type (1, 1.0 and True differ
    for SQL); None for values that cannot be keyed (lists)."""
    try:
        hash(value)
    except TypeError:
        return None
    return (type(value), value)


def _names(columns: list[str]) -> list[str]:
    return [c.rsplit(" AS ", 1)[1] for c in columns]


def _listed(items, prefix: str = "") -> str:
    return "".join(f",\n           {prefix}{item}" for item in items)


def _boolean(expr: str) -> str:
    """Two-valued logic: an unknown (NULL) condition is false, so NOT behaves as people expect."""
    return f"coalesce({expr}, false)"


def _param(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return float(v)    # one numeric type on both sides: properties are compared as DOUBLE
    return v


def _is_day(v) -> bool:
    return isinstance(v, dt.date) and not isinstance(v, dt.datetime)


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time())


def _start(v):
    return _midnight(v) if _is_day(v) else v
