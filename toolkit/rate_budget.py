"""One OneSignal app's request budget, shared by every export run of a cycle.

Each export run has its own client (and, in a cycle, its own thread and event loop); a limiter per
client would let sixty runs together go sixty times over the app's limit, and would space one user's
requests only within one cohort (a user whose tags change in three cohorts at once would be sent three
updates in the same second: OneSignal allows one per second per user). ``AppBudget`` is one limiter
for all of them, safe across threads: slots are handed out in the order they are asked for, whichever
run asks, so runs sending at once share the rate in proportion to the requests each has in flight (the
cycle gives each the same concurrency): every cohort progresses, none waits for another to finish.
It has the interface the client uses of ``onesignal.RateLimiter``: ``acquire(user)``, ``answered(user)``
and ``pause``. ``ViewBudget`` is the same for OneSignal's View user limit (1 request/s per app), with how
many users a cycle may still view.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

from toolkit.onesignal import VIEW_RPS

# Users a cycle views to learn the tags of those the tag cap refused: OneSignal's View user limit is 1 request/s
# per app (10/s look-back), so ten take ten seconds of a fifteen-minute cycle, however many runs were refused.
VIEWS_PER_CYCLE = 10
User = TypeVar("User", bound=Hashable)
# OneSignal takes one update per user per second. Counted from the answer to the last one (which came
# after OneSignal saw it), a small margin is enough, however late a loaded machine sends the next.
USER_SPACING = 1.05
_BUSY = float("inf")          # a user's request is between its turn and its release
_POLL = 0.02                  # how often a request for a busy user looks again (rare: a user in several runs)


class AppBudget:
    """At most ``rate`` requests/s over every client given it (``OneSignalClient(limiter=...)``), and
    one request per user every ``user_spacing`` seconds, counted from the answer to the previous one."""

    def __init__(self, rate: float, user_spacing: float = USER_SPACING, clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError("the app's rate must be positive")
        self.rate = rate
        self.interval = 1.0 / rate
        self.user_spacing = user_spacing
        self._clock = clock
        self._lock = threading.Lock()
        self._next = float("-inf")                  # when the next slot may start
        window = max(1, int(rate))
        self._window_seconds = window / rate
        self._released: deque[float] = deque(maxlen=window)
        self._users: dict[Hashable, float] = {}     # user -> when its last request was answered, or _BUSY
        self._prune_at = 1024
        self.granted = 0                            # requests let through, for the cycle's report

    def pause(self, seconds: float) -> None:
        """Hold every request of every run back (OneSignal said 429: the whole app is over its limit)."""
        with self._lock:
            self._next = max(self._next, self._clock() + seconds)

    async def acquire(self, user: Hashable | None = None) -> None:
        """Wait for this user's turn, then for a slot. The client calls ``answered(user)`` when the
        request is over: the user's next request waits ``user_spacing`` from then, so however late a busy
        machine sends a request, two for one user never reach OneSignal closer than that."""
        if user is not None:
            await self._user_turn(user)
        try:
            await self._slot()
        except BaseException:
            self.answered(user)
            raise

    def answered(self, user: Hashable | None) -> None:
        if user is not None:
            with self._lock:
                self._users[user] = self._clock()
                self._forget_idle_users()

    async def _user_turn(self, user: Hashable) -> None:
        while True:
            with self._lock:
                now = self._clock()
                last = self._users.get(user)
                if last is None or (last != _BUSY and now >= last + self.user_spacing):
                    self._users[user] = _BUSY
                    return
                wait = _POLL if last == _BUSY else last + self.user_spacing - now
            await asyncio.sleep(wait)

    async def _slot(self) -> None:
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)
        while True:         # no 1-second span over the rate, even for requests a busy loop made late
            with self._lock:
                released, now = self._released, self._clock()
                if len(released) < (released.maxlen or 1) or released[0] + self._window_seconds <= now:
                    released.append(now)
                    self.granted += 1
                    return
                wait = released[0] + self._window_seconds - now
            await asyncio.sleep(wait)

    def _forget_idle_users(self) -> None:
        """Called under the lock: a million-user cycle must not keep a million entries."""
        if len(self._users) < self._prune_at:
            return
        horizon = self._clock() - self.user_spacing
        self._users = {k: t for k, t in self._users.items() if t == _BUSY or t > horizon}
        self._prune_at = max(1024, 2 * len(self._users))


class ViewBudget(AppBudget):
    """OneSignal's View user limit for one app (``rate`` views/s), shared by every client of a cycle as
    ``AppBudget`` shares the app's: a limiter per run would let sixty runs view sixty users a second. And
    which users the cycle still views (``claim``): each once, at most ``allowance`` in all."""

    def __init__(self, rate: float = VIEW_RPS, allowance: int = VIEWS_PER_CYCLE,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(rate, user_spacing=0.0, clock=clock)
        self.allowance = allowance
        self._claimed: set[Hashable] = set()

    def claim(self, users: Iterable[User]) -> list[User]:
        """Those of ``users`` this caller views: not claimed before in the cycle, within the allowance."""
        with self._lock:
            mine = [u for u in dict.fromkeys(users) if u not in self._claimed][:max(0, self.allowance)]
            self._claimed.update(mine)
            self.allowance -= len(mine)
            return mine
