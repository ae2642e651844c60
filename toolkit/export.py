"""Exporting a cohort to OneSignal, once or as a dynamic sync: a tag per cohort, a segment on that tag.

A run follows one ``ExportSettings``, built once by ``settings`` from the cohort's registration and
the caller's overrides. It evaluates who is exportable now, plans the difference against the snapshot
of the last successful export (``toolkit.planning``), checks the removal guard (``preview_export`` is
this much, and no more: it sends and writes nothing), makes sure the segment exists (a free plan
fails here, before any user is touched), then sets the tag on added users and clears it on removed
ones. Each user's outcome is written as it arrives, in small transactions, and the snapshot advances
only for what succeeded: a killed run loses nothing, and the next run converges. Users not in
OneSignal are reported and never created. Two runs of one cohort never overlap: a run holds a lock
file beside the store (flock, released by the kernel when its process dies), so a stale "running"
record never blocks, whatever process now has its pid.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa

from toolkit import cohorts, credentials, matching, planning, snapshots
from toolkit.errors import ExportError
from toolkit.onesignal import (
    FAILED,
    NOT_FOUND,
    OK,
    REDACTOR,
    TAG_CAP,
    Conflict,
    Credentials,
    NotFound,
    OneSignalClient,
    OneSignalError,
    PlanRefused,
    SegmentLimitReached,
    TagLimitExceeded,
    default_base_url,
)
from toolkit.onesignal_ids import USER_ID_PROPERTY
from toolkit.planning import ADD, NOOP, REMOVE, GuardVerdict, Step, Target
from toolkit.sql import to_utc_naive
from toolkit.store import Store, transaction

FREE_PLAN_MESSAGE = "App may not submit cohort updates from Mixpanel"   # Mixpanel's words, kept exactly
MODES = ("once", "dynamic")
DYNAMIC_INTERVAL = timedelta(minutes=15)
MAX_DYNAMIC_SYNCS = 60
MAX_COHORT_MEMBERS = 10_000_000
RECHECK_ABSENT = timedelta(hours=24)
DEFAULT_MAX_REMOVAL_SHARE = 0.5
FLUSH_EVERY = 500
TAG_VALUE = "1"
MAX_SEGMENT_NAME = 128          # OneSignal's limit, in characters
SEGMENT_PREFIX = "(Mixpanel) "  # as Mixpanel's own integration shows a cohort in OneSignal
DEFAULT_TAG_LIMIT = 20          # data tags per user on OneSignal's paid plans (the integration needs one); Free: 2
LEARN_TAGS_PER_RUN = 100        # users refused for the cap whose tags a run reads back (one view call each)
# OneSignal uses these for message personalization: "should not be used as tag keys".
RESERVED_TAG_KEYS = frozenset({"message", "notification", "subscription", "user", "template", "app", "org",
                               "dynamic_content", "data_feed", "journey", "custom_data"})
SAFE_TAG_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
SAMPLES = 5                     # adds and removes a preview names
_running: dict[tuple[str, str], threading.Lock] = {}
log = logging.getLogger(__name__)


@dataclass
class RunRecord:
    run_id: int
    cohort: str
    mode: str
    dry_run: bool
    status: str
    started_at: datetime
    ended_at: datetime | None = None
    members: int = 0
    exportable: int = 0
    added: int = 0
    removed: int = 0
    unchanged: int = 0
    not_in_onesignal: int = 0
    failed: int = 0
    tag_cap: int = 0                # members the app's data-tag cap kept out (refused, or not sent)
    error: str | None = None
    guard: str = ""
    plan: planning.Plan | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("plan")
        return data


def tag_key(cohort: str) -> str:
    """A short, stable tag key per cohort: readable slug plus a hash so two names never collide.

    Safe whatever the name: at most 50 characters of ``[a-z0-9_]`` after ``mp_``, so never one of
    OneSignal's reserved keys (``app``, ``user``...), nothing a Liquid template or a filter must escape
    (quotes, slashes, spaces, non-ASCII letters become ``_`` or drop). Stable: the hash is of the exact
    name, so the same cohort always gets the same key and names differing only in case get two."""
    slug = re.sub(r"[^a-z0-9]+", "_", cohort.lower()).strip("_")[:40] or "cohort"
    return f"mp_{slug}_{hashlib.sha1(cohort.encode()).hexdigest()[:6]}"


def tag_key_problem(key: str) -> str | None:
    """Why ``key`` is no tag key for an export to use (reserved by OneSignal, odd characters, too long)."""
    if key.lower() in RESERVED_TAG_KEYS:
        return f"{key!r} is reserved by OneSignal for message personalization"
    if not SAFE_TAG_KEY.fullmatch(key):
        return (f"{key!r} is not 1 to 64 lowercase letters, digits and underscores starting with a letter, "
                "which any OneSignal filter and template takes as is")
    return None


def segment_name(cohort: str) -> str:
    """``(Mixpanel) <cohort>``, as Mixpanel's own integration names the segment; for a name longer than
    OneSignal's 128 characters, its start and a short hash of the whole name: two cohorts sharing their
    first 128 characters still get two segments (a cohort's name is unique in the store)."""
    return _within_limit(SEGMENT_PREFIX + cohort, cohort)


def legacy_segment_names(cohort: str) -> list[str]:
    """What earlier versions named the cohort's segment (the bare cohort name, cut the same way): such a
    segment that filters on the cohort's tag is adopted and renamed, never duplicated."""
    return [_within_limit(cohort, cohort)]


def _within_limit(name: str, cohort: str) -> str:
    if len(name) <= MAX_SEGMENT_NAME:
        return name
    digest = hashlib.sha1(cohort.encode()).hexdigest()[:8]
    return f"{name[:MAX_SEGMENT_NAME - len(digest) - 2].rstrip()} ~{digest}"


def segment_filters(key: str) -> list[dict]:
    return [{"field": "tag", "key": key, "relation": "exists"}]


def _same_filters(found, wanted: list[dict]) -> bool:
    if not isinstance(found, list) or len(found) != len(wanted):
        return False
    return all(isinstance(f, dict) and all(f.get(k) == v for k, v in w.items())
               for f, w in zip(found, wanted, strict=True))


# -- settings: what one run follows ------------------------------------------------------------------

# What a successful run stores of its settings: a new registration, or a registered export's new address.
SAVE_REGISTRATION, SAVE_ADDRESS = "registration", "address"


@dataclass(frozen=True)
class ExportSettings:
    """Everything one export run follows, decided before it starts (``settings`` builds it from the
    cohort's registration, read once, and the caller's overrides) and passed down unchanged."""
    cohort: str
    mode: str = "once"                        # once | dynamic
    app_id: str | None = None                 # None only in a dry run of an unregistered cohort
    base_url: str | None = None
    user_id_property: str = USER_ID_PROPERTY
    id_type: str = "auto"                     # auto | external_id | subscription_id
    tag_key: str = ""                         # the registered key; default tag_key(cohort)
    segment_id: str | None = None             # the registered segment of this app, if known
    saves: str | None = None                  # SAVE_REGISTRATION / SAVE_ADDRESS when the run ends ok or partial
    dry_run: bool = False
    force: bool = False                       # pass the removal guard
    tag_limit: int = DEFAULT_TAG_LIMIT        # data tags a user may carry in the app (app_limits)
    max_removal_share: float = DEFAULT_MAX_REMOVAL_SHARE
    now: datetime = field(default_factory=lambda: datetime.now(UTC))    # as of when cohorts are evaluated
    # OneSignalClient's options: timeouts, retries, concurrency, rate limits
    client_options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ExportError(f"mode {self.mode!r}: expected once or dynamic")
        if not self.tag_key:
            object.__setattr__(self, "tag_key", tag_key(self.cohort))
        problem = tag_key_problem(self.tag_key)
        if problem:
            raise ExportError(f"cohort {self.cohort!r}: its tag key {problem}")


def settings(store: Store, cohort: str, *, mode: str | None = None, app_id: str | None = None,
             base_url: str | None = None, user_id_property: str | None = None, id_type: str | None = None,
             dry_run: bool = False, force: bool = False, now: datetime | None = None,
             client_options: Mapping[str, Any] | None = None, tag_limit: int | None = None) -> ExportSettings:
    """As ``_settings`` says, with the app's data-tag cap (``tag_limit`` overrides it for this run)."""
    chosen = _settings(store, cohort, mode=mode, app_id=app_id, base_url=base_url, user_id_property=user_id_property,
                       id_type=id_type, dry_run=dry_run, force=force, now=now, client_options=client_options)
    return replace(chosen, tag_limit=tag_limit if tag_limit is not None
                   else app_tag_limit(store.reader(), chosen.app_id)["tag_limit"])


def _settings(store: Store, cohort: str, *, mode: str | None, app_id: str | None, base_url: str | None,
              user_id_property: str | None, id_type: str | None, dry_run: bool, force: bool,
              now: datetime | None, client_options: Mapping[str, Any] | None) -> ExportSettings:
    """The settings of one export run of ``cohort``: its registration, read here once, with the
    caller's overrides. With ``mode`` (once/dynamic) the run (re)registers the export, overwriting the
    previous one; without, it runs the registered export again (at ``base_url`` if given). A new
    registration or address is stored only if the run ends ok or partial, so a failed or refused export
    leaves the registered one as it was. A dry run rehearses and registers nothing; an unregistered
    cohort is rehearsed as a one-time export. A registered export is found by its exact name, any other
    name as ``cohorts.resolve_name`` finds it (any case, else "did you mean")."""
    con = store.reader()
    found = registration(con, cohort)
    if found is None:
        resolved = cohorts.resolve_name(store, cohort)
        if resolved != cohort:
            cohort, found = resolved, registration(con, resolved)
    per_run: dict[str, Any] = {"dry_run": dry_run, "force": force, "now": now or datetime.now(UTC),
                               "client_options": dict(client_options or {})}
    if mode is not None and not dry_run:
        return _registering(con, cohort, mode, app_id or (found or {}).get("app_id")
                            or os.environ.get(credentials.ENV_APP), base_url or (found or {}).get("base_url"),
                            user_id_property, id_type, found, **per_run)
    if found is None:
        if not dry_run:
            raise ExportError(f'cohort "{cohort}" has no export yet: choose --once or --dynamic')
        return ExportSettings(cohort, mode or "once", app_id, base_url, user_id_property or USER_ID_PROPERTY,
                              id_type or "auto", **per_run)
    moved = bool(base_url) and base_url != found["base_url"] and not dry_run
    return ExportSettings(cohort, mode or found["mode"], found["app_id"], base_url or found["base_url"],
                          user_id_property or found["user_id_property"] or USER_ID_PROPERTY,
                          id_type or found["id_type"] or "auto", found["tag_key"], found["segment_id"],
                          SAVE_ADDRESS if moved else None, **per_run)


def _registering(con, cohort: str, mode: str, app_id: str | None, base_url: str | None,
                 user_id_property: str | None, id_type: str | None, found: dict | None, **run) -> ExportSettings:
    """Settings that register the export of ``cohort``: checked here (mode, app, the dynamic-sync limit),
    stored by the run that follows them, if it succeeds."""
    if mode not in MODES:
        raise ExportError(f"mode {mode!r}: expected once or dynamic")
    if not app_id:
        raise ExportError("say which OneSignal app: --app-id or $ONESIGNAL_APP_ID")
    if mode == "dynamic":
        dynamic = con.execute("SELECT count(*) FROM exports WHERE mode = 'dynamic' AND stopped_at IS NULL "
                              "AND cohort <> ?", [cohort]).fetchone()[0]
        if dynamic >= MAX_DYNAMIC_SYNCS:
            raise ExportError(f"{dynamic} dynamic syncs are active; Mixpanel allows {MAX_DYNAMIC_SYNCS} per "
                              "project. Stop one (toolkit export NAME --stop) or use a one-time export.")
    segment_id = found["segment_id"] if found and found["app_id"] == app_id else None
    # A registered key is kept: the members its snapshot lists carry that key.
    return ExportSettings(cohort, mode, app_id, base_url or default_base_url(), user_id_property or USER_ID_PROPERTY,
                          id_type or "auto", (found or {}).get("tag_key") or "", segment_id=segment_id,
                          saves=SAVE_REGISTRATION, **run)


# -- registration -------------------------------------------------------------------------------

def register(store: Store, cohort: str, mode: str, app_id: str, base_url: str, *,
             user_id_property: str = USER_ID_PROPERTY, id_type: str = "auto",
             now: datetime | None = None) -> None:
    """Record the export of ``cohort`` (``once`` or ``dynamic``) without running it; a new export
    overwrites the previous one (its snapshot stays, so switching mode sends only the difference)."""
    con = store.con
    found = registration(con, cohort)
    _save_registration(con, _registering(con, cohort, mode, app_id, base_url, user_id_property, id_type, found,
                                         now=now or datetime.now(UTC)))


def _save_registration(con, settings: ExportSettings, segment_id: str | None = None) -> None:
    """Store ``settings`` as the cohort's registration: a new one (created now; a dynamic sync is due
    at once), or a registered export's new address (its schedule kept)."""
    if settings.saves == SAVE_ADDRESS:
        con.execute("UPDATE exports SET base_url = ? WHERE cohort = ?", [settings.base_url, settings.cohort])
        return
    now = _naive(settings.now)
    con.execute("""INSERT OR REPLACE INTO exports VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""", [
        settings.cohort, settings.mode, settings.app_id, settings.base_url, settings.tag_key,
        segment_name(settings.cohort), segment_id or settings.segment_id, settings.user_id_property,
        settings.id_type, now, now if settings.mode == "dynamic" else None, None])


def stop(store: Store, cohort: str, now: datetime | None = None) -> None:
    """Stop a dynamic sync: no further runs; OneSignal keeps the last export."""
    found = store.con.execute("UPDATE exports SET next_due_at = NULL, stopped_at = ? WHERE cohort = ? "
                              "AND mode = 'dynamic' AND stopped_at IS NULL RETURNING cohort",
                              [_naive(now), cohort]).fetchall()
    if not found:
        raise ExportError(f"no active dynamic sync for cohort {cohort!r}")


def follow_app(store: Store, app_id: str, base_url: str) -> None:
    """The app's registered exports go to ``base_url`` from now on (it answered there, e.g. a new
    emulator port)."""
    store.con.execute("UPDATE exports SET base_url = ? WHERE app_id = ? AND base_url <> ?",
                      [base_url, app_id, base_url])


def set_tag_limit(store: Store, app_id: str, tag_limit: int, now: datetime | None = None) -> None:
    """The app's data-tag cap per user, as its OneSignal plan says (Free 2, paid 20, or the plan's
    number): exports plan with it, and members it refused are tried again once it is raised."""
    if isinstance(tag_limit, bool) or not isinstance(tag_limit, int) or tag_limit < 1:
        raise ExportError(f"tag limit {tag_limit!r} for app {app_id}: expected a whole number of 1 or more "
                          "(OneSignal's Free plan allows 2 data tags per user, its paid plans 20)")
    store.con.execute("INSERT OR REPLACE INTO app_limits VALUES (?, ?, 'set', ?)", [app_id, tag_limit, _naive(now)])


def app_tag_limit(con, app_id: str | None) -> dict:
    """The app's data-tag cap and where it comes from: ``set`` (by a person), ``onesignal`` (its
    refusal named the number) or ``default`` (a paid plan's)."""
    row = con.execute("SELECT tag_limit, source FROM app_limits WHERE app_id = ?", [app_id]).fetchone() \
        if app_id else None
    return {"tag_limit": row[0], "source": row[1]} if row else {"tag_limit": DEFAULT_TAG_LIMIT, "source": "default"}


def due(store: Store, now: datetime | None = None) -> list[str]:
    """Cohorts whose dynamic sync is due."""
    return [c for c, in store.con.execute(
        "SELECT cohort FROM exports WHERE mode = 'dynamic' AND stopped_at IS NULL AND next_due_at <= ? "
        "ORDER BY next_due_at, cohort", [_naive(now)]).fetchall()]


def list_exports(store: Store) -> list[dict]:
    cursor = store.reader().execute("""
        SELECT e.cohort, e.mode, e.app_id, e.segment_name, e.segment_id, e.tag_key, e.next_due_at,
               e.stopped_at, count(m.distinct_id) FILTER (WHERE m.status = 'tagged') AS in_segment
        FROM exports e LEFT JOIN export_members m USING (cohort) GROUP BY ALL ORDER BY e.cohort""")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def runs(store: Store, cohort: str | None = None, limit: int = 50) -> list[dict]:
    cursor = store.reader().execute(
        "SELECT * FROM export_runs WHERE $cohort IS NULL OR cohort = $cohort ORDER BY run_id DESC LIMIT $limit",
        {"cohort": cohort, "limit": limit})
    names = [d[0] for d in cursor.description]
    found = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    for row in found:                    # a killed run, before any run has marked it
        if row["status"] == "running" and not _is_running(store, row["cohort"]):
            row["status"], row["error"] = "interrupted", row["error"] or DEAD_RUN
    return found


# -- who, and what would change ----------------------------------------------------------------------

@dataclass(frozen=True)
class Exportable:
    """A cohort evaluated for export: its size, the OneSignal user of each exportable member (``table``:
    distinct_id, onesignal_id, id_type, what a run plans from), and how many of the others each reason
    left out."""
    members: int
    table: pa.Table
    left_out: Mapping[str, int]

    @cached_property
    def wanted(self) -> dict[str, Target]:
        """The exportable members as a mapping (a run never needs it: small cohorts, reports)."""
        return _targets(self.table)


def targets(preview: matching.Preview) -> dict[str, Target]:
    """The exportable members of a preview, as the OneSignal users the export addresses (from Arrow:
    a million members never become a DataFrame)."""
    return _targets(preview.exportable_table)


def _targets(table: pa.Table) -> dict[str, Target]:
    rows = table.to_pydict()
    return {did: Target(oid, kind)
            for did, oid, kind in zip(rows["distinct_id"], rows["onesignal_id"], rows["id_type"], strict=True)}


def exportable(store: Store, settings: ExportSettings) -> Exportable:
    """Evaluate the cohort as of ``settings.now`` and match its members by the settings' user-id property."""
    found = matching.preview(store, settings.cohort, now=settings.now, user_id_property=settings.user_id_property,
                             id_type=settings.id_type)
    return Exportable(int(found.summary["members"]), found.exportable_table,
                      {reason: int(n) for reason, n in found.summary["reasons"].items() if n})


def snapshot(con, cohort: str, now: datetime) -> dict[str, Target]:
    """Who the last successful export covered; absent users count until it is time to look again."""
    return snapshots.current(con, cohort, _recheck_since(now))


def _recheck_since(now: datetime) -> datetime:
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
    since = _recheck_since(settings.now)
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


# -- the app's data-tag cap ------------------------------------------------------------------------

@dataclass(frozen=True)
class TagCaps:
    """Who the app's data-tag cap keeps out of this run. ``held``: members OneSignal refused before under
    this cap (or one higher) whose known tags have not dropped since: not sent again until the cap is
    raised, their other tags go, or a day has passed. ``over``: adds that would carry more tags than the
    cap, counting the tags the toolkit knows they have (``other``, by OneSignal id): recorded
    ``tag_cap`` without a request."""
    limit: int
    held: Mapping[str, Target] = field(default_factory=dict)
    over: frozenset[str] = frozenset()
    other: Mapping[str, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.held) + len(self.over)

    def sendable(self, wanted: Mapping[str, Target] | pa.Table) -> Mapping[str, Target] | pa.Table:
        """``wanted`` without the held members (the plan then neither adds nor removes them)."""
        if not self.held:
            return wanted
        if isinstance(wanted, pa.Table):
            import pyarrow.compute as pc

            return wanted.filter(pc.invert(pc.is_in(wanted["distinct_id"], pa.array(list(self.held), pa.string()))))
        return {d: t for d, t in wanted.items() if d not in self.held}


def other_tags(con, settings: ExportSettings, ids: Sequence[str]) -> dict[str, int]:
    """How many data tags each of these users (OneSignal ids as exports address them) carries besides
    this cohort's, as far as the toolkit knows: the tags of the app's other exports (their snapshots),
    and the rest of what OneSignal showed of the user when the cap refused it (``known_user_tags``).
    Users with none are left out."""
    if not ids or not knows_other_tags(con, settings):
        return {}
    import pyarrow as pa  # the ids reach DuckDB as an Arrow table: a list parameter of 1M took 6 s

    con.register("cap_ids", pa.table({"onesignal_id": pa.array(ids, pa.string())}))
    try:
        rows = con.execute("""
            WITH ids AS (SELECT DISTINCT onesignal_id FROM cap_ids),
            managed AS (SELECT tag_key FROM exports WHERE app_id = $app UNION SELECT $key),
            toolkit AS (SELECT m.onesignal_id, e.tag_key FROM export_members m JOIN exports e USING (cohort)
                        WHERE e.app_id = $app AND m.status = 'tagged' AND e.tag_key <> $key
                          AND m.onesignal_id IN (SELECT onesignal_id FROM ids)),
            viewed AS (SELECT onesignal_id, unnest(tag_keys) AS tag_key FROM known_user_tags
                       WHERE app_id = $app AND onesignal_id IN (SELECT onesignal_id FROM ids))
            SELECT onesignal_id, count(DISTINCT tag_key)::INTEGER FROM (
                SELECT * FROM toolkit
                UNION ALL SELECT * FROM viewed WHERE tag_key NOT IN (SELECT tag_key FROM managed))
            GROUP BY onesignal_id""", {"app": settings.app_id, "key": settings.tag_key}).fetchall()
    finally:
        con.unregister("cap_ids")
    return dict(rows)


def knows_other_tags(con, settings: ExportSettings) -> bool:
    """Whether the toolkit knows of any tag beside this cohort's on any user of the app (mostly not: then
    a million adds need no look-up)."""
    return bool(settings.app_id) and con.execute(
        """SELECT EXISTS (SELECT 1 FROM known_user_tags WHERE app_id = $app)
               OR EXISTS (SELECT 1 FROM export_members m JOIN exports e USING (cohort)
                          WHERE e.app_id = $app AND e.tag_key <> $key AND m.status = 'tagged')""",
        {"app": settings.app_id, "key": settings.tag_key}).fetchall()[0][0]


def _held(con, settings: ExportSettings, wanted: Mapping[str, Target] | pa.Table) -> TagCaps:
    """The members the cap refused before and that are still out of reach (see ``TagCaps``)."""
    rows = con.execute("SELECT distinct_id, onesignal_id, id_type, tag_limit, other_tags, checked_at "
                       "FROM export_tag_caps WHERE cohort = ?", [settings.cohort]).fetchall()
    if not rows:
        return TagCaps(settings.tag_limit)
    if isinstance(wanted, pa.Table):      # only the few refused members are looked up, not a million
        import pyarrow.compute as pc

        wanted = _targets(wanted.filter(pc.is_in(wanted["distinct_id"],
                                                    pa.array([r[0] for r in rows], pa.string()))))
    known = other_tags(con, settings, [r[1] for r in rows])
    recheck_after = _naive(settings.now) - RECHECK_ABSENT
    held = {d: Target(o, t) for d, o, t, limit, other, checked in rows
            if wanted.get(d) == Target(o, t) and settings.tag_limit <= limit and known.get(o, 0) >= other
            and checked > recheck_after}
    return TagCaps(settings.tag_limit, held)


def _over(con, settings: ExportSettings, caps: TagCaps, the_plan: planning.Plan) -> TagCaps:
    """``caps`` with the plan's adds that the tags the toolkit knows of would take over the cap."""
    if not the_plan.counts.get(ADD) or not knows_other_tags(con, settings):
        return caps
    adds = the_plan.of(ADD)
    known = other_tags(con, settings, [s.target.onesignal_id for s in adds])
    over = frozenset(s.distinct_id for s in adds if known.get(s.target.onesignal_id, 0) + 1 > caps.limit)
    return replace(caps, over=over, other=known)


def _capped_plan(con, settings: ExportSettings, wanted: Mapping[str, Target] | pa.Table
                 ) -> tuple[planning.Plan, GuardVerdict, TagCaps]:
    """The plan and guard of ``_plan`` for the members the cap does not hold back, and the cap's verdict."""
    caps = _held(con, settings, wanted)
    the_plan, verdict = _plan(con, settings, caps.sendable(wanted))
    return the_plan, verdict, _over(con, settings, caps, the_plan)


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
        """What a dry run records: ok, or stopped (by the removal guard)."""
        return "ok" if self.verdict.ok else "stopped"

    @property
    def refused(self) -> str | None:
        """Why an export now would be refused (the removal guard's reason), or None: it would run."""
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
                "left_out": dict(self.left_out), "tag_limit": dict(self.tag_limit)}


