"""The emulator as a real HTTP server on loopback, in a background thread of this process.

    with Emulator() as emu:                       # port 0: a free port
        app = emu.add_app(plan="paid")
        emu.add_user(app.app_id, external_id="u1", subscription_ids=["s1"])
        client = OneSignalClient(Credentials(app.app_id, app.api_key), emu.url)

Faults (503s and 500s, 429s without Retry-After, 400s, dropped connections, hung requests, latency) happen
before the API sees a request, so a faulted request changes nothing; except a reset after applying
(``emu.faults.inject("reset_after", ...)``): the API makes the change, then the connection is reset
without an answer. ``inject("hold", ...)`` keeps a request waiting until ``emu.release()``, then serves
it: a test can act while a client is caught mid-export. The request log keeps the method and path only, never headers.

The control endpoints (``GET /_emulator/state``, ``GET /_emulator/requests``, ``POST /_emulator/reset``)
need the emulator's admin token in an ``X-Emulator-Token`` header (``emu.admin_headers``): the token
is ``admin_token=``, else $TOOLKIT_EMULATOR_TOKEN, else generated (``emu.admin_token``).
"""

from __future__ import annotations

import copy
import hmac
import json
import logging
import os
import secrets
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import cast

from toolkit.emulator.api import RATE_LIMITED, UNAVAILABLE, Api, Request, Response
from toolkit.emulator.limits import CRASH, DROP, ERROR, HANG, HOLD, REFUSE, RESET_AFTER, THROTTLE, Faults, Limits
from toolkit.emulator.state import App, EmulatorError, World, new_counters, read_seed_users

log = logging.getLogger(__name__)
CONTROL = "/_emulator/"
POLL_SECONDS = 0.01       # how often the serving loop looks for a stop (stop() waits for it)
ADMIN_HEADER = "X-Emulator-Token"
ENV_ADMIN_TOKEN = "TOOLKIT_EMULATOR_TOKEN"
NO_ANSWER = None          # what dispatch returns for a dropped or hung request
RESET = "reset"           # ... and for one to reset (RST) after the API handled it
HUNG = "hung"             # ... and for a hung one when told not to wait it out (the in-process transport)
INTERNAL_ERROR = {"errors": ["Internal server error"]}
REFUSED = {"errors": ["Request refused (a fault injected into the emulator)"], "success": False}


