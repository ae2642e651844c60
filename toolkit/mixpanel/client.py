"""Mixpanel's export and query APIs for one project, through a service account (httpx, blocking).

Auth is HTTP Basic ``username:secret`` with ``project_id`` on every request; the hosts follow the project's
data residency (``REGIONS``; $MIXPANEL_BASE_URL points both at an emulator). Errors come back typed
(toolkit.errors.Mixpanel*) with Mixpanel's own words; 429, 5xx and dropped or cut connections are retried
with backoff inside each API's budget (budget.py). The secret lives only in the Authorization header and is
redacted from reprs, error messages and log records.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from typing import IO, Any, TypeVar

import httpx

from toolkit.errors import (
    InvalidCredentials,
    MixpanelAuthError,
    MixpanelBadRequest,
    MixpanelError,
    MixpanelNetworkError,
    MixpanelProjectError,
    MixpanelRateLimited,
    MixpanelRegionError,
    MixpanelServerError,
)
from toolkit.mixpanel.budget import EXPORT, QUERY, Budget
from toolkit.onesignal import retry_after_seconds
from toolkit.redaction import REDACTED, REDACTOR

log = logging.getLogger(__name__)
T = TypeVar("T")

# (query host, export host) per data residency region.
REGIONS = {
    "us": ("https://mixpanel.com", "https://data.mixpanel.com"),
    "eu": ("https://eu.mixpanel.com", "https://data-eu.mixpanel.com"),
    "in": ("https://in.mixpanel.com", "https://data-in.mixpanel.com"),
}
ENV_BASE_URL = "MIXPANEL_BASE_URL"
# A 429 for the per-second limit (another client's requests in the same second: a panel, the scheduled
# sync) clears within a second; waiting the hourly limit's minute for it stalled a panel for a minute.
PER_SECOND_WAIT = 1.0
EXPORT_PATH = "/api/2.0/export"
ENGAGE_PATH = "/api/query/engage"
COHORTS_PATH = "/api/query/cohorts/list"
CHUNK = 256 * 1024
# Words in Mixpanel's refusals that say the project lives in another region than the host asked.
REGION_WORDS = ("residency", "region", "cluster")


@dataclass(frozen=True)
class ServiceAccount:
    """A Mixpanel service account and the project it reads. The secret never shows in repr or str."""

    username: str
    secret: str
    project_id: str
    region: str = "us"

    def __post_init__(self):
        for name in ("username", "secret", "project_id", "region"):
            object.__setattr__(self, name, str(getattr(self, name)).strip())
        object.__setattr__(self, "region", self.region.lower() or "us")
        if not (self.username and self.secret and self.project_id):
            raise InvalidCredentials("a Mixpanel service account needs a username, a secret and a project id "
                                     "(Mixpanel > Organization settings > Service accounts; the project id is "
                                     "in Project settings)")
        if not self.project_id.isdigit():
            raise InvalidCredentials(f"Mixpanel project id {self.project_id!r} is not a number (Project settings "
                                     "> Overview > Project ID)")
        if self.region not in REGIONS:
            raise InvalidCredentials(f"Mixpanel region {self.region!r}: expected one of {', '.join(REGIONS)}")
        for name, value in (("username", self.username), ("secret", self.secret)):
            bad = next((i for i, c in enumerate(value, 1) if c.isspace() or not 32 < ord(c) < 127), None)
            if bad is not None:
                raise InvalidCredentials(f"the Mixpanel service account's {name} has a space, line break or "
                                         f"non-ASCII character at character {bad}: copy it again (it is not "
                                         "shown here)")

    def __repr__(self) -> str:
        return (f"ServiceAccount(username={self.username!r}, secret={REDACTED}, project_id={self.project_id!r}, "
                f"region={self.region!r})")

    __str__ = __repr__


@dataclass(frozen=True)
class ExportResult:
    """One export answer written out: bytes as received, gzip or not. Events are not counted here: that
    would mean inflating every byte (a fifth of the pull's CPU at 1M events); the loader counts them."""

    bytes: int
    gzip: bool


def messages_of(content: bytes) -> list[str]:
    """Mixpanel's error text from its bodies: ``{"error": ...}`` (with ``status``/``request``), or text."""
    try:
        body = json.loads(content)
    except ValueError:
        text = content.decode("utf-8", "replace").strip()
        return [text[:300]] if text else []
    if isinstance(body, dict) and body.get("error"):
        return [str(body["error"])]
    return [json.dumps(body)[:300]] if body else []


def error_for(status: int, messages: list[str], *, api: str, project_id: str,
              retry_after: float | None = None) -> MixpanelError:
    detail = "; ".join(messages) or "no details"
    text = f"Mixpanel's {api} API answered {status} for project {project_id}: {detail}"
    common: dict[str, Any] = dict(status=status, messages=messages, api=api)
    lowered = detail.lower()
    if status in (400, 403, 404) and any(word in lowered for word in REGION_WORDS):
        return MixpanelRegionError(text, **common)
    if status == 401:
        return MixpanelAuthError(text, **common)
    if status in (403, 404) or (status == 400 and "project" in lowered):
        return MixpanelProjectError(text, **common)
    if status == 429:
        return MixpanelRateLimited(text, retry_after=retry_after, **common)
    if status >= 500:
        return MixpanelServerError(text, **common)
    if status == 400:
        return MixpanelBadRequest(text, **common)
    return MixpanelError(text, **common)


class MixpanelClient:
    """Blocking client. ``with MixpanelClient(account) as client:`` or ``close()``.

    ``base_url`` (else $MIXPANEL_BASE_URL) serves both the query and the export API (an emulator);
    otherwise the region's hosts. ``sleep`` is used for backoff waits and budget waits (tests pass a
    recorder); ``budgets`` maps "export"/"query" to a Budget (a pull passes ones primed with its history)."""

    def __init__(self, account: ServiceAccount, base_url: str | None = None, *, timeout: float = 120.0,
                 max_attempts: int = 8, backoff_base: float = 2.0, backoff_max: float = 120.0,
                 rate_limited_wait: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep, budgets: dict[str, Budget] | None = None,
                 transport: httpx.BaseTransport | None = None):
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.account = account
        base_url = (base_url or os.environ.get(ENV_BASE_URL, "")).strip().rstrip("/")
        self.query_url, self.export_url = (base_url, base_url) if base_url else REGIONS[account.region]
        self.max_attempts, self.timeout = max_attempts, timeout
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.rate_limited_wait = rate_limited_wait
        self._sleep = sleep
        self._random = random.Random()
        self._reached = False      # has a server answered once? Until then a refused connection is final
        self.budgets = budgets or {"export": Budget("Export", EXPORT, sleep=sleep),
                                   "query": Budget("Query", QUERY, sleep=sleep)}
        REDACTOR.add(account.secret)
        REDACTOR.add(f"{account.username}:{account.secret}")      # and so its Basic header's base64
        self._http = httpx.Client(auth=(account.username, account.secret), timeout=httpx.Timeout(timeout),
                                  headers={"Accept": "application/json"}, transport=transport)

    def __repr__(self) -> str:
        return f"MixpanelClient({self.account!r}, query_url={self.query_url!r}, export_url={self.export_url!r})"

    def __enter__(self) -> MixpanelClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the APIs ------------------------------------------------------------------------------
    def export_to(self, sink: IO[bytes], from_date: date, to_date: date, *, event: list[str] | None = None,
                  where: str | None = None, on_bytes: Callable[[int], None] | None = None) -> ExportResult:
        """One attempt at Raw Event Export for ``from_date``..``to_date`` (inclusive), its body written to
        ``sink`` as it arrives (gzip bytes as sent: asked with Accept-Encoding: gzip). Raises a typed error;
        a body cut short (the connection dropped, an unfinished gzip stream) is a retryable
        MixpanelNetworkError, and whatever reached ``sink`` must be thrown away. ``on_bytes(bytes)``
        hears of progress. Use ``retrying`` around it (with a fresh sink per attempt)."""
        params: dict[str, Any] = {"project_id": self.account.project_id, "from_date": from_date.isoformat(),
                                  "to_date": to_date.isoformat()}
        if event:
            params["event"] = json.dumps(event)
        if where:
            params["where"] = where
        url = self.export_url + EXPORT_PATH
        with self._send("export", "GET", url, params=params,
                        headers={"Accept-Encoding": "gzip", "Accept": "application/x-ndjson"}) as response:
            compressed = "gzip" in response.headers.get("Content-Encoding", "").lower()
            size = 0
            try:
                for chunk in response.iter_raw(CHUNK):
                    sink.write(chunk)
                    size += len(chunk)
                    if on_bytes:
                        on_bytes(size)
            except httpx.TransportError as exc:
                # A body cut short: chunked encoding without its last chunk, or fewer bytes than announced.
                raise self._network_error("export", exc, cut=True) from None
            return ExportResult(size, compressed)

    def engage_page(self, *, page: int = 0, session_id: str | None = None, where: str | None = None,
                    cohort_id: int | None = None, output_properties: list[str] | None = None,
                    include_all_users: bool | None = None) -> dict:
        """One page of Engage (profiles), with retries: ``{page, page_size, session_id, total, results}``."""
        form: dict[str, str] = {"page": str(page)}
        if session_id:
            form["session_id"] = session_id
        if where:
            form["where"] = where
        if cohort_id is not None:
            form["filter_by_cohort"] = json.dumps({"id": cohort_id})
        if output_properties is not None:
            form["output_properties"] = json.dumps(output_properties)
        if include_all_users is not None:
            form["include_all_users"] = "true" if include_all_users else "false"
        return self.retrying(lambda: self._json("engage", ENGAGE_PATH, form))

    def engage(self, **query) -> Iterator[list[dict]]:
        """Every page of an Engage query, one list of ``{$distinct_id, $properties}`` at a time; stops on a
        short page, as Mixpanel documents."""
        page, session_id = 0, None
        while True:
            body = self.engage_page(page=page, session_id=session_id, **query)
            results = body.get("results") or []
            yield results
            session_id = body.get("session_id") or session_id
            if len(results) < int(body.get("page_size") or 1000) or not results:
                return
            page += 1

    def cohorts(self) -> list[dict]:
        """The project's saved cohorts: ``[{id, name, count, description, created, is_visible, project_id}]``."""
        return self.retrying(lambda: self._json("cohorts", COHORTS_PATH, {}))

    # -- requests and retries ------------------------------------------------------------------
    def retrying(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` until it succeeds, retrying retryable Mixpanel errors with full-jitter backoff
        (a 429 waits at least its Retry-After, else ``rate_limited_wait``, and holds back the API's budget)."""
        for number in range(1, self.max_attempts + 1):
            try:
                return attempt()
            except MixpanelError as error:
                error.attempts = number
                if not error.retryable or number >= self.max_attempts:
                    raise
                delay = self._random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (number - 1)))
                if isinstance(error, MixpanelRateLimited):
                    wait = error.retry_after if error.retry_after is not None else (
                        PER_SECOND_WAIT if "per second" in str(error).lower() else self.rate_limited_wait)
                    delay = max(delay, wait)
                    self.budgets["export" if error.api == "export" else "query"].pause(wait)
                log.warning("%s; retrying in %.1fs (attempt %d of %d)", error, delay, number + 1, self.max_attempts)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def _json(self, api: str, path: str, form: dict[str, str]) -> Any:
        with self._send(api, "POST", self.query_url + path, params={"project_id": self.account.project_id},
                        data=form) as response:
            try:
                response.read()
                return response.json()
            except httpx.TransportError as exc:
                raise self._network_error(api, exc, cut=True) from None
            except ValueError:
                raise MixpanelServerError(f"Mixpanel's {api} API answered with something that is not JSON",
                                          api=api) from None

    @contextmanager
    def _send(self, api: str, method: str, url: str, *, params: dict, data: dict | None = None,
              headers: dict | None = None) -> Iterator[httpx.Response]:
        """One attempt, inside the API's budget (held until the body is read): a response with a 2xx status,
        else the typed error."""
        with self.budgets["export" if api == "export" else "query"].slot():
            request = self._http.build_request(method, url, params=params, data=data, headers=headers)
            try:
                response = self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                raise self._network_error(api, exc) from None
            try:
                self._reached = True
                if response.status_code >= 300:
                    try:
                        content = response.read()
                    except httpx.TransportError:
                        content = b""
                    messages = [REDACTOR.redact(m) for m in messages_of(content)]
                    raise error_for(response.status_code, messages, api=api, project_id=self.account.project_id,
                                    retry_after=retry_after_seconds(response.headers.get("Retry-After")))
                yield response
            finally:
                response.close()

    def _network_error(self, api: str, exc: httpx.TransportError, cut: bool = False) -> MixpanelNetworkError:
        where = self.export_url if api == "export" else self.query_url
        cause = REDACTOR.redact(str(exc) or type(exc).__name__)
        if isinstance(exc, httpx.TimeoutException):
            cause = f"no answer within {self.timeout:g}s"
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)) and not self._reached:
            # An unknown host or nothing listening will not heal in minutes: say so now.
            return MixpanelNetworkError(f"cannot connect to Mixpanel at {where} ({api} API): {cause}", api=api,
                                        retryable=False)
        what = "the answer was cut short" if cut else "no answer"
        return MixpanelNetworkError(f"Mixpanel at {where} ({api} API): {what}: {type(exc).__name__}: {cause}",
                                    api=api)