def preview_export(store: Store, settings_or_cohort: ExportSettings | str, *, now: datetime | None = None,
                   force: bool = False, samples: int = SAMPLES) -> ExportPreview:
    """What an export of the cohort would do now: the plan's adds, removes and unchanged members, the
    first few of each change, and the removal guard's verdict, from the store alone (no HTTP, no
    writes: a read-only store does). Given a cohort's name, its registered export (or a one-time export)
    is rehearsed as of ``now``, ``force`` passing the guard; given settings, they say all that."""
    given = settings_or_cohort
    chosen = given if isinstance(given, ExportSettings) else settings(store, given, dry_run=True, now=now,
                                                                        force=force)
    return preview_targets(store, chosen, exportable(store, chosen), samples=samples)


def preview_targets(store: Store, chosen: ExportSettings, found: Exportable, *, samples: int = SAMPLES
                    ) -> ExportPreview:
    """``preview_export`` of members already evaluated (``found``): the plan, the guard and the app's
    data-tag cap, from the store alone."""
    reader = store.reader()
    the_plan, verdict, caps = _capped_plan(reader, chosen, found.table)
    limit = app_tag_limit(reader, chosen.app_id)
    if limit["tag_limit"] != chosen.tag_limit:
        limit = {"tag_limit": chosen.tag_limit, "source": "this run"}
    return ExportPreview(chosen.cohort, chosen.mode, chosen.now, found.members, found.table.num_rows,
                         {op: the_plan.counts.get(op, 0) for op in (ADD, REMOVE, NOOP)},
                         {op: tuple(the_plan.of(op)[:samples]) for op in (ADD, REMOVE)}, verdict, found.left_out,
                         limit, caps.count)


