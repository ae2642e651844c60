"""Rate limits and injected faults: the emulator's ways of saying no.

Rate limits follow OneSignal's: requests per second per app, and one update per second per user,
answered with 429 and a ``Retry-After`` header. A request refused with 429 does not use up the
app's budget. Faults are drawn from a seeded generator, so a run is repeatable for a given order of
arrival; ``Faults.inject`` aims faults at chosen requests instead (the 3rd PATCH of a user...), for
tests that must hit one exact point.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from toolkit.errors import UsageError

ERROR, DROP, HANG = "error", "drop", "hang"
# Only by ``Faults.inject``: a 500, a 429 without Retry-After, a 400 (``REFUSE``), a reset after the API applied the
# request (the change is made, the client never hears of it), and a request held until the test
# lets it go (``Emulator.release``), to catch a client in the middle of its work.
CRASH, THROTTLE, RESET_AFTER, HOLD = "crash", "throttle", "reset_after", "hold"
# A 400 that no retry mends (OneSignal refusing one user's update for a reason of its own), applying nothing.
REFUSE = "refuse"
KINDS = (ERROR, DROP, HANG, CRASH, THROTTLE, RESET_AFTER, HOLD, REFUSE)


class Bucket:
    """A token bucket: refilled at ``rate`` per second, holding at most one second's worth.

    So a client keeping under the rate is never refused, whatever jitter its requests pick up on
    the way, and one going faster is refused for the excess."""

    def __init__(self, rate: float, burst: float | None = None):
        self.rate = rate
        self.depth = float(burst if burst is not None else max(1.0, rate))
        self.tokens = self.depth
        self._updated: float | None = None

    def admit(self, now: float) -> float | None:
        """None if admitted (a token taken), else how long until a token is there."""
        if self._updated is not None:
            self.tokens = min(self.depth, self.tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        return (1 - self.tokens) / self.rate


VIEW_RATE, VIEW_BURST = 1.0, 10       # OneSignal's View user: 1 request/s per app, "10 requests/s look-back"
CSV_RECORDS_PER_SECOND = 2000.0         # how fast OneSignal says it writes a CSV export


class Limits:
    """Per-app buckets and per-user spacing. Not thread-safe: the server calls it under its lock.

    The View user limit (``view_rate``) is off unless given: OneSignal's is ``VIEW_RATE`` a second with a
    burst of ``VIEW_BURST``, and tests that are not about it would wait it out."""

    def __init__(self, user_rate: float = 1.0, view_rate: float | None = None):
        self.user_rate = user_rate           # updates/s per user; 0 turns the per-user limit off
        self.view_rate = view_rate           # View user requests/s per app; None: no limit
        self.csv_records_per_second = CSV_RECORDS_PER_SECOND
        self._apps: dict[str, Bucket] = {}
        self._views: dict[str, Bucket] = {}
        self._users: dict[tuple[str, str], float] = {}

    def admit_app(self, app_id: str, limit: int, now: float) -> float | None:
        bucket = self._apps.get(app_id)
        if bucket is None or bucket.rate != limit:
            bucket = self._apps[app_id] = Bucket(limit)
        return bucket.admit(now)

    def admit_view(self, app_id: str, now: float) -> float | None:
        if not self.view_rate:
            return None
        bucket = self._views.get(app_id)
        if bucket is None:
            bucket = self._views[app_id] = Bucket(self.view_rate, burst=VIEW_BURST)
        return bucket.admit(now)

    def admit_user(self, app_id: str, onesignal_id: str, now: float) -> float | None:
        if not self.user_rate:
            return None
        last = self._users.get((app_id, onesignal_id))
        spacing = 1.0 / self.user_rate
        if last is not None and now - last < spacing:
            return last + spacing - now
        self._users[(app_id, onesignal_id)] = now
        return None

    def reset(self) -> None:
        self._apps.clear()
        self._views.clear()
        self._users.clear()


def retry_after_header(wait: float) -> str:
    """Whole seconds, never 0: a client told to wait 0 s would come straight back."""
    return str(max(1, math.ceil(wait)))


@dataclass
class Faults:
    """Shares of requests (0..1) answered 503, dropped without an answer, or hung for ``hang_seconds``
    then dropped; ``latency`` seconds added to every request."""

    error_rate: float = 0.0
    drop_rate: float = 0.0
    hang_rate: float = 0.0
    hang_seconds: float = 30.0
    latency: float = 0.0
    seed: int = 0
    _random: random.Random = field(init=False, repr=False)
    _aimed: list[dict] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self):
        for name in ("error_rate", "drop_rate", "hang_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise UsageError(f"{name} must be between 0 and 1")
        if self.error_rate + self.drop_rate + self.hang_rate > 1:
            raise UsageError("error_rate + drop_rate + hang_rate must not exceed 1")
        self._random = random.Random(self.seed)

    def inject(self, kind: str, *, method: str | None = None, path: str | None = None, skip: int = 0,
               times: int = 1) -> None:
        """Give ``kind`` to the requests matching ``method`` and ``path`` (a part of the path): ``skip``
        of them pass first, then ``times`` of them get the fault. Aimed faults go before drawn ones."""
        if kind not in KINDS:
            raise UsageError(f"fault {kind!r}: expected one of {', '.join(KINDS)}")
        self._aimed.append({"kind": kind, "method": method, "path": path, "skip": skip, "times": times})

    def draw(self, method: str | None = None, path: str | None = None) -> str | None:
        """The fault for the next request, if any (call under the server's lock)."""
        aim = take_aimed(self._aimed, lambda a: a["method"] in (None, method)
                         and (a["path"] is None or a["path"] in (path or "")))
        if aim:
            return aim["kind"]
        if not (self.error_rate or self.drop_rate or self.hang_rate):
            return None
        r = self._random.random()
        if r < self.error_rate:
            return ERROR
        if r < self.error_rate + self.drop_rate:
            return DROP
        if r < self.error_rate + self.drop_rate + self.hang_rate:
            return HANG
        return None


def take_aimed(aimed: list[dict], matches: Callable[[dict], bool]) -> dict | None:
    """The first aimed fault ``matches`` accepts, counted down: its ``skip`` requests pass first, then it
    answers ``times`` of them and is gone. None if no aimed fault applies. (Both emulators aim faults so.)"""
    for aim in aimed:
        if not matches(aim):
            continue
        if aim["skip"]:
            aim["skip"] -= 1
            continue
        aim["times"] -= 1
        if not aim["times"]:
            aimed.remove(aim)
        return aim
    return None
