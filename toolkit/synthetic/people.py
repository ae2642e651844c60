"""The people of a data set: who each user is, the ids their events carry before and after the identity
events that tie those ids together, and the value of their profile's ``$onesignal_user_id``.

A user lives only while it is written (events, then profile, then updates). ``Crowd`` makes them one at a
time and keeps the little that carries over from one to the next.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import NamedTuple

from toolkit import onesignal_events as osev
from toolkit.synthetic import catalog
from toolkit.synthetic.period import Period
from toolkit.synthetic.values import ascii_name, encode, pick, uuid4

NEW_USER_SHARE = 0.35  # identified users who sign up during the period (they start at a random time)


class IdSet(NamedTuple):
    """The ids one event line carries, as JSON fragments."""

    distinct_id: str  # the value of distinct_id
    id_props: str  # ', "$device_id": ..., "$user_id": ...' or ""
    context: str  # id_props followed by the user's device properties


class IdentityEvent(NamedTuple):
    """An event of a user's identity story ($identify, $create_alias, $merge, or the Sign Up or Login that
    carries both $device_id and $user_id), as JSON fragments."""

    name: str
    distinct_id: str
    id_props: str
    extra: str  # the event's own properties


@dataclass(frozen=True)
class OneSignalId:
    """The profile's ``$onesignal_user_id``, one of catalog.ONESIGNAL_ID_KINDS (or "none" off profiles)."""

    kind: str
    value: str | int | None = None  # None: the profile does not have the property
    distinct_id: str | None = None  # JSON fragment: messages arrive under it (set only when usable)

    @property
    def is_set(self) -> bool:
        return self.kind not in ("missing", "none")


NO_ONESIGNAL_ID = OneSignalId("none")


@dataclass(eq=False, slots=True)
class User:
    """One person: filled in by ``Crowd``, read by the event stream and the profile maker."""

    n: int  # the user's number in the data set: ids are made from it
    role: str  # "profile" (in profiles.json), "anonymous" (never identified), "ghost" (profile updates only)
    uid: str  # the distinct_id once identified
    email: str
    first: str
    last: str
    city: catalog.City
    plan: str
    platform: catalog.Platform
    device_props: str  # JSON fragment: platform, country, $os, $city, mp_lib, $lib_version
    first_ms: int  # first event
    created_ms: int = 0
    until_ms: int = 0  # end of activity
    persona: str = "plain"
    signup: bool = False  # a Sign Up event is due after the identity story
    pre: list[IdSet] = field(default_factory=list)  # ids of the events before the identity story
    post: list[IdSet] = field(default_factory=list)  # ... and after it
    story: list[IdentityEvent] = field(default_factory=list)
    alias: str | None = None
    alias_chain: str | None = None  # an alias of the alias
    onesignal: OneSignalId = NO_ONESIGNAL_ID
    subscriptions: dict[str, str] = field(default_factory=dict)  # channel -> subscription id
    message_props: dict[str, str] = field(default_factory=dict)  # channel -> JSON fragment (events.py)
    last_event_ms: int | None = None  # set by the event stream

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"

    def with_device(self, ids: list[tuple[str, str]]) -> list[IdSet]:
        return [IdSet(did, idp, idp + self.device_props) for did, idp in ids]


