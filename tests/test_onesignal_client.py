"""The OneSignal client against the emulator: through the emulator's handler without a socket
(``transport(emu)``, an httpx.MockTransport, answering as its HTTP server does), and over real HTTP on
127.0.0.1 where the network is what is tested: a refused connection, dropped and hung requests with
the client's timeout, and the blocking client end to end.

Backoff waits go through an injected sleep that records them and returns at once; the rate limiter's
pacing is real time. Error-body parsing alone uses a hand-written httpx.MockTransport.
"""

import asyncio
import bisect
import json
import logging
import socket
import time
import traceback
import uuid
from itertools import pairwise

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from toolkit.emulator import Emulator
from toolkit.emulator.transport import transport
from toolkit.onesignal import (
    DEFAULT_MAX_RPS,
    NOT_FOUND,
    OK,
    TAG_CAP,
    USAGE,
    USAGE_HEADER,
    AppNotFound,
    AuthError,
    BadRequest,
    Conflict,
    Credentials,
    NetworkError,
    NotFound,
    OneSignalClient,
    OneSignalError,
    RateLimited,
    RateLimiter,
    ServerError,
    SyncOneSignalClient,
    TagLimitExceeded,
    error_messages,
    retry_after_seconds,
)


class Sleeps:
    """An injected sleep: records each backoff wait and returns at once."""

    def __init__(self):
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


BASE_URL = "https://onesignal.test"      # never resolved: the transport answers


@pytest.fixture
def emu():
    """The emulator not serving HTTP: clients reach its handler through ``transport(emu)``."""
    return Emulator()


def client_for(emu, app, key=None, **options) -> OneSignalClient:
    """A client speaking to ``emu`` through its transport (no socket)."""
    options.setdefault("sleep", Sleeps())
    options.setdefault("transport", transport(emu))
    return OneSignalClient(Credentials(app.app_id, key or app.api_key), BASE_URL, **options)


def run(client: OneSignalClient, scenario):
    """Run ``scenario(client)`` on a fresh loop and close the client."""
    async def main():
        async with client:
            return await scenario(client)
    return asyncio.run(main())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- headers and secrecy ---------------------------------------------------------------------------

class Recording(httpx.AsyncBaseTransport):
    """Remembers each request sent, then hands it to ``inner`` (real HTTP unless given)."""

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None):
        self.inner = inner or httpx.AsyncHTTPTransport()
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request):
        self.requests.append(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self):
        await self.inner.aclose()


def test_sends_the_key_the_usage_header_and_json(emu):
    app = emu.add_app()
    emu.add_user(app.app_id, external_id="u1")
    recording = Recording(transport(emu))
    run(client_for(emu, app, transport=recording),
        lambda c: c.update_tags("external_id", "u1", {"cohort": "1"}))
    (request,) = recording.requests
    assert request.headers["Authorization"] == f"Key {app.api_key}"
    assert request.headers[USAGE_HEADER] == USAGE == "Mixpanel Cohorts Toolkit | Partner Integration"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {"properties": {"tags": {"cohort": "1"}}}
    assert emu.user_tags(app.app_id) == {"u1": {"cohort": "1"}}


def _all_text(error: BaseException) -> str:
    parts = []
    while error is not None:
        parts += [str(error), repr(error), *map(repr, error.args)]
        error = error.__cause__ or error.__context__
    return "\n".join(parts)


