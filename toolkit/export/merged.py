"""A cycle's tag updates to one app, merged per user: one request carries every cohort's change to a user.

OneSignal takes one update per user per second (and up to 100 tag keys in one). Sixty cohorts sending on
their own give a user in many of them one request per cohort, one second apart: the cycle's last seconds
are spent on a few such users, far under the app's rate. ``MergedSends`` collects the changes of every
run of the cycle to one app (each run hands over its changes and waits for their outcomes), then sends
each user one request with all its changes (split beyond 100 keys), from one client on the app's shared
budget, its own thread and loop. Each change's outcome goes back to the run that made it, which records it
as if it had sent it: run records, per-member results, snapshots and tag-cap refusals stay per cohort.

The app's tag cap counts the tags a user would end with, so a merged request can go over it where each
cohort's change alone would not. Runs say how many tags the toolkit knows each added user carries (their
plan's ``TagCaps.other``, as of the cycle's start) and the app's cap: a request that would take the user
over it carries its removals and as many additions as fit, and the other additions are the cap's refusal
without a request (as a run on its own records an add over the cap), instead of a 400 and the requests
again in parts a second apart at the end of the cycle. The cycle counts what it sets and clears on the user.

Exactness: a request that fails for the user (not found, a network failure after retries) fails that
user's changes in every cohort it carried. A refusal that may come from some changes only (tags the
toolkit does not know of; a 400) sends them again in parts: removals first, then as many additions as the
cap OneSignal named leaves room for, halved until each refused change is alone; once the user carries as
many tags as the cap allows, its further additions are the cap's refusal without a request. So as many
additions go through as the cap allows, as they would one cohort at a time, and each change gets its own
outcome. A bad key or an unknown app stops every run waiting (each records the failure, and its sync is
paused as on its own).

OneSignal takes one update per user per second: a user with more to send (a request split, changes that
came while one was out) rests a second after its answer, off the line, so every worker is always on a
request the app's budget can let through (a worker waiting out a user's second would leave the budget idle).

Sending starts with the first run's changes (``SEND_EARLY``; else once every run of the cycle to the app
has handed over its changes or left, ``leave``): changes to a user that come while its request is waiting
or out join it or its next one. Once every run has handed over, the users left are sent in an order of
their own, so every cohort progresses. A run that has its answers writes its last results and its record
once every change to the app is answered (``wait_sent``): on a machine's few cores, runs writing while
requests were out slowed the sender to half the app's rate. For the same reason a run's answers reach it in
batches (``ANSWER_EVERY``), not one wake-up of its thread and loop per change: the runs and the sender share
one interpreter lock, and sixty runs woken ~500 times a second held the sender to ~0.8 of the app's rate.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from toolkit.errors import AppNotFound, AuthError, BadRequest, NotFound, OneSignalError, TagLimitExceeded
from toolkit.onesignal import FAILED, NOT_FOUND, OK, TAG_CAP, USER_SPACING, Credentials, OneSignalClient
from toolkit.planning import REMOVE, Step

MAX_KEYS = 100          # OneSignal: "Please limit your tag updates to 100 per request"
# Send while runs are still being prepared: budget otherwise idle, and a user whose later changes come
# after its request gets one more (merged) request, so the sends end no later than if they waited.
SEND_EARLY = True
ANSWER_EVERY = 0.5      # seconds a run's answers gather before they reach it (at once when sending is over)
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
    carries: int | None = None  # an addition: the tags the toolkit knows the user carries besides this key

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
        self._sent = threading.Event()                  # every run has handed over and every change is answered
        self._lookups: dict[str, concurrent.futures.Future] = {}
        # In the loop's thread only:
        self._tag_limit: int | None = None                # the app's data-tag cap, as the runs know it
        self._users: dict[Alias, _User] = {}              # every user with changes to send, or a request out
        self._pending: dict[Alias, None] = {}             # users ready for their next request, in turn
        self._in_flight: set[Alias] = set()
        self._answered_at: dict[Alias, float] = {}        # when each user's last request was answered (loop time)
        self._resting: set[Alias] = set()                 # users with more to send, waiting out their second
        self._prune_at = 1024
        self._known: dict[Alias, int] = {}                # tags the toolkit knew each user carried before the cycle
        self._net: dict[Alias, int] = {}                  # tags this cycle set less those it cleared, per user
        self._open = False
        self._ready: asyncio.Condition | None = None
        self._client: OneSignalClient | None = None
        self._workers: list[asyncio.Task] = []
        self._outbox: dict[queue.Queue, list[tuple]] = {}   # answers not yet handed to their runs
        self._delivery: asyncio.TimerHandle | None = None

    # -- the runs' side (their threads) ---------------------------------------------------------
    def submit(self, cohort: str, changes: Sequence[tuple], credentials: Credentials, base_url: str,
               client_options: Mapping[str, Any], tag_limit: int | None = None) -> queue.Queue:
        """Hand over a run's changes (alias, step, tag key, value[, for an addition the tags the toolkit knows
        the user carries besides the key]) and the app's tag cap as the run knows it; its answers come on the
        queue returned: lists of one answer per change (``_answer``), or an exception that stops the run."""
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
        batch = [Change(alias, step, key, value, answers, *carries) for alias, step, key, value, *carries in changes]
        loop.call_soon_threadsafe(self._accept, batch, opened, tag_limit)
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
            loop.call_soon_threadsafe(self._accept, [], True, None)

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

    def wait_sent(self) -> None:
        """Wait until the cycle's changes to the app are all answered (or sending stopped). A run that has its
        answers writes them and finishes after that: its writes would take the CPU the sends still need."""
        self._sent.wait()

    def stop(self) -> None:
        """Ctrl-C: every run waiting is answered with the interruption, and the requests out are cancelled."""
        with self._lock:
            self._failure = self._failure or KeyboardInterrupt("the cycle was stopped")
            waiting, loop = list(self._waiting), self._loop
        if loop is not None:           # what was answered reaches its run before the interruption does
            with contextlib.suppress(RuntimeError, TimeoutError):
                asyncio.run_coroutine_threadsafe(self._deliver_now(), loop).result(timeout=5)
        for answers in waiting:
            answers.put(self._failure)
        self.close()

    def close(self) -> None:
        """Stop the sender once every request is answered (runs wait for their answers before they end)."""
        self._sent.set()
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

    def _accept(self, batch: list[Change], opened: bool, tag_limit: int | None) -> None:
        if tag_limit is not None:
            self._tag_limit = tag_limit
        for change in batch:
            alias = change.alias
            self._users.setdefault(alias, _User()).fresh.append(change)
            if change.carries is not None and alias not in self._net:
                # Known before any of the cycle's requests to the user was answered: the plan's count cannot
                # include what the cycle set (a plan made later could: then the user is judged by OneSignal).
                self._known[alias] = max(self._known.get(alias, 0), change.carries)
            if alias not in self._in_flight:
                self._queue(alias)
        if opened and not self._open:
            # Users in an order of their own, not run by run: every cohort progresses from the start.
            self._pending = dict.fromkeys(sorted(self._pending, key=_spread_key))
            self._open = True
        self._check_sent()
        asyncio.ensure_future(self._notify())

    def _check_sent(self) -> None:
        if self._open and not (self._pending or self._in_flight or self._resting):
            self._deliver()
            self._sent.set()

    async def _notify(self) -> None:
        assert self._ready is not None
        async with self._ready:
            self._ready.notify_all()

    def _queue(self, alias: Alias) -> None:
        """The user in line for its next request, or resting until OneSignal takes one again (``_rested``)."""
        if alias in self._resting:
            return
        loop = asyncio.get_running_loop()
        answered = self._answered_at.get(alias)
        wait = answered + self._user_spacing() - loop.time() if answered is not None else 0.0
        if wait > 0:
            self._resting.add(alias)
            loop.call_later(wait, self._rested, alias)
        else:
            self._pending[alias] = None

    def _rested(self, alias: Alias) -> None:
        self._resting.discard(alias)
        self._answered_at.pop(alias, None)
        user = self._users.get(alias)
        if user is not None and (user.todo or user.fresh) and alias not in self._in_flight:
            self._pending[alias] = None
            asyncio.ensure_future(self._notify())

    def _user_spacing(self) -> float:
        """As long as the client's limiter waits between two requests for one user (from the answer)."""
        return float(getattr(self._client.limiter if self._client else None, "user_spacing", USER_SPACING))

    async def _work(self) -> None:
        """One request at a time, for the user whose turn it is. A user with more to send (a split request,
        changes that came meanwhile) goes to the back of the line once its second is over: no worker waits
        out a user's second."""
        assert self._ready is not None
        loop = asyncio.get_running_loop()
        while True:
            async with self._ready:
                await self._ready.wait_for(lambda: (self._open or self.early) and bool(self._pending))
                alias = next(iter(self._pending))
                del self._pending[alias]
                self._in_flight.add(alias)
            user = self._users[alias]
            sent = False
            try:
                if not user.todo:
                    user.todo, user.fresh = chunks(user.fresh), []
                sent = await self._send(alias, user, user.todo.pop(0))
            finally:
                self._in_flight.discard(alias)
                if sent:
                    self._answered_at[alias] = loop.time()
                    self._forget_rested()
                if user.todo or user.fresh:
                    self._queue(alias)
                    await self._notify()
                elif user.cap is None:       # a capped user's cap is kept for its changes still to come
                    del self._users[alias]
                self._check_sent()

    def _forget_rested(self) -> None:
        """A million-user cycle must not keep a million answer times: those past a user's second go."""
        if len(self._answered_at) < self._prune_at:
            return
        horizon = asyncio.get_running_loop().time() - self._user_spacing()
        self._answered_at = {a: t for a, t in self._answered_at.items() if t > horizon or a in self._resting}
        self._prune_at = max(1024, 2 * len(self._answered_at))

    def _carried(self, alias: Alias) -> int:
        """The tags the user carries as far as the cycle knows: those known before it, plus what it set, less
        what it cleared."""
        return self._known.get(alias, 0) + self._net.get(alias, 0)

    def _within_cap(self, alias: Alias, user: _User, request: list[Change]) -> list[Change]:
        """The request without the additions that would take the user over the app's tag cap (OneSignal's,
        once it named it refusing the user; else the runs' when they know the user's tags): those are
        answered as the cap's refusal, without a request."""
        limit = user.cap.limit if user.cap is not None else self._tag_limit if alias in self._known else None
        adds = [c for c in request if c.value]
        if limit is None or not adds:
            return request
        removals = len(request) - len(adds)
        room = max(0, limit - (self._carried(alias) - removals))
        if len(adds) <= room:
            return request
        over = adds[room:]
        self._answer(over, TAG_CAP, user.cap, known=True, carries=self._carried(alias) - removals + room)
        return [c for c in request if c not in over]

    async def _send(self, alias: Alias, user: _User, request: list[Change]) -> bool:
        """Send one request of the user's (what the tag cap leaves of it); whether a request went out."""
        if self._failure is not None:
            self._answer(request, None, self._failure)
            return False
        request = self._within_cap(alias, user, request)
        if not request:
            return False
        outcome, error = await self._update(alias, request)
        if outcome == OK:
            adds = sum(1 for c in request if c.value)
            self._net[alias] = self._net.get(alias, 0) + adds - (len(request) - adds)
        else:
            self._net.setdefault(alias, 0)      # answered: a plan made from now on may count the cycle's tags
        if isinstance(error, TagLimitExceeded):
            user.cap = error
        if len(request) > 1 and (outcome == TAG_CAP or isinstance(error, BadRequest)):
            # Maybe some changes' doing (the cap counts the tags the user would end with): sent again in
            # parts, removals first, as many additions as the cap leaves room for, halved until each
            # refused change has its own answer.
            room = user.cap.limit - self._carried(alias) if user.cap is not None else None
            user.todo[0:0] = split(request, room)
        else:
            known = outcome == TAG_CAP and user.cap is not None and self._carried(alias) >= user.cap.limit
            self._answer(request, outcome, error, known=known)
        return True

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
                known: bool = False, carries: int | None = None) -> None:
        """Each change's answer to its run: (alias, step, outcome, error, whether the cause is known: a cap
        refusal of tags this cycle set needs no reading of the user's tags, the tags the user carries when
        refused without a request), or the error that stops it."""
        if outcome is None:
            self._deliver()            # the answers before it first
            for change in chunk:
                change.answers.put(error)
            return
        for change in chunk:
            self._outbox.setdefault(change.answers, []).append((change.alias, change.step, outcome, error, known,
                                                                carries))
        if self._delivery is None:
            self._delivery = asyncio.get_running_loop().call_later(ANSWER_EVERY, self._deliver)

    def _deliver(self) -> None:
        """Each run's gathered answers, one list a run."""
        if self._delivery is not None:
            self._delivery.cancel()
            self._delivery = None
        outbox, self._outbox = self._outbox, {}
        for answers, batch in outbox.items():
            answers.put(batch)

    async def _deliver_now(self) -> None:
        self._deliver()

    def _fail(self, exc: BaseException) -> None:
        """Every run waiting gets the error (they stop as on their own); the changes not yet sent go."""
        with self._lock:
            if self._failure is not None:
                return
            self._failure = exc
            waiting = list(self._waiting)
        self._deliver()
        for answers in waiting:
            answers.put(exc)
        for user in self._users.values():
            for changes in [*user.todo, user.fresh]:
                self._answer(changes, None, exc)
            user.todo, user.fresh = [], []
        self._pending.clear()
        self._resting.clear()
        self._sent.set()


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
