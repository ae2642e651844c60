"""A cycle's tag updates to one app, merged per user: one request carries every cohort's change to a user.

OneSignal takes one update per user per second (and up to 100 tag keys in one). Sixty cohorts sending on
their own give a user in many of them one request per cohort, one second apart: the cycle's last seconds
are spent on a few such users, far under the app's rate. ``MergedSends`` collects the changes of every
run of the cycle to one app (each run hands over its changes and waits for their outcomes), then sends
each user one request with all its changes (split beyond 100 keys), from one client on the app's shared
budget, its own thread and loop. Each change's outcome goes back to the run that made it, which records it
as if it had sent it: run records, per-member results, snapshots and tag-cap refusals stay per cohort.

Exactness: a request that fails for the user (not found, a network failure after retries) fails that
user's changes in every cohort it carried. A refusal that may come from some changes only (the app's tag
cap counts the tags the user would end with; a 400) sends them again in parts: removals first, then as
many additions as the cap OneSignal named leaves room for (counting the tags this cycle set on the user),
halved until each refused change is alone; once the cycle has set as many tags as the cap allows, the
user's further additions are the cap's refusal without a request. So as many additions go through as
the cap allows, as they would one cohort at a time, and each change gets its own outcome. A bad key or
an unknown app stops every run waiting (each records the failure, and its sync is paused as on its own).

Sending starts with the first run's changes (``SEND_EARLY``; else once every run of the cycle to the app
has handed over its changes or left, ``leave``): changes to a user that come while its request is waiting
or out join it or its next one. Once every run has handed over, the users left are sent in an order of
their own, so every cohort progresses.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from toolkit.errors import AppNotFound, AuthError, BadRequest, NotFound, OneSignalError, TagLimitExceeded
from toolkit.onesignal import FAILED, NOT_FOUND, OK, TAG_CAP, Credentials, OneSignalClient
from toolkit.planning import REMOVE, Step

MAX_KEYS = 100          # OneSignal: "Please limit your tag updates to 100 per request"
# Send while runs are still being prepared: budget otherwise idle, and a user whose later changes come
# after its request gets one more (merged) request, so the sends end no later than if they waited.
SEND_EARLY = True
NOT_LOOKED_UP = object()    # a subscription's user: its run's own lookup failed, the next asks again
Alias = tuple[str, str]


@dataclass(frozen=True)
class Change:
    """One cohort's change to one user: its tag key set ("1") or cleared ("")."""
    alias: Alias
    step: Step
    key: str
    value: str
    answers: queue.Queue       # the run's answers (``MergedSends._answer``)

    @property
    def first(self) -> int:
        """Removals before additions: a OneSignal id that moved between members is cleared, then set."""
        return 0 if self.step.operation == REMOVE else 1