def test_the_key_never_shows_in_reprs_errors_tracebacks_or_logs(emu, caplog):
    app = emu.add_app()
    caplog.set_level(logging.DEBUG)
    wrong_key = "wrong-key-" + uuid.uuid4().hex
    app2 = emu.add_app(tag_limit=1)
    emu.add_user(app2.app_id, external_id="full", tags={"a": "1"})
    credentials = Credentials(app.app_id, app.api_key)
    assert app.api_key not in repr(credentials) + str(credentials)
    assert "api_key=<redacted>" in repr(credentials)

    async def failures():
        errors = []
        clients = [client_for(emu, app, key=wrong_key), client_for(emu, app),
                   client_for(emu, app2), OneSignalClient(credentials, f"http://127.0.0.1:{closed_port()}",
                                                               max_attempts=2, sleep=Sleeps())]
        calls = [lambda c: c.validate(), lambda c: c.get_user("external_id", "nobody"),
                 lambda c: c.update_tags("external_id", "full", {"b": "2"}), lambda c: c.validate()]
        for client, call in zip(clients, calls, strict=True):
            async with client:
                assert app.api_key not in repr(client) and app2.api_key not in repr(client)
                with pytest.raises(OneSignalError) as info:
                    await call(client)
                errors.append(info.value)
        return errors

    errors = asyncio.run(failures())
    assert [type(e) for e in errors] == [AuthError, NotFound, TagLimitExceeded, NetworkError]
    for error in errors:
        text = _all_text(error) + "".join(traceback.format_exception(error))
        for key in (app.api_key, app2.api_key, wrong_key):
            assert key not in text

    # Even a message that carries the key straight into a log record comes out redacted.
    logging.getLogger("toolkit.onesignal").warning("oops %s", app.api_key)
    logging.getLogger("httpx").info(f"header Key {wrong_key}")
    assert caplog.records, "the requests above should have been logged"
    for key in (app.api_key, app2.api_key, wrong_key):
        assert key not in caplog.text
    assert "oops <redacted>" in caplog.text


def test_credentials_are_trimmed_and_required():
    assert Credentials(" id \n", " key\n") == Credentials("id", "key")
    with pytest.raises(ValueError):
        Credentials("id", "  ")


# -- error bodies ----------------------------------------------------------------------------------

AUTH_1 = {"errors": [{"code": "auth-1", "title": "This operation requires 'Authorization' in the HTTP header"}]}


@pytest.mark.parametrize("status, body, kind, messages", [
    (400, {"errors": ["App is limited to a maximum of 2 tags on a given player"]}, TagLimitExceeded,
     ["App is limited to a maximum of 2 tags on a given player"]),
    (400, {"errors": ["app_id not found. You may be missing a Content-Type: application/json header."]},
     AppNotFound, ["app_id not found. You may be missing a Content-Type: application/json header."]),
    (401, AUTH_1, AuthError, ["This operation requires 'Authorization' in the HTTP header (auth-1)"]),
    (403, {"errors": ["Access denied.  Please include an 'Authorization: ...' header with a valid API key"]},
     AuthError, ["Access denied.  Please include an 'Authorization: ...' header with a valid API key"]),
    (404, {"success": False}, NotFound, ["the request failed (success: false)"]),
    (404, {"errors": [{"code": "user-2", "title": "User not found", "meta": {"alias_id": "x"}}]}, NotFound,
     ['User not found (user-2) {"alias_id": "x"}']),
    (409, {"errors": "Multiple User Identity Conflict"}, Conflict, ["Multiple User Identity Conflict"]),
    (409, {"success": False, "errors": ["Subscription Limit Exceeded"]}, Conflict, ["Subscription Limit Exceeded"]),
    (429, {"errors": ["API rate limit exceeded."]}, RateLimited, ["API rate limit exceeded."]),
    (503, b"<html>Service temporarily unavailable</html>", ServerError,
     ["<html>Service temporarily unavailable</html>"]),
    (502, b"", ServerError, []),
    (500, {"errors": [{"title": "boom"}, "and more"]}, ServerError, ["boom", "and more"]),
    (418, {"errors": {"title": "teapot"}}, OneSignalError, ["teapot"]),
    (200, {"success": False}, OneSignalError, ["the request failed (success: false)"]),
])
def test_every_error_body_shape_becomes_a_typed_error(status, body, kind, messages):
    calls = []

    def answer(request):
        calls.append(request)
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, content=content, headers={"Retry-After": "3"})

    client = OneSignalClient(Credentials("app", "k"), "https://onesignal.test", max_attempts=3,
                             sleep=Sleeps(), transport=httpx.MockTransport(answer))
    client.limiter.pause = lambda seconds: None       # a 429 would hold the limiter for real seconds
    with pytest.raises(OneSignalError) as info:
        run(client, lambda c: c.get_user("external_id", "x"))
    error = info.value
    assert type(error) is kind
    assert error.status == status and error.messages == messages
    assert len(calls) == (3 if error.retryable else 1)        # only 429 and 5xx are retried
    assert error.attempts == len(calls)
    if kind is RateLimited:
        assert error.retry_after == 3