class Emulator:
    """A OneSignal-compatible server. Options: see ``python -m toolkit.emulator --help``."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, state_file: str | Path | None = None,
                 seed: int = 0, rate_limit: int = 1000, user_rate_limit: float = 1.0,
                 view_rate_limit: float | None = None, error_rate: float = 0.0,
                 drop_rate: float = 0.0, hang_rate: float = 0.0, hang_seconds: float = 30.0,
                 latency: float = 0.0, save_interval: float = 1.0, log_size: int = 200_000,
                 admin_token: str | None = None):
        self.host, self.port = host, port
        self.admin_token = admin_token or os.environ.get(ENV_ADMIN_TOKEN) or secrets.token_urlsafe(24)
        self.state_file = Path(state_file) if state_file else None
        self.rate_limit = rate_limit                  # default for apps added from now on
        self.save_interval = save_interval
        self.faults = Faults(error_rate, drop_rate, hang_rate, hang_seconds, latency, seed)
        self.limits = Limits(user_rate_limit, view_rate_limit)
        self.world = World.load(self.state_file, seed) if self.state_file and self.state_file.exists() else World(seed)
        self._api = Api(self.world, self.limits)
        self._lock = threading.Lock()
        self._log: deque[dict] = deque(maxlen=log_size)
        self._stopping = threading.Event()
        self._released = threading.Event()      # lets held requests go
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        # What reset() returns to: the apps and users set up from Python or files, without anything
        # the API did since. Kept in step by add_app and add_users.
        self._baseline = self.world.to_json(with_keys=True, with_members=False)
        self._saved_version = self.world.version

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> str:
        """Serve in background threads; returns the base URL (``http://127.0.0.1:PORT``)."""
        if self._server is not None:
            return self.url
        self._stopping.clear()
        self._server = _Server((self.host, self.port), _Handler)
        self._server.emulator = self
        self.port = self._server.server_address[1]
        # A short poll: stop() waits for the serving loop to look (half the poll on average, ~200 emulators
        # stopped per test run); 100 looks a second cost nothing measurable.
        self._threads = [threading.Thread(target=self._server.serve_forever, args=(POLL_SECONDS,),
                                          name="onesignal-emulator", daemon=True)]
        if self.state_file:
            self._threads.append(threading.Thread(target=self._save_periodically, name="emulator-saver",
                                                  daemon=True))
        for thread in self._threads:
            thread.start()
        log.info("OneSignal emulator listening on %s", self.url)
        return self.url

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()                       # wakes hung and delayed requests
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:             # keep-alive connections would outlive the server
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join()
        self._server = None
        self.save()

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def admin_headers(self) -> dict[str, str]:
        """The header the ``/_emulator/`` control endpoints require."""
        return {ADMIN_HEADER: self.admin_token}

    # -- setting up -----------------------------------------------------------------------------
    def add_app(self, app_id: str | None = None, api_key: str | None = None, *, plan: str = "paid",
                tag_limit: int | None = None, segment_limit: int | None = None, rate_limit: int | None = None,
                name: str = "Emulated app") -> App:
        """An app on ``plan`` (free: 2 tags per user and 6 segments; paid: 20 tags; see
        ``state.PLAN_LIMITS``), or with the caps given."""
        with self._lock:
            app = App(app_id or self.world.new_id(), api_key or self.world.new_key(), name, plan, tag_limit,
                      segment_limit, rate_limit or self.rate_limit)
            if app.app_id in self.world.apps:
                raise EmulatorError(f"app {app.app_id} already exists")
            self.world.apps[app.app_id] = app
            self.world.changed()
            self._baseline["apps"][app.app_id] = app.to_json(with_key=True, with_members=False)
            return app

    def set_limits(self, app_id: str, *, tag_limit: int | None = None, segment_limit: int | None = None) -> None:
        """Change an app's caps (a plan change in OneSignal): they hold from the next request on, and
        after ``reset``."""
        with self._lock:
            app = self.app(app_id)
            changes = {k: v for k, v in (("tag_limit", tag_limit), ("segment_limit", segment_limit)) if v is not None}
            for name, value in changes.items():
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise EmulatorError(f"{name} must be a whole number of 0 or more, not {value!r}")
                setattr(app, name, value)
            self._baseline["apps"][app_id].update(changes)
            self.world.changed()

    def app(self, app_id: str) -> App:
        try:
            return self.world.apps[app_id]
        except KeyError:
            raise EmulatorError(f"no app {app_id} in the emulator") from None

    def add_user(self, app_id: str, external_id: str | None = None, subscription_ids=(), *,
                 tags: dict[str, str] | None = None, onesignal_id: str | None = None,
                 aliases: dict[str, str] | None = None) -> str:
        """Put a user in "OneSignal"; returns its onesignal_id."""
        return self.add_users(app_id, [{"external_id": external_id, "subscription_ids": list(subscription_ids),
                                        "tags": tags or {}, "onesignal_id": onesignal_id,
                                        "aliases": aliases or {}}])[0]

    def add_users(self, app_id: str | None, records: list[dict]) -> list[str]:
        """Seed users from records (see ``World.user_from_record``); a record may name its ``app_id``."""
        with self._lock:
            ids = []
            try:
                for record in records:
                    app = self._app_for(record.get("app_id") or app_id)
                    user = app.add_user(self.world.user_from_record(record))
                    self._baseline["apps"][app.app_id]["users"].append(copy.deepcopy(asdict(user)))
                    ids.append(user.onesignal_id)
            finally:
                self.world.changed()          # users added before a bad record stay, and get saved
            return ids

    def seed_users(self, path: str | Path, app_id: str | None = None) -> int:
        """Seed users from a JSON or JSON Lines file; returns how many."""
        return len(self.add_users(app_id, read_seed_users(path)))

    def _app_for(self, app_id: str | None) -> App:
        if app_id is not None:
            return self.app(app_id)
        if len(self.world.apps) != 1:
            raise EmulatorError("say which app the users belong to (app_id): the emulator holds "
                                f"{len(self.world.apps)} apps")
        return next(iter(self.world.apps.values()))

    # -- inspecting -----------------------------------------------------------------------------
    @property
    def state(self) -> dict:
        """A snapshot: apps (no keys) with users, tags and segments with their members; counters."""
        with self._lock:
            return self.world.to_json()

    @property
    def counters(self) -> dict:
        """requests, by_status, rate_limited, server_errors, dropped, hung, user_creates."""
        with self._lock:
            return copy.deepcopy(self.world.counters)

    def user_tags(self, app_id: str) -> dict[str, dict[str, str]]:
        """Each user's tags, by external id (by onesignal_id for users without one)."""
        with self._lock:
            return {u.external_id if u.external_id is not None else u.onesignal_id: dict(u.tags)
                    for u in self.app(app_id).users.values()}

    def requests(self) -> list[dict]:
        """The request log: arrival time (time.monotonic), method, path, status or fault."""
        with self._lock:
            return list(self._log)

    def release(self) -> None:
        """Let every held request (``faults.inject("hold")``) go on, and the ones held from now on."""
        self._released.set()

    def held(self) -> list[dict]:
        """The requests held so far (from the request log)."""
        return [r for r in self.requests() if r["status"] == "held"]

    def reset(self) -> None:
        """Undo everything the API did: apps and users as set up (loaded, added, seeded), their tags as
        seeded, no segments or users created through the API, counters and request log at zero."""
        with self._lock:
            self.world.apps = World.from_json(self._baseline).apps
            self.world.csv_exports.clear()
            self.world.counters.clear()
            self.world.counters.update(new_counters())
            self.world.changed()
            self.limits.reset()
            self._log.clear()

    def save(self) -> None:
        if not self.state_file:
            return
        with self._lock:
            if self.world.version == self._saved_version and self.state_file.exists():
                return
            self.world.save(self.state_file)
            self._saved_version = self.world.version

    def _save_periodically(self) -> None:
        while not self._stopping.wait(self.save_interval):
            try:
                self.save()
            except OSError as exc:
                log.warning("cannot save emulator state to %s: %s", self.state_file, exc)

    # -- serving (called from the handler threads, or in-process by transport.py) ----------------
    def dispatch(self, request: Request, *, wait_out_hangs: bool = True) -> Response | str | None:
        """One request through the faults and the API: a Response, or NO_ANSWER, RESET or HUNG."""
        arrived = time.monotonic()
        if request.path.startswith(CONTROL):
            return self._control(request)
        with self._lock:
            fault = self.faults.draw(request.method, request.path)
        if fault in (HANG, DROP):
            self._record(arrived, request, "hung" if fault == HANG else "dropped")   # counted as it happens
        if fault == HOLD:
            with self._lock:                       # logged (not counted) on arrival: tests wait for it
                self._log.append({"t": arrived, "method": request.method, "path": request.path, "status": "held"})
            while not (self._released.wait(0.05) or self._stopping.is_set()):
                pass
            if self._stopping.is_set():
                return NO_ANSWER
        if self.faults.latency:
            self._stopping.wait(self.faults.latency)
        if fault == HANG:
            if not wait_out_hangs:
                return HUNG
            self._stopping.wait(self.faults.hang_seconds)
        if fault in (HANG, DROP):
            return NO_ANSWER
        if fault == ERROR:
            response = Response(503, UNAVAILABLE)
        elif fault == CRASH:
            response = Response(500, INTERNAL_ERROR)
        elif fault == THROTTLE:
            response = Response(429, RATE_LIMITED)            # and no Retry-After
        elif fault == REFUSE:
            response = Response(400, REFUSED)
        else:
            with self._lock:
                response = self._api.handle(request, time.monotonic())
        if fault == RESET_AFTER:
            self._record(arrived, request, f"reset after {response.status}")
            return RESET
        self._record(arrived, request, response.status)
        return response

    def _record(self, arrived: float, request: Request, status: int | str) -> None:
        log.debug("%s %s -> %s", request.method, request.path, status)
        with self._lock:
            self.world.count(status)
            self._log.append({"t": arrived, "method": request.method, "path": request.path, "status": status})

    def _control(self, request: Request) -> Response:
        token = request.headers.get(ADMIN_HEADER) or ""
        if not hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return Response(401, {"errors": [f"the {CONTROL} endpoints need the emulator's admin token in an "
                                             f"{ADMIN_HEADER} header"]})
        if request.method == "GET" and request.path.rstrip("/") == "/_emulator/state":
            return Response(200, self.state)
        if request.method == "GET" and request.path.rstrip("/") == "/_emulator/requests":
            return Response(200, {"requests": self.requests()})
        if request.method == "POST" and request.path.rstrip("/") == "/_emulator/reset":
            self.reset()
            return Response(200, {"success": True})
        return Response(404, {"errors": ["Not Found"]})


def wire(response: Response) -> tuple[bytes, dict[str, str]]:
    """A response's body and headers as they go on the wire (the server and the transport alike): compact
    JSON, as OneSignal writes it: {"errors":["..."],"success":false}."""
    if isinstance(response.body, bytes):        # a file (the CSV export), or S3's XML for one not ready
        return response.body, {"Content-Length": str(len(response.body)), **response.headers}
    payload = b"" if response.body is None else json.dumps(response.body, ensure_ascii=False,
                                                            separators=(",", ":")).encode()
    return payload, {"Content-Type": "application/json; charset=utf-8", "Content-Length": str(len(payload)),
                     **response.headers}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256        # the default 5 drops connects when a client opens 64 at once
    emulator: Emulator

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.to_reset: set[socket.socket] = set()

    def shutdown_request(self, request) -> None:
        if request in self.to_reset:            # no FIN first: linger 0 makes close() send a RST
            self.to_reset.discard(request)
            request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_request(request)
            return
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        # A client hanging up (timeout, reset) is routine here; anything else is a bug worth a trace.
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("connection from %s closed by the client", client_address)
        else:
            log.exception("error while serving %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as OneSignal's clients expect
    server_version = "OneSignalEmulator/1"
    wbufsize = 64 * 1024            # headers and body leave in one write
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.emulator._lock:
            self.server.emulator._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.emulator._lock:
            self.server.emulator._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        headers = cast(Mapping[str, str], self.headers)     # an HTTPMessage: case-insensitive lookups
        response = self.server.emulator.dispatch(Request(self.command, path, query, headers, body))
        if response is NO_ANSWER:
            self.close_connection = True            # close without a word: a dropped connection
            return
        if isinstance(response, str):               # RESET: close with a TCP reset, ECONNRESET for the client
            self.server.to_reset.add(self.connection)
            self.close_connection = True
            return
        payload, wire_headers = wire(response)
        self.send_response(response.status)
        for name, value in wire_headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args) -> None:
        pass                                         # dispatch logs method and path, nothing else