class Crowd:
    """Makes users; remembers what carries over between them: an anon id a later user's device shares, the
    last usable OneSignal id (a later profile repeats it), how many id kinds have been forced in yet."""

    def __init__(self, rng: random.Random, period: Period):
        self.rng = rng
        self.period = period
        self._device_props: dict[tuple[catalog.Platform, str], str] = {}
        self._ascii_names: dict[tuple[str, str], str] = {}
        self._forced_kinds = 0
        self._last_usable: OneSignalId | None = None
        self._last_anon: str | None = None

    def user(self, n: int, role: str) -> User:
        """User number ``n``, in ``role`` (see User.role)."""
        rng = self.rng
        rand = rng.random
        first, last = pick(rng, catalog.FIRST_NAMES), pick(rng, catalog.LAST_NAMES)
        city = pick(rng, catalog.CITIES)
        plan = pick(rng, catalog.PLANS)
        platform = pick(rng, catalog.PLATFORM_TABLE)
        first_ms = self.period.start_ms + int(rand() * self.period.span_ms * 0.9)  # for new users only
        uid, email = self._uid_and_email(n, first, last)
        u = User(n=n, role=role, uid=uid, email=email, first=first, last=last, city=city, plan=plan,
                 platform=platform, device_props=self._device_props_of(platform, city), first_ms=first_ms)
        if role == "anonymous":
            self._act_anonymous(u)
        else:
            self._act_identified(u)
            u.onesignal = self._onesignal_id(u)
        return u

    def _device_props_of(self, platform: catalog.Platform, city: catalog.City) -> str:
        key = (platform, city.name)
        props = self._device_props.get(key)
        if props is None:
            props = self._device_props[key] = (
                f', "platform": "{platform.name}", "country": "{city.country}", "$os": {encode(platform.os)}, '
                f'"$city": {encode(city.name)}, "mp_lib": "{platform.lib}", "$lib_version": "{platform.lib_version}"')
        return props

    def _uid_and_email(self, n: int, first: str, last: str) -> tuple[str, str]:
        name = self._ascii_names.get((first, last))
        if name is None:
            name = self._ascii_names[(first, last)] = ascii_name(first + "." + last)
        style = self.rng.random()
        if style < 0.45:
            uid = f"user_{n:06d}"
        elif style < 0.75:
            uid = f"{name}{n}@example.com"
        else:
            uid = str(1_000_000 + n)
        return uid, uid if "@" in uid else f"{name}{n}@example.com"

    def _act_anonymous(self, u: User) -> None:
        rng = self.rng
        u.created_ms = u.first_ms
        u.until_ms = self.period.until(u.first_ms, rng.random())
        if rng.random() < 0.5:
            dev = uuid4(rng)
            u.persona = "anonymous_device"
            ids = [(encode("$device:" + dev), f', "$device_id": "{dev}"')]
        else:
            u.persona = "anonymous_uuid"
            ids = [(encode(uuid4(rng)), "")]
        u.pre, u.post = u.with_device(ids), u.with_device(ids)

    def _act_identified(self, u: User) -> None:
        """The persona's identity story (Original or Simplified ID Merge), the ids before and after it."""
        rng = self.rng
        rand = rng.random
        u.persona = pick(rng, catalog.PERSONA_TABLE)
        new = rand() < NEW_USER_SHARE  # signs up this period; the others signed up long ago
        u.signup = new
        uid = encode(u.uid)
        pre = post = [(uid, "")]
        if u.persona == "identify":
            anon = self._anon_id()
            pre = [(encode(anon), "")]
            u.story = [IdentityEvent("$identify", uid, "", f', "$identified_id": {uid}, "$anon_id": {encode(anon)}')]
        elif u.persona == "alias":
            u.alias = f"crm-{u.n:06d}" if rand() < 0.5 else f"alias.{u.n}@example.org"
            u.story = [IdentityEvent("$create_alias", uid, "", f', "alias": {encode(u.alias)}')]
            post = [(uid, "")] * 3 + [(encode(u.alias), "")]
            if rand() < 0.3:
                u.alias_chain = f"legacy-{u.n}"
                u.story.append(IdentityEvent("$create_alias", encode(u.alias), "",
                                             f', "alias": {encode(u.alias_chain)}'))
                post.append((encode(u.alias_chain), ""))
        elif u.persona == "merge":
            legacy = encode(f"legacy_{u.n:06d}")
            pre = [(legacy, "")]
            u.story = [IdentityEvent("$merge", uid, "", f', "$distinct_ids": [{uid}, {legacy}]')]
            post = [(uid, "")] * 4 + [(legacy, "")]
        elif u.persona == "simplified":
            dev = uuid4(rng)
            pre = [(encode("$device:" + dev), f', "$device_id": "{dev}"')]
            both = f', "$device_id": "{dev}", "$user_id": {uid}'
            # the first event with both ids merges: a Sign Up, or a Login on a new device
            u.story = [IdentityEvent("Sign Up" if new else "Login", uid, both, pick(rng, catalog.LOGIN_METHOD_PROPS))]
            post = [(uid, both)] * 4 + [(uid, f', "$user_id": {uid}')]
            u.signup = False  # the story's event is the Sign Up
        u.pre, u.post = u.with_device(pre), u.with_device(post)
        if new:
            u.created_ms = u.first_ms
        else:
            u.first_ms = self.period.start_ms
            u.created_ms = self.period.start_ms - int(rand() * 400 * 86400_000)
        u.until_ms = self.period.until(u.first_ms, rand())

    def _anon_id(self) -> str:
        """The anon id an $identify merges: a UUIDv4, a few legacy non-UUIDv4 ids (not to be merged) and a
        few that a shared device already merged."""
        rng = self.rng
        r = rng.random()
        if r < 0.05:
            anon = f"{rng.getrandbits(44):011x}-{rng.getrandbits(56):014x}-{rng.getrandbits(32):08x}"
        elif r < 0.08 and self._last_anon:
            anon = self._last_anon
        else:
            anon = uuid4(rng)
        self._last_anon = anon
        return anon

    def _onesignal_id(self, u: User) -> OneSignalId:
        rng = self.rng
        if u.role == "ghost":  # updates-only users: a usable id set on a profile the export never showed
            kind = pick(rng, ["external_uid", "external_ext", "subscription"])
        elif self._forced_kinds < len(catalog.ONESIGNAL_ID_KINDS):  # every kind appears, whatever the size
            kind = catalog.ONESIGNAL_ID_KINDS[self._forced_kinds]
            self._forced_kinds += 1
        else:
            kind = pick(rng, catalog.ONESIGNAL_KIND_TABLE)
        if kind == "duplicate":  # the id of an earlier profile: both users' messages arrive under it
            if self._last_usable is None:
                kind = "external_uid"
            else:
                return OneSignalId(kind, self._last_usable.value, self._last_usable.distinct_id)
        value: str | int | None = None
        if kind == "external_uid":
            value = u.uid
        elif kind == "external_ext":
            value = f"ext_{rng.getrandbits(32):08x}"
        elif kind == "subscription":
            value = u.subscriptions[osev.PUSH] = uuid4(rng)  # a Subscription (former Player) id: one push one
        elif kind == "unusable_number":
            value = 10_000_000 + u.n
        elif kind == "unusable_blank":
            value = pick(rng, ["", "   "])
        elif kind == "unusable_long":
            value = "ext_" + f"{rng.getrandbits(512):0128x}" * 2
        if kind not in catalog.USABLE_KINDS:
            return OneSignalId(kind, value)
        found = OneSignalId(kind, value, encode(value))
        if u.role == "profile":
            self._last_usable = found
        return found
