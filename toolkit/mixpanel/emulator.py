"""A Mixpanel-compatible server on 127.0.0.1: Raw Event Export, Engage and the cohorts list, from a folder.

    with MixpanelEmulator(data="folder", project_id="123") as emu:      # port 0: a free port
        account = ServiceAccount(emu.username, emu.secret, emu.project_id)
        client = MixpanelClient(account, emu.url)

It checks HTTP Basic auth (the service account) and ``project_id`` (a project another emulator serves, named
in ``elsewhere``, gets the wrong-region refusal), keeps Mixpanel's rate limits per API (60/hour, 3/second,
100 or 5 at once: configurable) answering 429 beyond them, streams exports with chunked encoding (gzip when
asked), and injects faults aimed at chosen requests (``inject``) or drawn at a rate (``error_rate``):
503, 500, 429, a hang, a dropped connection, an export cut after some bytes, an export stalled after some
bytes (``stalled`` is set, so a test can kill the client mid-stream; cut when ``release`` is called), a
malformed line.
Error bodies are ``{"error": <text>, "status": "error"}`` as Mixpanel's APIs answer; the wording of the
region refusal is the emulator's own (Mixpanel's is not documented).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import logging
import random
import re
import secrets
import signal
import socket
import sys
import threading
import time
import zlib
from collections import Counter, deque
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

from toolkit.emulator.limits import take_aimed
from toolkit.emulator.server import POLL_SECONDS
from toolkit.errors import EmulatorError
from toolkit.mixpanel.budget import EXPORT, QUERY, Limits
from toolkit.mixpanel.client import COHORTS_PATH, ENGAGE_PATH, EXPORT_PATH
from toolkit.mixpanel.emulator_data import Data
from toolkit.waiting import set_from_signal_handler

log = logging.getLogger(__name__)
ERROR, CRASH, THROTTLE, HANG, DROP = "error", "crash", "throttle", "hang", "drop"
CUT, STALL, MALFORMED = "cut", "stall", "malformed"       # export bodies only
KINDS = (ERROR, CRASH, THROTTLE, HANG, DROP, CUT, STALL, MALFORMED)
MALFORMED_LINE = b'{"event": "Broken", "properties": {"time": 17\n'
UNAUTHENTICATED = "Unable to authenticate request"
API_OF = {EXPORT_PATH: "export", ENGAGE_PATH: "query", "/api/2.0/engage": "query", COHORTS_PATH: "query",
          "/api/2.0/cohorts/list": "query"}
STREAM_CHUNK = 64 * 1024


def body(text: str) -> dict:
    return {"error": text, "status": "error"}


class Window:
    """One API's limits on the server side: starts within the hour and the second, requests in flight."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.starts: deque[float] = deque()
        self.in_flight = 0

    def admit(self, now: float) -> str | None:
        """None (and counted) if admitted, else which limit refused it."""
        while self.starts and self.starts[0] <= now - 3600:
            self.starts.popleft()
        if len(self.starts) >= self.limits.per_hour:
            return f"{self.limits.per_hour} queries per hour"
        if sum(1 for t in self.starts if t > now - 1) >= self.limits.per_second:
            return f"{self.limits.per_second} queries per second"
        if self.in_flight >= self.limits.concurrent:
            return f"{self.limits.concurrent} concurrent queries"
        self.starts.append(now)
        self.in_flight += 1
        return None


