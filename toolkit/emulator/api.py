"""The OneSignal endpoints: a request in, a status and JSON body out, with OneSignal's own error words.

No sockets here (server.py does HTTP); the caller holds the world's lock around ``handle``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import hmac
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from toolkit.emulator import filters as segment_filters
from toolkit.emulator.limits import Limits, retry_after_header
from toolkit.emulator.state import App, EmulatorError, Segment, World, now_iso

AUTH_MISSING = {"errors": [{"code": "auth-1",
                            "title": "This operation requires 'Authorization' in the HTTP header"}]}
ACCESS_DENIED = {"errors": ["Access denied.  Please include an 'Authorization: ...' header with a valid API key "
                            "(https://documentation.onesignal.com/docs/accounts-and-keys#app-auth-key)."]}
APP_NOT_FOUND = {"errors": ["app_id not found. You may be missing a Content-Type: application/json header."]}
RATE_LIMITED = {"errors": ["API rate limit exceeded."]}
UNAVAILABLE = {"errors": ["Service temporarily unavailable"]}
# OneSignal's words, verbatim: the tag cap (the body is exactly errors + success false) and the
# 100-keys rule. The other refusals below are this emulator's wording: OneSignal documents the rule
# (reserved keys, 128-character names, a plan's segment count) but not its message.
TOO_MANY_TAGS_IN_REQUEST = "Please limit your tag updates to 100 per request"
TAG_CAP = "App is limited to a maximum of {limit} tags on a given player"
MAX_TAGS_PER_REQUEST = 100
MAX_SEGMENT_NAME = 128
SEGMENT_NAME_TOO_LONG = f"name must be at most {MAX_SEGMENT_NAME} characters"
SEGMENT_LIMIT = "App has reached its limit of {limit} segments"
# Used by OneSignal for message personalization: "should not be used as tag keys".
RESERVED_TAG_KEYS = frozenset({"message", "notification", "subscription", "user", "template", "app", "org",
                               "dynamic_content", "data_feed", "journey", "custom_data"})
RESERVED_TAG_KEY = ("Tag key {key!r} is reserved by OneSignal for message personalization (reserved: "
                    + ", ".join(sorted(RESERVED_TAG_KEYS)) + ")")
MAX_PAGE = 300
# The CSV export (POST /players/csv_export?app_id=...): one row per subscription, OneSignal's default
# columns, then the extra fields asked for (those it documents); ``tags`` is the user's tags as a JSON
# object. The file is served (no key needed: an unguessable URL) once generated, at OneSignal's stated
# ~2,000 records/s; until then its URL answers 404 with S3's NoSuchKey, as OneSignal's does.
CSV_COLUMNS = ("id", "identifier", "session_count", "language", "timezone", "game_version", "device_os",
               "device_type", "device_model", "ad_id", "tags", "last_active", "playtime", "amount_spent",
               "created_at", "invalid_identifier", "badge_count")
CSV_EXTRA_FIELDS = ("location", "country", "rooted", "notification_types", "ip", "external_user_id", "web_auth",
                    "web_p256", "timezone_id")
CSV_FOLDER = "csv_exports"
NO_SUCH_KEY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
               b"<Message>The specified key does not exist.</Message></Error>")
DEVICE_TYPES = {"iOSPush": 0, "AndroidPush": 1, "FireOSPush": 2, "ChromePush": 5, "SafariPush": 7, "Email": 11,
                "SMS": 14}


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    path: str                         # raw, still percent-encoded
    query: str
    headers: Mapping[str, str]        # case-insensitive lookups (http.client.HTTPMessage)
    body: bytes

    @property
    def parts(self) -> list[str]:
        # Split before decoding, so an External ID holding "/" (sent as %2F) stays one part.
        return [unquote(p) for p in self.path.strip("/").split("/")]


def errors(status: int, *messages: str, success_flag: bool = False) -> Response:
    body: dict = {"errors": list(messages)}
    if success_flag:
        body["success"] = False            # after errors, as OneSignal writes it
    return Response(status, body)


def user_not_found(label: str, alias_id: str) -> Response:
    return Response(404, {"errors": [{"code": "user-2", "title": "User not found",
                                      "meta": {"alias_label": label, "alias_id": alias_id}}]})


def segment_not_found() -> Response:
    return Response(404, {"success": False, "errors": ["Segment not found"]})


# (method, path pattern) -> handler name; "{x}" parts are captured in order.
ROUTES: list[tuple[str, tuple[str, ...], str]] = [
    ("PATCH", ("apps", "{}", "users", "by", "{}", "{}"), "update_user"),
    ("GET", ("apps", "{}", "users", "by", "{}", "{}"), "get_user"),
    ("DELETE", ("apps", "{}", "users", "by", "{}", "{}"), "delete_user"),
    ("POST", ("apps", "{}", "users"), "create_user"),
    ("GET", ("apps", "{}", "subscriptions", "{}", "user", "identity"), "subscription_identity"),
    ("POST", ("apps", "{}", "segments"), "create_segment"),
    ("GET", ("apps", "{}", "segments"), "list_segments"),
    ("GET", ("apps", "{}", "segments", "{}"), "get_segment"),
    ("PATCH", ("apps", "{}", "segments", "{}"), "update_segment"),
    ("DELETE", ("apps", "{}", "segments", "{}"), "delete_segment"),
    ("POST", ("players", "csv_export"), "csv_export"),       # the app is in the query: ?app_id=
]
VIEWS = frozenset({"get_user"})     # OneSignal's "View user": its own, much lower, rate limit


def route(method: str, parts: list[str]) -> tuple[str | None, list[str], bool]:
    """(handler name, captured parts, whether the path exists under another method)."""
    path_exists = False
    for route_method, pattern, name in ROUTES:
        if len(pattern) == len(parts) and all(p == "{}" or p == q for p, q in zip(pattern, parts, strict=True)):
            if route_method == method:
                return name, [q for p, q in zip(pattern, parts, strict=True) if p == "{}"], True
            path_exists = True
    return None, [], path_exists


class Api:
    def __init__(self, world: World, limits: Limits):
        self.world, self.limits = world, limits

    def handle(self, request: Request, now: float) -> Response:
        if request.method == "GET" and request.parts[:1] == [CSV_FOLDER]:
            return self.csv_file("/".join(request.parts[1:]), now)
        name, captured, path_exists = route(request.method, request.parts)
        if name is None:
            return errors(405 if path_exists else 404, "Method Not Allowed" if path_exists else "Not Found")
        authorization = request.headers.get("Authorization")
        if not authorization:
            return Response(401, AUTH_MISSING)
        query = parse_qs(request.query)
        if not captured:                                   # /players/csv_export?app_id=...
            captured = [query.get("app_id", [""])[0]]
        app = self.world.apps.get(captured[0])
        # OneSignal reads no body without the JSON content type, so it then cannot find the app.
        json_body = "application/json" in (request.headers.get("Content-Type") or "")
        if app is None or (request.body and not json_body):
            return Response(400, APP_NOT_FOUND)
        if not hmac.compare_digest(_key(authorization).encode(), app.api_key.encode()):
            return Response(403, ACCESS_DENIED)
        wait = self.limits.admit_app(app.app_id, app.rate_limit, now)
        if wait is None and name in VIEWS:
            wait = self.limits.admit_view(app.app_id, now)
        if wait is not None:
            return Response(429, RATE_LIMITED, {"Retry-After": retry_after_header(wait)})
        try:
            body = json.loads(request.body) if request.body else None
        except ValueError:
            return errors(400, "The request body is not valid JSON")
        handler: Callable[..., Response] = getattr(self, name)
        return handler(app, body, *captured[1:], query=query, now=now, host=request.headers.get("Host") or "")

    # -- users ----------------------------------------------------------------------------------
    def update_user(self, app: App, body, label: str, alias_id: str, *, now: float, **_) -> Response:
        properties = body.get("properties", {}) if isinstance(body, dict) else None
        tags = properties.get("tags", {}) if isinstance(properties, dict) else None
        if not isinstance(tags, dict):
            return errors(400, "Expected {\"properties\": {\"tags\": {...}}}")
        if len(tags) > MAX_TAGS_PER_REQUEST:
            return errors(400, TOO_MANY_TAGS_IN_REQUEST, success_flag=True)
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in tags.values()):
            return errors(400, "Tag values must be strings", success_flag=True)
        reserved = sorted(k for k, v in tags.items() if k in RESERVED_TAG_KEYS and v != "")   # deleting one is fine
        if reserved:
            return errors(400, RESERVED_TAG_KEY.format(key=reserved[0]), success_flag=True)
        user = app.find_user(label, alias_id)
        if user is None:
            return user_not_found(label, alias_id)
        wait = self.limits.admit_user(app.app_id, user.onesignal_id, now)
        if wait is not None:
            return Response(429, RATE_LIMITED, {"Retry-After": retry_after_header(wait)})
        merged = {**user.tags, **{k: str(v) for k, v in tags.items()}}
        merged = {k: v for k, v in merged.items() if v != ""}           # "" deletes a tag
        # The cap is on the tags a user would end with, so a user already over it (a plan lowered
        # from 10 or 40 tags to 2 or 20) is refused even an update of a key it has, or a delete that
        # leaves it still over: OneSignal has answered both so.
        if len(merged) > app.max_tags:
            return errors(400, TAG_CAP.format(limit=app.max_tags), success_flag=True)
        if merged != user.tags:
            user.tags = merged
            self.world.changed()
        return Response(202, {"properties": properties})

    def get_user(self, app: App, body, label: str, alias_id: str, **_) -> Response:
        user = app.find_user(label, alias_id)
        if user is None:
            return user_not_found(label, alias_id)
        return Response(200, {"properties": {"tags": dict(user.tags)}, "identity": user.identity(),
                              "subscriptions": [dict(s) for s in user.subscriptions]})

    def delete_user(self, app: App, body, label: str, alias_id: str, **_) -> Response:
        """OneSignal's Delete user: the user, its aliases and subscriptions go (a person's cleanup,
        which reconciliation must notice)."""
        user = app.find_user(label, alias_id)
        if user is None:
            return user_not_found(label, alias_id)
        app.remove_user(user)
        self.world.changed()
        return Response(200, {})

    def create_user(self, app: App, body, **_) -> Response:
        """Implemented so that a stray call is visible: the export must never create users."""
        self.world.counters["user_creates"] += 1
        self.world.changed()
        body = body if isinstance(body, dict) else {}
        identity = body.get("identity") or {}
        external_id = identity.get("external_id")
        existing = app.find_user("external_id", external_id) if external_id is not None else None
        if existing is not None:
            return Response(200, {"identity": existing.identity(), "properties": {"tags": existing.tags},
                                  "subscriptions": existing.subscriptions})
        record = {"external_id": external_id, "tags": (body.get("properties") or {}).get("tags") or {},
                  "subscriptions": [{"id": self.world.new_id(), "type": s.get("type", "AndroidPush")}
                                    for s in body.get("subscriptions") or [] if isinstance(s, dict)]}
        try:
            user = app.add_user(self.world.user_from_record(record))
        except EmulatorError as exc:              # e.g. a subscription id already taken
            return errors(400, str(exc))
        return Response(201, {"identity": user.identity(), "properties": {"tags": user.tags},
                              "subscriptions": user.subscriptions})

    def subscription_identity(self, app: App, body, subscription_id: str, **_) -> Response:
        user = app.owner_of(subscription_id)
        if user is None:
            return Response(404, {"errors": [{"code": "subscription-0", "title": "Subscription not found",
                                              "meta": {"subscription_id": subscription_id}}]})
        return Response(200, {"identity": user.identity()})

    # -- the CSV export ---------------------------------------------------------------------------
    def csv_export(self, app: App, body, *, now: float, host: str, **_) -> Response:
        """The app's subscriptions (or a segment's) as they are now, in a gzip CSV ready after the time
        OneSignal would take to write it; answers its URL."""
        body = body if isinstance(body, dict) else {}
        extra = [f for f in body.get("extra_fields") or [] if f in CSV_EXTRA_FIELDS]
        users = list(app.users.values())
        if body.get("segment_name") is not None:
            segment = app.segment_named(str(body["segment_name"]))
            if segment is None:
                return errors(400, "Segment not found", success_flag=True)
            users = app.members(segment)
        # The users as they are now (tags copied); the file itself is written when first fetched, so
        # this answer comes at once, as OneSignal's does.
        held = [(user.external_id, [s["id"] for s in user.subscriptions],
                 [s.get("type", "") for s in user.subscriptions], dict(user.tags)) for user in users]
        rows = sum(len(h[1]) for h in held)
        token = self.world.new_id()
        name = f"{token}/users_{hashlib.md5(app.app_id.encode()).hexdigest()}_{now_iso()[:10]}.csv.gz"
        self.world.csv_exports[name] = (now + rows / self.limits.csv_records_per_second, (extra, held))
        return Response(200, {"csv_file_url": f"http://{host}/{CSV_FOLDER}/{name}"})

    def csv_file(self, name: str, now: float) -> Response:
        found = self.world.csv_exports.get(name)
        if found is None or now < found[0]:
            return Response(404, NO_SUCH_KEY, {"Content-Type": "application/xml"})
        content = found[1]
        if not isinstance(content, bytes):
            content = _csv_gzip(*content)
            self.world.csv_exports[name] = (found[0], content)
        return Response(200, content, {"Content-Type": "application/gzip"})

    # -- segments -------------------------------------------------------------------------------
    def create_segment(self, app: App, body, **_) -> Response:
        refused = _paid_only(app) or _segment_problem(body, name_required=True)
        if refused:
            return refused
        if len(app.segments) >= app.max_segments:
            return errors(400, SEGMENT_LIMIT.format(limit=app.max_segments), success_flag=True)
        if app.segment_named(body["name"]) is not None:
            return errors(409, f"A segment named {body['name']!r} already exists", success_flag=True)
        stamp = now_iso()
        segment = Segment(self.world.new_id(), body["name"], body["filters"], stamp, stamp)
        app.segments[segment.id] = segment
        self.world.changed()
        return Response(201, {"success": True, "id": segment.id})

    def update_segment(self, app: App, body, segment_id: str, **_) -> Response:
        refused = _paid_only(app)
        if refused:
            return refused
        segment = app.segments.get(segment_id)
        if segment is None:
            return segment_not_found()
        refused = _segment_problem(body, name_required=True, filters_required=False)
        if refused:
            return refused
        other = app.segment_named(body["name"])
        if other is not None and other.id != segment_id:
            return errors(409, f"A segment named {body['name']!r} already exists", success_flag=True)
        segment.name = body["name"]
        if "filters" in body:
            segment.filters = body["filters"]
        segment.updated_at = now_iso()
        self.world.changed()
        return Response(200, {"success": True, "id": segment.id})

    def list_segments(self, app: App, body, *, query: dict, **_) -> Response:
        try:
            offset = int(query.get("offset", ["0"])[0])
            limit = int(query.get("limit", [str(MAX_PAGE)])[0])
        except ValueError:
            return errors(400, "offset and limit must be integers")
        if offset < 0 or not 1 <= limit <= MAX_PAGE:
            return errors(400, f"offset must be >= 0 and limit between 1 and {MAX_PAGE}")
        segments = list(app.segments.values())
        return Response(200, {"total_count": len(segments), "offset": offset, "limit": limit,
                              "segments": [s.summary(app.app_id) for s in segments[offset:offset + limit]]})

    def get_segment(self, app: App, body, segment_id: str, *, query: dict, **_) -> Response:
        """As OneSignal: the subscriber count; with ``include-segment-detail=true`` also a ``payload``
        of the segment's details and filters."""
        segment = app.segments.get(segment_id)
        if segment is None:
            return segment_not_found()
        answer: dict = {"subscriber_count": sum(len(u.subscriptions) for u in app.members(segment))}
        if query.get("include-segment-detail", ["false"])[0].lower() == "true":
            answer["payload"] = {**segment.summary(app.app_id), "source": "custom", "filters": segment.filters}
        return Response(200, answer)

    def delete_segment(self, app: App, body, segment_id: str, **_) -> Response:
        if app.segments.pop(segment_id, None) is None:
            return Response(404, {"success": False})
        self.world.changed()
        return Response(200, {"success": True})


