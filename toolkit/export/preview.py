"""``preview_export``: what an export would do now (plan, guard, data-tag cap), from the store alone; it
sends and writes nothing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from toolkit.export import states
from toolkit.export.registry import DEFAULT_TAG_LIMIT, app_tag_limit
from toolkit.export.run_settings import ExportSettings, settings
from toolkit.export.tag_caps import _capped_plan
from toolkit.export.wanted import Exportable, exportable
from toolkit.planning import ADD, NOOP, REMOVE, GuardVerdict, Step
from toolkit.store import Store

SAMPLES = 5                     # adds and removes a preview names


@dataclass(frozen=True)
class ExportPreview:
    """What exporting a cohort now would do, from what the store holds: nothing is sent or written."""
    cohort: str
    mode: str
    as_of: datetime
    members: int
    exportable: int
    counts: Mapping[str, int]                  # add, remove, no-op
    samples: Mapping[str, tuple[Step, ...]]    # the first adds and removes, by distinct_id
    verdict: GuardVerdict                      # the removal guard: passes or stops the export, and why
    left_out: Mapping[str, int]                # members that cannot be exported, by reason
    tag_limit: Mapping[str, Any] = field(default_factory=lambda: {"tag_limit": DEFAULT_TAG_LIMIT,
                                                                  "source": "default"})
    over_tag_limit: int = 0                    # members the app's data-tag cap keeps out (not sent)
    # The registered dynamic sync is paused or stopped by the removal guard (``states.sync_stop``), with
    # ``forced`` (a forced run confirms the guard's removals) and ``refusal``: what a run now would record
    # instead of sending (None: it would run).
    sync_stop: Mapping[str, Any] | None = None

    @property
    def added(self) -> int:
        return self.counts[ADD]

    @property
    def removed(self) -> int:
        return self.counts[REMOVE]

    @property
    def unchanged(self) -> int:
        return self.counts[NOOP]

    @property
    def status(self) -> str:
        """What a dry run records: ok; stopped (by the removal guard, now or since a run it stopped); paused
        (a run now would be refused)."""
        if self.sync_stop is not None and self.sync_stop["refusal"]:
            return states.PAUSED if self.sync_stop["state"] == states.PAUSED else "stopped"
        return "ok" if self.verdict.ok else "stopped"

    @property
    def refused(self) -> str | None:
        """Why an export now would be refused (the sync's pause or standing guard stop, else the removal
        guard's reason), or None: it would run."""
        if self.sync_stop is not None and self.sync_stop["refusal"]:
            return self.sync_stop["refusal"]
        return None if self.verdict.ok else self.verdict.reason

    def to_dict(self) -> dict:
        """A dry run's record: the keys of ``RunRecord.to_dict`` (a dry run sends nothing, so none
        failed or was found missing), the samples and the members left out."""
        def steps(operation: str) -> list[dict]:
            return [{"distinct_id": s.distinct_id, "onesignal_id": s.target.onesignal_id,
                     "id_type": s.target.id_type} for s in self.samples[operation]]
        return {"cohort": self.cohort, "mode": self.mode, "dry_run": True, "status": self.status,
                "as_of": self.as_of, "members": self.members, "exportable": self.exportable,
                "added": self.added, "removed": self.removed, "unchanged": self.unchanged,
                "not_in_onesignal": 0, "failed": 0, "tag_cap": self.over_tag_limit, "error": self.refused,
                "guard": self.verdict.reason, "samples": {ADD: steps(ADD), REMOVE: steps(REMOVE)},
                "left_out": dict(self.left_out), "tag_limit": dict(self.tag_limit),
                "sync_stop": dict(self.sync_stop) if self.sync_stop is not None else None}


def preview_export(store: Store, settings_or_cohort: ExportSettings | str, *, now: datetime | None = None,
                   force: bool = False, samples: int = SAMPLES, evaluate=None) -> ExportPreview:
    """What an export of the cohort would do now: the plan's adds, removes and unchanged members, the
    first few of each change, and the removal guard's verdict, from the store alone (no HTTP, no
    writes: a read-only store does). Given a cohort's name, its registered export (or a one-time export)
    is rehearsed as of ``now``, ``force`` passing the guard; given settings, they say all that.
    ``evaluate``: who evaluates the cohort (`exportable`)."""
    given = settings_or_cohort
    chosen = given if isinstance(given, ExportSettings) else settings(store, given, dry_run=True, now=now,
                                                                        force=force)
    return preview_targets(store, chosen, exportable(store, chosen, evaluate), samples=samples)


def preview_targets(store: Store, chosen: ExportSettings, found: Exportable, *, samples: int = SAMPLES
                    ) -> ExportPreview:
    """``preview_export`` of members already evaluated (``found``): the plan, the guard and the app's
    data-tag cap, from the store alone."""
    reader = store.reader()
    the_plan, verdict, caps = _capped_plan(reader, chosen, found.table, found.planned)
    limit = app_tag_limit(reader, chosen.app_id)
    if limit["tag_limit"] != chosen.tag_limit:
        limit = {"tag_limit": chosen.tag_limit, "source": "this run"}
    return ExportPreview(chosen.cohort, chosen.mode, chosen.now, found.members, found.count,
                         {op: the_plan.counts.get(op, 0) for op in (ADD, REMOVE, NOOP)},
                         {op: tuple(the_plan.of(op)[:samples]) for op in (ADD, REMOVE)}, verdict, found.left_out,
                         limit, caps.count, _sync_stop(reader, chosen, verdict))


def _sync_stop(con, chosen: ExportSettings, verdict: GuardVerdict) -> dict | None:
    """The pause or guard stop of the registered dynamic sync this rehearses, and what a run now would
    record because of it (``runner``'s rule: a paused sync's run is refused; a guard-stopped one's records
    a short ``stopped`` run unless forced)."""
    stop = states.sync_stop(con, chosen.cohort) if chosen.mode == "dynamic" else None
    if stop is None:
        return None
    forced = stop["state"] == states.GUARDED and chosen.force
    if stop["state"] == states.PAUSED:
        refusal: str | None = states.paused_refusal(chosen.cohort, stop["since"], stop["reason"])
    elif forced:
        refusal = None
    else:
        refusal = states.still_stopped(chosen.cohort, (stop["since"], stop["run_id"]), verdict.reason, verdict.ok)
    return {**stop, "forced": forced, "refusal": refusal}
