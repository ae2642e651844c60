"""OneSignal REST client: auth, error shapes, retries and client-side rate limiting.

Speaks OneSignal's public API with httpx (async core, ``SyncOneSignalClient`` for blocking callers):
users by alias, a subscription's user identity, and segments. It knows nothing about DuckDB or
cohorts; the exporter drives it. The App API key lives only in the ``Authorization`` header: it is
redacted from reprs, error messages and log records.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from toolkit.errors import (
    AppNotFound,
    AuthError,
    BadRequest,
    Conflict,
    InvalidCredentials,
    NetworkError,
    NotFound,
    OneSignalError,
    PlanRefused,
    RateLimited,
    SegmentLimitReached,
    ServerError,
    TagLimitExceeded,
)
from toolkit.redaction import REDACTED, REDACTOR

DEFAULT_BASE_URL = "https://api.onesignal.com"
ENV_BASE_URL = "ONESIGNAL_BASE_URL"
PARTNER_NAME = "Mixpanel Cohorts Toolkit"
USAGE_HEADER = "OneSignal-Usage"
USAGE = f"{PARTNER_NAME} | Partner Integration"      # OneSignal asks partners to identify themselves
DEFAULT_MAX_RPS = 900  # 90% of OneSignal's 1,000 requests/s per app
USER_SPACING = 1.25   # OneSignal allows 1 request/s per user; the margin absorbs send-to-arrival jitter
PAGE_LIMIT = 300      # the most segments one list call may ask for
VIEW_RPS = 1.0        # OneSignal's View user limit: 1 request/s per app (10/s look-back)
EXPORT_WAIT = 3 * 3600.0   # how long a CSV export may take to be written (OneSignal: ~2,000 records/s)
NOT_READY = (403, 404)     # a CSV export's URL before the file is there (404 now, 403 in older docs)
POOL_SIZE = 4         # connections per httpx pool: httpcore scans a whole pool for every request, so one
                      # pool of 64 costs ~3x the CPU per request of sixteen pools of 4
VALIDATE_ATTEMPTS = 3  # a "Connect" button should answer in seconds, not after ten backoffs
RETRY_NOTICE_EVERY = 5.0   # seconds between warnings about retries (each retry is also logged at INFO)
# What OneSignal answers when an app's plan does not allow segments through the API: 402, or 400 with
# exactly one of these messages (never a message that could carry a segment or cohort name).
PLAN_REFUSALS = frozenset({
    "App may not create or update segments through the API on a free plan; upgrade to a paid OneSignal plan",
})

# OneSignal's plan limits, read from its words as a whole message (never a part that could be a name).
TAG_CAP_MESSAGE = re.compile(r"App is limited to a maximum of (\d+) tags on a given player")
SEGMENT_LIMIT_MESSAGE = re.compile(r"App has reached its limit of (\d+) segments")

OK, NOT_FOUND, FAILED, TAG_CAP = "ok", "not_found", "failed", "tag_cap"

log = logging.getLogger(__name__)


def default_base_url() -> str:
    """$ONESIGNAL_BASE_URL (an emulator, a proxy), else OneSignal's own API."""
    return os.environ.get(ENV_BASE_URL, "").strip() or DEFAULT_BASE_URL


# -- credentials and redaction ------------------------------------------------------------------

@dataclass(frozen=True)
class Credentials:
    """An App ID and its App API key. The key never shows in repr or str."""

    app_id: str
    api_key: str

    def __post_init__(self):
        # Keys are often pasted with a stray space or newline.
        object.__setattr__(self, "app_id", str(self.app_id).strip())
        object.__setattr__(self, "api_key", str(self.api_key).strip())
        if not self.app_id or not self.api_key:
            raise InvalidCredentials("OneSignal credentials need both an App ID and an App API key "
                                     "(OneSignal > Settings > Keys & IDs)")
        problem = _key_problem(self.api_key)
        if problem:
            raise InvalidCredentials(f"the App API key for app {self.app_id} {problem}: OneSignal keys are "
                                     "one line of letters, digits and punctuation. Copy it again from "
                                     "OneSignal > Settings > Keys & IDs (the key is not shown here)")

    def __repr__(self) -> str:
        return f"Credentials(app_id={self.app_id!r}, api_key={REDACTED})"

    __str__ = __repr__