def test_error_messages_accept_odd_bodies():
    assert error_messages(b"not json") == ["not json"]
    assert error_messages(b"[1, 2]") == ["[1, 2]"]
    assert error_messages(b'{"errors": []}') == ['{"errors": []}']
    assert error_messages(b'{"errors": [{"code": "c"}]}') == ['{"code": "c"} (c)']


def test_a_key_echoed_by_the_server_is_redacted():
    client = OneSignalClient(Credentials("app", "sekrit-123"), "https://onesignal.test", sleep=Sleeps(),
                             transport=httpx.MockTransport(lambda r: httpx.Response(
                                 403, json={"errors": ["bad key sekrit-123"]})))
    with pytest.raises(AuthError) as info:
        run(client, lambda c: c.validate())
    assert "sekrit-123" not in _all_text(info.value)
    assert info.value.messages == ["bad key <redacted>"]


def test_retry_after_in_seconds_or_as_a_date():
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0      # in the past: no wait


def test_a_429_waits_at_least_retry_after_even_when_backoff_is_shorter():
    answers = iter([httpx.Response(429, json={"errors": ["API rate limit exceeded."]}, headers={"Retry-After": "5"}),
                    httpx.Response(200, json={"identity": {"onesignal_id": "o"}})])
    sleeps = Sleeps()
    client = OneSignalClient(Credentials("app", "k"), "https://onesignal.test", backoff_base=0.01, sleep=sleeps,
                             transport=httpx.MockTransport(lambda r: next(answers)))
    client.limiter.pause = lambda seconds: None       # keep this unit test off the real clock
    assert run(client, lambda c: c.identity_of_subscription("s")) == {"onesignal_id": "o"}
    assert sleeps.waits == [5.0]


# -- identifiers -----------------------------------------------------------------------------------

AWKWARD_IDS = ["a/b", "a b", "it's \"quoted\"", "100%", "%2F", "ünïcødé-日本-🙂", "?q=1&x#frag", "+plus+",
               ".", "..", "back\\slash", "semi;colon", "tab\tid", "trailing/", "/leading", "a%20b"]


def test_awkward_external_ids_round_trip(emu):
    app = emu.add_app()
    for external_id in AWKWARD_IDS:
        emu.add_user(app.app_id, external_id=external_id)

    async def scenario(client):
        users = []
        for n, external_id in enumerate(AWKWARD_IDS):
            await client.update_tags("external_id", external_id, {"n": str(n)})
            users.append(await client.get_user("external_id", external_id))
        return users

    users = run(client_for(emu, app), scenario)
    assert [u["identity"]["external_id"] for u in users] == AWKWARD_IDS
    assert emu.user_tags(app.app_id) == {external_id: {"n": str(n)} for n, external_id in enumerate(AWKWARD_IDS)}


@pytest.fixture(scope="module")
def shared():
    emu = Emulator()
    app = emu.add_app()
    with SyncOneSignalClient(Credentials(app.app_id, app.api_key), BASE_URL, sleep=Sleeps(),
                             transport=transport(emu)) as client:
        yield emu, app, client


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(external_id=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24),
       value=st.text(st.characters(blacklist_categories=("Cs",)), max_size=12))
