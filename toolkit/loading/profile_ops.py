"""Mixpanel's profile update operations, as a pure fold over a profile's properties.

``apply(properties, op, value)`` returns the new properties, or None when the profile is deleted.
Operations that cannot apply to the current value (``$add`` to a string, ``$union`` into a
number) leave that property unchanged, as Mixpanel does. ``check(op, value)`` says why an update
is malformed before anything is applied, so the loader can quarantine it.
"""

from __future__ import annotations

import math
from typing import Any

OPS = ("$set", "$set_once", "$add", "$union", "$append", "$remove", "$unset", "$delete")

Properties = dict[str, Any]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check(op: str, value: Any) -> str | None:
    """Why ``value`` is not a valid argument of ``op``; None when it is."""
    if op == "$delete":
        return None
    if op == "$unset":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return "$unset takes a list of property names"
        return None
    if not isinstance(value, dict):
        return f"{op} takes an object of property: value"
    if op == "$add":
        bad = [k for k, v in value.items() if not _is_number(v)]
        if bad:
            return f"$add takes numbers; {bad[0]!r} is not a number"
    if op == "$union":
        bad = [k for k, v in value.items() if not isinstance(v, list)]
        if bad:
            return f"$union takes lists; {bad[0]!r} is not a list"
    return None


def apply(properties: Properties | None, op: str, value: Any) -> Properties | None:
    """One operation; ``properties`` is not modified. A missing profile starts empty."""
    if op == "$delete":
        return None
    props = dict(properties or {})
    if op == "$set":
        props.update(value)
    elif op == "$set_once":
        for key, val in value.items():
            props.setdefault(key, val)
    elif op == "$add":
        for key, amount in value.items():
            current = props.get(key, 0)
            if _is_number(current):
                props[key] = current + amount
    elif op == "$union":
        for key, items in value.items():
            current = props.get(key, [])
            if isinstance(current, list):
                props[key] = current + [v for i, v in enumerate(items)
                                        if v not in current and v not in items[:i]]
    elif op == "$append":
        for key, item in value.items():
            current = props.get(key, [])
            if isinstance(current, list):
                props[key] = current + [item]
    elif op == "$remove":
        for key, item in value.items():
            current = props.get(key)
            if isinstance(current, list):
                props[key] = [v for v in current if v != item]
    elif op == "$unset":
        for key in value:
            props.pop(key, None)
    else:
        raise ValueError(f"unknown profile operation {op!r}; expected one of {', '.join(OPS)}")
    return props
