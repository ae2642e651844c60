"""Cohort definitions as data: dataclasses, validation with field paths, and one canonical dict form.

Pure module (no I/O). A definition arrives as a dict (from YAML/JSON) or as dataclasses built in
Python; both go through `parse`, so every definition is checked by the same code and an error names
the field it is about: ``cohorts.yaml: cohort "x": rules[1].count: expected a non-negative integer``.
`to_dict` is the inverse and omits defaults, so the stored JSON (and its version) only changes when
the meaning does.

The format (YAML shown; JSON is the same shape):

    name: Purchasers last 30 days
    description: optional text
    match: all                    # all | any: how the top-level rules combine (default all)
    rules:
      - event: Purchase           # behaviour: did / did not do an event
        did: true                 # false = "did not do" (default true)
        operator: at_least        # at_least | at_most | more_than | less_than | exactly (default at_least)
        count: 1                  # default 1
        last_days: 30             # window, at most one of: last_days, between: [date, date],
                                  # first_time_last_days; none = all time up to now
        where:                    # event property filters, all must hold
          - {property: amount, operator: greater, value: 20}
      - property: plan            # profile property
        operator: equals          # equals | not_equals | contains | not_contains | greater | less |
        value: pro                #   between | is_set | is_not_set
        type: string              # optional: string | number | boolean | datetime (inferred from value)
      - match: any                # a nested group
        rules: [...]
      - in_cohort: Other cohort   # or not_in_cohort: ...

    name: Beta panel              # a static cohort: ids instead of rules
    static_ids: [alice@example.com, bob]
    static_csv: beta_panel.csv    # where the ids came from (the loader reads the file into static_ids)
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from toolkit.errors import CohortCycleError, CohortError, DefinitionError
from toolkit.sql import to_utc_naive

__all__ = ["COUNT_OPERATORS", "PROPERTY_OPERATORS", "VALUE_TYPES", "CohortError", "DefinitionError",
           "CohortCycleError", "PropertyRule", "EventRule", "CohortRule", "Group", "Cohort", "Rule",
           "parse", "to_dict", "normalize", "references", "find_cycle", "check_cycles"]

COUNT_OPERATORS = {"at_least": ">=", "at_most": "<=", "more_than": ">", "less_than": "<", "exactly": "="}
PROPERTY_OPERATORS = ("equals", "not_equals", "contains", "not_contains", "greater", "less", "between",
                      "is_set", "is_not_set")
VALUE_TYPES = ("string", "number", "boolean", "datetime")
MATCHES = ("all", "any")
WINDOWS = ("last_days", "between", "first_time_last_days")

# Which value types each operator accepts (is_set / is_not_set take no value).
_OPERATOR_TYPES = {
    "equals": VALUE_TYPES, "not_equals": VALUE_TYPES,
    "contains": ("string", "number", "boolean"), "not_contains": ("string", "number", "boolean"),
    "greater": ("number", "datetime"), "less": ("number", "datetime"), "between": ("number", "datetime"),
}


# -- the model -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PropertyRule:
    """A condition on a property: of the user's profile (as a rule), or of an event (in ``where``).
    ``value`` is a scalar, a list of scalars for equals/not_equals ("any of"), or [low, high] for between."""
    property: str
    operator: str
    value: Any = None
    type: str | None = None           # inferred from value when None


@dataclass(frozen=True)
class EventRule:
    event: str
    did: bool = True                  # False: "did not do" (the complement among all known users)
    operator: str = "at_least"
    count: int = 1
    last_days: int | None = None
    between: tuple[dt.date, dt.date] | None = None      # inclusive UTC calendar days
    first_time_last_days: int | None = None
    where: tuple[PropertyRule, ...] = ()


@dataclass(frozen=True)
class CohortRule:
    cohort: str
    include: bool = True              # False: exclude the other cohort's members


@dataclass(frozen=True)
class Group:
    rules: tuple[Rule, ...]
    match: str = "all"


Rule = EventRule | PropertyRule | CohortRule | Group


@dataclass(frozen=True)
class Cohort:
    name: str
    rules: tuple[Rule, ...] = ()
    match: str = "all"
    static_ids: tuple[str, ...] | None = None     # a static cohort: these ids, nothing computed
    static_csv: str | None = None                 # provenance of static_ids (a file name)
    description: str = ""

    @property
    def is_static(self) -> bool:
        return self.static_ids is not None


# -- dict form -> model ------------------------------------------------------------------------------

def parse(data: Any, where: str = "") -> Cohort:
    """Check one cohort's dict form and build it. ``where`` prefixes errors (e.g. the file name)."""
    if isinstance(data, Cohort):
        data = to_dict(data)
    prefix = f"{where}: " if where else ""
    if not isinstance(data, Mapping):
        raise DefinitionError(where or "cohort", "", f"expected an object with a name, got {_show(data)}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DefinitionError(where or "cohort", "name", f"expected a non-empty string, got {_show(name)}")
    p = _Parser(f'{prefix}cohort "{name}"')
    static = "static_ids" in data or "static_csv" in data
    allowed = {"name", "description", "static_ids", "static_csv"} if static else \
        {"name", "description", "match", "rules"}
    p.keys(data, allowed, "", "a static cohort" if static else "a cohort")
    description = data.get("description", "")
    if not isinstance(description, str):
        p.fail("description", f"expected a string, got {_show(description)}")
    if static:
        ids = data.get("static_ids")
        if not isinstance(ids, (list, tuple)) or not ids:
            p.fail("static_ids", "expected a non-empty list of distinct_ids "
                                 "(or static_csv: a CSV file of them, read by load_definitions)")
        for i, v in enumerate(ids):
            if not isinstance(v, str) or not v.strip():
                p.fail(f"static_ids[{i}]", f"expected a non-empty string, got {_show(v)}")
        csv = data.get("static_csv")
        if csv is not None and not isinstance(csv, str):
            p.fail("static_csv", f"expected a file name, got {_show(csv)}")
        # A set of members: sorted and de-duplicated so reordering the CSV does not bump the version.
        return Cohort(name, static_ids=tuple(sorted({v.strip() for v in ids})), static_csv=csv,
                      description=description)
    match = p.match(data.get("match", "all"), "match")
    rules = p.rules(data.get("rules"), "rules")
    return Cohort(name, rules=rules, match=match, description=description)


class _Parser:
    def __init__(self, where: str):
        self.where = where

    def fail(self, field: str, message: str) -> NoReturn:
        raise DefinitionError(self.where, field, message)

    def keys(self, data: Mapping, allowed: set, path: str, what: str) -> None:
        for key in data:
            if key not in allowed:
                self.fail(_join(path, str(key)), f"unknown key for {what}; allowed: {', '.join(sorted(allowed))}")

    def match(self, value, path: str) -> str:
        if value not in MATCHES:
            self.fail(path, f"expected one of {', '.join(MATCHES)}, got {_show(value)}")
        return value

    def rules(self, value, path: str) -> tuple:
        if not isinstance(value, (list, tuple)) or not value:
            self.fail(path, "expected a non-empty list of rules")
        return tuple(self.rule(r, f"{path}[{i}]") for i, r in enumerate(value))

    def rule(self, r, path: str) -> Rule:
        if isinstance(r, (EventRule, PropertyRule, CohortRule, Group)):
            r = _rule_dict(r)
        if not isinstance(r, Mapping):
            self.fail(path, f"expected a rule (an object), got {_show(r)}")
        kinds = [k for k in ("event", "property", "in_cohort", "not_in_cohort", "rules") if k in r]
        if len(kinds) != 1:
            found = f"found {', '.join(kinds)}" if kinds else f"found keys {', '.join(map(str, r)) or 'none'}"
            self.fail(path, "expected exactly one of event (behaviour), property (profile), in_cohort, "
                            f"not_in_cohort, or rules (a nested group); {found}")
        kind = kinds[0]
        if kind == "event":
            return self.event(r, path)
        if kind == "property":
            return self.property(r, path)
        if kind == "rules":
            self.keys(r, {"rules", "match"}, path, "a group")
            return Group(self.rules(r["rules"], _join(path, "rules")),
                         self.match(r.get("match", "all"), _join(path, "match")))
        self.keys(r, {kind}, path, "a cohort rule")
        name = r[kind]
        if not isinstance(name, str) or not name.strip():
            self.fail(_join(path, kind), f"expected a cohort name, got {_show(name)}")
        return CohortRule(name, include=kind == "in_cohort")

    def event(self, r: Mapping, path: str) -> EventRule:
        self.keys(r, {"event", "did", "operator", "count", "where", *WINDOWS}, path, "an event rule")
        event = r["event"]
        if not isinstance(event, str) or not event:
            self.fail(_join(path, "event"), f"expected an event name, got {_show(event)}")
        did = r.get("did", True)
        if not isinstance(did, bool):
            self.fail(_join(path, "did"), f"expected true or false, got {_show(did)}")
        operator = r.get("operator", "at_least")
        if operator not in COUNT_OPERATORS:
            self.fail(_join(path, "operator"), f"expected one of {', '.join(COUNT_OPERATORS)}, got {_show(operator)}")
        count = r.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            self.fail(_join(path, "count"), f"expected a non-negative integer, got {_show(count)}")
        windows = [w for w in WINDOWS if r.get(w) is not None]
        if len(windows) > 1:
            self.fail(_join(path, windows[1]), f"only one time window per rule; {windows[0]} is already set")
        days = {}
        for w in ("last_days", "first_time_last_days"):
            v = r.get(w)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                self.fail(_join(path, w), f"expected a positive whole number of days, got {_show(v)}")
            days[w] = v
        between = r.get("between")
        if between is not None:
            between = self.date_range(between, _join(path, "between"))
        where = r.get("where", ())
        if not isinstance(where, (list, tuple)):
            self.fail(_join(path, "where"), "expected a list of event property filters")
        filters = tuple(self.property(f, _join(path, f"where[{i}]"), event_filter=True)
                        for i, f in enumerate(where))
        return EventRule(event, did, operator, count, days["last_days"], between,
                         days["first_time_last_days"], filters)

    def date_range(self, value, path: str) -> tuple[dt.date, dt.date]:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            self.fail(path, f"expected [start date, end date], got {_show(value)}")
        start, end = (self.date(v, f"{path}[{i}]") for i, v in enumerate(value))
        if start > end:
            self.fail(path, f"start {start} is after end {end}")
        return start, end

    def date(self, value, path: str) -> dt.date:
        if isinstance(value, dt.datetime):
            value = value.date()
        if isinstance(value, dt.date):
            return value
        try:
            return dt.date.fromisoformat(value)
        except (TypeError, ValueError):
            self.fail(path, f"expected a date like 2026-09-01, got {_show(value)}")

    def property(self, r, path: str, event_filter: bool = False) -> PropertyRule:
        if isinstance(r, PropertyRule):
            r = _rule_dict(r)
        if not isinstance(r, Mapping):
            self.fail(path, f"expected a property condition (an object), got {_show(r)}")
        what = "an event property filter" if event_filter else "a profile property rule"
        self.keys(r, {"property", "operator", "value", "type"}, path, what)
        name = r.get("property")
        if not isinstance(name, str):
            self.fail(_join(path, "property"), f"expected a property name, got {_show(name)}")
        operator = r.get("operator")
        if operator not in PROPERTY_OPERATORS:
            self.fail(_join(path, "operator"),
                      f"expected one of {', '.join(PROPERTY_OPERATORS)}, got {_show(operator)}")
        vpath, tpath = _join(path, "value"), _join(path, "type")
        if operator in ("is_set", "is_not_set"):
            if r.get("value") is not None:
                self.fail(vpath, f"{operator} takes no value")
            return PropertyRule(name, operator)
        if "value" not in r:
            self.fail(vpath, f"{operator} needs a value")
        declared = r.get("type")
        if declared is not None and declared not in VALUE_TYPES:
            self.fail(tpath, f"expected one of {', '.join(VALUE_TYPES)}, got {_show(declared)}")
        value = r["value"]
        if operator == "between":
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                self.fail(vpath, f"between needs [low, high], got {_show(value)}")
            items = list(value)
        elif operator in ("equals", "not_equals") and isinstance(value, (list, tuple)):
            if not value:
                self.fail(vpath, "expected at least one value")
            items = list(value)
        else:
            items = [value]
        kind = declared or _infer(items[0])
        if kind is None:
            self.fail(vpath, f"expected a string, number, boolean or date, got {_show(items[0])}")
        allowed = _OPERATOR_TYPES[operator]
        if kind not in allowed:
            self.fail(tpath if declared else vpath,
                      f"{operator} compares {' or '.join(allowed)} values, not {kind}")
        items = [self.value(v, kind, vpath if len(items) == 1 and operator != "between" else f"{vpath}[{i}]")
                 for i, v in enumerate(items)]
        if operator == "between" and _order_key(items[0]) > _order_key(items[1]):
            self.fail(vpath, f"low {_show(items[0])} is above high {_show(items[1])}")
        if operator == "between" or (operator in ("equals", "not_equals") and isinstance(value, (list, tuple))):
            return PropertyRule(name, operator, tuple(items), kind)
        return PropertyRule(name, operator, items[0], kind)

    def value(self, v, kind: str, path: str):
        if kind == "string" and isinstance(v, str):
            return v
        if kind == "number" and isinstance(v, (int, float)) and not isinstance(v, bool):
            if isinstance(v, float) and not math.isfinite(v):
                self.fail(path, f"expected a finite number, got {v}")
            return int(v) if isinstance(v, float) and v.is_integer() else v
        if kind == "boolean" and isinstance(v, bool):
            return v
        if kind == "datetime":
            parsed = _datetime(v)
            if parsed is not None:
                return parsed
            self.fail(path, f"expected a date (2026-09-01) or a date and time (2026-09-01T12:00:00), got {_show(v)}")
        hint = " (YAML reads yes/no/on/off as booleans: quote it)" if kind == "string" and isinstance(v, bool) else ""
        self.fail(path, f"expected a {kind} value like the others, got {_show(v)}{hint}")


def _infer(v) -> str | None:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, (dt.date, dt.datetime)):
        return "datetime"
    if isinstance(v, str):
        return "string"
    return None


