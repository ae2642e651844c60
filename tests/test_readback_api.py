"""The read-back endpoints: the emulator's CSV export and View user limit (its pure handler, at chosen moments),
and the client's export download (polled until written, never sent the key) and views."""

import asyncio
import csv
import gzip
import io
import json

import httpx
import pytest

from toolkit.emulator import Emulator
from toolkit.emulator.api import Api, Request
from toolkit.emulator.limits import Limits
from toolkit.emulator.state import App, World
from toolkit.emulator.transport import transport
from toolkit.errors import OneSignalError
from toolkit.onesignal import Credentials, OneSignalClient

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "max_attempts": 5, "view_rps": 100}


def world_with_users(view_rate=None):
    world = World()
    limits = Limits(view_rate=view_rate)
    world.apps["app"] = app = App("app", "key-123456")
    app.add_user(world.user_from_record({"external_id": "u1", "subscription_ids": ["s1", "s2"], "tags": {"k": "1"}}))
    app.add_user(world.user_from_record({"subscription_ids": ["s3"]}))
    app.add_user(world.user_from_record({"external_id": "u-nosub", "tags": {"k": "1"}}))
    return world, limits, Api(world, limits)


def call(api, method, path, now, body=None, query=""):
    headers = {"Authorization": "Key key-123456", "Content-Type": "application/json", "Host": "emu.test"}
    return api.handle(Request(method, path, query, headers, b"" if body is None else json.dumps(body).encode()), now)


def test_the_csv_export_is_a_gzip_csv_of_subscriptions_ready_after_its_writing_time():
    world, limits, api = world_with_users()
    limits.csv_records_per_second = 1.0                 # 3 rows: ready 3 s after the request
    asked = call(api, "POST", "/players/csv_export", 100.0, {"extra_fields": ["external_user_id", "nonsense"]},
                 query="app_id=app")
    assert asked.status == 200
    url = asked.body["csv_file_url"]
    assert url.startswith("http://emu.test/csv_exports/") and url.endswith(".csv.gz")
    path = url.removeprefix("http://emu.test")
    early = api.handle(Request("GET", path, "", {}, b""), 102.0)           # no key needed: an unguessable URL
    assert early.status == 404 and b"<Code>NoSuchKey</Code>" in early.body
    ready = api.handle(Request("GET", path, "", {}, b""), 103.5)
    assert ready.status == 200 and ready.headers["Content-Type"] == "application/gzip"
    rows = list(csv.DictReader(io.StringIO(gzip.decompress(ready.body).decode())))
    assert list(rows[0])[:3] == ["id", "identifier", "session_count"] and list(rows[0])[-1] == "external_user_id"
    assert [(r["id"], r["external_user_id"], json.loads(r["tags"])) for r in rows] == [
        ("s1", "u1", {"k": "1"}), ("s2", "u1", {"k": "1"}), ("s3", "", {})]      # no row for a user without one


def test_the_csv_export_needs_the_key_of_the_app_in_its_query():
    world, limits, api = world_with_users()
    wrong = api.handle(Request("POST", "/players/csv_export", "app_id=app",
                               {"Authorization": "Key other-key-1", "Content-Type": "application/json"}, b"{}"), 1.0)
    assert wrong.status == 403
    assert call(api, "POST", "/players/csv_export", 1.0, {}, query="app_id=nope").status == 400


def test_view_user_has_its_own_limit_one_a_second_with_a_burst_of_ten():
    world, limits, api = world_with_users(view_rate=1.0)
    answers = [call(api, "GET", "/apps/app/users/by/external_id/u1", 50.0).status for _ in range(11)]
    assert answers == [200] * 10 + [429]
    refused = call(api, "GET", "/apps/app/users/by/external_id/u1", 50.0)
    assert refused.headers["Retry-After"] == "1" and refused.body == {"errors": ["API rate limit exceeded."]}
    assert call(api, "GET", "/apps/app/segments", 50.0).status == 200          # other endpoints unaffected
    assert call(api, "GET", "/apps/app/users/by/external_id/u1", 51.0).status == 200


def recording(emu, seen):
    inner = transport(emu)

    async def handle(request):
        seen.append((request.url.path, request.headers.get("Authorization")))
        return await inner.handle_async_request(request)

    return httpx.MockTransport(handle)


def test_the_download_polls_until_written_and_never_carries_the_key():
    emu = Emulator()
    app = emu.add_app()
    emu.add_user(app.app_id, external_id="u1", subscription_ids=["s1"], tags={"k": "1"})
    emu.limits.csv_records_per_second = 5.0              # one row: written 0.2 s after the request
    seen: list = []

    async def scenario():
        async with OneSignalClient(Credentials(app.app_id, app.api_key), "https://onesignal.test",
                                   transport=recording(emu, seen), **FAST) as client:
            url = await client.export_csv()
            return await client.download_export(url)

    content = asyncio.run(scenario())
    assert b"u1" in gzip.decompress(content)
    files = [auth for path, auth in seen if path.startswith("/csv_exports/")]
    assert len(files) > 1 and files == [None] * len(files)           # polled, and no key sent there
    assert any(path == "/players/csv_export" and auth for path, auth in seen)
    statuses = [r["status"] for r in emu.requests() if r["path"].startswith("/csv_exports/")]
    assert 404 in statuses and statuses[-1] == 200


