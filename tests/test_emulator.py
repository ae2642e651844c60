"""The OneSignal emulator: each endpoint's answers and error bodies, limits, faults, state and CLI.

Spoken to with plain httpx, so these tests pin the wire format the client relies on: through
``transport(emu)`` (its handler, no socket) for the endpoints, and over real HTTP on 127.0.0.1 for what
only a socket shows (drops, hangs, resets, latency, held requests, the control endpoints, saving on
stop, the command). test_the_transport_answers_as_the_server_does checks that both answer alike.
"""

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from helpers import ROOT
from toolkit.emulator import Emulator, EmulatorError
from toolkit.emulator.api import ACCESS_DENIED, APP_NOT_FOUND, AUTH_MISSING, RATE_LIMITED
from toolkit.emulator.filters import matches, problem
from toolkit.emulator.limits import Bucket, Faults
from toolkit.emulator.transport import transport

TAG_A = [{"field": "tag", "key": "a", "relation": "exists"}]
BASE_URL = "http://emulator.test"        # never resolved: transport(emu) answers


@pytest.fixture
def http(running_emulator, emulator_app):
    """An httpx client speaking as ``app`` over real HTTP; paths are relative to the app (``/users/...``)."""
    with httpx.Client(base_url=f"{running_emulator.url}/apps/{emulator_app.app_id}",
                      headers={"Authorization": f"Key {emulator_app.api_key}",
                               "Content-Type": "application/json"}) as c:
        yield c


@pytest.fixture
def emu():
    """The emulator not serving HTTP: requests reach its handler through ``transport(emu)``."""
    return Emulator()


@pytest.fixture
def direct(emu):
    """A plain httpx client to ``emu`` through its transport, no socket; paths from the root (``/apps/...``)."""
    with httpx.Client(base_url=BASE_URL, transport=transport(emu)) as client:
        yield client


@pytest.fixture
def as_app(emu):
    """``as_app(app)``: like ``http`` (speaking as ``app``, paths relative to it) through ``transport(emu)``."""
    with contextlib.ExitStack() as clients:
        def speak_as(app):
            return clients.enter_context(httpx.Client(
                base_url=f"{BASE_URL}/apps/{app.app_id}", transport=transport(emu),
                headers={"Authorization": f"Key {app.api_key}", "Content-Type": "application/json"}))
        yield speak_as


def tags(value):
    return {"properties": {"tags": value}}


# -- auth ------------------------------------------------------------------------------------------

def test_a_missing_authorization_header_gets_auth_1(emu, direct):
    app = emu.add_app()
    r = direct.get(f"/apps/{app.app_id}/segments")
    assert r.status_code == 401 and r.json() == AUTH_MISSING


def test_a_wrong_key_is_denied(emu, direct):
    app = emu.add_app()
    r = direct.get(f"/apps/{app.app_id}/segments", headers={"Authorization": "Key nope"})
    assert r.status_code == 403 and r.json() == ACCESS_DENIED


def test_an_unknown_app_or_a_body_without_json_content_type_is_app_id_not_found(emu, direct):
    app = emu.add_app()
    r = direct.get("/apps/00000000-0000-4000-8000-000000000000/segments",
                   headers={"Authorization": f"Key {app.api_key}"})
    assert r.status_code == 400 and r.json() == APP_NOT_FOUND
    r = direct.post(f"/apps/{app.app_id}/segments", content=b'{"name": "x"}',
                    headers={"Authorization": f"Key {app.api_key}", "Content-Type": "text/plain"})
    assert r.status_code == 400 and r.json() == APP_NOT_FOUND


def test_apps_are_isolated_by_key(emu, direct):
    app = emu.add_app()
    other = emu.add_app()
    r = direct.get(f"/apps/{other.app_id}/segments", headers={"Authorization": f"Key {app.api_key}"})
    assert r.status_code == 403
    assert direct.get(f"/apps/{other.app_id}/segments",
                      headers={"Authorization": f"Basic {other.api_key}"}).status_code == 200   # legacy scheme