# -- a run --------------------------------------------------------------------------------------

def run(store: Store, settings: ExportSettings, wanted: Mapping[str, Target] | pa.Table,
        credentials: Credentials | None, *, members: int | None = None,
        on_progress: Callable[[int, int], None] | None = None) -> RunRecord:
    """One export run of ``settings.cohort`` towards ``wanted`` (distinct_id -> OneSignal target, or
    ``Exportable.table``; ``members``: the cohort's size, default the number wanted). Settings that
    register the export (``saves``) store it only if the run succeeds (ok or partial). A dry run needs
    no registration and changes no export."""
    con = store.con.cursor()     # a connection of its own: runs may happen in threads (widgets, scheduler)
    try:
        return _run(store, con, settings, wanted, credentials, members, on_progress)
    finally:
        con.close()


def _run(store: Store, con, settings: ExportSettings, wanted: Mapping[str, Target] | pa.Table,
         credentials: Credentials | None, members: int | None, on_progress) -> RunRecord:
    if not settings.dry_run and not (settings.app_id and settings.base_url):
        raise ExportError(f"cohort {settings.cohort!r} has no export; register it first (toolkit export NAME --once)")
    the_plan, verdict, caps = _capped_plan(con, settings, wanted)
    wanted_count = wanted.num_rows if isinstance(wanted, pa.Table) else len(wanted)
    with _run_lock(store, settings.cohort):
        record = _start(store, con, settings, the_plan, verdict, members if members is not None else wanted_count,
                        wanted_count)
        record.tag_cap = len(caps.held) + (len(caps.over) if settings.dry_run else 0)
        if settings.dry_run:
            return _finish(con, record, "ok" if verdict.ok else "stopped", None if verdict.ok else verdict.reason)
        if not verdict.ok:
            return _finish(con, record, "stopped", verdict.reason)
        if credentials is None:
            return _finish(con, record, "failed", "no OneSignal credentials: preview only (see toolkit connect)")
        try:
            segment_id = _run_async(_apply(con, settings, record, the_plan, caps, credentials, on_progress))
        except (OneSignalError, ExportError) as exc:
            _keep_fingerprint(con, settings.cohort, the_plan)
            return _finish(con, record, "failed", str(exc))
        except BaseException as exc:
            _finish(con, record, "interrupted", f"{type(exc).__name__}: {exc}")
            raise
        _keep_fingerprint(con, settings.cohort, the_plan)
        if settings.saves:                   # the run succeeded: now the export is registered as asked
            _save_registration(con, settings, segment_id)
        if settings.mode == "dynamic":
            con.execute("UPDATE exports SET next_due_at = ? WHERE cohort = ? AND stopped_at IS NULL",
                        [_naive(settings.now) + DYNAMIC_INTERVAL, settings.cohort])
        return _finish(con, record, "partial" if record.failed else "ok", _failed_users(con, record))


