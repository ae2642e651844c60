"""Segment filters: which ones the emulator accepts, and whether a user's tags match them.

Supported: tag filters ``{"field": "tag", "key": k, "relation": r, "value": v}`` with OneSignal's
relations, joined by ``{"operator": "AND"|"OR"}`` (AND binds tighter, as in OneSignal: the list is
split at each OR into groups whose conditions must all hold). Other fields are refused with a 400 so
a test never silently relies on something the emulator does not evaluate.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

RELATIONS = {"=", "!=", ">", "<", "exists", "not_exists", "time_elapsed_gt", "time_elapsed_lt"}
NEEDS_VALUE = RELATIONS - {"exists", "not_exists"}
MAX_FILTERS = 200


def problem(filters) -> str | None:
    """Why this filter list would be refused, or None if it is acceptable."""
    if not isinstance(filters, list) or not 1 <= len(filters) <= MAX_FILTERS:
        return f"filters must be a list of 1 to {MAX_FILTERS} entries"
    previous_was_operator = True        # a list may not start with an operator
    for n, entry in enumerate(filters):
        if not isinstance(entry, dict):
            return f"filter {n} is not an object"
        if "operator" in entry:
            if entry["operator"] not in ("AND", "OR"):
                return f"filter {n}: operator must be AND or OR"
            if previous_was_operator:
                return f"filter {n}: an operator must sit between two conditions"
            previous_was_operator = True
            continue
        if entry.get("field") != "tag":
            return f"filter {n}: the emulator supports only tag filters (field 'tag')"
        if not isinstance(entry.get("key"), str) or not entry["key"]:
            return f"filter {n}: a tag filter needs a key"
        if entry.get("relation") not in RELATIONS:
            return f"filter {n}: relation must be one of {', '.join(sorted(RELATIONS))}"
        if entry["relation"] in NEEDS_VALUE and entry.get("value") is None:
            return f"filter {n}: relation {entry['relation']} needs a value"
        previous_was_operator = False
    if previous_was_operator:
        return "filters may not end with an operator"
    return None


def matches(filters: list[dict], tags: Mapping[str, str], now: float | None = None) -> bool:
    """Whether a user with these tags is in a segment with these (accepted) filters."""
    now = time.time() if now is None else now
    group_holds = True
    for entry in filters:
        if entry.get("operator") == "OR":
            if group_holds:
                return True
            group_holds = True
        elif "operator" not in entry:
            group_holds = group_holds and _condition(entry, tags, now)
    return group_holds


def _condition(entry: dict, tags: Mapping[str, str], now: float) -> bool:
    relation, value = entry["relation"], tags.get(entry["key"])
    if relation == "exists":
        return value is not None
    if relation == "not_exists":
        return value is None
    wanted = str(entry["value"])
    if relation == "=":
        return value == wanted
    if relation == "!=":
        return value != wanted            # a user without the tag is "not equal" too
    if value is None:
        return False
    try:
        have, want = float(value), float(wanted)
    except ValueError:
        return False
    if relation == ">":
        return have > want
    if relation == "<":
        return have < want
    elapsed = now - have                  # time_elapsed_*: the tag holds a unix time in seconds
    return elapsed > want if relation == "time_elapsed_gt" else elapsed < want