def test_unknown_paths_and_methods(emu, as_app):
    http = as_app(emu.add_app())
    assert http.get("/nothing/here").status_code == 404
    assert http.put("/segments").status_code == 405


# -- users -----------------------------------------------------------------------------------------

def test_update_and_read_a_user(emu, as_app):
    app = emu.add_app()
    http = as_app(app)
    onesignal_id = emu.add_user(app.app_id, external_id="a/b c", subscription_ids=["sub-1"], tags={"old": "1"})
    r = http.patch("/users/by/external_id/a%2Fb%20c", json=tags({"cohort": "1", "old": ""}))
    assert r.status_code == 202 and r.json() == tags({"cohort": "1", "old": ""})
    r = http.get(f"/users/by/onesignal_id/{onesignal_id}")
    assert r.status_code == 200
    assert r.json() == {"properties": {"tags": {"cohort": "1"}},
                        "identity": {"onesignal_id": onesignal_id, "external_id": "a/b c"},
                        "subscriptions": [{"id": "sub-1", "type": "AndroidPush"}]}


def test_a_missing_user_is_404_and_is_not_created(emu, as_app):
    app = emu.add_app()
    http = as_app(app)
    r = http.patch("/users/by/external_id/ghost", json=tags({"a": "1"}))
    assert r.status_code == 404
    assert r.json()["errors"][0]["title"] == "User not found"
    assert http.get("/users/by/external_id/ghost").status_code == 404
    assert emu.user_tags(app.app_id) == {}


def test_tag_limits():
    emulator = Emulator(user_rate_limit=0)                   # no 1/s per user: quick updates
    with httpx.Client(transport=transport(emulator)) as http:
        app = emulator.add_app(tag_limit=2)
        emulator.add_user(app.app_id, external_id="u", tags={"a": "1"})
        headers = {"Authorization": f"Key {app.api_key}"}
        url = f"{BASE_URL}/apps/{app.app_id}/users/by/external_id/u"
        assert http.patch(url, json=tags({"b": "2"}), headers=headers).status_code == 202
        r = http.patch(url, json=tags({"c": "3"}), headers=headers)
        assert r.status_code == 400
        assert r.json() == {"errors": ["App is limited to a maximum of 2 tags on a given player"], "success": False}
        assert http.patch(url, json=tags({"a": "", "c": "3"}), headers=headers).status_code == 202   # a swap fits
        assert emulator.user_tags(app.app_id) == {"u": {"b": "2", "c": "3"}}
        r = http.patch(url, json=tags({f"t{n}": "1" for n in range(101)}), headers=headers)
        assert r.status_code == 400 and r.json() == {"errors": ["Please limit your tag updates to 100 per request"],
                                                     "success": False}
        assert http.patch(url, json=tags({"x": {"nested": 1}}), headers=headers).status_code == 400
        assert http.patch(url, json={"properties": []}, headers=headers).status_code == 400
        assert emulator.user_tags(app.app_id) == {"u": {"b": "2", "c": "3"}}


def test_one_update_per_user_per_second(emu, as_app):
    app = emu.add_app()
    http = as_app(app)
    emu.add_user(app.app_id, external_id="u")
    assert http.patch("/users/by/external_id/u", json=tags({"a": "1"})).status_code == 202
    r = http.patch("/users/by/external_id/u", json=tags({"a": "2"}))
    assert r.status_code == 429 and r.json() == RATE_LIMITED and r.headers["Retry-After"] == "1"
    assert http.get("/users/by/external_id/u").status_code == 200          # reads are not updates
    assert emu.user_tags(app.app_id) == {"u": {"a": "1"}}


def test_the_app_rate_limit_is_a_bucket_of_one_second():
    bucket = Bucket(3)
    assert [bucket.admit(10.0) for _ in range(4)] == [None, None, None, pytest.approx(1 / 3)]
    assert bucket.admit(10.2) == pytest.approx(0.4 / 3)      # 0.6 of a token back; a refusal takes none
    assert bucket.admit(10.34) is None and bucket.admit(10.34) is not None
    assert [bucket.admit(20.0) for _ in range(4)].count(None) == 3       # never more than a second's worth