class MergedSends:
    """The changes of ``expected`` runs to one app, sent merged per user. Every run calls ``submit`` (then
    reads its answers) or ``leave``, at least once; ``close`` when the cycle is over."""

    def __init__(self, expected: int, *, concurrency: int = 64, on_submit: Callable[[str], None] | None = None,
                 early: bool | None = None):
        self.expected = expected
        self.early = SEND_EARLY if early is None else early
        self.concurrency = max(1, concurrency)
        self.on_submit = on_submit          # the run now only waits (the cycle lets another one start)
        self._lock = threading.Lock()
        self._arrived: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._waiting: list[queue.Queue] = []
        self._lookups: dict[str, concurrent.futures.Future] = {}
        # In the loop's thread only:
        self._users: dict[Alias, _User] = {}              # every user with changes to send, or a request out
        self._pending: dict[Alias, None] = {}             # users ready for their next request, in turn
        self._in_flight: set[Alias] = set()
        self._added: dict[Alias, int] = {}                # tags this cycle set on each user (the cap counts them)
        self._open = False
        self._ready: asyncio.Condition | None = None
        self._client: OneSignalClient | None = None
        self._workers: list[asyncio.Task] = []

    # -- the runs' side (their threads) ---------------------------------------------------------
    def submit(self, cohort: str, changes: Sequence[tuple[Alias, Step, str, str]], credentials: Credentials,
               base_url: str, client_options: Mapping[str, Any]) -> queue.Queue:
        """Hand over a run's changes (alias, step, tag key, value); its answers come on the queue returned:
        one per change (``_answer``), or an exception that stops the run."""
        answers: queue.Queue = queue.Queue()
        with self._lock:
            if self._failure is not None:
                answers.put(self._failure)
                return answers
            if self._loop is None:
                self._start(credentials, base_url, client_options)
            self._waiting.append(answers)
            self._arrived.add(cohort)
            opened = len(self._arrived) >= self.expected
            loop = self._loop
        assert loop is not None
        batch = [Change(alias, step, key, value, answers) for alias, step, key, value in changes]
        loop.call_soon_threadsafe(self._accept, batch, opened)
        if self.on_submit:
            self.on_submit(cohort)
        return answers

    def leave(self, cohort: str) -> None:
        """A run with nothing (more) to send: sending need not wait for it."""
        with self._lock:
            if cohort in self._arrived:
                return
            self._arrived.add(cohort)
            loop = self._loop if len(self._arrived) >= self.expected else None
        if loop is not None:
            loop.call_soon_threadsafe(self._accept, [], True)

    async def looked_up(self, subscription_id: str) -> Any:
        """A subscription's user (its OneSignal id, or None) as another run of the cycle looked it up, waiting
        for that lookup; NOT_LOOKED_UP: this run looks it up, then says so with ``look_up_done``."""
        while True:
            with self._lock:
                found = self._lookups.get(subscription_id)
                if found is None:
                    self._lookups[subscription_id] = concurrent.futures.Future()
                    return NOT_LOOKED_UP
            value = await asyncio.wrap_future(found)
            if value is not NOT_LOOKED_UP:
                return value

    def look_up_done(self, subscription_id: str, value: Any) -> None:
        """The lookup's user, or NOT_LOOKED_UP if it failed (the runs waiting then each try on their own)."""
        with self._lock:
            found = (self._lookups.pop(subscription_id, None) if value is NOT_LOOKED_UP
                     else self._lookups.get(subscription_id))
        if found is not None and not found.done():
            found.set_result(value)

    def close(self) -> None:
        """Stop the sender once every request is answered (runs wait for their answers before they end)."""
        with self._lock:
            loop, thread, self._loop = self._loop, self._thread, None
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    # -- the sender (its own thread and loop) ---------------------------------------------------
    def _start(self, credentials: Credentials, base_url: str, client_options: Mapping[str, Any]) -> None:
        loop = asyncio.new_event_loop()
        options = {**client_options, "concurrency": self.concurrency}
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="merged-sends", daemon=True)
        self._thread.start()
        started.wait()
        asyncio.run_coroutine_threadsafe(self._begin(credentials, base_url, options), loop).result()

    async def _begin(self, credentials: Credentials, base_url: str, options: dict) -> None:
        self._ready = asyncio.Condition()
        self._client = OneSignalClient(credentials, base_url, **options)
        self._workers = [asyncio.create_task(self._work()) for _ in range(self.concurrency)]

    async def _shutdown(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def _accept(self, batch: list[Change], opened: bool) -> None:
        for change in batch:
            self._users.setdefault(change.alias, _User()).fresh.append(change)
            if change.alias not in self._in_flight:
                self._pending[change.alias] = None
        if opened and not self._open:
            # Users in an order of their own, not run by run: every cohort progresses from the start.
            self._pending = dict.fromkeys(sorted(self._pending, key=_spread_key))
            self._open = True
        asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        assert self._ready is not None
        async with self._ready:
            self._ready.notify_all()

    async def _work(self) -> None:
        """One request at a time, for the user whose turn it is. A user with more to send (a split request,
        changes that came meanwhile) goes to the back of the line: no worker waits out a user's second."""
        assert self._ready is not None
        while True:
            async with self._ready:
                await self._ready.wait_for(lambda: (self._open or self.early) and bool(self._pending))
                alias = next(iter(self._pending))
                del self._pending[alias]
                self._in_flight.add(alias)
            user = self._users[alias]
            try:
                if not user.todo:
                    user.todo, user.fresh = chunks(user.fresh), []
                await self._send(alias, user, user.todo.pop(0))
            finally:
                self._in_flight.discard(alias)
                if user.todo or user.fresh:
                    self._pending[alias] = None
                    await self._notify()
                elif user.cap is None:       # a capped user's count is kept for its changes still to come
                    del self._users[alias]

    async def _send(self, alias: Alias, user: _User, request: list[Change]) -> None:
        if self._failure is not None:
            self._answer(request, None, self._failure)
            return
        adds = {c.key for c in request if c.value}
        added = self._added.get(alias, 0)
        if user.cap is not None and len(adds) == len(request) and added >= user.cap.limit:
            # This cycle already set as many tags on the user as the cap allows: OneSignal would refuse.
            self._answer(request, TAG_CAP, user.cap, known=True)
            return
        outcome, error = await self._update(alias, request)
        if outcome == OK:
            added = self._added[alias] = added + len(adds)
        if isinstance(error, TagLimitExceeded):
            user.cap = error
        if len(request) > 1 and (outcome == TAG_CAP or isinstance(error, BadRequest)):
            # Maybe some changes' doing (the cap counts the tags the user would end with): sent again in
            # parts, removals first, as many additions as the cap leaves room for, halved until each
            # refused change has its own answer.
            room = user.cap.limit - added if user.cap is not None else None
            user.todo[0:0] = split(request, room)
        else:
            known = outcome == TAG_CAP and user.cap is not None and added >= user.cap.limit
            self._answer(request, outcome, error, known=known)

    async def _update(self, alias: Alias, chunk: list[Change]) -> tuple[str | None, BaseException | None]:
        """One request: (outcome, error), or (None, the error that stops every run) for a bad key or app."""
        assert self._client is not None
        tags: dict[str, str] = {}
        for change in sorted(chunk, key=lambda c: c.first):      # a cleared key set again ends set
            tags[change.key] = change.value
        try:
            await self._client.update_tags(*alias, tags)
        except (AuthError, AppNotFound) as exc:
            self._fail(exc)
            return None, exc
        except NotFound as exc:
            return NOT_FOUND, exc
        except TagLimitExceeded as exc:
            return TAG_CAP, exc
        except OneSignalError as exc:
            return FAILED, exc
        return OK, None

    def _answer(self, chunk: list[Change], outcome: str | None, error: BaseException | None, *,
                known: bool = False) -> None:
        """Each change's answer to its run: (alias, step, outcome, error, whether the cause is known: a cap
        refusal of tags this cycle set needs no reading of the user's tags), or the error that stops it."""
        for change in chunk:
            change.answers.put(error if outcome is None else (change.alias, change.step, outcome, error, known))

    def _fail(self, exc: BaseException) -> None:
        """Every run waiting gets the error (they stop as on their own); the changes not yet sent go."""
        with self._lock:
            if self._failure is not None:
                return
            self._failure = exc
            waiting = list(self._waiting)
        for answers in waiting:
            answers.put(exc)
        for user in self._users.values():
            for changes in [*user.todo, user.fresh]:
                self._answer(changes, None, exc)
            user.todo, user.fresh = [], []
        self._pending.clear()


class _User:
    """A user's changes: requests made (a split one's parts), and changes not yet in a request; the app's
    tag cap once OneSignal named it refusing the user."""
    __slots__ = ("cap", "fresh", "todo")

    def __init__(self) -> None:
        self.todo: list[list[Change]] = []
        self.fresh: list[Change] = []
        self.cap: TagLimitExceeded | None = None


def split(request: list[Change], room: int | None = None) -> list[list[Change]]:
    """A refused request's changes in two: its removals, then its additions; else as many as there is
    ``room`` for (tags the cap still allows), then the rest; else halves."""
    ordered = sorted(request, key=lambda c: c.first)
    removals = [c for c in ordered if c.first == 0]
    if 0 < len(removals) < len(ordered):
        cut = len(removals)
    elif room is not None and 0 < room < len(ordered):
        cut = room
    else:
        cut = len(ordered) // 2
    return [ordered[:cut], ordered[cut:]]


def _spread_key(alias: Alias) -> bytes:
    return hashlib.blake2b("\0".join(alias).encode(), digest_size=8).digest()


def chunks(changes: Sequence[Change]) -> list[list[Change]]:
    """A user's changes as requests: at most ``MAX_KEYS`` keys each, a key in one request once (two runs
    changing one key, as a run started again may, go in turn), a run's removal and addition of its key
    together (the addition wins, as it would after the removal)."""
    out: list[list[Change]] = []
    owners: list[dict[str, queue.Queue]] = []       # per request: key -> the run whose change it is
    for change in changes:
        for chunk, keys in zip(out, owners, strict=True):
            owner = keys.get(change.key)
            if owner is change.answers or (owner is None and len(keys) < MAX_KEYS):
                chunk.append(change)
                keys[change.key] = change.answers
                break
        else:
            out.append([change])
            owners.append({change.key: change.answers})
    return out