class MixpanelEmulator:
    def __init__(self, data: str | Path | Data | None = None, *, project_id: str = "1000",
                 username: str = "sa.emulator",
                 secret: str | None = None, region: str = "us", elsewhere: dict[str, str] | None = None,
                 host: str = "127.0.0.1", port: int = 0, page_size: int = 1000, export_limits: Limits = EXPORT,
                 query_limits: Limits = QUERY, error_rate: float = 0.0, hang_seconds: float = 30.0, seed: int = 0):
        self.data = data if isinstance(data, Data) else Data.from_folder(data)
        self.project_id, self.username, self.region = str(project_id), username, region
        self.secret = secret or secrets.token_urlsafe(24)
        self.elsewhere = {str(k): v for k, v in (elsewhere or {}).items()}
        self.host, self.port = host, port
        self.page_size = page_size
        self.windows = {"export": Window(export_limits), "query": Window(query_limits)}
        self.error_rate, self.hang_seconds = error_rate, hang_seconds
        self._random = random.Random(seed)
        self._aimed: list[dict] = []
        self._sessions: dict[str, list[dict]] = {}
        self.counters: Counter[str] = Counter()
        self.log: list[dict] = []
        self.lock = threading.Lock()
        self._stopping = threading.Event()
        self._released = threading.Event()
        self.stalled = threading.Event()          # an export reached its stall point
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> str:
        if self._server is None:
            self._stopping.clear()
            self._server = _Server((self.host, self.port), _Handler)
            self._server.emulator = self
            self.port = self._server.server_address[1]
            self._thread = threading.Thread(target=self._server.serve_forever, args=(POLL_SECONDS,),  # quick stop
                                            name="mixpanel-emulator", daemon=True)
            self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join()
        self._server = None

    def close(self) -> None:
        self.stop()
        self.data.close()

    def __enter__(self) -> MixpanelEmulator:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- setting up and faults ------------------------------------------------------------------
    def add_events(self, records: list[dict]) -> int:
        with self.lock:
            return self.data.add_events(records)

    def inject(self, kind: str, *, api: str | None = None, skip: int = 0, times: int = 1,
               at_byte: int = 1000) -> None:
        """Give ``kind`` to requests of ``api`` ("export" or "query", None: any): ``skip`` pass first, then
        ``times`` get it. ``cut`` sends ``at_byte`` bytes of an export's body, then closes the connection;
        ``stall`` sends them, sets ``stalled`` and waits for ``release`` (or the stop) before it cuts."""
        if kind not in KINDS:
            raise EmulatorError(f"fault {kind!r}: expected one of {', '.join(KINDS)}")
        with self.lock:
            self._aimed.append({"kind": kind, "api": api, "skip": skip, "times": times, "at_byte": at_byte})

    def release(self) -> None:
        """Let stalled exports end (cut)."""
        self._released.set()

    def _draw(self, api: str) -> dict | None:
        aim = take_aimed(self._aimed, lambda a: a["api"] in (None, api))
        if aim:
            return aim
        if self.error_rate and self._random.random() < self.error_rate:
            return {"kind": ERROR}
        return None

    # -- serving --------------------------------------------------------------------------------
    def handle(self, handler: _Handler) -> None:
        path, _, query = handler.path.partition("?")
        api = API_OF.get(path.rstrip("/"))
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        form = handler.rfile.read(length) if length else b""
        params.update({k: v[-1] for k, v in parse_qs(form.decode("utf-8", "replace")).items()})
        with self.lock:
            self.counters["requests"] += 1
            fault = self._draw(api) if api else None
            refusal = self._refusal(handler, path, api, params)
            admitted = refusal is None
            if fault and fault["kind"] not in (CUT, STALL, MALFORMED):
                refusal = None
            entry = {"t": time.monotonic(), "method": handler.command, "path": path, "api": api,
                     "fault": fault["kind"] if fault else None}
            self.log.append(entry)
        try:
            if fault and fault["kind"] in (HANG, DROP):
                self.counters[fault["kind"]] += 1
                if fault["kind"] == HANG:
                    self._stopping.wait(self.hang_seconds)
                handler.close_connection = True
                return
            if fault and fault["kind"] in (ERROR, CRASH, THROTTLE):
                status, text = {ERROR: (503, "Service Unavailable"), CRASH: (500, "Internal Server Error"),
                                THROTTLE: (429, "Too many requests")}[fault["kind"]]
                self.counters[f"injected_{status}"] += 1
                return handler.send_json(status, body(text))
            if refusal is not None:
                status, text = refusal
                self.counters[f"status_{status}"] += 1
                if status == 429:
                    self.counters["rate_limited"] += 1
                return handler.send_json(status, body(text))
            assert api is not None
            if path.rstrip("/") == EXPORT_PATH:
                return self._export(handler, params, fault)
            if "engage" in path:
                return self._engage(handler, params)
            with self.lock:
                cohorts = [{k: v for k, v in c.items() if k != "members"} | {"count": len(c["members"]),
                                                                            "project_id": int(self.project_id)}
                           for c in self.data.cohorts]
            return handler.send_json(200, cohorts)
        finally:
            if admitted and api:
                with self.lock:
                    self.windows[api].in_flight -= 1

    def _refusal(self, handler: _Handler, path: str, api: str | None, params: dict) -> tuple[int, str] | None:
        """Mixpanel's checks in its order: route, auth, project, rate limit (called under the lock)."""
        if api is None:
            return 404, f"Not found: {path}"
        if not self._authenticated(handler.headers.get("Authorization") or ""):
            return 401, UNAUTHENTICATED
        project = params.get("project_id", "")
        if not project:
            return 400, "project_id is required when authenticating with a service account"
        if project in self.elsewhere:
            return 400, (f"Project {project} is in the {self.elsewhere[project].upper()} data residency region, "
                         f"not {self.region.upper()}: use that region's host")
        if project != self.project_id:
            return 403, f"service account {self.username} does not have access to project {project}"
        limit = self.windows[api].admit(time.monotonic())
        if limit is not None:
            return 429, f"Query rate limit exceeded ({limit})"
        return None

    def _authenticated(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            username, _, secret = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(username.encode(), self.username.encode()) and \
            hmac.compare_digest(secret.encode(), self.secret.encode())

    def _export(self, handler: _Handler, params: dict, fault: dict | None) -> None:
        try:
            first, last = date.fromisoformat(params["from_date"]), date.fromisoformat(params["to_date"])
        except KeyError as missing:
            return handler.send_json(400, body(f"{missing.args[0]} is a required parameter"))
        except ValueError as exc:
            return handler.send_json(400, body(f"dates must be yyyy-mm-dd: {exc}"))
        if first > last:
            return handler.send_json(400, body("from_date must be on or before to_date"))
        try:
            events = set(json.loads(params["event"])) if params.get("event") else None
        except (ValueError, TypeError):
            return handler.send_json(400, body("event must be a JSON array of event names"))
        try:
            where = _where(params.get("where"))
        except ValueError as exc:
            return handler.send_json(400, body(str(exc)))
        limit = int(params["limit"]) if params.get("limit", "").isdigit() else None
        with self.lock:
            files = self.data.day_files(first, last)
        gzipped = "gzip" in (handler.headers.get("Accept-Encoding") or "")
        handler.start_stream(gzipped)
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31) if gzipped else None
        cut_at = fault["at_byte"] if fault and fault["kind"] in (CUT, STALL) else None
        sent = served = 0
        malformed = fault is not None and fault["kind"] == MALFORMED

        def emit(raw: bytes, final: bool = False) -> bool:
            nonlocal sent
            out = (compressor.compress(raw) + (compressor.flush() if final else b"")) if compressor else raw
            if cut_at is not None and sent + len(out) >= cut_at:
                handler.write_chunk(out[:max(0, cut_at - sent)])
                if fault and fault["kind"] == STALL:
                    handler.wfile.flush()
                    self.stalled.set()
                    while not (self._released.wait(0.05) or self._stopping.is_set()):
                        pass
                handler.cut()
                self.counters["cut"] += 1
                return False
            sent += len(out)
            handler.write_chunk(out)
            return True

        for path, size in files:
            with path.open("rb") as source:
                pending = b""
                remaining = size
                while remaining > 0:
                    block = source.read(min(STREAM_CHUNK, remaining))
                    if not block:
                        break
                    remaining -= len(block)
                    lines = (pending + block).split(b"\n")
                    pending = lines.pop()
                    kept = [line for line in lines if line and _keep(line, events, where)]
                    if limit is not None:
                        kept = kept[:max(0, limit - served)]
                    served += len(kept)
                    if malformed and kept:
                        kept.insert(len(kept) // 2, MALFORMED_LINE.rstrip(b"\n"))
                        malformed = False
                    if kept and not emit(b"\n".join(kept) + b"\n"):
                        return
        if not emit(b"", final=True):
            return
        handler.end_stream()
        self.counters["exports"] += 1
        self.counters["events_served"] += served

    def _engage(self, handler: _Handler, params: dict) -> None:
        try:
            page = int(params.get("page") or 0)
        except ValueError:
            return handler.send_json(400, body("page must be an integer"))
        session_id = params.get("session_id")
        with self.lock:
            if session_id:
                if session_id not in self._sessions:
                    return handler.send_json(400, body(f"session_id {session_id} is not valid or has expired"))
                results = self._sessions[session_id]
            else:
                if page:
                    return handler.send_json(400, body("a page after the first needs the session_id of page 0"))
                found = self._engage_results(params)
                if isinstance(found, tuple):
                    return handler.send_json(*found)
                results = found
                session_id = secrets.token_hex(8)
                self._sessions[session_id] = results
        chunk = results[page * self.page_size:(page + 1) * self.page_size]
        handler.send_json(200, {"page": page, "page_size": self.page_size, "session_id": session_id,
                                "status": "ok", "total": len(results), "results": chunk})

    def _engage_results(self, params: dict) -> list[dict] | tuple[int, dict]:
        profiles = self.data.profiles
        if params.get("filter_by_cohort"):
            try:
                cohort_id = int(json.loads(params["filter_by_cohort"])["id"])
            except (ValueError, TypeError, KeyError):
                return 400, body('filter_by_cohort must be {"id": <cohort id>}')
            cohort = self.data.cohort(cohort_id)
            if cohort is None:
                return 400, body(f"cohort {cohort_id} does not exist in project {self.project_id}")
            everyone = params.get("include_all_users", "true").lower() != "false"
            ids = [m for m in cohort["members"] if everyone or m in profiles]
        else:
            ids = list(profiles)
        try:
            where = _where(params.get("where"))
        except ValueError as exc:
            return 400, body(str(exc))
        wanted = json.loads(params["output_properties"]) if params.get("output_properties") else None
        results = []
        for distinct_id in ids:
            properties = profiles.get(distinct_id, {})
            if where and properties.get(where[0]) != where[1]:
                continue
            if wanted is not None:
                properties = {k: v for k, v in properties.items() if k in wanted}
            results.append({"$distinct_id": distinct_id, "$properties": properties})
        return results


WHERE = re.compile(r'^\s*properties\["([^"]+)"\]\s*==\s*"([^"]*)"\s*$')


def _where(text: str | None) -> tuple[str, str] | None:
    """A ``properties["name"] == "value"`` expression as (name, value); None without one."""
    if not text:
        return None
    match = WHERE.match(text)
    if not match:
        raise ValueError(f'the emulator understands only properties["name"] == "value" in where, not {text!r}')
    return match.group(1), match.group(2)


def _keep(line: bytes, events: set | None, where) -> bool:
    if events is None and not where:
        return True
    record = json.loads(line)
    if events is not None and record.get("event") not in events:
        return False
    return not where or record.get("properties", {}).get(where[0]) == where[1]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    emulator: MixpanelEmulator

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            log.debug("connection from %s closed by the client", client_address)
        else:
            log.exception("error while serving %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MixpanelEmulator/1"
    disable_nagle_algorithm = True     # an export is many small writes: no waiting for each one's ACK
    server: _Server

    def _serve(self) -> None:
        self.server.emulator.handle(self)

    do_GET = do_POST = _serve

    def send_json(self, status: int, payload) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_stream(self, gzipped: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()

    def write_chunk(self, data: bytes) -> None:
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def cut(self) -> None:
        """Close the connection in the middle of the body (no last chunk)."""
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def log_message(self, format: str, *args) -> None:
        pass


# -- the command ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """toolkit mixpanel-emulator: serve a data folder until interrupted."""
    p = argparse.ArgumentParser(prog="toolkit mixpanel-emulator",
                                description="Run a Mixpanel API emulator (export, engage, cohorts) on 127.0.0.1")
    p.add_argument("--data", metavar="FOLDER", help="events (*.jsonl[.gz]), profiles.json, cohorts.json")
    p.add_argument("--port", type=int, default=8788)
    p.add_argument("--project-id", default="1000")
    p.add_argument("--username", default="sa.emulator")
    p.add_argument("--region", default="us", choices=("us", "eu", "in"))
    p.add_argument("--page-size", type=int, default=1000, help="Engage page size (default 1000)")
    p.add_argument("--export-per-hour", type=int, default=EXPORT.per_hour)
    p.add_argument("--query-per-hour", type=int, default=QUERY.per_hour)
    p.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered 503")
    args = p.parse_args(argv)
    try:
        emulator = MixpanelEmulator(args.data, project_id=args.project_id, username=args.username, region=args.region,
                                    port=args.port, page_size=args.page_size, error_rate=args.error_rate,
                                    export_limits=Limits(args.export_per_hour, EXPORT.per_second, EXPORT.concurrent),
                                    query_limits=Limits(args.query_per_hour, QUERY.per_second, QUERY.concurrent))
        url = emulator.start()
    except (EmulatorError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()       # before the address is announced: a caller may stop us once it has read it
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: set_from_signal_handler(done))
    # The secret is the emulator's own stand-in, generated now: shown once so a client can connect.
    print(f"Mixpanel emulator at {url}  project {emulator.project_id}  region {emulator.region}  "
          f"events {emulator.data.event_count}  profiles {len(emulator.data.profiles)}  "
          f"cohorts {len(emulator.data.cohorts)}")
    print(f"  export MIXPANEL_BASE_URL={url} MIXPANEL_PROJECT_ID={emulator.project_id} "
          f"MIXPANEL_USERNAME={emulator.username} MIXPANEL_SECRET={emulator.secret}")
    print("Ctrl-C to stop.", flush=True)
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.close()
    return 0