def test_the_app_rate_limit_over_http(running_emulator):
    app = running_emulator.add_app(rate_limit=3)
    with httpx.Client(headers={"Authorization": f"Key {app.api_key}"}) as http:
        answers = [http.get(f"{running_emulator.url}/apps/{app.app_id}/segments") for _ in range(8)]
    statuses = [a.status_code for a in answers]
    assert statuses[:3] == [200, 200, 200] and 429 in statuses
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json() == RATE_LIMITED and refused.headers["Retry-After"] == "1"
    assert running_emulator.counters["rate_limited"] == statuses.count(429)
    assert running_emulator.counters["by_status"] == {"200": statuses.count(200), "429": statuses.count(429)}


def test_creating_a_user_works_but_is_counted(emu, as_app):
    app = emu.add_app()
    http = as_app(app)
    r = http.post("/users", json={"identity": {"external_id": "new"}, "properties": {"tags": {"a": "1"}}})
    assert r.status_code == 201 and r.json()["identity"]["external_id"] == "new"
    assert http.post("/users", json={"identity": {"external_id": "new"}}).status_code == 200     # upsert
    assert emu.counters["user_creates"] == 2
    assert emu.user_tags(app.app_id) == {"new": {"a": "1"}}


def test_the_identity_behind_a_subscription(emu, as_app):
    app = emu.add_app()
    http = as_app(app)
    onesignal_id = emu.add_user(app.app_id, external_id="e", subscription_ids=["player-1"])
    r = http.get("/subscriptions/player-1/user/identity")
    assert r.status_code == 200 and r.json() == {"identity": {"onesignal_id": onesignal_id, "external_id": "e"}}
    assert http.get("/subscriptions/nope/user/identity").status_code == 404


def test_custom_aliases_reach_the_user(emu, as_app):
    app = emu.add_app()
    http = as_app(app)
    emu.add_user(app.app_id, external_id="e", aliases={"crm_id": "c-1"})
    assert http.patch("/users/by/crm_id/c-1", json=tags({"a": "1"})).status_code == 202
    assert emu.user_tags(app.app_id) == {"e": {"a": "1"}}
    with pytest.raises(EmulatorError):
        emu.add_user(app.app_id, external_id="e")                    # aliases are unique


# -- segments --------------------------------------------------------------------------------------

def test_segment_lifecycle(emu, as_app):
    app = emu.add_app()
    http = as_app(app)
    r = http.post("/segments", json={"name": "Cohort A", "filters": TAG_A})
    assert r.status_code == 201 and r.json()["success"] is True
    segment_id = r.json()["id"]
    r = http.get("/segments", params={"limit": 300})
    assert r.status_code == 200
    body = r.json()
    assert (body["total_count"], body["offset"], body["limit"]) == (1, 0, 300)
    assert set(body["segments"][0]) == {"id", "name", "created_at", "updated_at", "app_id", "read_only", "is_active"}
    assert body["segments"][0]["app_id"] == app.app_id
    r = http.patch(f"/segments/{segment_id}", json={"name": "Cohort B"})
    assert r.status_code == 200
    assert http.get(f"/segments/{segment_id}").json() == {"subscriber_count": 0}      # OneSignal's default
    r = http.get(f"/segments/{segment_id}", params={"include-segment-detail": "true"})
    assert r.json()["payload"]["name"] == "Cohort B" and r.json()["payload"]["filters"] == TAG_A
    assert http.delete(f"/segments/{segment_id}").json() == {"success": True}
    r = http.delete(f"/segments/{segment_id}")
    assert r.status_code == 404 and r.json() == {"success": False}
    assert http.get(f"/segments/{segment_id}").status_code == 404
    assert http.patch(f"/segments/{segment_id}", json={"name": "x"}).status_code == 404