def _datetime(v) -> dt.date | dt.datetime | None:
    """A date stays a date (a whole UTC day); a datetime becomes naive UTC."""
    if isinstance(v, str):
        try:
            v = dt.datetime.fromisoformat(v) if ("T" in v or " " in v.strip()) else dt.date.fromisoformat(v)
        except ValueError:
            return None
    if isinstance(v, dt.datetime):
        return to_utc_naive(v)
    if isinstance(v, dt.date):
        return v
    return None


def _order_key(v):
    if isinstance(v, dt.datetime):
        return v
    if isinstance(v, dt.date):
        return dt.datetime.combine(v, dt.time())
    return v


# -- model -> dict form ------------------------------------------------------------------------------

def to_dict(cohort: Cohort) -> dict:
    """The canonical dict form (JSON-ready); defaults are omitted so equal meanings compare equal."""
    out: dict[str, Any] = {"name": cohort.name}
    if cohort.description:
        out["description"] = cohort.description
    if cohort.static_ids is not None:
        out["static_ids"] = list(cohort.static_ids)
        if cohort.static_csv:
            out["static_csv"] = cohort.static_csv
        return out
    if cohort.match != "all":
        out["match"] = cohort.match
    out["rules"] = [_rule_dict(r) for r in cohort.rules]
    return out


