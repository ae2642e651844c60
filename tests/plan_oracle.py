"""The export plan as it was computed before fingerprints: both sets as Python dicts, compared member
by member. The oracle the store's plan (toolkit.snapshots + toolkit.planning) is checked against."""

from __future__ import annotations

from collections.abc import Mapping

from toolkit.planning import ADD, NOOP, REMOVE, Plan, Step, Target


def plan(wanted: Mapping[str, Target], snapshot: Mapping[str, Target]) -> Plan:
    """Add who is wanted and not in the snapshot; remove who is in it and not wanted. A member whose
    OneSignal id changed is removed under the old id and added under the new one."""
    changed = {d for d, _ in wanted.items() ^ snapshot.items()}
    changes: list[Step] = []
    for distinct_id in sorted(changed):
        have, want = snapshot.get(distinct_id), wanted.get(distinct_id)
        if have is not None:
            changes.append(Step(distinct_id, REMOVE, have))
        if want is not None:
            changes.append(Step(distinct_id, ADD, want))
    counts = {ADD: sum(s.operation == ADD for s in changes), REMOVE: sum(s.operation == REMOVE for s in changes),
              NOOP: len(wanted.keys() - changed)}
    return Plan(tuple(changes), counts)