@pytest.mark.parametrize("body, status", [
    ({"name": "", "filters": TAG_A}, 400),
    ({"name": "x" * 129, "filters": TAG_A}, 400),
    ({"name": "x" * 128, "filters": TAG_A}, 201),
    ({"name": "none", "filters": []}, 400),
    ({"name": "too many", "filters": TAG_A * 201}, 400),
    ({"name": "bad relation", "filters": [{"field": "tag", "key": "a", "relation": "like"}]}, 400),
    ({"name": "no value", "filters": [{"field": "tag", "key": "a", "relation": "="}]}, 400),
    ({"name": "other field", "filters": [{"field": "session_count", "relation": ">", "value": "1"}]}, 400),
    ({"name": "dangling", "filters": [*TAG_A, {"operator": "OR"}]}, 400),
    ({"name": "or", "filters": [*TAG_A, {"operator": "OR"}, *TAG_A]}, 201),
])
def test_segment_validation(emu, as_app, body, status):
    http = as_app(emu.add_app())
    r = http.post("/segments", json=body)
    assert r.status_code == status
    if status == 400:
        assert r.json()["success"] is False and r.json()["errors"]


def test_segment_names_are_unique_and_the_count_is_limited(emu, direct):
    app = emu.add_app(segment_limit=2)
    headers = {"Authorization": f"Key {app.api_key}"}
    url = f"/apps/{app.app_id}/segments"
    assert direct.post(url, json={"name": "A", "filters": TAG_A}, headers=headers).status_code == 201
    r = direct.post(url, json={"name": "A", "filters": TAG_A}, headers=headers)
    assert r.status_code == 409 and r.json()["success"] is False
    assert direct.post(url, json={"name": "B", "filters": TAG_A}, headers=headers).status_code == 201
    r = direct.post(url, json={"name": "C", "filters": TAG_A}, headers=headers)
    assert r.status_code == 400 and "limit of 2 segments" in r.json()["errors"][0]


def test_a_free_plan_cannot_create_segments(emu, direct):
    app = emu.add_app(plan="free")
    r = direct.post(f"/apps/{app.app_id}/segments", json={"name": "A", "filters": TAG_A},
                    headers={"Authorization": f"Key {app.api_key}"})
    assert r.status_code == 400 and "paid" in r.json()["errors"][0]
    assert emu.state["apps"][app.app_id]["segments"] == []


def test_segment_paging(emu, as_app):
    http = as_app(emu.add_app())
    for n in range(7):
        assert http.post("/segments", json={"name": f"S{n}", "filters": TAG_A}).status_code == 201
    page = http.get("/segments", params={"offset": 5, "limit": 3}).json()
    assert page["total_count"] == 7 and [s["name"] for s in page["segments"]] == ["S5", "S6"]
    assert http.get("/segments", params={"limit": 301}).status_code == 400
    assert http.get("/segments", params={"offset": "x"}).status_code == 400


def test_segment_membership_follows_tags(emu, as_app):
    emu.limits.user_rate = 0          # a's second update at once (the per-user limit has tests of its own)
    app = emu.add_app()
    http = as_app(app)
    for name in ("a", "b", "c"):
        emu.add_user(app.app_id, external_id=name)
    anonymous = emu.add_user(app.app_id, tags={"cohort": "1"})
    http.post("/segments", json={"name": "In cohort", "filters": [{"field": "tag", "key": "cohort",
                                                                    "relation": "exists"}]})

    def members():
        (segment,) = emu.state["apps"][app.app_id]["segments"]
        return segment["members"]

    assert members() == {"external_ids": [], "onesignal_ids": [anonymous]}
    http.patch("/users/by/external_id/a", json=tags({"cohort": "1"}))
    http.patch("/users/by/external_id/b", json=tags({"cohort": "1"}))
    assert members()["external_ids"] == ["a", "b"]
    http.patch("/users/by/external_id/a", json=tags({"cohort": ""}))
    assert members()["external_ids"] == ["b"]