def _keep_fingerprint(con, cohort: str, the_plan: planning.Plan) -> None:
    """The fingerprint of the snapshot this run reached, for the next plan: unless the plan was
    recognised unchanged by it (then nothing was written and it still holds)."""
    if not the_plan.recognised:
        snapshots.keep(con, cohort)


@contextmanager
def _run_lock(store: Store, cohort: str) -> Iterator[None]:
    """One run per cohort: a thread lock within this process, and an flock on a file beside the store
    across processes. The kernel drops the flock when its holder dies, however it dies, so liveness
    never rests on a process id that may since belong to another process."""
    lock = _running.setdefault((store.path, cohort), threading.Lock())
    if not lock.acquire(blocking=False):
        raise ExportError(f"an export of cohort {cohort!r} is already running")
    try:
        if store.path == ":memory:":         # no other process can reach this store
            yield
            return
        path = _lock_path(store, cohort)
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                raise ExportError(f"an export of cohort {cohort!r} is already running"
                                  + (f" (process {holder})" if holder.isdigit() else "")) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)                     # releases the flock
    finally:
        lock.release()


def _lock_path(store: Store, cohort: str) -> Path:
    return Path(f"{store.path}.export-locks") / f"{hashlib.sha1(cohort.encode()).hexdigest()[:16]}.lock"


