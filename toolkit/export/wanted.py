"""Who is exportable now (``Exportable``, ``targets``), and the plan against the last export's snapshot with
the removal guard's verdict (``_plan``): what a run does and a preview shows, computed here only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import NamedTuple

import pyarrow as pa

from toolkit import matching, planning, snapshots
from toolkit.errors import ExportError
from toolkit.export.helpers import _naive
from toolkit.export.run_settings import ExportSettings
from toolkit.planning import NOOP, GuardVerdict, Target
from toolkit.store import Store

MAX_COHORT_MEMBERS = 10_000_000


RECHECK_ABSENT = timedelta(hours=24)


class Planned(NamedTuple):
    """A plan made before its run, with the cycle's other cohorts (``export.cycle_plans``), and what the
    app's tag cap says of its adds (``tag_caps.TagCaps``: ``over`` and ``other``, as of the cycle's start)."""
    plan: planning.Plan
    verdict: GuardVerdict
    exportable: int                 # how many members it was planned for
    over: frozenset[str] = frozenset()
    other: Mapping[str, int] = {}


@dataclass(frozen=True)
class Exportable:
    """A cohort evaluated for export: its size, the OneSignal user of each exportable member (``table``:
    distinct_id, onesignal_id, id_type, what a run plans from), and how many of the others each reason
    left out. A cohort planned with the rest of its cycle carries its plan (``planned``) instead of its
    members: then ``table`` is None."""
    members: int
    table: pa.Table | None
    left_out: Mapping[str, int]
    planned: Planned | None = None

    @property
    def count(self) -> int:
        """How many members are exportable."""
        if self.planned is not None:
            return self.planned.exportable
        assert self.table is not None
        return self.table.num_rows

    @cached_property
    def wanted(self) -> dict[str, Target]:
        """The exportable members as a mapping (a run never needs it: small cohorts, reports)."""
        assert self.table is not None, "a cohort planned with its cycle carries no members"
        return _targets(self.table)


def targets(preview: matching.Preview) -> dict[str, Target]:
    """The exportable members of a preview, as the OneSignal users the export addresses (from Arrow:
    a million members never become a DataFrame)."""
    return _targets(preview.exportable_table)


def _targets(table: pa.Table) -> dict[str, Target]:
    rows = table.to_pydict()
    return {did: Target(oid, kind)
            for did, oid, kind in zip(rows["distinct_id"], rows["onesignal_id"], rows["id_type"], strict=True)}


def exportable(store: Store, settings: ExportSettings, evaluate=None) -> Exportable:
    """Evaluate the cohort as of ``settings.now`` and match its members by the settings' user-id property.
    ``evaluate``: `matching.preview` (the default) or an engine's (`toolkit.engine.Evaluator.preview`)."""
    found = (evaluate or matching.preview)(store, settings.cohort, now=settings.now,
                                           user_id_property=settings.user_id_property, id_type=settings.id_type)
    return Exportable(int(found.summary["members"]), found.exportable_table,
                      {reason: int(n) for reason, n in found.summary["reasons"].items() if n})


def snapshot(con, cohort: str, now: datetime) -> dict[str, Target]:
    """Who the last successful export covered; absent users count until it is time to look again."""
    return snapshots.current(con, cohort, recheck_since(now))


def recheck_since(now: datetime) -> datetime:
    """Absent users checked at or before this are looked for again (they leave the snapshot)."""
    return _naive(now) - RECHECK_ABSENT


def _plan(con, settings: ExportSettings, wanted: Mapping[str, Target] | pa.Table
          ) -> tuple[planning.Plan, GuardVerdict]:
    """The plan against the last export's snapshot, and the removal guard's verdict on it: what a run
    does and what a preview shows, computed here only. Equal fingerprints plan nothing at once;
    otherwise only the rows that differ come out of the store."""
    table = wanted if isinstance(wanted, pa.Table) else snapshots.table_of(wanted)
    if table.num_rows > MAX_COHORT_MEMBERS:
        raise ExportError(f"cohort {settings.cohort!r} has {table.num_rows:,} exportable members; the limit is "
                          f"{MAX_COHORT_MEMBERS:,} (matchability reports the rest as over_limit)")
    since = recheck_since(settings.now)
    kept = snapshots.kept(con, settings.cohort, since)
    the_plan = None if kept is None else planning.unchanged(snapshots.fingerprint(con, table), kept)
    if the_plan is None:
        adds, removes, size = snapshots.diff(con, settings.cohort, since, table)
        the_plan = planning.plan(adds, removes, table.num_rows - len(adds))
    else:
        size = the_plan.counts[NOOP]                 # the snapshot is the wanted set
    # The share is of what the plan diffs against; with nothing exported yet, size is unknown (trips
    # only if something would be removed, which cannot happen then).
    verdict = planning.removal_guard(the_plan, size or None, settings.max_removal_share, force=settings.force)
    return the_plan, verdict