def test_filter_relations():
    user = {"plan": "pro", "visits": "12", "seen": "1000"}
    def f(relation, key, value=None):
        return [{"field": "tag", "key": key, "relation": relation, **({} if value is None else {"value": value})}]
    assert matches(f("=", "plan", "pro"), user) and not matches(f("=", "plan", "free"), user)
    assert matches(f("!=", "plan", "free"), user) and matches(f("!=", "missing", "x"), user)
    assert matches(f(">", "visits", 10), user) and not matches(f("<", "visits", "10"), user)
    assert not matches(f(">", "plan", "1"), user)       # not a number
    assert matches(f("exists", "plan"), user) and matches(f("not_exists", "missing"), user)
    assert matches(f("time_elapsed_gt", "seen", 500), user, now=2000)
    assert matches(f("time_elapsed_lt", "seen", 500), user, now=1200)
    both = f("=", "plan", "pro") + [{"operator": "AND"}] + f("=", "visits", "13")
    either = f("=", "plan", "free") + [{"operator": "OR"}] + f("=", "visits", "12")
    assert not matches(both, user) and matches(either, user)
    assert problem(f("exists", "plan")) is None and problem([{"operator": "OR"}, *f("exists", "a")])


# -- faults ----------------------------------------------------------------------------------------

def test_faults_are_deterministic_with_a_seed():
    one, two, other = (Faults(0.1, 0.1, 0.1, seed=seed) for seed in (3, 3, 4))
    sequence = [one.draw() for _ in range(200)]
    assert sequence == [two.draw() for _ in range(200)] != [other.draw() for _ in range(200)]
    assert {"error", "drop", "hang", None} == set(sequence)
    with pytest.raises(ValueError):
        Faults(0.6, 0.6)


def test_injected_503():
    emulator = Emulator(error_rate=1.0)
    app = emulator.add_app()
    with httpx.Client(transport=transport(emulator)) as direct:
        r = direct.get(f"{BASE_URL}/apps/{app.app_id}/segments", headers={"Authorization": f"Key {app.api_key}"})
    assert r.status_code == 503 and r.json() == {"errors": ["Service temporarily unavailable"]}
    assert emulator.counters["server_errors"] == 1


def test_dropped_connections_and_hung_requests():
    with Emulator(drop_rate=1.0) as emulator:
        app = emulator.add_app()
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"{emulator.url}/apps/{app.app_id}/segments", headers={"Authorization": f"Key {app.api_key}"})
        assert emulator.counters["dropped"] == 1
    with Emulator(hang_rate=1.0, hang_seconds=30) as emulator:
        app = emulator.add_app()
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{emulator.url}/apps/{app.app_id}/segments", headers={"Authorization": f"Key {app.api_key}"},
                      timeout=0.2)
        assert emulator.counters["hung"] == 1
    # stop() did not wait the 30 s out


def test_added_latency():
    with Emulator(latency=0.2) as emulator:
        app = emulator.add_app()
        started = time.monotonic()
        httpx.get(f"{emulator.url}/apps/{app.app_id}/segments", headers={"Authorization": f"Key {app.api_key}"})
        assert time.monotonic() - started >= 0.2


# -- state -----------------------------------------------------------------------------------------