def _is_running(store: Store, cohort: str) -> bool:
    """Whether a run of ``cohort`` is alive: a thread of this process or any process holds its lock.
    Taking the thread lock first keeps this process from starting that run while the lock is tried;
    another process cannot start one meanwhile, as it would need the store this process has open."""
    lock = _running.setdefault((store.path, cohort), threading.Lock())
    if not lock.acquire(blocking=False):
        return True
    try:
        if store.path == ":memory:":     # no other process can reach this store
            return False
        try:
            fd = os.open(_lock_path(store, cohort), os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False
    finally:
        lock.release()


async def _apply(con, settings: ExportSettings, record: RunRecord, the_plan: planning.Plan, caps: TagCaps,
                 credentials: Credentials, on_progress) -> str:
    """Make sure of the segment, then send the plan's changes; returns the segment's id."""
    assert settings.app_id and settings.base_url      # checked by _run
    async with OneSignalClient(credentials, settings.base_url, **settings.client_options) as client:
        segment_id = await _ensure_segment(con, client, settings)
        # Refusals not held any more are tried again now; their rows go (a refusal writes a new one).
        con.execute("DELETE FROM export_tag_caps WHERE cohort = ? AND distinct_id NOT IN (SELECT unnest(?::VARCHAR[]))",
                    [settings.cohort, list(caps.held)])
        changes = the_plan.changes
        resolved = await _resolve_subscriptions(con, client, settings.app_id, changes)
        writer = _ResultWriter(con, record, settings, caps, len(changes), on_progress)
        refused: dict[tuple[str, str], Step] = {}
        try:
            # Removals first: a OneSignal id that moved between members is cleared, then set again.
            for operation in (REMOVE, ADD):
                steps: dict[tuple[str, str], Step] = {}
                for step in (s for s in changes if s.operation == operation):
                    alias = (resolved.get(step.target) if step.target.id_type == "subscription_id"
                             else ("external_id", step.target.onesignal_id))
                    if alias is None:             # a Player ID OneSignal does not know
                        writer.add(step, NOT_FOUND, None)
                    elif operation == ADD and step.distinct_id in caps.over:
                        writer.add(step, TAG_CAP, None)     # OneSignal would refuse it: no request
                    else:
                        steps[alias] = step
                value = TAG_VALUE if operation == ADD else ""

                def on_result(r, steps=steps):    # this operation's steps, bound now
                    step = steps[(r.alias_label, r.alias_id)]
                    writer.add(step, r.outcome, r.error)
                    if r.outcome == TAG_CAP and step.operation == ADD and len(refused) < LEARN_TAGS_PER_RUN:
                        refused[(r.alias_label, r.alias_id)] = step

                await client.update_many(((label, alias_id, {settings.tag_key: value}) for label, alias_id in steps),
                                         on_result=on_result)
        finally:
            writer.flush()
        if refused:
            await _learn_tags(con, client, settings, refused)
    return segment_id


async def _learn_tags(con, client: OneSignalClient, settings: ExportSettings,
                      refused: Mapping[tuple[str, str], Step]) -> None:
    """Read what tags the users the cap refused carry (OneSignal's view of each), so that previews count
    them and a refused member is tried again only once its known tags drop. At most a few per run: view
    calls are slow, and a refusal already says enough to hold the member back."""
    learned: dict[str, list[str]] = {}
    for (label, alias_id), step in refused.items():
        try:
            view = await client.get_user(label, alias_id)
        except OneSignalError as exc:
            log.info("could not read the tags of user %r: %s", step.distinct_id, exc)
            continue
        tags = ((view or {}).get("properties") or {}).get("tags") or {}
        learned[step.target.onesignal_id] = sorted(str(k) for k in tags)
    if not learned:
        return
    now = _naive(settings.now)
    with transaction(con):
        for onesignal_id, keys in learned.items():
            con.execute("INSERT OR REPLACE INTO known_user_tags VALUES (?, ?, ?, ?)",
                        [settings.app_id, onesignal_id, keys, now])
        known = other_tags(con, settings, list(learned))
        for onesignal_id in learned:
            con.execute("UPDATE export_tag_caps SET other_tags = ? WHERE cohort = ? AND onesignal_id = ?",
                        [known.get(onesignal_id, 0), settings.cohort, onesignal_id])


async def _ensure_segment(con, client: OneSignalClient, settings: ExportSettings) -> str:
    """The segment must exist before any user is tagged; a free plan is refused here. Returns its id.

    Without a known id, a segment of that name is looked for first and adopted if it filters on this
    cohort's tag: a run killed between creating it and saving its id, or a rebuilt store, left it."""
    # From the cohort, not the stored name: a registration made before names were kept unique heals.
    name, filters = segment_name(settings.cohort), segment_filters(settings.tag_key)
    try:
        if settings.segment_id:
            try:
                await client.update_segment(settings.segment_id, name, filters)
                return settings.segment_id
            except NotFound:
                pass                          # deleted in OneSignal: find or create it again
        segment_id = await _adopt_segment(client, settings, name, filters)
        if segment_id is None:
            segment_id = await _adopt_legacy_segment(client, settings, name, filters)
        if segment_id is None:
            try:
                segment_id = await client.create_segment(name, filters)
            except Conflict:                  # made meanwhile (another run, a person): look again
                segment_id = await _adopt_segment(client, settings, name, filters)
                if segment_id is None:
                    raise
    except PlanRefused:                       # decided from OneSignal's status and words, never the name
        raise ExportError(FREE_PLAN_MESSAGE) from None
    except SegmentLimitReached as exc:
        held = (f"{exc.limit} segments, as many as its plan allows" if exc.limit
                else "as many segments as its plan allows")
        raise ExportError(
            f"cohort {settings.cohort!r}: OneSignal app {settings.app_id} already has {held} (Free: 6), so the "
            f"segment {name!r} cannot be created and no user was updated. Delete a segment the app no longer "
            "uses in OneSignal (Audience > Segments), or move the app to a plan with more segments; then run the "
            "export again.") from None
    # Saved at once where this export is already registered for this app (a new registration is
    # saved with the id when the run succeeds); a kill before this line is recovered by name.
    con.execute("UPDATE exports SET segment_id = ?, segment_name = ? WHERE cohort = ? AND app_id = ?",
                [segment_id, name, settings.cohort, settings.app_id])
    return segment_id


async def _adopt_segment(client: OneSignalClient, settings: ExportSettings, name: str,
                         filters: list[dict]) -> str | None:
    """The id of the app's segment called ``name`` if it is this cohort's (it filters on the cohort's
    tag); None if there is none; an error naming it if one of that name filters on something else."""
    for found in [s for s in await client.list_segments() if s.get("name") == name]:
        try:
            details = await client.get_segment(found["id"])
        except NotFound:
            continue                          # deleted since the list
        if _same_filters(details.get("filters"), filters):
            return found["id"]
        raise ExportError(
            f"cohort {settings.cohort!r}: OneSignal app {settings.app_id} already has a segment named {name!r} "
            f"(id {found['id']}) that does not filter on this cohort's tag {settings.tag_key!r}, so it was "
            "not made by this export and is left alone. Rename or delete that segment in OneSignal, or "
            "rename the cohort.")
    return None


async def _adopt_legacy_segment(client: OneSignalClient, settings: ExportSettings, name: str,
                                filters: list[dict]) -> str | None:
    """A segment an earlier version made for this cohort under its old name (the bare cohort name): it
    is adopted and renamed in place (its id, and so the messages and journeys using it, stay), so an
    existing export never gets a second segment. A segment of an old name that filters on anything else
    is a person's own and is left alone."""
    old_names = set(legacy_segment_names(settings.cohort)) - {name}
    for found in [s for s in await client.list_segments() if s.get("name") in old_names]:
        try:
            details = await client.get_segment(found["id"])
        except NotFound:
            continue
        if _same_filters(details.get("filters"), filters):
            await client.update_segment(found["id"], name, filters)
            log.warning("cohort %r: its OneSignal segment %r is renamed %r, as Mixpanel's integration names "
                        "it (same segment id; messages sent through the API by segment name need the new name)",
                        settings.cohort, found.get("name"), name)
            return found["id"]
    return None


async def _resolve_subscriptions(con, client: OneSignalClient, app_id: str,
                                 steps: Sequence[Step]) -> dict[Target, tuple[str, str] | None]:
    """Subscription (Player) IDs -> ("onesignal_id", id) of their user, from the cache or OneSignal."""
    wanted = sorted({s.target for s in steps if s.target.id_type == "subscription_id"})
    if not wanted:
        return {}
    ids = [t.onesignal_id for t in wanted]
    known = dict(con.execute("SELECT subscription_id, onesignal_id FROM subscription_users "
                                   "WHERE app_id = ? AND subscription_id IN (SELECT unnest(?))",
                                   [app_id, ids]).fetchall())
    resolved: dict[Target, tuple[str, str] | None] = {}
    for target in wanted:
        sub = target.onesignal_id
        if sub not in known or known[sub] is None:
            try:
                known[sub] = (await client.identity_of_subscription(sub)).get("onesignal_id")
            except NotFound:
                known[sub] = None
            con.execute("INSERT OR REPLACE INTO subscription_users VALUES (?, ?, ?, now()::TIMESTAMP)",
                        [app_id, sub, known[sub]])
        resolved[target] = ("onesignal_id", known[sub]) if known[sub] else None
    return resolved


class _ResultWriter:
    """Writes per-user outcomes and advances the snapshot in small transactions as results arrive."""

    def __init__(self, con, record: RunRecord, settings: ExportSettings, caps: TagCaps, total: int, on_progress):
        self.con, self.record, self.total, self.on_progress = con, record, total, on_progress
        self.settings, self.caps = settings, caps
        self.pending: list[tuple[Step, str, str | None]] = []
        self.done = 0
        self.learned_limit: int | None = None      # the cap OneSignal named, when it differs from ours

    def add(self, step: Step, outcome: str, error: Exception | None) -> None:
        text = None
        if outcome == TAG_CAP:
            limit = error.limit if isinstance(error, TagLimitExceeded) else self.caps.limit
            if limit != self.settings.tag_limit:
                self.learned_limit = limit
            known = self.caps.other.get(step.target.onesignal_id, 0)
            text = (f"OneSignal refused: the app allows {limit} data tags per user" if error is not None else
                    f"not sent: the app allows {limit} data tags per user and this user carries {known} other(s)")
        elif error is not None and outcome == FAILED:
            text = REDACTOR.redact(str(error))
        self.pending.append((step, outcome, text))
        if len(self.pending) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        # The run's clock, not the wall's: snapshot() compares checked_at with the run's `now`.
        cohort, run_id, now = self.record.cohort, self.record.run_id, self.record.started_at
        with transaction(self.con) as con:
            snapshots.forget(con, cohort)        # with the writes: a kill never leaves a stale fingerprint
            for step, outcome, error in batch:
                key = [cohort, step.distinct_id]
                reported = "not_in_onesignal" if outcome == NOT_FOUND else outcome
                con.execute("INSERT INTO export_results VALUES (?, ?, ?, ?, ?, ?)",
                            [run_id, step.distinct_id, step.target.onesignal_id, step.operation, reported, error])
                if step.operation == ADD and outcome in (OK, NOT_FOUND):
                    con.execute("INSERT OR REPLACE INTO export_members VALUES (?, ?, ?, ?, ?, ?)",
                                [*key, step.target.onesignal_id, step.target.id_type,
                                 "tagged" if outcome == OK else "absent", now])
                elif step.operation == REMOVE and outcome in (OK, NOT_FOUND):
                    con.execute("DELETE FROM export_members WHERE cohort = ? AND distinct_id = ? "
                                "AND onesignal_id = ?", [*key, step.target.onesignal_id])
                if step.operation == ADD and outcome == TAG_CAP:
                    con.execute("INSERT OR REPLACE INTO export_tag_caps VALUES (?, ?, ?, ?, ?, ?, ?)",
                                [*key, step.target.onesignal_id, step.target.id_type,
                                 self.learned_limit or self.settings.tag_limit,
                                 self.caps.other.get(step.target.onesignal_id, 0), now])
                self._count(step, outcome)
            if self.learned_limit is not None:      # OneSignal's own number beats a default or a stale setting
                con.execute("INSERT OR REPLACE INTO app_limits VALUES (?, ?, 'onesignal', ?)",
                            [self.settings.app_id, self.learned_limit, now])
        self.done += len(batch)
        if self.on_progress:
            self.on_progress(self.done, self.total)

    def _count(self, step: Step, outcome: str) -> None:
        r = self.record
        if outcome == FAILED or (outcome == TAG_CAP and step.operation == REMOVE):   # a removal is retried
            r.failed += 1
        elif outcome == TAG_CAP:
            r.tag_cap += 1
        elif outcome == NOT_FOUND and step.operation == ADD:
            r.not_in_onesignal += 1
        elif step.operation == ADD:
            r.added += 1
        else:
            r.removed += 1


# -- run records ----------------------------------------------------------------------------------

DEAD_RUN = "its process ended before the run did (killed or crashed); the next run sends the rest"


def _start(store: Store, con, settings: ExportSettings, the_plan: planning.Plan, verdict: GuardVerdict,
           members: int, exportable: int) -> RunRecord:
    """Called holding the cohort's run lock: any run of this cohort still marked running was cut short,
    and so was one of another cohort whose lock nobody holds (a killed run that no run of its own
    cohort followed would otherwise read "running" for ever)."""
    cohort, mode, dry_run, now = settings.cohort, settings.mode, settings.dry_run, _naive(settings.now)
    with transaction(con):
        stale = [c for c, in con.execute("SELECT DISTINCT cohort FROM export_runs WHERE status = 'running'")
                 .fetchall() if c == cohort or not _is_running(store, c)]
        con.execute("UPDATE export_runs SET status = 'interrupted', ended_at = ?, error = coalesce(error, ?) "
                    "WHERE status = 'running' AND cohort IN (SELECT unnest(?))", [now, DEAD_RUN, stale])
        run_id = con.execute("SELECT nextval('run_ids')").fetchone()[0]
        con.execute("INSERT INTO export_runs (run_id, cohort, mode, dry_run, started_at, status, pid, members, "
                    "exportable, unchanged) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                    [run_id, cohort, mode, dry_run, now, os.getpid(), members, exportable,
                     the_plan.counts.get(NOOP, 0)])
    return RunRecord(run_id, cohort, mode, dry_run, "running", now, members=members,
                     exportable=exportable, unchanged=the_plan.counts.get(NOOP, 0),
                     guard=verdict.reason, plan=the_plan)


