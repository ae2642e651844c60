"""What the emulated OneSignal holds: apps, their users and segments; JSON in and out.

Plain data and lookups, no HTTP. The server serialises access with one lock.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from toolkit.emulator import filters as segment_filters
from toolkit.errors import EmulatorError

FORMAT_VERSION = 1
PLANS = ("free", "paid")
# Each plan's caps when an app is added without its own: data tags per user, and segments per app.
# Free: 2 tags (10 before 2023) and 6 segments; paid (Growth): 20 tags, segments "see your plan".
PLAN_LIMITS = {"free": {"tag_limit": 2, "segment_limit": 6}, "paid": {"tag_limit": 20, "segment_limit": 100}}


@dataclass
class User:
    onesignal_id: str
    external_id: str | None = None
    aliases: dict[str, str] = field(default_factory=dict)       # custom alias labels -> ids
    subscriptions: list[dict] = field(default_factory=list)      # {"id": ..., "type": ...}
    tags: dict[str, str] = field(default_factory=dict)

    def identity(self) -> dict:
        identity = {"onesignal_id": self.onesignal_id, **self.aliases}
        if self.external_id is not None:
            identity["external_id"] = self.external_id
        return identity


@dataclass
class Segment:
    id: str
    name: str
    filters: list[dict]
    created_at: str
    updated_at: str

    def summary(self, app_id: str) -> dict:
        """The fields OneSignal's list call returns (filters are not among them)."""
        return {"id": self.id, "name": self.name, "created_at": self.created_at, "updated_at": self.updated_at,
                "app_id": app_id, "read_only": False, "is_active": True}


@dataclass
class App:
    app_id: str
    api_key: str
    name: str = "Emulated app"
    plan: str = "paid"
    tag_limit: int | None = None        # data tags per user; None: the plan's (PLAN_LIMITS)
    segment_limit: int | None = None    # segments per app; None: the plan's
    rate_limit: int = 1000          # requests/s for the whole app
    users: dict[str, User] = field(default_factory=dict)          # by onesignal_id
    segments: dict[str, Segment] = field(default_factory=dict)    # by id, in creation order

    def __post_init__(self):
        if self.plan not in PLANS:
            raise EmulatorError(f"plan must be one of {PLANS}, not {self.plan!r}")
        for name in ("tag_limit", "segment_limit"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, PLAN_LIMITS[self.plan][name])
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise EmulatorError(f"{name} must be a whole number of 0 or more, not {value!r}")
        self._aliases: dict[tuple[str, str], str] = {}
        self._subscriptions: dict[str, str] = {}
        for user in self.users.values():
            self._index(user)

    @property
    def max_tags(self) -> int:
        """Data tags a user may carry (set from the plan when not given)."""
        return int(self.tag_limit or 0)

    @property
    def max_segments(self) -> int:
        return int(self.segment_limit or 0)

    def __repr__(self) -> str:            # the key stays out of reprs and logs
        return f"App(app_id={self.app_id!r}, plan={self.plan!r}, users={len(self.users)})"

    def _index(self, user: User) -> None:
        labels = {"onesignal_id": user.onesignal_id, **user.aliases}
        if user.external_id is not None:
            labels["external_id"] = user.external_id
        for label, alias_id in labels.items():
            if self._aliases.get((label, alias_id), user.onesignal_id) != user.onesignal_id:
                raise EmulatorError(f"two users share the alias {label}={alias_id!r}")
        for sub in user.subscriptions:
            if self._subscriptions.get(sub["id"], user.onesignal_id) != user.onesignal_id:
                raise EmulatorError(f"two users share the subscription {sub['id']!r}")
        self._aliases.update({(label, alias_id): user.onesignal_id for label, alias_id in labels.items()})
        self._subscriptions.update({sub["id"]: user.onesignal_id for sub in user.subscriptions})

    def add_user(self, user: User) -> User:
        self._index(user)
        self.users[user.onesignal_id] = user
        return user

    def remove_user(self, user: User) -> None:
        del self.users[user.onesignal_id]
        self._aliases = {k: v for k, v in self._aliases.items() if v != user.onesignal_id}
        self._subscriptions = {k: v for k, v in self._subscriptions.items() if v != user.onesignal_id}

    def find_user(self, alias_label: str, alias_id: str) -> User | None:
        onesignal_id = self._aliases.get((alias_label, alias_id))
        return None if onesignal_id is None else self.users[onesignal_id]

    def owner_of(self, subscription_id: str) -> User | None:
        onesignal_id = self._subscriptions.get(subscription_id)
        return None if onesignal_id is None else self.users[onesignal_id]

    def segment_named(self, name: str) -> Segment | None:
        return next((s for s in self.segments.values() if s.name == name), None)

    def members(self, segment: Segment, now: float | None = None) -> list[User]:
        return [u for u in self.users.values() if segment_filters.matches(segment.filters, u.tags, now)]

    # -- JSON -----------------------------------------------------------------------------------
    def to_json(self, *, with_key: bool, with_members: bool) -> dict:
        segments: list[dict] = []
        data = {"app_id": self.app_id, "name": self.name, "plan": self.plan, "tag_limit": self.tag_limit,
                "segment_limit": self.segment_limit, "rate_limit": self.rate_limit,
                "users": [asdict(u) for u in self.users.values()], "segments": segments}
        if with_key:
            data["api_key"] = self.api_key
        for segment in self.segments.values():
            entry = asdict(segment)
            if with_members:
                members = self.members(segment)
                entry["members"] = {"external_ids": sorted(u.external_id for u in members if u.external_id is not None),
                                    "onesignal_ids": sorted(u.onesignal_id for u in members)}
            segments.append(entry)
        return data

    @classmethod
    def from_json(cls, data: dict) -> App:
        fields = {k: data[k] for k in ("app_id", "api_key", "name", "plan", "tag_limit", "segment_limit",
                                       "rate_limit") if k in data}
        app = cls(**fields)
        for entry in data.get("users", []):
            app.add_user(User(**entry))
        for entry in data.get("segments", []):
            entry = {k: v for k, v in entry.items() if k != "members"}
            app.segments[entry["id"]] = Segment(**entry)
        return app