def test_state_snapshot_and_the_control_endpoints(running_emulator, emulator_app, http):
    running_emulator.add_user(emulator_app.app_id, external_id="u", tags={"seeded": "1"})
    http.patch("/users/by/external_id/u", json=tags({"a": "1", "seeded": ""}))
    http.post("/segments", json={"name": "A", "filters": TAG_A})
    state = httpx.get(f"{running_emulator.url}/_emulator/state", headers=running_emulator.admin_headers).json()
    assert state == running_emulator.state
    (user,) = state["apps"][emulator_app.app_id]["users"]
    assert user["external_id"] == "u" and user["tags"] == {"a": "1"}
    assert state["apps"][emulator_app.app_id]["segments"][0]["members"]["external_ids"] == ["u"]
    assert emulator_app.api_key not in json.dumps(state)
    assert state["counters"]["requests"] == 2
    log = httpx.get(f"{running_emulator.url}/_emulator/requests",
                    headers=running_emulator.admin_headers).json()["requests"]
    assert [(r["method"], r["status"]) for r in log] == [("PATCH", 202), ("POST", 201)]
    http.post("/users", json={"identity": {"external_id": "created"}})

    assert httpx.post(f"{running_emulator.url}/_emulator/reset",
                      headers=running_emulator.admin_headers).json() == {"success": True}
    state = running_emulator.state
    (user,) = state["apps"][emulator_app.app_id]["users"]                    # back to the users as seeded...
    assert user["external_id"] == "u" and user["tags"] == {"seeded": "1"}
    assert state["apps"][emulator_app.app_id]["segments"] == [] and state["counters"]["requests"] == 0
    assert http.get("/segments").status_code == 200                # ...keeping the app and its key