def _failed_users(con, record: RunRecord, shown: int = 3) -> str | None:
    """For a run where some users failed: who, and why (the first few), so the failure is not just a count."""
    if not record.failed:
        return None
    rows = con.execute("SELECT distinct_id, onesignal_id, operation, error FROM export_results WHERE run_id = ? "
                       "AND (outcome = 'failed' OR (outcome = 'tag_cap' AND operation = 'remove')) "
                       "ORDER BY distinct_id LIMIT ?", [record.run_id, shown]).fetchall()
    listed = "; ".join(f"user {d!r} (OneSignal id {o!r}, {'tag' if op == ADD else 'untag'}): {e}"
                       for d, o, op, e in rows)
    more = f"; and {record.failed - len(rows):,} more (see export_results)" if record.failed > len(rows) else ""
    return f"{record.failed:,} user(s) not updated in OneSignal, the next run retries them: {listed}{more}"


def _finish(con, record: RunRecord, status: str, error: str | None) -> RunRecord:
    error = None if error is None else REDACTOR.redact(error)
    record.status, record.error, record.ended_at = status, error, _naive(None)
    if record.dry_run and record.plan is not None:   # what the run would do
        record.added, record.removed = record.plan.counts.get(ADD, 0), record.plan.counts.get(REMOVE, 0)
    con.execute("""UPDATE export_runs SET status = ?, error = ?, ended_at = ?, added = ?, removed = ?,
                         not_in_onesignal = ?, failed = ?, tag_cap = ? WHERE run_id = ?""",
                      [status, error, record.ended_at, record.added, record.removed, record.not_in_onesignal,
                       record.failed, record.tag_cap, record.run_id])
    return record