def _rule_dict(r) -> Any:
    if isinstance(r, EventRule):
        out: dict[str, Any] = {"event": r.event}
        if r.did is not True:
            out["did"] = r.did
        if r.operator != "at_least":
            out["operator"] = r.operator
        if r.count != 1:
            out["count"] = r.count
        if r.last_days is not None:
            out["last_days"] = r.last_days
        if r.between is not None:
            out["between"] = [_json_value(d) for d in r.between] if isinstance(r.between, (list, tuple)) \
                else r.between
        if r.first_time_last_days is not None:
            out["first_time_last_days"] = r.first_time_last_days
        if r.where:
            out["where"] = [_rule_dict(f) for f in r.where]
        return out
    if isinstance(r, PropertyRule):
        out = {"property": r.property, "operator": r.operator}
        if r.operator not in ("is_set", "is_not_set"):
            many = isinstance(r.value, (list, tuple))
            out["value"] = [_json_value(v) for v in r.value] if many else _json_value(r.value)
            # Dates become ISO strings here, so the type travels with them.
            kind = r.type or _infer(r.value[0] if many and r.value else r.value)
            if r.type is not None or kind == "datetime":
                out["type"] = kind
        return out
    if isinstance(r, CohortRule):
        return {("in_cohort" if r.include else "not_in_cohort"): r.cohort}
    if isinstance(r, Group):
        out = {"rules": [_rule_dict(x) for x in r.rules]}
        if r.match != "all":
            out["match"] = r.match
        return out
    return r    # not a rule: parse reports it with its path