def test_state_is_saved_atomically_and_reloaded(tmp_path):
    path = tmp_path / "onesignal.json"
    with Emulator(state_file=path) as emulator:
        app = emulator.add_app(plan="paid", tag_limit=5)
        emulator.add_user(app.app_id, external_id="u", subscription_ids=["s"])
        headers = {"Authorization": f"Key {app.api_key}"}
        httpx.patch(f"{emulator.url}/apps/{app.app_id}/users/by/external_id/u", json=tags({"a": "1"}), headers=headers)
        httpx.post(f"{emulator.url}/apps/{app.app_id}/segments", json={"name": "A", "filters": TAG_A}, headers=headers)
        before = emulator.state
    assert json.loads(path.read_text())["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["onesignal.json"]            # no partial file left behind

    with Emulator(state_file=path) as emulator:
        assert emulator.state["apps"] == before["apps"]
        assert emulator.state["counters"] == before["counters"]
        r = httpx.get(f"{emulator.url}/apps/{app.app_id}/users/by/external_id/u", headers=headers)   # same key
        assert r.json()["properties"]["tags"] == {"a": "1"}


def test_a_broken_state_file_is_refused(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{not json")
    with pytest.raises(EmulatorError, match="state.json"):
        Emulator(state_file=path)


def test_seed_users_from_json_and_json_lines(tmp_path):
    as_json = tmp_path / "users.json"
    as_json.write_text(json.dumps({"users": [{"external_id": "a", "tags": {"t": "1"}},
                                             {"subscription_ids": ["p-1"]}]}))
    as_lines = tmp_path / "users.jsonl"
    as_lines.write_text('{"external_id": "b"}\n\n'
                        '{"external_id": "c", "subscriptions": [{"id": "s", "type": "Email"}]}\n')
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"external_id": "d"}\n{oops\n')
    emulator = Emulator()                     # seeding needs no server
    app = emulator.add_app()
    assert emulator.seed_users(as_json) == 2 and emulator.seed_users(as_lines) == 2
    ids = emulator.user_tags(app.app_id)
    assert {"a", "b", "c"} <= set(ids) and ids["a"] == {"t": "1"} and len(ids) == 4
    with pytest.raises(EmulatorError, match="broken.jsonl:2"):
        emulator.seed_users(broken)
    emulator.add_app()
    with pytest.raises(EmulatorError, match="which app"):
        emulator.seed_users(as_lines)


def test_the_request_log_never_holds_the_key(running_emulator, emulator_app, http, caplog):
    caplog.set_level(logging.DEBUG)
    running_emulator.add_user(emulator_app.app_id, external_id="u")
    http.patch("/users/by/external_id/u", json=tags({"a": "1"}))
    httpx.get(f"{running_emulator.url}/apps/{emulator_app.app_id}/segments",
              headers={"Authorization": "Key wrong-key-123"})
    assert "PATCH /apps/" in caplog.text
    assert emulator_app.api_key not in caplog.text and "wrong-key-123" not in caplog.text
    assert emulator_app.api_key not in json.dumps(running_emulator.requests())
    assert emulator_app.api_key not in repr(emulator_app)


# -- the command -----------------------------------------------------------------------------------

def test_the_command_runs_seeds_saves_and_stops(tmp_path):
    seed = tmp_path / "users.jsonl"
    seed.write_text('{"external_id": "a"}\n{"external_id": "b"}\n')
    state = tmp_path / "state.json"
    app_id = "11111111-1111-4111-8111-111111111111"
    command = [sys.executable, "-m", "toolkit.emulator", "--port", "0", "--state", str(state), "--seed-users",
               str(seed), "--app-id", app_id, "--api-key", "cli-key-123", "--plan", "free"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        url = proc.stdout.readline().split(" at ")[1].split()[0]
        r = httpx.patch(f"{url}/apps/{app_id}/users/by/external_id/a", json=tags({"x": "1"}),
                        headers={"Authorization": "Key cli-key-123"})
        assert r.status_code == 202
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "cli-key-123" not in out
    saved = json.loads(state.read_text())["apps"][app_id]
    assert saved["plan"] == "free"
    assert {u["external_id"]: u["tags"] for u in saved["users"]} == {"a": {"x": "1"}, "b": {}}


def test_aimed_faults_hit_the_chosen_requests_only():
    faults = Faults()
    faults.inject("crash", method="PATCH", path="/users/", skip=1, times=2)
    faults.inject("throttle", method="GET")
    drawn = [faults.draw(m, p) for m, p in [("PATCH", "/a/users/x"), ("GET", "/a/segments"), ("PATCH", "/a/users/y"),
                                             ("POST", "/a/users"), ("PATCH", "/a/users/z"), ("PATCH", "/a/users/w"),
                                             ("GET", "/a/segments")]]
    assert drawn == [None, "throttle", "crash", None, "crash", None, None]
    with pytest.raises(ValueError, match="expected one of"):
        faults.inject("explode")


def test_a_reset_after_applying_changes_the_user_and_answers_with_a_tcp_reset():
    with Emulator(user_rate_limit=0) as emulator:
        app = emulator.add_app()
        emulator.add_user(app.app_id, external_id="u1")
        emulator.faults.inject("reset_after", method="PATCH")
        emulator.faults.inject("throttle")
        headers = {"Authorization": f"Key {app.api_key}", "Content-Type": "application/json"}
        with pytest.raises(httpx.ReadError, match="reset"):
            httpx.patch(f"{emulator.url}/apps/{app.app_id}/users/by/external_id/u1", headers=headers,
                        json={"properties": {"tags": {"a": "1"}}})
        assert emulator.user_tags(app.app_id) == {"u1": {"a": "1"}}
        throttled = httpx.get(f"{emulator.url}/apps/{app.app_id}/segments", headers=headers)
        assert throttled.status_code == 429 and "Retry-After" not in throttled.headers


def test_a_held_request_waits_until_released_then_is_served():
    import threading

    with Emulator() as emulator:
        app = emulator.add_app()
        emulator.faults.inject("hold")
        answers = []
        thread = threading.Thread(target=lambda: answers.append(httpx.get(
            f"{emulator.url}/apps/{app.app_id}/segments", headers={"Authorization": f"Key {app.api_key}"})))
        thread.start()
        while not emulator.held():
            thread.join(0.02)
        assert answers == []
        emulator.release()
        thread.join()
        assert answers[0].status_code == 200 and emulator.counters["requests"] == 1


# -- the transport -------------------------------------------------------------------------------

def _timeless(value):
    """``value`` without the created_at / updated_at stamps (they differ between two runs)."""
    if isinstance(value, dict):
        return {k: _timeless(v) for k, v in value.items() if k not in ("created_at", "updated_at")}
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def _script(emulator: Emulator, client: httpx.Client):
    """The same requests, whatever carries them: each answer (status, the headers that matter, body) or
    the error httpx raised, then the state, the counters and the request log they left."""
    app = emulator.add_app(tag_limit=2)                      # the same ids in every emulator of seed 0
    emulator.add_user(app.app_id, external_id="a/b c", subscription_ids=["s1"])
    emulator.add_user(app.app_id, external_id="e2")
    for kind, method, path in [("crash", "GET", "/segments"), ("throttle", "GET", "/segments"),
                               ("error", "GET", "/segments"), ("drop", "DELETE", None),
                               ("hang", "GET", "/identity"), ("reset_after", "PATCH", "/e2")]:
        emulator.faults.inject(kind, method=method, path=path)
    key = {"Authorization": f"Key {app.api_key}"}
    user = f"/apps/{app.app_id}/users/by/external_id/a%2Fb%20c"
    calls = [
        ("GET", f"/apps/{app.app_id}/segments", key, None),                 # 500, then 429 bare, then 503
        ("GET", f"/apps/{app.app_id}/segments", key, None),
        ("GET", f"/apps/{app.app_id}/segments", key, None),
        ("GET", f"/apps/{app.app_id}/segments", {}, None),                  # 401
        ("GET", f"/apps/{app.app_id}/segments", {"Authorization": "Key nope"}, None),
        ("GET", "/apps/00000000-0000-4000-8000-000000000000/segments", key, None),
        ("GET", "/nothing/here", key, None),
        ("PUT", f"/apps/{app.app_id}/segments", key, None),
        ("PATCH", user, key, tags({"cohort": "1", "ünï": "日本"})),
        ("PATCH", user, key, tags({"cohort": "2"})),                         # 429, Retry-After: 1
        ("PATCH", user, key, tags({"a": "1", "b": "2", "c": "3"})),         # the per-user limit still holds
        ("GET", user, key, None),
        ("POST", f"/apps/{app.app_id}/segments", key, {"name": "A", "filters": TAG_A}),
        ("POST", f"/apps/{app.app_id}/segments", key, {"name": "", "filters": TAG_A}),
        ("GET", f"/apps/{app.app_id}/segments?limit=1", key, None),
        ("DELETE", f"/apps/{app.app_id}/segments/x", key, None),            # dropped
        ("GET", f"/apps/{app.app_id}/subscriptions/s1/user/identity", key, None),   # hung
        ("GET", f"/apps/{app.app_id}/subscriptions/s1/user/identity", key, None),
        ("PATCH", f"/apps/{app.app_id}/users/by/external_id/e2", key, tags({"x": "1"})),  # reset after applying
    ]
    answers = []
    for method, path, headers, body in calls:
        try:
            r = client.request(method, path, headers=headers, json=body, timeout=0.5)
        except httpx.TransportError as exc:
            answers.append(type(exc).__name__)
        else:
            answers.append((r.status_code, r.headers["Content-Type"], r.headers["Content-Length"],
                            r.headers.get("Retry-After"), _timeless(r.json())))
    log = [(r["method"], r["path"], r["status"]) for r in emulator.requests()]
    return answers, _timeless(emulator.state), log


def test_the_transport_answers_as_the_server_does():
    with Emulator() as served, httpx.Client(base_url=served.url) as over_http:
        expected = _script(served, over_http)
    in_process = Emulator()
    with httpx.Client(base_url=BASE_URL, transport=transport(in_process)) as through_transport:
        answers, state, log = _script(in_process, through_transport)
    assert answers == expected[0]
    assert (state, log) == expected[1:]
    assert [a if isinstance(a, str) else a[0] for a in answers] == [
        500, 429, 503, 401, 403, 400, 404, 405, 202, 429, 429, 200, 201, 400, 200,
        "RemoteProtocolError", "ReadTimeout", 200, "ReadError"]
    assert answers[1][3] is None and answers[9][3] == "1"          # a throttle has no Retry-After
    assert state["apps"][next(iter(state["apps"]))]["users"][1]["tags"] == {"x": "1"}    # applied, then reset