def record_failure(store: Store, cohort: str, error: str, *, mode: str | None = None, dry_run: bool = False,
                   now: datetime | None = None) -> RunRecord:
    """A failed run record for an export that could not even start (its cohort cannot be evaluated,
    no key...), so the failure shows in ``toolkit runs`` like any other. Without ``mode`` (its settings
    could not be made), the registered export's mode, else once."""
    con = store.con
    if mode is None:
        try:
            mode = (registration(con, cohort) or {}).get("mode") or "once"
        except Exception:       # whatever stopped the export may stop this read too: the failure still counts
            mode = "once"
    started = _naive(now)
    run_id = con.execute("SELECT nextval('run_ids')").fetchone()[0]
    record = RunRecord(run_id, cohort, mode, dry_run, "failed", started, ended_at=_naive(None), error=error)
    con.execute("INSERT INTO export_runs (run_id, cohort, mode, dry_run, started_at, ended_at, status, pid, "
                "error) VALUES (?, ?, ?, ?, ?, ?, 'failed', ?, ?)",
                [run_id, cohort, mode, dry_run, started, record.ended_at, os.getpid(), error])
    return record


def registration(con, cohort: str) -> dict | None:
    """The registered export of ``cohort`` (a row of ``exports``), or None."""
    cursor = con.execute("SELECT * FROM exports WHERE cohort = ?", [cohort])
    row = cursor.fetchone()
    return dict(zip([d[0] for d in cursor.description], row, strict=True)) if row else None


def _run_async(coroutine):
    """asyncio.run, also from where a loop already runs (Jupyter, papermill): then in a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        running = False
    else:
        running = True
    if not running:          # not inside the except block: errors of the run must not chain to it
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _naive(moment: datetime | None) -> datetime:
    """UTC without tzinfo, as the store keeps timestamps."""
    return to_utc_naive(moment or datetime.now(UTC))