def test_any_external_id_round_trips(shared, external_id, value):
    emulator, app, client = shared
    assume(external_id not in emulator.user_tags(app.app_id))   # a repeat would wait out the 1/s per user
    emulator.add_user(app.app_id, external_id=external_id)
    client.update_tags("external_id", external_id, {"k": value})
    user = client.get_user("external_id", external_id)
    assert user["identity"]["external_id"] == external_id
    assert user["properties"]["tags"] == ({"k": value} if value else {})


def test_a_player_id_reaches_its_user_through_the_identity_lookup(emu):
    app = emu.add_app()
    onesignal_id = emu.add_user(app.app_id, subscription_ids=["player-1", "player-2"])   # anonymous

    async def scenario(client):
        identity = await client.identity_of_subscription("player-2")
        await client.update_tags("onesignal_id", identity["onesignal_id"], {"cohort": "1"})
        with pytest.raises(NotFound):
            await client.identity_of_subscription("no-such-player")
        return identity

    assert run(client_for(emu, app), scenario) == {"onesignal_id": onesignal_id}
    assert emu.user_tags(app.app_id) == {onesignal_id: {"cohort": "1"}}


# -- retries ---------------------------------------------------------------------------------------

@pytest.mark.slow   # waits out real retries and backoff
def test_a_429_storm_ends_with_every_update_applied(emu):
    app = emu.add_app(rate_limit=20)
    emu.add_users(app.app_id, [{"external_id": f"u{n}"} for n in range(60)])
    sleeps = Sleeps()
    summary = run(client_for(emu, app, sleep=sleeps),
                  lambda c: c.update_many(("external_id", f"u{n}", {"storm": str(n)}) for n in range(60)))
    assert (summary.ok, summary.failed) == (60, 0)
    assert emu.user_tags(app.app_id) == {f"u{n}": {"storm": str(n)} for n in range(60)}
    limited = emu.counters["rate_limited"]
    assert limited > 0
    assert len(sleeps.waits) == limited                    # one wait per 429 answer
    assert min(sleeps.waits) >= 1.0                        # the emulator says Retry-After: 1


@pytest.mark.slow   # waits out real retries and backoff
def test_faults_do_not_lose_or_add_a_single_tag():
    # 10% of requests answered 503 or dropped, 2% hung past the client's timeout. Until the server has
    # answered once, a request gets only VALIDATE_ATTEMPTS tries (a wrong URL fails fast): the timeout
    # leaves a starved in-process emulator seconds for its first answer (at 0.5 s, a busy CI machine
    # once failed 5 of the first requests after three timeouts each).
    with Emulator(error_rate=0.05, drop_rate=0.05, hang_rate=0.02, hang_seconds=5, seed=7) as emulator:
        app = emulator.add_app()
        emulator.add_users(app.app_id, [{"external_id": f"u{n}", "tags": {"stale": "1"} if n % 3 == 0 else {}}
                                        for n in range(550)])
        updates = [("external_id", f"u{n}", {"cohort_a": "1", "n": str(n), **({"stale": ""} if n % 3 == 0 else {})})
                   for n in range(500)]
        sleeps, results = Sleeps(), []
        client = OneSignalClient(Credentials(app.app_id, app.api_key), emulator.url, timeout=2.0, sleep=sleeps)
        summary = run(client, lambda c: c.update_many(updates, on_result=results.append))
        counters = emulator.counters

    assert (summary.ok, summary.not_found, summary.failed) == (500, 0, 0)
    assert sorted(r.alias_id for r in results) == sorted(f"u{n}" for n in range(500))
    expected = {f"u{n}": {"cohort_a": "1", "n": str(n)} for n in range(500)}
    expected.update({f"u{n}": {"stale": "1"} if n % 3 == 0 else {} for n in range(500, 550)})   # left alone
    assert emulator.user_tags(app.app_id) == expected
    assert counters["server_errors"] > 0 and counters["dropped"] > 0 and counters["hung"] > 0
    # Every fault cost a retry; on a busy machine a slow answer can also time out and be sent again.
    assert len(sleeps.waits) >= counters["server_errors"] + counters["dropped"] + counters["hung"]
    assert counters["user_creates"] == 0


