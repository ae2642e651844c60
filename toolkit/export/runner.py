"""One export run: plan, guard, segment, then tag the added users and clear the removed ones (``run``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import pyarrow as pa

from toolkit import planning, snapshots
from toolkit.errors import ExportError
from toolkit.export import states
from toolkit.export.helpers import _naive, _run_async
from toolkit.export.lock import _run_lock
from toolkit.export.merged import NOT_LOOKED_UP, MergedSends
from toolkit.export.naming import segment_name
from toolkit.export.records import RunRecord, _failed_users, _finish, _start, new_record, write_dry_runs
from toolkit.export.results import _ResultWriter
from toolkit.export.run_settings import SAVE_REGISTRATION, ExportSettings, _save_registration
from toolkit.export.segments import _ensure_segment
from toolkit.export.tag_caps import TagCaps, _capped_plan, other_tags
from toolkit.export.wanted import Planned
from toolkit.onesignal import NOT_FOUND, TAG_CAP, Credentials, NotFound, OneSignalClient, OneSignalError
from toolkit.planning import ADD, REMOVE, Step, Target
from toolkit.store import Store, transaction

log = logging.getLogger("toolkit.export")

DYNAMIC_INTERVAL = timedelta(minutes=15)


TAG_VALUE = "1"


# Runs of a cycle go at once (threads): two writing one row of a cache all runs share (a subscription's
# user, a user's known tags) would conflict.
_CACHE_WRITES = threading.Lock()

# Users refused for the cap whose tags a run reads back: one View user call each, at OneSignal's View user rate
# (1/s per app; 10/s look-back). In a cycle, its runs share the app's views (rate_budget.ViewBudget).
LEARN_TAGS_PER_RUN = 10


def run(store: Store, settings: ExportSettings, wanted: Mapping[str, Target] | pa.Table | None,
        credentials: Credentials | None, *, members: int | None = None,
        on_progress: Callable[[int, int], None] | None = None, planned: Planned | None = None) -> RunRecord:
    """One export run of ``settings.cohort`` towards ``wanted`` (distinct_id -> OneSignal target, or
    ``Exportable.table``; ``members``: the cohort's size, default the number wanted), or along a plan
    made with the cycle's others (``planned``; then ``wanted`` is not read). Settings that
    register the export (``saves``) store it only if the run succeeds (ok or partial). A dry run needs
    no registration and changes no export."""
    con = store.con.cursor()     # a connection of its own: runs may happen in threads (widgets, scheduler)
    try:
        return _run(store, con, settings, wanted, credentials, members, on_progress, planned)
    finally:
        con.close()


def _run(store: Store, con, settings: ExportSettings, wanted: Mapping[str, Target] | pa.Table | None,
         credentials: Credentials | None, members: int | None, on_progress, planned: Planned | None = None
         ) -> RunRecord:
    if not settings.dry_run and not (settings.app_id and settings.base_url):
        raise ExportError(f"cohort {settings.cohort!r} has no export; register it first (toolkit export NAME --once)")
    if not settings.dry_run and settings.saves != SAVE_REGISTRATION:
        states.refuse_if_paused(con, settings.cohort)
    the_plan, verdict, caps = _capped_plan(con, settings, wanted, planned)
    wanted_count = (planned.exportable if planned is not None else wanted.num_rows if isinstance(wanted, pa.Table)
                    else len(wanted or {}))
    with _run_lock(store, settings.cohort):
        record = _start(store, con, settings, the_plan, verdict, members if members is not None else wanted_count,
                        wanted_count, caps.held, len(caps.held) + (len(caps.over) if settings.dry_run else 0))
        if settings.dry_run:             # written whole, with its outcome, by its start
            return record
        # A dynamic sync the guard stopped stays stopped: later runs say so, writing no member rows again.
        guarded = settings.mode == "dynamic" and settings.saves != SAVE_REGISTRATION
        stop = states.guard_stop(con, settings.cohort) if guarded else None
        if stop and not settings.force:
            record.plan, record.held = None, {}
            return _finish(con, record, "stopped", states.still_stopped(settings.cohort, stop, verdict.reason,
                                                                        verdict.ok))
        if not verdict.ok:
            if guarded:
                states.stop_by_guard(con, settings.cohort, settings.now, record.run_id)
            return _finish(con, record, "stopped", verdict.reason)
        if credentials is None:
            return _finish(con, record, "failed", "no OneSignal credentials: preview only (see toolkit connect)")
        try:
            segment_id = (_nothing_to_send(con, settings, the_plan, caps)
                          or _run_async(_apply(con, settings, record, the_plan, caps, credentials, on_progress)))
        except (OneSignalError, ExportError) as exc:
            _keep_fingerprint(con, settings.cohort, the_plan)
            status, note = states.after_failure(con, settings.cohort, settings.mode, settings.app_id, exc,
                                                settings.now)
            return _finish(con, record, status, str(exc) + note)
        except BaseException as exc:
            _finish(con, record, "interrupted", "stopped by Ctrl-C" if isinstance(exc, KeyboardInterrupt)
                    else f"{type(exc).__name__}: {exc}")
            raise
        # Every change applied (none failed, the cap held none back): the snapshot holds what was wanted now.
        _keep_fingerprint(con, settings.cohort, the_plan, None if record.failed or record.tag_cap else
                          snapshots.step_mark(_naive(settings.now), settings.user_id_property, settings.id_type))
        if stop:                             # a person confirmed the removals the guard stopped
            states.end_guard_stop(con, settings.cohort)
        if settings.saves:                   # the run succeeded: now the export is registered as asked
            _save_registration(con, settings, segment_id)
        if settings.mode == "dynamic":
            con.execute("UPDATE exports SET next_due_at = ? WHERE cohort = ? AND stopped_at IS NULL",
                        [_naive(settings.now) + DYNAMIC_INTERVAL, settings.cohort])
        return _finish(con, record, "partial" if record.failed else "ok", _failed_users(con, record))


def rehearse(store: Store, planned: Sequence[tuple[ExportSettings, int, Planned]]) -> list[RunRecord | ExportError]:
    """Dry runs of cohorts planned together (``cycle_plans``: settings, members, plan), each recorded as
    ``run`` records it, all in one transaction on the store's connection: sixty runs each in a thread
    of its own, writing its own commit, took ~0.4 s of a 10M dry-run cycle. A cohort whose run lock another
    run holds gets the error ``run`` raises for it."""
    out: list[RunRecord | ExportError] = []
    with contextlib.ExitStack() as locks:
        for settings, members, found in planned:
            assert settings.dry_run
            try:
                locks.enter_context(_run_lock(store, settings.cohort))
            except ExportError as exc:
                out.append(exc)
                continue
            caps = TagCaps(settings.tag_limit, over=found.over, other=found.other)
            out.append(new_record(settings, found.plan, found.verdict, members, found.exportable, caps.held,
                                  caps.count))
        write_dry_runs(store, store.con, [r for r in out if isinstance(r, RunRecord)])
    return out


def _spread(aliases, salt: str) -> list:
    """The users in an order of this cohort's own: runs of a cycle going at once then address different
    users at any moment (OneSignal takes one update per user per second, so runs walking the same users
    in the same order would queue behind each other on every user they share)."""
    return sorted(aliases, key=lambda alias: hashlib.blake2b(f"{salt}\0{alias[1]}".encode(), digest_size=8).digest())


def _nothing_to_send(con, settings: ExportSettings, the_plan: planning.Plan, caps: TagCaps) -> str | None:
    """The segment's id when a run has nothing to tell OneSignal: no user changes, the segment known by
    its id and name, nothing to register, no cap refusal to forget. Then no request is made at all (not
    even the segment's), so sixty unchanged syncs cost the app's rate budget nothing."""
    if the_plan.changes or not settings.segment_id or settings.saves:
        return None
    found = con.execute("SELECT segment_name = ? AND segment_id = ? FROM exports WHERE cohort = ?",
                        [segment_name(settings.cohort), settings.segment_id, settings.cohort]).fetchone()
    stale_caps = con.execute("SELECT count(*) FROM export_tag_caps WHERE cohort = ? "
                             "AND distinct_id NOT IN (SELECT unnest(?::VARCHAR[]))",
                             [settings.cohort, list(caps.held)]).fetchone()[0]
    return settings.segment_id if found and found[0] and not stale_caps else None


def _keep_fingerprint(con, cohort: str, the_plan: planning.Plan, in_step_with: str | None = None) -> None:
    """The fingerprint of the snapshot this run reached, for the next plan: unless the plan was
    recognised unchanged by it (then nothing was written and it still holds). ``in_step_with``: the
    snapshot now holds exactly the members wanted (``snapshots.step_mark``)."""
    if not the_plan.recognised:
        snapshots.keep(con, cohort, in_step_with)
    elif in_step_with is not None:
        snapshots.in_step(con, cohort, in_step_with)


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
        resolved = await _resolve_subscriptions(con, client, settings.app_id, changes, settings.sends)
        writer = _ResultWriter(con, record, settings, caps, len(changes), on_progress)
        refused: dict[tuple[str, str], Step] = {}

        def answered(alias: tuple[str, str], step: Step, outcome: str, error, known: bool = False,
                     carries: int | None = None) -> None:
            writer.add(step, outcome, error, carries)
            if outcome == TAG_CAP and step.operation == ADD and not known and len(refused) < LEARN_TAGS_PER_RUN:
                refused[alias] = step

        try:
            # Removals first: a OneSignal id that moved between members is cleared, then set again.
            by_operation = {operation: _sendable(changes, operation, resolved, caps, writer)
                            for operation in (REMOVE, ADD)}
            if settings.sends is not None:       # a cycle: every run's changes to a user in one request
                await _send_merged(settings, credentials, by_operation, caps, answered)
            else:
                for operation, steps in by_operation.items():
                    value = TAG_VALUE if operation == ADD else ""

                    def on_result(r, steps=steps):    # this operation's steps, bound now
                        alias = (r.alias_label, r.alias_id)
                        answered(alias, steps[alias], r.outcome, r.error)

                    await client.update_many(((label, alias_id, {settings.tag_key: value})
                                              for label, alias_id in _spread(steps, settings.tag_key)),
                                             on_result=on_result)
        finally:
            writer.flush()
        if refused:
            await _learn_tags(con, client, settings, refused)
    return segment_id


def _sendable(changes: Sequence[Step], operation: str, resolved: Mapping[Target, tuple[str, str] | None],
              caps: TagCaps, writer: _ResultWriter) -> dict[tuple[str, str], Step]:
    """The operation's steps to send, by the alias OneSignal knows the user by; the others' outcomes
    (a Player ID OneSignal does not know, an add over the tag cap) written without a request."""
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
    return steps


async def _send_merged(settings: ExportSettings, credentials: Credentials,
                       by_operation: Mapping[str, Mapping[tuple[str, str], Step]], caps: TagCaps, answered) -> None:
    """Hand the run's changes to the cycle's merged sender (``export.merged``) and record each answer as
    it comes, as if this run had sent it. An addition says how many tags the toolkit knows the user carries
    besides this cohort's, so the sender keeps a user's merged request within the app's cap."""
    assert settings.sends is not None and settings.base_url
    changes: list[tuple] = [(alias, step, settings.tag_key, "") for alias, step in by_operation.get(REMOVE, {}).items()]
    changes += [(alias, step, settings.tag_key, TAG_VALUE, caps.other.get(step.target.onesignal_id, 0))
                for alias, step in by_operation.get(ADD, {}).items()]
    if not changes:
        settings.sends.leave(settings.cohort)
        return
    answers = settings.sends.submit(settings.cohort, changes, credentials, settings.base_url,
                                    settings.client_options, settings.tag_limit)
    remaining = len(changes)
    while remaining:
        batch = await asyncio.to_thread(answers.get)
        if isinstance(batch, BaseException):
            raise batch
        for item in batch:
            answered(*item)
        remaining -= len(batch)
    # The run's last results and its record are written once the cycle's sends to the app are over: on a
    # cycle's few cores, sixty runs writing while the others' requests are still out slowed those to half
    # the app's rate. Its slot went to the next run when it handed its changes over.
    await asyncio.to_thread(settings.sends.wait_sent)


async def _learn_tags(con, client: OneSignalClient, settings: ExportSettings,
                      refused: Mapping[tuple[str, str], Step]) -> None:
    """Read what tags the users the cap refused carry (OneSignal's view of each), so that previews count
    them and a refused member is tried again only once its known tags drop. At most a few per run, at the
    app's View user rate (in a cycle, each user once for all its runs, a few in all: ``ViewBudget.claim``):
    view calls are slow, and a refusal already says enough to hold the member back."""
    learned: dict[str, list[str]] = {}
    claim = getattr(client.view_limiter, "claim", None)
    chosen = claim(refused) if claim is not None else list(refused)[:LEARN_TAGS_PER_RUN]

    async def read(label: str, alias_id: str, step: Step) -> None:     # at once, at the View user rate
        try:
            view = await client.get_user(label, alias_id, paced=True)
        except OneSignalError as exc:
            log.info("could not read the tags of user %r: %s", step.distinct_id, exc)
            return
        tags = ((view or {}).get("properties") or {}).get("tags") or {}
        learned[step.target.onesignal_id] = sorted(str(k) for k in tags)

    await asyncio.gather(*(read(label, alias_id, refused[label, alias_id]) for label, alias_id in chosen))
    if not learned:
        return
    now = _naive(settings.now)
    with _CACHE_WRITES, transaction(con):      # runs at once may learn one user's tags together
        for onesignal_id, keys in learned.items():
            con.execute("INSERT OR REPLACE INTO known_user_tags VALUES (?, ?, ?, ?)",
                        [settings.app_id, onesignal_id, keys, now])
        known = other_tags(con, settings, list(learned))
        for onesignal_id in learned:
            con.execute("UPDATE export_tag_caps SET other_tags = ? WHERE cohort = ? AND onesignal_id = ?",
                        [known.get(onesignal_id, 0), settings.cohort, onesignal_id])


def _keep_subscription_users(con, app_id: str, learned: Mapping[str, str | None]) -> None:
    """The subscriptions' users looked up (None: OneSignal has no such subscription), in one write."""
    if not learned:
        return
    table = pa.table({"subscription_id": pa.array(list(learned), pa.string()),
                      "onesignal_id": pa.array(list(learned.values()), pa.string())})
    with _CACHE_WRITES:
        con.register("looked_up", table)
        try:
            con.execute("INSERT OR REPLACE INTO subscription_users SELECT ?, subscription_id, onesignal_id, "
                        "now()::TIMESTAMP FROM looked_up", [app_id])
        finally:
            con.unregister("looked_up")


async def _resolve_subscriptions(con, client: OneSignalClient, app_id: str, steps: Sequence[Step],
                                 sends: MergedSends | None = None) -> dict[Target, tuple[str, str] | None]:
    """Subscription (Player) IDs -> ("onesignal_id", id) of their user, from the cache or OneSignal (in a
    cycle, each looked up once for all its runs: ``sends``)."""
    wanted = sorted({s.target for s in steps if s.target.id_type == "subscription_id"})
    if not wanted:
        return {}
    ids = [t.onesignal_id for t in wanted]
    known = dict(con.execute("SELECT subscription_id, onesignal_id FROM subscription_users "
                                   "WHERE app_id = ? AND subscription_id IN (SELECT unnest(?))",
                                   [app_id, ids]).fetchall())
    # Looked up concurrently (each a request within the rate limit); what was learned is kept in the cache in
    # one write, also when a lookup fails (a write per lookup, one at a time across a cycle's runs, took
    # seconds at the cycle's start, with no update sent meanwhile).
    gate = asyncio.Semaphore(client.concurrency)
    learned: dict[str, str | None] = {}

    async def look_up(sub: str) -> None:
        if sends is not None and (shared := await sends.looked_up(sub)) is not NOT_LOOKED_UP:
            known[sub] = shared          # another run of the cycle looked it up (and cached it)
            return
        found: Any = NOT_LOOKED_UP
        try:
            async with gate:
                try:
                    found = (await client.identity_of_subscription(sub)).get("onesignal_id")
                except NotFound:
                    found = None
            known[sub] = learned[sub] = found
        finally:
            if sends is not None:        # the cycle's other runs waiting for it (or, if it failed, not)
                sends.look_up_done(sub, found)

    missing = [t.onesignal_id for t in wanted if known.get(t.onesignal_id) is None]
    tasks = [asyncio.ensure_future(look_up(sub)) for sub in missing]
    try:
        if tasks:
            await asyncio.gather(*tasks)
    finally:                     # one failure (a revoked key) stops the others
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        _keep_subscription_users(con, app_id, learned)
    resolved: dict[Target, tuple[str, str] | None] = {}
    for target in wanted:
        sub = target.onesignal_id
        resolved[target] = ("onesignal_id", known[sub]) if known[sub] else None
    return resolved