def _csv_gzip(extra: list[str], held: list[tuple]) -> bytes:
    """The CSV export's file: a row per subscription, OneSignal's columns then the extra fields."""
    text = io.StringIO()
    writer = csv.writer(text)
    columns = (*CSV_COLUMNS, *extra)
    writer.writerow(columns)
    for external_id, subscriptions, types, tags in held:
        tags_text = json.dumps(tags, ensure_ascii=False)
        for subscription, kind in zip(subscriptions, types, strict=True):
            row = {"id": subscription, "device_type": DEVICE_TYPES.get(kind, 1), "tags": tags_text,
                   "session_count": 1, "external_user_id": external_id or ""}
            writer.writerow([row.get(c, "") for c in columns])
    return gzip.compress(text.getvalue().encode(), compresslevel=1)


def _key(authorization: str) -> str:
    scheme, _, key = authorization.strip().partition(" ")
    return key.strip() if scheme.lower() in ("key", "basic", "bearer") and key.strip() else authorization.strip()


FREE_PLAN_REFUSAL = ("App may not create or update segments through the API on a free plan; "
                     "upgrade to a paid OneSignal plan")


def _paid_only(app: App) -> Response | None:
    if app.plan != "paid":
        return errors(400, FREE_PLAN_REFUSAL, success_flag=True)
    return None


def _segment_problem(body, *, name_required: bool, filters_required: bool = True) -> Response | None:
    if not isinstance(body, dict):
        return errors(400, "Expected a JSON object with name and filters", success_flag=True)
    name = body.get("name")
    if name_required and (not isinstance(name, str) or not name.strip()):
        return errors(400, "name is required", success_flag=True)
    if isinstance(name, str) and len(name) > MAX_SEGMENT_NAME:
        return errors(400, SEGMENT_NAME_TOO_LONG, success_flag=True)
    if filters_required or "filters" in body:
        problem = segment_filters.problem(body.get("filters"))
        if problem:
            return errors(400, problem, success_flag=True)
    return None