def test_retries_stop_after_max_attempts_with_growing_capped_backoff():
    emulator = Emulator(error_rate=1.0)
    app = emulator.add_app()
    sleeps = Sleeps()
    with pytest.raises(ServerError) as info:
        run(client_for(emulator, app, max_attempts=6, backoff_base=2.0, backoff_max=10.0, sleep=sleeps),
            lambda c: c.list_segments())
    assert emulator.counters["requests"] == 6
    assert info.value.attempts == 6 and info.value.messages == ["Service temporarily unavailable"]
    assert len(sleeps.waits) == 5
    for attempt, wait in enumerate(sleeps.waits, 1):
        assert 0 <= wait <= min(10.0, 2.0 * 2 ** (attempt - 1))


def _refusal(case, emulator):
    """(app to use, key override, the call, expected error) for each refusal that must not be retried."""
    if case == "tag limit":
        app = emulator.add_app(tag_limit=2)
        emulator.add_user(app.app_id, external_id="u", tags={"a": "1", "b": "2"})
        return app, None, lambda c: c.update_tags("external_id", "u", {"c": "3"}), TagLimitExceeded
    app = emulator.add_app()
    emulator.add_user(app.app_id, external_id="u")
    if case == "too many tags":
        return app, None, lambda c: c.update_tags("external_id", "u", {f"t{n}": "1" for n in range(101)}), BadRequest
    if case == "wrong key":
        return app, "not-the-key", lambda c: c.update_tags("external_id", "u", {"a": "1"}), AuthError
    if case == "no Authorization header":
        return app, None, lambda c: c.update_tags("external_id", "u", {"a": "1"}), AuthError
    if case == "unknown app":
        app.app_id = str(uuid.uuid4())          # only this test's copy of the credentials changes
        return app, None, lambda c: c.update_tags("external_id", "u", {"a": "1"}), AppNotFound
    if case == "unknown user":
        return app, None, lambda c: c.update_tags("external_id", "nobody", {"a": "1"}), NotFound
    assert case == "duplicate segment"
    emulator.add_user(app.app_id, external_id="v")

    async def twice(c):
        await c.create_segment("S", [{"field": "tag", "key": "a", "relation": "exists"}])
        await c.create_segment("S", [{"field": "tag", "key": "a", "relation": "exists"}])
    return app, None, twice, Conflict


class WithoutAuthorization(Recording):
    """The Authorization header taken off, to meet the 401 the client itself never causes."""

    async def handle_async_request(self, request):
        del request.headers["Authorization"]
        return await super().handle_async_request(request)


@pytest.mark.parametrize("case", ["tag limit", "too many tags", "wrong key", "no Authorization header",
                                  "unknown app", "unknown user", "duplicate segment"])
def test_refusals_are_never_retried(case):
    emulator = Emulator()
    app, key, call, expected = _refusal(case, emulator)
    sleeps = Sleeps()
    answering = transport(emulator)
    if case == "no Authorization header":
        answering = WithoutAuthorization(answering)
    with pytest.raises(expected) as info:
        run(OneSignalClient(Credentials(app.app_id, key or app.api_key), BASE_URL, sleep=sleeps,
                            transport=answering), call)
    requests = emulator.counters["requests"]
    assert info.value.status in (400, 401, 403, 404, 409)
    assert requests == (2 if case == "duplicate segment" else 1)
    assert sleeps.waits == []


# -- rate limiting ---------------------------------------------------------------------------------