def new_counters() -> dict:
    return {"requests": 0, "by_status": {}, "rate_limited": 0, "server_errors": 0, "dropped": 0, "hung": 0,
            "user_creates": 0}


class World:
    """Every app, plus the counters tests assert on. Ids come from a seeded generator."""

    def __init__(self, seed: int = 0):
        self.apps: dict[str, App] = {}
        self.counters = new_counters()
        self._random = random.Random(seed)
        self.version = 0          # bumped on every change, so the saver knows when to write
        # CSV exports made: file name -> (ready at, the users as they were, or the gzip bytes once
        # written). Not saved: OneSignal keeps them 3 days.
        self.csv_exports: dict[str, tuple[float, Any]] = {}

    def new_id(self) -> str:
        return str(uuid.UUID(int=self._random.getrandbits(128), version=4))

    def new_key(self) -> str:
        return "os_v2_app_" + "".join(self._random.choices("abcdefghijklmnopqrstuvwxyz234567", k=40))

    def changed(self) -> None:
        self.version += 1

    def count(self, status: int | str) -> None:
        self.counters["requests"] += 1
        by_status = self.counters["by_status"]
        by_status[str(status)] = by_status.get(str(status), 0) + 1
        if status == 429:
            self.counters["rate_limited"] += 1
        elif isinstance(status, int) and status >= 500:
            self.counters["server_errors"] += 1
        elif status in ("dropped", "hung"):
            self.counters[status] += 1

    def user_from_record(self, record: dict) -> User:
        """A User from a seed record: external_id, onesignal_id, subscriptions or subscription_ids,
        tags, aliases (all optional)."""
        subscriptions = [s if isinstance(s, dict) else {"id": str(s), "type": "AndroidPush"}
                         for s in [*record.get("subscriptions", []), *record.get("subscription_ids", [])]]
        for sub in subscriptions:
            sub.setdefault("type", "AndroidPush")
        tags = record.get("tags") or {}
        if not all(isinstance(v, str) for v in tags.values()):
            raise EmulatorError(f"tag values must be strings in {record!r}")
        return User(onesignal_id=str(record.get("onesignal_id") or self.new_id()),
                    external_id=None if record.get("external_id") is None else str(record["external_id"]),
                    aliases=dict(record.get("aliases") or {}), subscriptions=subscriptions, tags=dict(tags))

    # -- JSON -----------------------------------------------------------------------------------
    def to_json(self, *, with_keys: bool = False, with_members: bool = True) -> dict:
        return {"version": FORMAT_VERSION,
                "apps": {a.app_id: a.to_json(with_key=with_keys, with_members=with_members)
                         for a in self.apps.values()},
                "counters": json.loads(json.dumps(self.counters))}

    @classmethod
    def from_json(cls, data: dict, seed: int = 0) -> World:
        if data.get("version") != FORMAT_VERSION:
            raise EmulatorError(f"unknown emulator state version {data.get('version')!r}")
        world = cls(seed)
        for app_data in data.get("apps", {}).values():
            app = App.from_json(app_data)
            world.apps[app.app_id] = app
        world.counters.update(data.get("counters") or {})
        # Ids already handed out came from this seed's first draws: continue from a different stream.
        held = sum(1 + len(a.users) + len(a.segments) for a in world.apps.values())
        world._random = random.Random(f"{seed}/{held}")
        return world

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: a reader (or a crash) sees the old file or the new one, never half."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        # It holds API keys: readable by its owner only, from the first byte written.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)                 # a leftover partial file may have had another mode
            with open(fd, "w", encoding="utf-8") as fh:
                json.dump(self.to_json(with_keys=True, with_members=False), fh, ensure_ascii=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike, seed: int = 0) -> World:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EmulatorError(f"{path}: cannot read the emulator state ({exc})") from exc
        try:
            return cls.from_json(data, seed)
        except (KeyError, TypeError) as exc:
            raise EmulatorError(f"{path}: not an emulator state file ({exc})") from exc


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def read_seed_users(path: str | os.PathLike) -> list[dict]:
    """User records from a JSON file (a list, or {"users": [...]}) or JSON Lines (one per line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EmulatorError(f"{path}: cannot read seed users ({exc})") from exc
    try:
        data = json.loads(text)
        records = data.get("users") if isinstance(data, dict) and "users" in data else data
        records = [records] if isinstance(records, dict) else records     # a one-line JSON Lines file
    except ValueError:
        records = []
        for line_number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except ValueError as exc:
                    raise EmulatorError(f"{path}:{line_number}: not JSON ({exc})") from exc
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise EmulatorError(f"{path}: expected a list of user objects, {{\"users\": [...]}} or JSON Lines")
    return records
