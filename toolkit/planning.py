"""Export planning: the pure diff between who should carry a cohort's tag and who carries it now.

"Now" is the snapshot of the last successful export of that cohort, never OneSignal itself: like
Mixpanel's own cohort sync, a run sends only the difference, and a failed update is simply still
different on the next run. Plans are deterministic (sorted by distinct_id) and do no I/O; the
removal guard trips when it cannot be evaluated instead of passing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

ADD, REMOVE, NOOP = "add", "remove", "no-op"


# Tuples, not dataclasses: a dynamic sync compares a million of them every fifteen minutes.
class Target(NamedTuple):
    """One OneSignal user, as the export addresses it."""
    onesignal_id: str
    id_type: str            # external_id | subscription_id


class Step(NamedTuple):
    distinct_id: str
    operation: str          # add | remove | no-op
    target: Target


@dataclass(frozen=True)
class Plan:
    changes: tuple[Step, ...]              # adds and removes, sorted by distinct_id
    unchanged: Mapping[str, Target]        # the no-ops, kept as a mapping: usually nearly everyone
    counts: Mapping[str, int] = field(default_factory=dict)

    def of(self, operation: str) -> list[Step]:
        if operation == NOOP:
            return [Step(d, NOOP, self.unchanged[d]) for d in sorted(self.unchanged)]
        return [s for s in self.changes if s.operation == operation]

    @property
    def steps(self) -> list[Step]:
        """Every member's step (the exported-users report), sorted by distinct_id."""
        return sorted((*self.changes, *self.of(NOOP)), key=lambda s: (s.distinct_id, s.operation != REMOVE))


def plan(wanted: Mapping[str, Target], snapshot: Mapping[str, Target]) -> Plan:
    """Add who is wanted and not in the snapshot; remove who is in it and not wanted. A member whose
    OneSignal id changed is removed under the old id and added under the new one."""
    # Set operations on the item views run in C: a dynamic sync of an unchanged million members
    # must not walk a million Python objects one by one.
    changed = {d for d, _ in wanted.items() ^ snapshot.items()}
    changes: list[Step] = []
    for distinct_id in sorted(changed):
        have, want = snapshot.get(distinct_id), wanted.get(distinct_id)
        if have is not None:
            changes.append(Step(distinct_id, REMOVE, have))
        if want is not None:
            changes.append(Step(distinct_id, ADD, want))
    unchanged = {d: wanted[d] for d in wanted.keys() - changed}
    counts = {ADD: sum(s.operation == ADD for s in changes), REMOVE: sum(s.operation == REMOVE for s in changes),
              NOOP: len(unchanged)}
    return Plan(tuple(changes), unchanged, counts)


@dataclass(frozen=True)
class GuardVerdict:
    ok: bool
    reason: str


def removal_guard(plan_: Plan, segment_size: int | None, max_share: float, *, force: bool = False) -> GuardVerdict:
    """Stop a run that would empty more than ``max_share`` of the segment, unless forced.

    ``segment_size`` is how many users carry the tag now (the snapshot's size); None means unknown,
    and an unknown size trips the guard rather than letting a mass removal through.
    """
    removals = plan_.counts.get(REMOVE, 0)
    if force:
        return GuardVerdict(True, f"forced: {removals} removal(s) allowed")
    if removals == 0:
        return GuardVerdict(True, "no removals")
    if segment_size is None or segment_size <= 0:
        return GuardVerdict(False, f"{removals} removal(s) but the segment's size is unknown; rerun with force")
    share = removals / segment_size
    if share > max_share:
        return GuardVerdict(False, f"would remove {removals} of {segment_size} users ({share:.0%}), more than "
                                   f"the {max_share:.0%} allowed; rerun with force if this is intended")
    return GuardVerdict(True, f"removes {removals} of {segment_size} users ({share:.0%})")
