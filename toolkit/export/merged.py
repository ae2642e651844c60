"""A cycle's tag updates to one app, merged per user: one request carries every cohort's change to a user.

OneSignal takes one update per user per second (and up to 100 tag keys in one). Sixty cohorts sending on
their own give a user in many of them one request per cohort, one second apart: the cycle's last seconds
are spent on a few such users, far under the app's rate. ``MergedSends`` collects the changes of every
run of the cycle to one app (each run hands over its changes and waits for their outcomes), then sends
each user one request with all its changes (split beyond 100 keys), from one client on the app's shared
budget, its own thread and loop. Each change's outcome goes back to the run that made it, which records it
as if it had sent it: run records, per-member results, snapshots and tag-cap refusals stay per cohort.

Exactness: a request that fails for the user (not found, a network failure after retries) fails that
user's changes in every cohort it carried. A refusal that may come from one change alone (the app's tag
cap, a 400) sends that user's changes again one by one, removals first, as the cohorts would have: each
gets its own outcome. A bad key or an unknown app stops every run waiting (each records the failure).

Sending starts once every run of the cycle to the app has handed over its changes or left (``leave``);
changes handed over after that (a run started again) are sent as they come.
"""

from __future__ import annotations

import asyncio
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
Alias = tuple[str, str]


@dataclass(frozen=True)
class Change:
    """One cohort's change to one user: its tag key set ("1") or cleared ("")."""
    alias: Alias
    step: Step
    key: str
    value: str
    answers: queue.Queue       # the run's: (alias, step, outcome, error) per change, or the error that stops it

    @property
    def first(self) -> int:
        """Removals before additions: a OneSignal id that moved between members is cleared, then set."""
        return 0 if self.step.operation == REMOVE else 1


class MergedSends:
    """The changes of ``expected`` runs to one app, sent merged per user. Every run calls ``submit`` (then
    reads its answers) or ``leave``, at least once; ``close`` when the cycle is over."""

    def __init__(self, expected: int, *, concurrency: int = 64, on_submit: Callable[[str], None] | None = None):
        self.expected = expected
        self.concurrency = max(1, concurrency)
        self.on_submit = on_submit          # the run now only waits (the cycle lets another one start)
        self.requests = 0                   # update requests sent, for tests and the bench
        self._lock = threading.Lock()
        self._arrived: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._waiting: list[queue.Queue] = []
        # In the loop's thread only:
        self._pending: dict[Alias, list[Change]] = {}      # users to send, in the order they came
        self._deferred: dict[Alias, list[Change]] = {}     # changes for a user whose request is out
        self._in_flight: set[Alias] = set()
        self._open = False
        self._ready: asyncio.Condition | None = None
        self._client: OneSignalClient | None = None
        self._workers: list[asyncio.Task] = []

    # -- the runs' side (their threads) ---------------------------------------------------------
    def submit(self, cohort: str, changes: Sequence[tuple[Alias, Step, str, str]], credentials: Credentials,
               base_url: str, client_options: Mapping[str, Any]) -> queue.Queue:
        """Hand over a run's changes (alias, step, tag key, value); its answers come on the queue returned:
        one (alias, step, outcome, error) per change, or an exception that stops the run."""
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
            waiting = self._deferred if change.alias in self._in_flight else self._pending
            waiting.setdefault(change.alias, []).append(change)
        if opened and not self._open:
            # Users in an order of their own, not run by run: every cohort progresses from the start.
            self._pending = dict(sorted(self._pending.items(), key=lambda item: _spread_key(item[0])))
            self._open = True
        asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        assert self._ready is not None
        async with self._ready:
            self._ready.notify_all()

    async def _work(self) -> None:
        assert self._ready is not None
        while True:
            async with self._ready:
                await self._ready.wait_for(lambda: self._open and bool(self._pending))
                alias = next(iter(self._pending))
                changes = self._pending.pop(alias)
                self._in_flight.add(alias)
            try:
                await self._send(alias, changes)
            finally:
                self._in_flight.discard(alias)
                if alias in self._deferred:
                    self._pending[alias] = self._deferred.pop(alias)
                    await self._notify()

    async def _send(self, alias: Alias, changes: list[Change]) -> None:
        for chunk in chunks(changes):
            if self._failure is not None:
                self._answer(chunk, None, self._failure)
                continue
            outcome, error = await self._update(alias, chunk)
            if len(chunk) > 1 and (outcome == TAG_CAP or isinstance(error, BadRequest)):
                # Maybe one change's doing (the cap counts the tags the user would end with): one by one.
                for change in sorted(chunk, key=lambda c: c.first):
                    self._answer([change], *await self._update(alias, [change]))
            else:
                self._answer(chunk, outcome, error)

    async def _update(self, alias: Alias, chunk: list[Change]) -> tuple[str | None, BaseException | None]:
        """One request: (outcome, error), or (None, the error that stops every run) for a bad key or app."""
        assert self._client is not None
        tags: dict[str, str] = {}
        for change in sorted(chunk, key=lambda c: c.first):      # a cleared key set again ends set
            tags[change.key] = change.value
        self.requests += 1
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

    def _answer(self, chunk: list[Change], outcome: str | None, error: BaseException | None) -> None:
        for change in chunk:
            change.answers.put(error if outcome is None else (change.alias, change.step, outcome, error))

    def _fail(self, exc: BaseException) -> None:
        """Every run waiting gets the error (they stop as on their own); the changes not yet sent go."""
        with self._lock:
            if self._failure is not None:
                return
            self._failure = exc
            waiting = list(self._waiting)
        for answers in waiting:
            answers.put(exc)
        for changes in [*self._pending.values(), *self._deferred.values()]:
            self._answer(changes, None, exc)
        self._pending.clear()
        self._deferred.clear()


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