def _key_problem(key: str) -> str | None:
    """What makes ``key`` impossible as an API key, described without quoting any of it."""
    for position, char in enumerate(key, 1):
        if char in "\r\n":
            return f"has a line break inside (character {position}; was it pasted with another line?)"
        if char.isspace():
            return f"has a space or tab inside (character {position})"
        if ord(char) < 32 or ord(char) == 127:
            return f"has a control character inside (character {position})"
        if ord(char) > 126:
            return f"has a non-ASCII character inside (character {position})"
    return None


for _name in (__name__, "httpx", "httpcore", "httpcore.connection", "httpcore.http11", "httpcore.http2",
              "httpcore.proxy"):
    logging.getLogger(_name).addFilter(REDACTOR)


# -- errors -------------------------------------------------------------------------------------

def error_messages(content: bytes) -> list[str]:
    """OneSignal's error text from any body shape it uses (or a non-JSON body)."""
    try:
        body = json.loads(content)
    except ValueError:
        text = content.decode("utf-8", "replace").strip()
        return [text[:300]] if text else []
    if not isinstance(body, dict):
        return [json.dumps(body)[:300]]
    errors = body.get("errors")
    if isinstance(errors, str):
        return [errors]
    if isinstance(errors, dict):
        errors = [errors]
    if isinstance(errors, list) and errors:
        return [_describe(e) for e in errors]
    if body.get("success") is False:
        return ["the request failed (success: false)"]
    return [json.dumps(body)[:300]] if body else []