def _json_value(v):
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, dt.date):
        return v.isoformat()
    return v


def normalize(cohort: Cohort | Mapping, where: str = "") -> Cohort:
    """Validate a cohort built in Python (lists are fine) and return its canonical form."""
    return parse(cohort if isinstance(cohort, Mapping) else to_dict(cohort), where)


# -- references between cohorts ----------------------------------------------------------------------

def references(cohort: Cohort) -> list[tuple[str, str]]:
    """(field path, cohort name) for every in_cohort / not_in_cohort rule, in definition order."""
    found: list[tuple[str, str]] = []

    def walk(rules, path):
        for i, r in enumerate(rules):
            here = f"{path}[{i}]"
            if isinstance(r, CohortRule):
                found.append((f"{here}.{'in_cohort' if r.include else 'not_in_cohort'}", r.cohort))
            elif isinstance(r, Group):
                walk(r.rules, f"{here}.rules")

    walk(cohort.rules, "rules")
    return found


def find_cycle(graph: Mapping[str, list[str]], start: str | None = None) -> list[str] | None:
    """A reference loop in ``graph`` (name -> referenced names), as [a, b, ..., a]; None if there is none.
    Deterministic: names are visited in sorted order."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for ref in graph.get(name, ()):
            if state.get(ref) == 1:
                return path[path.index(ref):] + [ref]
            if ref not in state and (loop := visit(ref)):
                return loop
        path.pop()
        state[name] = 2
        return None

    for name in ([start] if start is not None else sorted(graph)):
        if name not in state and (loop := visit(name)):
            return loop
    return None


def check_cycles(cohorts: Mapping[str, Cohort], where: str = "") -> None:
    """Raise CohortCycleError if the cohorts include or exclude each other in a loop."""
    loop = find_cycle({name: [ref for _, ref in references(c)] for name, c in cohorts.items()})
    if loop:
        raise CohortCycleError(loop, where)


# -- helpers -----------------------------------------------------------------------------------------

def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if v is None:
        return "nothing"
    text = json.dumps(v, ensure_ascii=False, default=str)      # JSON, as the definition was written
    return text if len(text) <= 60 else text[:57] + "..."
