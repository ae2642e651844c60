"""Which incidents are open, given the dynamic syncs' run records and the time (pure: no I/O).

An incident is one (cohort, kind) condition that a person should hear about once: the latest run
failed, partially failed, was paused by OneSignal's refusal or stopped by the removal guard; the
app's data-tag cap kept members out; the sync has not run for two cycles (stale); or its members or
exportable users fell by more than a share between two runs (shrinking). ``conditions`` says which
hold now; ``changes`` compares them with the incidents already open, so an alert is sent when a
condition starts and a short "resolved" when it ends, never once per run.

Only dynamic syncs that are not stopped count (a person runs a one-time export and sees its result).
Dry runs do not count, nor do runs still running or interrupted (the next run converges).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

FAILED, PARTIAL, PAUSED, GUARD, TAG_CAP, STALE, SHRINKING = (
    "failed", "partial", "paused", "guard", "tag_cap", "stale", "shrinking")
KINDS = (FAILED, PARTIAL, PAUSED, GUARD, TAG_CAP, STALE, SHRINKING)
INCONCLUSIVE = ("running", "interrupted")        # statuses that say nothing about the sync's health
STATUS_KIND = {"failed": FAILED, "partial": PARTIAL, "paused": PAUSED, "stopped": GUARD}


@dataclass(frozen=True)
class RunFacts:
    """One non-dry ``export_runs`` row, as far as incidents need it."""
    run_id: int
    status: str                 # ok | partial | failed | stopped | interrupted | paused | running
    started_at: datetime
    members: int | None = None
    exportable: int | None = None
    failed: int = 0
    tag_cap: int = 0
    error: str | None = None


@dataclass(frozen=True)
class SyncFacts:
    """A registered export and its runs, newest first."""
    cohort: str
    mode: str                   # once | dynamic
    created_at: datetime
    stopped_at: datetime | None = None
    runs: tuple[RunFacts, ...] = ()
    paused: bool = False        # waiting for a person (its own run's refusal, a sibling's refused key, a person)


@dataclass(frozen=True)
class Rules:
    cadence: timedelta = timedelta(minutes=15)   # how often a dynamic sync runs
    missed_cycles: int = 2                       # stale after this many cycles without a run
    shrink_share: float = 0.5                    # a drop of more than this share between runs alerts


@dataclass(frozen=True)
class Condition:
    """A condition that holds now: what it is (``cause``) and what a person does about it (``advice``)."""
    cohort: str
    kind: str
    cause: str
    advice: str
    run_id: int | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.cohort, self.kind


def conditions(syncs: Iterable[SyncFacts], now: datetime, rules: Rules = Rules()) -> list[Condition]:
    """Every condition that holds now, per cohort in ``KINDS`` order."""
    found: list[Condition] = []
    for sync in syncs:
        if sync.mode == "dynamic" and sync.stopped_at is None:
            found += _of_sync(sync, now, rules)
    return found


def _of_sync(sync: SyncFacts, now: datetime, rules: Rules) -> list[Condition]:
    name = sync.cohort
    concluded = [r for r in sync.runs if r.status not in INCONCLUSIVE]
    latest = concluded[0] if concluded else None
    found: list[Condition] = []
    kind = STATUS_KIND.get(latest.status) if latest else None
    if latest and kind:
        found.append(Condition(name, kind, _status_cause(latest), _ADVICE[kind].format(cohort=name), latest.run_id))
    if latest and latest.tag_cap:
        found.append(Condition(name, TAG_CAP, f"{latest.tag_cap:,} member(s) were not tagged: the OneSignal app's "
                               "data-tag cap per user is reached", _ADVICE[TAG_CAP].format(cohort=name),
                               latest.run_id))
    last_attempt = sync.runs[0].started_at if sync.runs else sync.created_at
    overdue = now - last_attempt
    # A paused sync is not stale: it waits for a person (its pause is the incident, if a run met it).
    waiting = sync.paused or (latest is not None and latest.status == "paused")
    if not waiting and overdue > rules.cadence * rules.missed_cycles:
        found.append(Condition(name, STALE, f"has not run since {last_attempt:%Y-%m-%d %H:%M} UTC "
                               f"({_minutes(overdue)}; it should run every {_minutes(rules.cadence)})",
                               _ADVICE[STALE].format(cohort=name)))
    if latest and latest.status != "stopped":     # the guard's alert already says the cohort shrank
        shrunk = _shrink(latest, [r for r in concluded[1:] if r.members is not None], rules.shrink_share)
        if shrunk:
            found.append(Condition(name, SHRINKING, shrunk, _ADVICE[SHRINKING].format(cohort=name), latest.run_id))
    return found


def _status_cause(run: RunFacts) -> str:
    said = {"failed": "the latest run failed", "partial": f"the latest run left {run.failed:,} user(s) not updated",
            "paused": "OneSignal refused the sync's requests, so it is paused",
            "stopped": "the removal guard stopped the latest run"}[run.status]
    return f"{said}: {run.error}" if run.error else said


def _shrink(latest: RunFacts, earlier: list[RunFacts], share: float) -> str | None:
    """Members or exportable users of ``latest`` against the previous run with counts: the drop, worded,
    when it is more than ``share``."""
    if latest.members is None or not earlier:
        return None
    before = earlier[0]
    drops = []
    for what, old, new in (("members", before.members, latest.members),
                           ("exportable users", before.exportable, latest.exportable)):
        if old and new is not None and (old - new) / old > share:
            drops.append(f"{what} fell from {old:,} to {new:,} (-{(old - new) / old:.0%})")
    if not drops:
        return None
    return (" and ".join(drops) + f" between the runs of {before.started_at:%Y-%m-%d %H:%M} and "
            f"{latest.started_at:%H:%M} UTC (more than the {share:.0%} allowed)")


def _minutes(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 120 else f"{minutes} min"


_ADVICE = {
    FAILED: "The sync tries again every cycle. Fix what the error says: a key OneSignal refuses needs a new one "
            "(`toolkit connect --app-id APP --save`); a cohort that cannot be evaluated needs its definition "
            "fixed (`toolkit cohorts load`). `toolkit runs --cohort \"{cohort}\"` shows each run.",
    PARTIAL: "The next run retries those users. If the same users keep failing, their error says why "
             "(`toolkit runs --cohort \"{cohort}\"`; the per-user outcomes are in export_results).",
    PAUSED: "The sync stays paused until a person resumes it. Fix the cause first (a new key: `toolkit connect "
            "--app-id APP --save`; a deleted app or segment), then resume the sync.",
    GUARD: "Nothing was removed, and the sync stays stopped until a person acts. If the cohort really lost that "
           "many users, run `toolkit export \"{cohort}\" --force` once; otherwise check the cohort's definition "
           "and the files loaded last, then resume it (`toolkit resume \"{cohort}\"`).",
    TAG_CAP: "Raise the app's data-tag limit in OneSignal (a paid plan allows 20) and tell the toolkit "
             "(`toolkit connect --app-id APP --tag-limit N`), or remove other tags from those users; "
             "the members kept out are tried again then.",
    STALE: "Check that `toolkit schedule` (or the cron job running `toolkit sync`) is still running, and that "
           "the store is not held by another process; `toolkit runs --cohort \"{cohort}\"` shows the last run.",
    SHRINKING: "If the drop is expected, nothing to do. Otherwise check the files loaded last (a partial "
               "export?) and the cohort's definition before the next runs remove these users from the segment.",
}


@dataclass(frozen=True)
class Changes:
    opened: list[Condition]
    resolved: list[tuple[str, str]]     # (cohort, kind) of the open incidents that no longer hold


# One incident per family: a sync whose runs go from failed to partially failed (or back) is still failing,
# and a person hears once when it starts and once when a run ends well.
FAMILY = {PARTIAL: FAILED}


def changes(open_incidents: Iterable[tuple[str, str]], now_holding: Iterable[Condition]) -> Changes:
    """The conditions to open an incident for (none of its family open yet) and the open incidents to
    resolve (none of their family holds)."""
    def family(key: tuple[str, str]) -> tuple[str, str]:
        return key[0], FAMILY.get(key[1], key[1])

    open_keys = set(open_incidents)
    holding = {c.key: c for c in now_holding}
    open_families = {family(k) for k in open_keys}
    holding_families = {family(k) for k in holding}
    return Changes([c for k, c in holding.items() if family(k) not in open_families],
                   sorted(k for k in open_keys if family(k) not in holding_families))


def resolution(cohort: str, kind: str, syncs: Mapping[str, SyncFacts]) -> str:
    """Why an incident is over, in a few words."""
    sync = syncs.get(cohort)
    if sync is None:
        return "the export was removed"
    if sync.mode != "dynamic" or sync.stopped_at is not None:
        return "the dynamic sync was stopped"
    concluded = [r for r in sync.runs if r.status not in INCONCLUSIVE]
    if concluded:
        latest = concluded[0]
        members = f", {latest.members:,} member(s)" if latest.members is not None else ""
        return f"the run of {latest.started_at:%Y-%m-%d %H:%M} UTC ended {latest.status}{members}"
    return "the condition no longer holds"


TITLES = {FAILED: "failed", PARTIAL: "partially failed", PAUSED: "paused", GUARD: "stopped by the removal guard",
          TAG_CAP: "hit the data-tag cap", STALE: "is stale", SHRINKING: "is shrinking sharply"}


def opened_text(c: Condition) -> str:
    """The alert: the cohort, the cause and what to do."""
    return f'Sync of cohort "{c.cohort}" {TITLES[c.kind]}: {c.cause.rstrip(".")}.\nWhat to do: {c.advice}'


def opened_group_text(found: list[Condition]) -> str:
    """One alert for incidents of one kind that opened at the same check (sixty syncs of one app meet a
    cap or a revoked key together): each cohort with its cause, then what to do."""
    if len(found) == 1:
        return opened_text(found[0])
    lines = "\n".join(f'- "{c.cohort}": {c.cause.rstrip(".")}' for c in found)
    title = TITLES[found[0].kind].replace("is ", "are ", 1)
    return f"Syncs of {len(found)} cohorts {title}:\n{lines}\nWhat to do: {found[0].advice}"


def resolved_text(cohort: str, kind: str, opened_at: datetime, why: str) -> str:
    return (f'Resolved: sync of cohort "{cohort}" no longer {_NO_LONGER[kind]} '
            f"(since {opened_at:%Y-%m-%d %H:%M} UTC): {why.rstrip('.')}.")


def resolved_group_text(found: list[tuple[str, str, datetime, str]]) -> str:
    """One "resolved" for incidents of one kind that ended at the same check: (cohort, kind, opened_at, why)."""
    if len(found) == 1:
        return resolved_text(*found[0])
    lines = "\n".join(f'- "{cohort}" (since {opened_at:%Y-%m-%d %H:%M} UTC): {why.rstrip(".")}'
                       for cohort, _, opened_at, why in found)
    return f"Resolved: syncs of {len(found)} cohorts no longer {_NO_LONGER[found[0][1]]}:\n{lines}"


_NO_LONGER = {FAILED: "failing", PARTIAL: "partially failing", PAUSED: "paused", GUARD: "stopped by the removal guard",
              TAG_CAP: "held back by the data-tag cap", STALE: "stale", SHRINKING: "shrinking"}