def _describe(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    text = str(error.get("title") or error.get("message") or json.dumps(error))
    if error.get("code"):
        text += f" ({error['code']})"
    if error.get("meta"):
        text += f" {json.dumps(error['meta'], ensure_ascii=False)}"
    return text


def error_for(status: int, messages: list[str], *, method: str, path: str,
              retry_after: float | None = None) -> OneSignalError:
    """The typed error for an HTTP status and OneSignal's messages."""
    detail = "; ".join(messages) or "no details"
    text = f"OneSignal answered {status} to {method} {path}: {detail}"
    common: dict[str, Any] = dict(status=status, messages=messages, method=method, path=path)
    if status == 402 or (status in (400, 403) and any(m.strip() in PLAN_REFUSALS for m in messages)):
        return PlanRefused(text, **common)
    if status in (401, 403):
        return AuthError(text, **common)
    if status == 400 and any("app_id not found" in m.lower() for m in messages):
        return AppNotFound(text, **common)
    for message in messages if status == 400 else ():
        if found := TAG_CAP_MESSAGE.fullmatch(message.strip()):
            return TagLimitExceeded(text, limit=int(found[1]), **common)
        if found := SEGMENT_LIMIT_MESSAGE.fullmatch(message.strip()):
            return SegmentLimitReached(text, limit=int(found[1]), **common)
    if status == 400:
        return BadRequest(text, **common)
    if status == 404:
        return NotFound(text, **common)
    if status == 409:
        return Conflict(text, **common)
    if status == 429:
        return RateLimited(text, retry_after=retry_after, **common)
    if status >= 500:
        return ServerError(text, **common)
    return OneSignalError(text, **common)


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (seconds or an HTTP date) in seconds from now."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


# -- rate limiting ------------------------------------------------------------------------------

class _UserSlot:
    __slots__ = ("lock", "last", "waiters")

    def __init__(self):
        self.lock = asyncio.Lock()
        self.last = float("-inf")
        self.waiters = 0


class RateLimiter:
    """At most ``rate`` requests/s, and one request per user every ``user_spacing`` seconds counted
    from when the previous one was let through.

    A token bucket one token deep: requests leave evenly spaced, in call order. A window of the
    actual release times also caps any 1-second span at ``rate``, so requests made late by a busy
    event loop do not leave in a burst that the server would answer with 429s."""

    def __init__(self, rate: float, user_spacing: float = USER_SPACING, clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError("max_rps must be positive")
        self.interval = 1.0 / rate
        self.user_spacing = user_spacing
        self._clock = clock
        self._next = float("-inf")    # when the next slot may start
        window = max(1, int(rate))
        self._window_seconds = window / rate
        self._released: deque[float] = deque(maxlen=window)
        self._users: dict[Hashable, _UserSlot] = {}
        self._prune_at = 1024

    def pause(self, seconds: float) -> None:
        """Hold every request back for a while (OneSignal said 429: the whole app is over its limit)."""
        self._next = max(self._next, self._clock() + seconds)

    def answered(self, user: Hashable | None) -> None:
        """The request let through for ``user`` is over (a shared budget spaces users from here)."""

    async def acquire(self, user: Hashable | None = None) -> None:
        if user is None:
            await self._slot()
            return
        slot = self._users.get(user)
        if slot is None:
            slot = self._users[user] = _UserSlot()
        slot.waiters += 1
        try:
            async with slot.lock:
                wait = slot.last + self.user_spacing - self._clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._slot()
                slot.last = self._clock()
        finally:
            slot.waiters -= 1
            self._forget_idle_users()

    async def _slot(self) -> None:
        now = self._clock()
        start = max(now, self._next)
        self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)
        released = self._released
        while len(released) == released.maxlen:
            wait = released[0] + self._window_seconds - self._clock()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        released.append(self._clock())

    def _forget_idle_users(self) -> None:
        # A million-user export must not keep a million entries: drop users past their spacing.
        if len(self._users) < self._prune_at:
            return
        horizon = self._clock() - self.user_spacing
        self._users = {k: s for k, s in self._users.items() if s.waiters or s.last > horizon}
        self._prune_at = max(1024, 2 * len(self._users))


# -- results ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Connected:
    """validate() succeeded: the key opens this app."""

    app_id: str
    segment_count: int

    def __str__(self) -> str:
        return "Connected"


@dataclass(frozen=True)
class UpdateResult:
    """What happened to one user's tag update in ``update_many``."""

    alias_label: str
    alias_id: str
    tags: Mapping[str, str]
    outcome: str                          # OK | NOT_FOUND | FAILED | TAG_CAP
    error: OneSignalError | None = None


@dataclass
class BatchSummary:
    ok: int = 0
    not_found: int = 0
    failed: int = 0
    tag_cap: int = 0            # refused: over the app's data-tag cap

    @property
    def total(self) -> int:
        return self.ok + self.not_found + self.failed + self.tag_cap


Update = tuple[str, str, Mapping[str, str]]


# -- the client ---------------------------------------------------------------------------------

def _segment(value: str) -> str:
    """One URL path segment: everything escaped, and "." / ".." kept from being read as dot-segments."""
    if not value:
        raise ValueError("an empty id cannot be put in a OneSignal URL")
    escaped = quote(value, safe="")
    return escaped.replace(".", "%2E") if value in (".", "..") else escaped


def _transport_cause(exc: BaseException) -> str:
    """The root cause of a transport error in words (httpx's own text can be "All connection attempts
    failed" while the socket error underneath says "connection refused")."""
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    for link in chain:
        if isinstance(link, ConnectionRefusedError):
            return "connection refused (nothing listens at that address and port)"
        if isinstance(link, socket.gaierror):
            return f"the host name cannot be resolved ({link.strerror or link})"
    os_errors = [link for link in chain if isinstance(link, OSError) and link.errno is not None]
    return str(os_errors[0] if os_errors else exc) or type(exc).__name__


@functools.cache
def _tls_context() -> ssl.SSLContext | bool:
    """One TLS context for every client of the process: loading the CA bundle takes ~70 ms a time."""
    return httpx.create_ssl_context() if hasattr(httpx, "create_ssl_context") else True


def _check_tags(tags: Mapping[str, str]) -> None:
    bad = [k for k, v in tags.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"OneSignal tag keys and values must be strings; not so for {bad[:5]!r}")


class OneSignalClient:
    """Async OneSignal client. Use ``async with OneSignalClient(...) as client:`` or call ``aclose()``.

    Retries 429 (waiting max(Retry-After, backoff)), 5xx, timeouts and dropped connections with
    exponential backoff and full jitter; never retries 400/401/403/404/409. ``sleep`` is used for
    those backoff waits only (tests pass a recorder); pacing by the rate limiter is real time."""

    def __init__(self, credentials: Credentials, base_url: str | None = None, *, max_rps: float = DEFAULT_MAX_RPS,
                 timeout: float = 10.0, max_attempts: int = 10, backoff_base: float = 2.0,
                 backoff_max: float = 60.0, concurrency: int = 64, sleep=asyncio.sleep,
                 transport: httpx.AsyncBaseTransport | None = None, view_rps: float = VIEW_RPS,
                 export_wait: float = EXPORT_WAIT, limiter: Any = None, view_limiter: Any = None):
        if max_attempts < 1 or concurrency < 1:
            raise ValueError("max_attempts and concurrency must be at least 1")
        self.credentials = credentials
        self.base_url = (base_url or default_base_url()).rstrip("/")
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.concurrency = concurrency
        # ``limiter``: a budget shared with other clients of the same app (rate_budget.AppBudget)
        self.limiter = limiter if limiter is not None else RateLimiter(max_rps)
        # View user calls, on top of the app's limit; ``view_limiter``: shared with the app's other clients
        # (rate_budget.ViewBudget): OneSignal's View user limit is the app's, not a client's
        self.view_limiter = view_limiter if view_limiter is not None else RateLimiter(view_rps)
        self.export_wait = export_wait
        self._transport = transport
        self._sleep = sleep
        self._random = random.Random()
        self._reached = False           # has the server answered once? Until then, a refused connect is final
        self._retries_unreported = 0
        self._last_retry_notice = float("-inf")
        REDACTOR.add(credentials.api_key)
        headers = {"Authorization": f"Key {credentials.api_key}", "Content-Type": "application/json",
                   "Accept": "application/json", USAGE_HEADER: USAGE}
        tls = _tls_context() if transport is None else True       # a given transport does its own
        sizes = [min(POOL_SIZE, concurrency - start) for start in range(0, concurrency, POOL_SIZE)]
        self._pools = [httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=httpx.Timeout(timeout),
                                         limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                                         verify=tls, transport=transport)
                       for size in sizes]
        # One entry per request allowed in flight, naming the pool it may use: a pool is never asked for
        # more connections than it has, so no request waits inside httpx.
        self._free: asyncio.Queue[int] = asyncio.Queue()
        for index, size in enumerate(sizes):
            for _ in range(size):
                self._free.put_nowait(index)

    def __repr__(self) -> str:
        return f"OneSignalClient({self.credentials!r}, base_url={self.base_url!r})"

    async def __aenter__(self) -> OneSignalClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()

    # -- paths ----------------------------------------------------------------------------------
    @property
    def _app(self) -> str:
        return f"/apps/{_segment(self.credentials.app_id)}"

    def _user_path(self, alias_label: str, alias_id: str) -> str:
        return f"{self._app}/users/by/{_segment(alias_label)}/{_segment(alias_id)}"

    # -- the API --------------------------------------------------------------------------------
    async def validate(self) -> Connected:
        """Check that the key opens the app: ``Connected``, else AuthError, AppNotFound or NetworkError."""
        try:
            body = await self._request("GET", f"{self._app}/segments", params={"limit": 1},
                                       attempts=min(VALIDATE_ATTEMPTS, self.max_attempts))
        except NotFound as exc:
            raise AppNotFound(str(exc), status=exc.status, messages=exc.messages,
                              method=exc.method, path=exc.path) from None
        return Connected(self.credentials.app_id, int((body or {}).get("total_count") or 0))

    async def update_tags(self, alias_label: str, alias_id: str, tags: Mapping[str, str]) -> dict:
        """Set tags on an existing user ("" deletes a tag). Never creates a user: NotFound if absent."""
        _check_tags(tags)
        return await self._request("PATCH", self._user_path(alias_label, alias_id),
                                   body={"properties": {"tags": dict(tags)}}, user=(alias_label, alias_id))

    async def get_user(self, alias_label: str, alias_id: str, *, paced: bool = False) -> dict:
        """View a user; ``paced``: at OneSignal's View user rate (``view_limiter``), as a series of views must be."""
        return await self._request("GET", self._user_path(alias_label, alias_id), view=paced)

    async def view_users(self, aliases: Iterable[tuple[str, str]],
                         on_result: Callable[[str, str, dict | None], None]) -> None:
        """View each user (alias label, alias id) at OneSignal's View user rate (``view_rps``), reporting
        its view, or None for a user OneSignal does not have, to ``on_result`` in order. Any other error
        (after retries) stops the reads: a user could not be told present or deleted."""
        for alias_label, alias_id in aliases:
            try:
                view = await self._request("GET", self._user_path(alias_label, alias_id), view=True)
            except NotFound:
                view = None
            on_result(alias_label, alias_id, view)

    async def export_csv(self, extra_fields: Iterable[str] = ("external_user_id",)) -> str:
        """Ask OneSignal for a CSV export of the app's subscriptions (one row each, with the user's tags);
        returns the file's URL, which answers 404 until the file is written."""
        body = await self._request("POST", "/players/csv_export", params={"app_id": self.credentials.app_id},
                                   body={"extra_fields": list(extra_fields)})
        url = (body or {}).get("csv_file_url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise OneSignalError(f"OneSignal answered the CSV export without a file URL: {str(body)[:200]}",
                                 method="POST", path="/players/csv_export")
        return url

    async def download_export(self, url: str, on_wait: Callable[[float], None] | None = None) -> bytes:
        """The CSV export's file (gzip bytes), polled until written (at most ``export_wait`` seconds;
        ``on_wait`` hears the seconds waited so far). The file is on another host: no key is sent there."""
        started = time.monotonic()
        polls = failures = 0           # failures: answers other than "not written yet", in a row
        async with httpx.AsyncClient(timeout=httpx.Timeout(max(self.timeout, 60.0)), transport=self._transport,
                                     verify=_tls_context() if self._transport is None else True,
                                     headers={USAGE_HEADER: USAGE}, follow_redirects=True) as fetcher:
            while True:
                try:
                    response = await fetcher.get(url)
                    status = response.status_code
                except httpx.TransportError as exc:
                    status, response = 0, None
                    log.info("retrying the CSV export's download after: %s", _transport_cause(exc))
                if response is not None and status == 200:
                    return response.content
                waited = time.monotonic() - started
                if status not in (0, 429, *NOT_READY) and status < 500:
                    raise OneSignalError(f"OneSignal's CSV export answered {status} when downloaded",
                                         status=status, method="GET", path="(the CSV export's file)")
                failures = 0 if status in NOT_READY else failures + 1
                if failures >= self.max_attempts:
                    raise OneSignalError(f"OneSignal's CSV export could not be downloaded: {failures} tries in a "
                                         f"row failed (last: {status or 'no answer'})", status=status or None,
                                         method="GET", path="(the CSV export's file)")
                if waited >= self.export_wait:
                    raise OneSignalError(f"OneSignal's CSV export was not ready after {waited:.0f}s "
                                         "(it writes about 2,000 records a second); try again later",
                                         status=status or None, method="GET", path="(the CSV export's file)")
                if on_wait is not None:
                    on_wait(waited)
                polls += 1
                await self._sleep(min(self.backoff_max, self.backoff_base * 2 ** min(polls - 1, 16)))

    async def identity_of_subscription(self, subscription_id: str) -> dict:
        """The identity (onesignal_id, external_id, ...) of the user owning a subscription (a Player ID)."""
        body = await self._request("GET", f"{self._app}/subscriptions/{_segment(subscription_id)}/user/identity")
        return body["identity"]

    async def create_segment(self, name: str, filters: list[dict]) -> str:
        """Create a segment (paid plans only); returns its id."""
        body = await self._request("POST", f"{self._app}/segments", body={"name": name, "filters": filters})
        return body["id"]

    async def update_segment(self, segment_id: str, name: str, filters: list[dict]) -> dict:
        return await self._request("PATCH", f"{self._app}/segments/{_segment(segment_id)}",
                                   body={"name": name, "filters": filters})

    async def get_segment(self, segment_id: str) -> dict:
        """A segment's details (id, name, filters...) and its ``subscriber_count``."""
        body = await self._request("GET", f"{self._app}/segments/{_segment(segment_id)}",
                                   params={"include-segment-detail": "true"}) or {}
        payload = body.get("payload")
        details = payload if isinstance(payload, dict) else {}
        return {**body, **details}

    async def list_segments(self) -> list[dict]:
        """Every segment of the app, read page by page."""
        segments: list[dict] = []
        while True:
            body = await self._request("GET", f"{self._app}/segments",
                                       params={"offset": len(segments), "limit": PAGE_LIMIT})
            page = body.get("segments") or []
            segments += page
            if len(page) < PAGE_LIMIT or len(segments) >= int(body.get("total_count") or 0):
                return segments

    async def delete_segment(self, segment_id: str) -> None:
        await self._request("DELETE", f"{self._app}/segments/{_segment(segment_id)}")

    async def update_many(self, updates: Iterable[Update],
                          on_result: Callable[[UpdateResult], None] | None = None) -> BatchSummary:
        """Run tag updates concurrently (``concurrency`` at a time, rate-limited) and report each user's
        outcome to ``on_result``. Per-user failures are reported, not raised; a bad key or unknown
        app stops the batch (every user would fail the same way), as does an exception raised by
        ``on_result`` (the caller's way to stop early)."""
        pending = iter(updates)
        summary = BatchSummary()

        async def worker() -> None:
            for alias_label, alias_id, tags in pending:       # shared iterator: each update taken once
                result = await self._update_one(alias_label, alias_id, tags)
                setattr(summary, result.outcome, getattr(summary, result.outcome) + 1)
                if on_result is not None:
                    on_result(result)

        workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if (failed := task.exception()) is not None:
                    raise failed
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return summary

    async def _update_one(self, alias_label: str, alias_id: str, tags: Mapping[str, str]) -> UpdateResult:
        try:
            await self.update_tags(alias_label, alias_id, tags)
        except (AuthError, AppNotFound):
            raise
        except NotFound as exc:
            return UpdateResult(alias_label, alias_id, tags, NOT_FOUND, exc)
        except TagLimitExceeded as exc:
            return UpdateResult(alias_label, alias_id, tags, TAG_CAP, exc)
        except OneSignalError as exc:
            return UpdateResult(alias_label, alias_id, tags, FAILED, exc)
        return UpdateResult(alias_label, alias_id, tags, OK)

    # -- one request, with retries --------------------------------------------------------------
    async def _request(self, method: str, path: str, *, body: Any = None, params: dict | None = None,
                       user: Hashable | None = None, attempts: int | None = None, view: bool = False) -> Any:
        attempts = attempts or self.max_attempts
        for attempt in range(1, attempts + 1):
            if view:
                await self.view_limiter.acquire()
            error = await self._attempt(method, path, body, params, user)
            if not isinstance(error, OneSignalError):
                return error                                  # the decoded body
            error.attempts = attempt
            # A server that never answered (something else listens there, or nothing HTTP) gets a
            # few tries, not minutes of backoff.
            last = attempts if self._reached else min(attempts, VALIDATE_ATTEMPTS)
            if not error.retryable or attempt >= last:
                raise error
            delay = self._backoff(attempt)
            if isinstance(error, RateLimited):
                wait = 1.0 if error.retry_after is None else error.retry_after
                (self.view_limiter if view else self.limiter).pause(wait)
                delay = max(wait, delay)
            self._report_retry(method, path, error, delay, attempt, attempts)
            await self._sleep(delay)
        raise AssertionError("unreachable")

    def _report_retry(self, method: str, path: str, error: OneSignalError, delay: float, attempt: int,
                      attempts: int) -> None:
        """Every retry at INFO; a warning (seen without any logging set up) at most every few seconds,
        so a long wait is never silent and a storm of 429s is not a wall of text."""
        reason = "; ".join(error.messages) or str(error).split(": ", 1)[-1]
        if error.status:
            reason = f"{error.status} {reason}"
        log.info("retrying %s %s in %.1fs after: %s (attempt %d of %d)", method, path, delay, reason,
                 attempt, attempts)
        self._retries_unreported += 1
        now = time.monotonic()
        if now - self._last_retry_notice < RETRY_NOTICE_EVERY:
            return
        others = self._retries_unreported - 1
        log.warning("OneSignal at %s: %s; retrying %s %s in %.1fs (attempt %d of %d)%s", self.base_url, reason,
                    method, path, delay, attempt + 1, attempts,
                    f"; {others} other retries since the last notice" if others else "")
        self._last_retry_notice, self._retries_unreported = now, 0

    async def _attempt(self, method, path, body, params, user) -> Any:
        """One try: the decoded body on success, else the error (returned, so the caller decides)."""
        pool = await self._free.get()
        acquired = False
        try:
            await self.limiter.acquire(user)
            acquired = True
            response = await self._pools[pool].request(method, path, params=params,
                                                        content=None if body is None else json.dumps(body))
        except httpx.TransportError as exc:
            cause = REDACTOR.redact(_transport_cause(exc))
            if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)) and not self._reached:
                # A refused connection or an unknown host will not heal in minutes: say so now.
                # Once the server has answered, the same error is a blip worth retrying.
                error = NetworkError(f"cannot connect to {self.base_url} ({method} {path}): {cause}",
                                     method=method, path=path, retryable=False)
            else:
                if isinstance(exc, httpx.TimeoutException):
                    cause = f"no answer within {self.timeout:g}s ({type(exc).__name__})"
                elif cause != type(exc).__name__:
                    cause = f"{type(exc).__name__}: {cause}"
                error = NetworkError(f"no answer from OneSignal at {self.base_url} to {method} {path}: "
                                     f"{cause}", method=method, path=path,
                                     retryable=not isinstance(exc, (httpx.UnsupportedProtocol,
                                                                    httpx.LocalProtocolError)))
            error.__cause__ = exc
            return error
        finally:
            self._free.put_nowait(pool)
            if acquired:
                self.limiter.answered(user)
        self._reached = True
        messages = [REDACTOR.redact(m) for m in error_messages(response.content)] if response.content else []
        if response.status_code >= 300:
            return error_for(response.status_code, messages, method=method, path=path,
                             retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        try:
            decoded = response.json() if response.content else None
        except ValueError:
            return None
        if isinstance(decoded, dict) and decoded.get("success") is False:
            return error_for(response.status_code, messages, method=method, path=path)
        return decoded

    def _backoff(self, attempt: int) -> float:
        """Full jitter: uniform between 0 and base * 2^(attempt-1), capped."""
        return self._random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))