def test_an_export_never_written_fails_with_a_clear_error_after_the_wait():
    emu = Emulator()
    app = emu.add_app()
    emu.add_user(app.app_id, external_id="u1", subscription_ids=["s1"])
    emu.limits.csv_records_per_second = 0.001

    async def scenario():
        async with OneSignalClient(Credentials(app.app_id, app.api_key), "https://onesignal.test",
                                   transport=transport(emu), export_wait=0.1, **FAST) as client:
            await client.download_export(await client.export_csv())

    with pytest.raises(OneSignalError, match="not ready after") as caught:
        asyncio.run(scenario())
    assert app.api_key not in str(caught.value)


def test_view_users_reports_each_user_and_none_for_a_deleted_one():
    emu = Emulator(view_rate_limit=1)
    app = emu.add_app()
    emu.add_user(app.app_id, external_id="u1", tags={"k": "1"})
    emu.faults.inject("crash", method="GET", path="/users/by/")
    got = []

    async def scenario():
        async with OneSignalClient(Credentials(app.app_id, app.api_key), "https://onesignal.test",
                                   transport=transport(emu), **FAST) as client:
            await client.view_users([("external_id", "u1"), ("external_id", "gone")],
                                    lambda label, alias_id, view: got.append((alias_id, view and view["properties"])))

    asyncio.run(scenario())
    assert got == [("u1", {"tags": {"k": "1"}}), ("gone", None)]


def test_a_file_host_that_keeps_failing_is_given_up_after_the_client_s_attempts():
    emu = Emulator()
    app = emu.add_app()
    emu.add_user(app.app_id, external_id="u1", subscription_ids=["s1"])
    emu.faults.inject("crash", method="GET", path="/csv_exports/", times=50)

    async def scenario():
        async with OneSignalClient(Credentials(app.app_id, app.api_key), "https://onesignal.test",
                                   transport=transport(emu), **FAST) as client:
            await client.download_export(await client.export_csv())

    with pytest.raises(OneSignalError, match="5 tries in a row failed"):
        asyncio.run(scenario())
    assert sum(1 for r in emu.requests() if r["path"].startswith("/csv_exports/")) == 5


@pytest.mark.slow
def test_views_keep_to_onesignal_s_view_user_limit():
    """Twelve views against OneSignal's limit (1/s, a burst of 10): at the client's default pace none is
    refused; at 50/s the same views are (so the limit is there to keep to)."""
    emu = Emulator(view_rate_limit=1)
    app = emu.add_app()
    aliases = [("external_id", f"u{n}") for n in range(12)]
    for _, external_id in aliases:
        emu.add_user(app.app_id, external_id=external_id)

    def views(**options):
        async def scenario():
            async with OneSignalClient(Credentials(app.app_id, app.api_key), "https://onesignal.test",
                                       transport=transport(emu), **options) as client:
                await client.view_users(aliases, lambda *_: None)

        before = emu.counters["rate_limited"]
        asyncio.run(scenario())
        return emu.counters["rate_limited"] - before

    assert views() == 0
    emu.limits.reset()
    assert views(view_rps=50, backoff_base=0.01, backoff_max=0.05) > 0


def test_a_segment_s_export_holds_its_members_subscriptions_only():
    from toolkit.emulator.state import Segment

    world, limits, api = world_with_users()
    world.apps["app"].segments["seg"] = Segment("seg", "(Mixpanel) K", [{"field": "tag", "key": "k",
                                                                          "relation": "exists"}], "t", "t")
    asked = call(api, "POST", "/players/csv_export", 1.0, {"segment_name": "(Mixpanel) K"}, query="app_id=app")
    file = api.handle(Request("GET", asked.body["csv_file_url"].removeprefix("http://emu.test"), "", {}, b""), 9.0)
    assert [r["id"] for r in csv.DictReader(io.StringIO(gzip.decompress(file.body).decode()))] == ["s1", "s2"]
    unknown = call(api, "POST", "/players/csv_export", 1.0, {"segment_name": "nope"}, query="app_id=app")
    assert unknown.status == 400


def test_reset_forgets_the_csv_exports():
    emu = Emulator()
    app = emu.add_app()
    emu.add_user(app.app_id, external_id="u1", subscription_ids=["s1"])
    emu.limits.csv_records_per_second = 1e12           # written at once
    headers = {"Authorization": f"Key {app.api_key}", "Content-Type": "application/json", "Host": "emu.test"}
    asked = emu.dispatch(Request("POST", "/players/csv_export", f"app_id={app.app_id}", headers, b"{}"))
    path = asked.body["csv_file_url"].removeprefix("http://emu.test")
    assert emu.dispatch(Request("GET", path, "", {}, b"")).status == 200
    emu.reset()
    assert emu.dispatch(Request("GET", path, "", {}, b"")).status == 404