@pytest.mark.slow   # waits out real retries and backoff
def test_the_client_stays_under_max_rps_and_spaces_updates_to_one_user(emu):
    app = emu.add_app()
    max_rps, others = 40, 100
    emu.add_users(app.app_id, [{"external_id": "same"}] + [{"external_id": f"u{n}"} for n in range(others)])
    updates = [("external_id", "same", {"v": str(v)}) for v in range(3)]
    updates += [("external_id", f"u{n}", {"k": "1"}) for n in range(others)]
    sent = []

    class Timed(Recording):
        async def handle_async_request(self, request):
            sent.append(time.monotonic())
            return await super().handle_async_request(request)

    summary = run(client_for(emu, app, max_rps=max_rps, transport=Timed(transport(emu))),
                  lambda c: c.update_many(updates))
    assert summary.ok == len(updates)

    # In any one second the client sent at most max_rps (slack for event-loop jitter only; without a
    # limiter all 103 would leave within a fraction of a second)...
    assert max(bisect.bisect_left(sent, t + 1.0) - i for i, t in enumerate(sent)) <= max_rps * 1.25
    # ...and over the whole run the emulator saw no more (a slow machine only makes the run longer).
    arrivals = sorted(r["t"] for r in emu.requests())
    assert len(arrivals) == len(updates)
    assert (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) <= max_rps * 1.1
    # One user's updates reached the emulator at least a second apart, in the order given.
    same = [r["t"] for r in emu.requests() if r["path"].endswith("/external_id/same")]
    assert len(same) == 3 and all(b - a >= 1.0 for a, b in pairwise(same))
    assert emu.counters["rate_limited"] == 0
    assert emu.user_tags(app.app_id)["same"] == {"v": "2"}


# -- validate --------------------------------------------------------------------------------------

def test_validate_says_connected(emu):
    app = emu.add_app()
    result = run(client_for(emu, app), lambda c: c.validate())
    assert str(result) == "Connected" and result.app_id == app.app_id and result.segment_count == 0


def test_validate_names_a_bad_key(emu):
    app = emu.add_app()
    with pytest.raises(AuthError) as info:
        run(client_for(emu, app, key="not-the-key"), lambda c: c.validate())
    assert info.value.status == 403 and "API key" in str(info.value)


def test_validate_names_an_unknown_app(emu):
    app = emu.add_app()
    client = OneSignalClient(Credentials(str(uuid.uuid4()), app.api_key), BASE_URL, sleep=Sleeps(),
                             transport=transport(emu))
    with pytest.raises(AppNotFound) as info:
        run(client, lambda c: c.validate())
    assert "App ID" in str(info.value)


def test_validate_without_a_network_gives_up_at_once():
    sleeps = Sleeps()
    url = f"http://127.0.0.1:{closed_port()}"
    client = OneSignalClient(Credentials("app", "k"), url, sleep=sleeps)
    with pytest.raises(NetworkError) as info:
        run(client, lambda c: c.validate())
    assert info.value.status is None and info.value.attempts == 1 and sleeps.waits == []   # refused: no retries
    assert url in str(info.value) and "connection refused" in str(info.value)


# -- segments and batches --------------------------------------------------------------------------

def test_segments_lifecycle_and_paging(emu):
    app = emu.add_app(segment_limit=1000)
    tag = [{"field": "tag", "key": "cohort", "relation": "exists"}]

    async def scenario(client):
        ids = await asyncio.gather(*(client.create_segment(f"cohort {n}", tag) for n in range(650)))
        listed = await client.list_segments()
        await client.update_segment(ids[0], "renamed", [{"field": "tag", "key": "x", "relation": "=", "value": "1"}])
        one = await client.get_segment(ids[0])
        await client.delete_segment(ids[1])
        with pytest.raises(NotFound):
            await client.delete_segment(ids[1])
        return ids, listed, one

    ids, listed, one = run(client_for(emu, app), scenario)
    assert sorted(s["id"] for s in listed) == sorted(ids)
    pages = [r for r in emu.requests() if r["method"] == "GET" and r["path"].endswith("/segments")]
    assert len(pages) == 3                                            # 300 + 300 + 50
    assert one["name"] == "renamed" and one["filters"][0]["key"] == "x"
    assert len(emu.state["apps"][app.app_id]["segments"]) == 649


