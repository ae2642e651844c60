"""Export planning: the pure diff between who should carry a cohort's tag and who carries it now.

"Now" is the snapshot of the last successful export of that cohort, never OneSignal itself: like
Mixpanel's own cohort sync, a run sends only the difference, and a failed update is simply still
different on the next run. Plans are deterministic (sorted by distinct_id) and do no I/O; the
removal guard trips when it cannot be evaluated instead of passing.

The members themselves never reach this module: a dynamic sync plans a million of them every fifteen
minutes. The store compares the two sets' fingerprints (equal: nothing to send) and otherwise hands
over only the rows that differ (``toolkit.snapshots``); this module orders them into steps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

ADD, REMOVE, NOOP = "add", "remove", "no-op"


# Tuples, not dataclasses: a first export sends a step per member.
class Target(NamedTuple):
    """One OneSignal user, as the export addresses it."""
    onesignal_id: str
    id_type: str            # external_id | subscription_id


class Step(NamedTuple):
    distinct_id: str
    operation: str          # add | remove
    target: Target


class Fingerprint(NamedTuple):
    """A set of (distinct_id, onesignal_id, id_type) rows, summarised independently of their order:
    how many, and the sum of a 64-bit hash of each. Two sets with equal fingerprints are taken to be
    equal (a change that keeps the sum is a 1 in 2**64 chance)."""
    members: int
    digest: int


@dataclass(frozen=True)
class Plan:
    changes: tuple[Step, ...]              # adds and removes, sorted by distinct_id, a removal first
    counts: Mapping[str, int] = field(default_factory=dict)    # add, remove, no-op
    recognised: bool = field(default=False, compare=False)     # from equal fingerprints: no member read

    def of(self, operation: str) -> list[Step]:
        """The adds or the removes, sorted by distinct_id."""
        return [s for s in self.changes if s.operation == operation]


def unchanged(wanted: Fingerprint, snapshot: Fingerprint | None) -> Plan | None:
    """The plan when the wanted set's fingerprint is the snapshot's: nothing to send, every member a
    no-op. None when they differ or the snapshot's is not known: then the rows that differ decide."""
    if snapshot is None or wanted != snapshot:
        return None
    return Plan((), {ADD: 0, REMOVE: 0, NOOP: wanted.members}, recognised=True)


def plan(adds: Iterable[tuple[str, Target]], removes: Iterable[tuple[str, Target]], noops: int) -> Plan:
    """The plan from the rows that differ: ``adds`` are wanted and not in the snapshot as they are,
    ``removes`` in the snapshot and not wanted as they are; ``noops`` members are in both. A member
    whose OneSignal id changed is in both lists: removed under the old id, then added under the new."""
    steps = [Step(d, REMOVE, t) for d, t in removes] + [Step(d, ADD, t) for d, t in adds]
    steps.sort(key=lambda s: (s.distinct_id, s.operation != REMOVE))
    counts = {ADD: sum(s.operation == ADD for s in steps), REMOVE: sum(s.operation == REMOVE for s in steps),
              NOOP: noops}
    return Plan(tuple(steps), counts)


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