class SyncOneSignalClient:
    """Blocking facade for notebooks and scripts. The async client runs on a private event loop in
    its own thread, so this works even where a loop is already running (Jupyter)."""

    def __init__(self, credentials: Credentials, base_url: str | None = None, **options):
        self.client = OneSignalClient(credentials, base_url, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="onesignal-client", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"Sync{self.client!r}"

    def __enter__(self) -> SyncOneSignalClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close(self) -> None:
        if self._loop.is_running():
            self._run(self.client.aclose())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def validate(self) -> Connected:
        return self._run(self.client.validate())

    def update_tags(self, alias_label: str, alias_id: str, tags: Mapping[str, str]) -> dict:
        return self._run(self.client.update_tags(alias_label, alias_id, tags))

    def get_user(self, alias_label: str, alias_id: str) -> dict:
        return self._run(self.client.get_user(alias_label, alias_id))

    def identity_of_subscription(self, subscription_id: str) -> dict:
        return self._run(self.client.identity_of_subscription(subscription_id))

    def create_segment(self, name: str, filters: list[dict]) -> str:
        return self._run(self.client.create_segment(name, filters))

    def update_segment(self, segment_id: str, name: str, filters: list[dict]) -> dict:
        return self._run(self.client.update_segment(segment_id, name, filters))

    def get_segment(self, segment_id: str) -> dict:
        return self._run(self.client.get_segment(segment_id))

    def list_segments(self) -> list[dict]:
        return self._run(self.client.list_segments())

    def delete_segment(self, segment_id: str) -> None:
        return self._run(self.client.delete_segment(segment_id))

    def update_many(self, updates: Iterable[Update],
                    on_result: Callable[[UpdateResult], None] | None = None) -> BatchSummary:
        """Like the async one; ``on_result`` runs on the client's loop thread."""
        return self._run(self.client.update_many(updates, on_result))