def test_a_free_plan_cannot_create_segments(emu):
    app = emu.add_app(plan="free")
    with pytest.raises(BadRequest) as info:
        run(client_for(emu, app), lambda c: c.create_segment("S", [{"field": "tag", "key": "a",
                                                                   "relation": "exists"}]))
    assert "paid" in str(info.value)


def test_update_many_reports_each_user_and_never_creates_one(emu):
    app = emu.add_app(tag_limit=1)
    emu.add_users(app.app_id, [{"external_id": "a"}, {"external_id": "b", "tags": {"x": "1"}}])
    results = []
    updates = [("external_id", "a", {"c": "1"}), ("external_id", "b", {"c": "1"}), ("external_id", "ghost", {"c": "1"})]
    summary = run(client_for(emu, app), lambda c: c.update_many(updates, on_result=results.append))
    assert (summary.ok, summary.not_found, summary.tag_cap, summary.total) == (1, 1, 1, 3)
    outcomes = {r.alias_id: r for r in results}
    assert outcomes["a"].outcome == OK and outcomes["a"].error is None
    assert outcomes["ghost"].outcome == NOT_FOUND and isinstance(outcomes["ghost"].error, NotFound)
    assert outcomes["b"].outcome == TAG_CAP and outcomes["b"].error.limit == 1
    assert emu.counters["user_creates"] == 0
    assert "ghost" not in emu.user_tags(app.app_id)


def test_update_many_stops_on_a_bad_key(emu):
    app = emu.add_app()
    emu.add_users(app.app_id, [{"external_id": f"u{n}"} for n in range(300)])
    with pytest.raises(AuthError):
        run(client_for(emu, app, key="not-the-key", concurrency=8),
            lambda c: c.update_many(("external_id", f"u{n}", {"c": "1"}) for n in range(300)))
    assert emu.counters["requests"] <= 8 + 8          # the workers stop at the first refusal


def test_raising_from_on_result_stops_the_batch(emu):
    app = emu.add_app()
    emu.add_users(app.app_id, [{"external_id": f"u{n}"} for n in range(100)])

    def stop(result):
        raise KeyboardInterrupt("enough")

    with pytest.raises(KeyboardInterrupt):
        run(client_for(emu, app, concurrency=4),
            lambda c: c.update_many((("external_id", f"u{n}", {"c": "1"}) for n in range(100)), on_result=stop))
    assert emu.counters["requests"] < 100


def test_tags_must_be_strings(emu):
    app = emu.add_app()
    with pytest.raises(TypeError):
        run(client_for(emu, app), lambda c: c.update_tags("external_id", "u", {"n": 1}))


# -- the blocking facade, end to end over real HTTP ------------------------------------------------

@pytest.fixture
def unspaced_emulator():
    """An emulator taking one user's updates at any pace (``user_rate_limit=0``)."""
    with Emulator(user_rate_limit=0) as emu:
        yield emu


def test_the_sync_client_works_even_inside_a_running_loop(unspaced_emulator):
    # u1 is updated twice: neither side spaces its requests a second apart (the limiter's own tests do)
    emulator, app = unspaced_emulator, unspaced_emulator.add_app()
    emulator.add_user(app.app_id, external_id="u1")
    with SyncOneSignalClient(Credentials(app.app_id, app.api_key), emulator.url,
                             limiter=RateLimiter(DEFAULT_MAX_RPS, user_spacing=0)) as client:
        assert str(client.validate()) == "Connected"

        async def notebook_cell():            # Jupyter runs cells inside an event loop
            return client.update_tags("external_id", "u1", {"a": "1"})

        asyncio.run(notebook_cell())
        assert client.get_user("external_id", "u1")["properties"]["tags"] == {"a": "1"}
        summary = client.update_many([("external_id", "u1", {"a": ""})])
        assert summary.ok == 1
    assert emulator.user_tags(app.app_id) == {"u1": {}}
