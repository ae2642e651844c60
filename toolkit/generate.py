"""Synthetic Mixpanel-shaped data: raw event export, Engage profile export, profile updates.

``generate(out_dir, events=...)`` writes three files that look like what Mixpanel hands out:

- ``events.jsonl`` (``events.jsonl.gz`` with ``compress``): raw export lines. Product events; Original ID
  Merge users (``$identify`` from a UUIDv4 anon id - a few from a non-UUIDv4 or an already merged anon id -,
  ``$create_alias`` including alias chains, ``$merge``); Simplified ID Merge users (``$device:<uuid>`` then
  ``$device_id`` + ``$user_id``); anonymous-only users; OneSignal message events of every catalog name
  (``toolkit.onesignal_events``) sent under the value of the profile's ``$onesignal_user_id``. About 1.5 % of
  the lines repeat an event with the same (event, distinct_id, time, ``$insert_id``): half byte-identical,
  half a later copy (higher ``mp_processing_time_ms``, further down the file) with other properties changed,
  which must win. A few events without ``$insert_id`` are written twice, byte-identical: both count.
- ``profiles.json``: Engage query results, one page of up to 1,000 profiles (the API's page size) after
  another, so that no record grows with the data set. ``$onesignal_user_id`` is an External ID (the user id or
  ``ext_...``), a Subscription UUID, missing, unusable (a number, a blank string, an over-long string) or
  shared by two profiles.
- ``profile_updates.jsonl``: Ingestion API ``/engage`` updates, one operation each, every operation kind,
  some sent under an alias id, some setting ``$onesignal_user_id`` for users absent from ``profiles.json``.

Everything comes from one ``random.Random(seed)`` consumed in a fixed order, and no clock is read: the same
arguments give the same bytes (gzip included: no name, mtime 0). Users are made and written one at a
time (events, then profile, then updates) through bounded buffers, so memory does not grow with ``events``.
Event lines are assembled from JSON fragments serialized once (per constant, per user, per message) rather
than with ``json.dumps`` per event; every value that reaches a line went through the JSON encoder or is
an integer, a formatted float or a hex/UUID string. Gzip compression runs in a writer thread.

``write_sample(out_dir)`` regenerates the committed ``data/sample/``: a small crowd, hand-written named
personas with readable ids, and ``broken/`` lines that a loader must quarantine (data/sample/README.md).
"""

from __future__ import annotations

import calendar
import datetime as dt
import gzip
import json
import os
import queue
import random
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path

from toolkit import onesignal_events as osev

__all__ = ["EVENTS_FILE", "EVENTS_FILE_GZ", "PROFILES_FILE", "UPDATES_FILE", "UPDATE_OPS", "ONESIGNAL_ID_KINDS",
           "SAMPLE_FILES", "default_profiles", "generate", "write_sample"]

EVENTS_FILE = "events.jsonl"
EVENTS_FILE_GZ = "events.jsonl.gz"
PROFILES_FILE = "profiles.json"
UPDATES_FILE = "profile_updates.jsonl"

UPDATE_OPS = ("$set", "$set_once", "$add", "$union", "$append", "$remove", "$unset", "$delete")
# How a profile's $onesignal_user_id looks. "unusable_*" values can never match a OneSignal user;
# "duplicate" repeats the id of an earlier profile.
ONESIGNAL_ID_KINDS = ("external_uid", "external_ext", "subscription", "missing", "unusable_number",
                      "unusable_blank", "unusable_long", "duplicate")
_USABLE = frozenset({"external_uid", "external_ext", "subscription"})

ENGAGE_PAGE_SIZE = 1000  # profiles per Engage page, as the Engage API pages its results
EVENTS_PER_PROFILE = 20  # default profiles = events // 20; plus 1 anonymous user per 8 profiles
DUPLICATE_RATE = 0.016  # chance that an event with an $insert_id is sent twice
REPEAT_RATE = 0.002  # chance that a product event is sent twice WITHOUT an $insert_id
NEW_USER_SHARE = 0.35  # identified users who sign up during the period (they start at a random time)
ONESIGNAL_SHARE = 0.22  # share of a reachable user's events that are OneSignal message events
_FLUSH_LINES = 4096
_GZIP_LEVEL = 6

_j = json.JSONEncoder(ensure_ascii=False).encode  # one encoder: json.dumps(**kw) builds one per call


def _table(pairs) -> list:
    """A lookup table for weighted choice with one random(): [(value, weight)] -> values repeated."""
    return [v for v, w in pairs for _ in range(w)]


def _pick(rng: random.Random, table: list):
    return table[int(rng.random() * len(table))]


# --------------------------------------------------------------------------------------------------
# Vocabulary (pre-serialized where it is used per event)
# --------------------------------------------------------------------------------------------------

_FIRST = ["Emma", "Liam", "Zoë", "José", "Łukasz", "Søren", "Ana", "Chloé", "Mateo", "Aiko", "Noah", "Olivia",
          "Björn", "Fatima", "Ingrid", "Renée", "Yuki", "Omar", "Priya", "Lucas", "Amélie", "Nikolai", "Mei", "Kofi"]
_LAST = ["Smith", "Müller", "García", "Nguyen", "Kowalski", "O'Brien", "Rossi", "Dubois", "Tanaka", "Silva",
         "Johansson", "Novák", "Ivanova", "Haddad", "Kim", "Brown", "Martin", "López", "Jensen", "Ćosić"]
_CITIES = [("Paris", "FR", "fr"), ("Zürich", "CH", "de"), ("São Paulo", "BR", "pt"), ("Kraków", "PL", "pl"),
           ("東京", "JP", "ja"), ("New York", "US", "en"), ("Berlin", "DE", "de"), ("Montréal", "CA", "fr"),
           ("London", "GB", "en"), ("Madrid", "ES", "es"), ("Austin", "US", "en"), ("Bengaluru", "IN", "en")]
# platform, $os, mp_lib, $lib_version, OneSignal device_type
_PLATFORMS = _table([(("web", "Windows", "web", "2.55.1", "Chrome"), 6), (("web", "Mac OS X", "web", "2.55.1",
                     "Safari"), 3), (("ios", "iOS", "swift", "4.3.0", "iOS"), 6),
                     (("android", "Android", "android", "7.5.2", "Android"), 5)])
_PERSONAS = _table([("plain", 6), ("identify", 5), ("alias", 2), ("merge", 1), ("simplified", 6)])
_OS_KIND_TABLE = _table([("external_uid", 80), ("external_ext", 28), ("subscription", 44), ("missing", 36),
                         ("unusable_number", 2), ("unusable_blank", 2), ("unusable_long", 2), ("duplicate", 4)])
_PLANS = ["free", "free", "free", "starter", "starter", "pro", "pro", "enterprise"]
_INTERESTS = ["sports", "music", "cooking", "travel", "tech", "fashion", "gaming", "books", "fitness",
              "photographie", "café ☕", "アニメ"]
_PAGES = [("/", "Home"), ("/pricing", "Preise & Pläne"), ("/produits/été", "Collection d'été"),
          ("/blog/🚀-launch", "We \"launched\" 🚀"), ("/account", "Account"), ("/help", "Centre d’aide"),
          ("/products/42", "Widget 42"), ("/料金", "料金プラン")]
_QUERIES = ["shoes", "red \"running\" shoes", "café crème", "C:\\temp\\file.txt", "日本語", "emoji 🎉",
            "<script>alert(1)</script>", "naïve résumé", "tab\tand\nnewline", "50% off"]
_CATEGORIES = ["chaussures", "électronique", "livres", "jouets", "maison"]
_FEATURES = ["export", "dark mode", "search filters", "sharing", "notifications", "réglages"]
_METHODS = ["password", "google", "apple", "magic link"]
_REFERRERS = ["google", "newsletter", "$direct", "ami·e"]
_CAMPAIGNS = [("Rentrée 🎒 promo", "C'est la rentrée !", "−20 % sur tout"),
              ("Welcome series #1", "Welcome aboard", "Here is how to get started"),
              ("Cart reminder", "You left something behind", "Your cart misses you 🛒"),
              ("¡Oferta flash!", "¡Solo hoy!", "Descuentos de \"verdad\""),
              ("Ваш заказ", "Заказ отправлен", "Отследить посылку"),
              ("Weekly digest", "Your week in review", "3 new features"),
              ("Black Friday ⚡", "Starts now", "Up to 50% off"),
              ("お知らせ", "新機能", "ダークモードが使えます")]

_CATALOG = osev.EVENTS
_OS_TABLE = _table([(e, {"Message Sent": 18, "Message Received": 14, "$campaign_delivery": 10,
                         "$campaign_received": 8, "Message Opened": 8, "App Opened from Push": 6,
                         "$campaign_open": 5, "$app_open": 4}.get(e.name, 1)) for e in _CATALOG])
_OS_DEVICE = {osev.EMAIL: "Email", osev.SMS: "SMS"}

_Q = {name: _j(name) for name in
      ["Sign Up", "Page View", "Search", "Add to Cart", "Purchase", "Login", "Video Played", "Feature Used",
       "Panier validé ✓", "$identify", "$create_alias", "$merge"] + [e.name for e in _CATALOG]}
_PAGE_FRAGS = [', "page": %s, "page_title": %s' % (_j(p), _j(t)) for p, t in _PAGES]
_QUERY_FRAGS = [_j(q) for q in _QUERIES]
_CAT_FRAGS = [_j(c) for c in _CATEGORIES]
_PLAN_FRAGS = [_j(p) for p in ("starter", "pro", "pro", "enterprise")]
_METHOD_FRAGS = [_j(m) for m in _METHODS]
_METHOD_LOGIN = [', "method": %s' % m for m in _METHOD_FRAGS]
_FEATURE_FRAGS = [_j(f) for f in _FEATURES]


def _extra_page(rng):
    return _pick(rng, _PAGE_FRAGS)


def _extra_search(rng):
    return ', "query": %s, "results": %d' % (_pick(rng, _QUERY_FRAGS), int(rng.random() * 40))


def _extra_cart(rng):
    r = rng.random
    return ', "item_id": "sku-%04d", "item_count": %d, "price": %.2f, "catégorie": %s' % (
        int(r() * 500), 1 + int(r() * 4), 3 + r() * 97, _pick(rng, _CAT_FRAGS))


def _extra_purchase(rng):
    r = rng.random
    return ', "amount": %.2f, "currency": "EUR", "plan": %s, "item_count": %d' % (
        5 + r() * 195, _pick(rng, _PLAN_FRAGS), 1 + int(r() * 5))


def _extra_login(rng):
    return ', "method": %s' % _pick(rng, _METHOD_FRAGS)


def _extra_video(rng):
    r = rng.random
    return ', "video_id": "v%03d", "duration_s": %.1f, "quality": "%s"' % (
        int(r() * 300), 5 + r() * 600, "1080p" if r() < 0.6 else "720p")


def _extra_feature(rng):
    return ', "feature": %s, "is_first_use": %s' % (_pick(rng, _FEATURE_FRAGS),
                                                    "true" if rng.random() < 0.2 else "false")


def _extra_checkout(rng):  # unicode in the event name and in property names
    return ', "étape": %d, "total_€": %.2f' % (1 + int(rng.random() * 3), 10 + rng.random() * 90)


_PRODUCTS = [(_Q["Page View"], _extra_page, 36), (_Q["Search"], _extra_search, 9), (_Q["Add to Cart"], _extra_cart, 12),
             (_Q["Purchase"], _extra_purchase, 4), (_Q["Login"], _extra_login, 7),
             (_Q["Video Played"], _extra_video, 9), (_Q["Feature Used"], _extra_feature, 9),
             (_Q["Panier validé ✓"], _extra_checkout, 2)]
_POOL = 64  # pre-serialized property sets per product event and per weight unit

_LINE_NO_IID = '{"event": %s, "properties": {"time": %d, "distinct_id": %s, "mp_processing_time_ms": %d%s%s}}\n'
_SERVER_FRAG = ', "mp_lib": "python", "$lib_version": "4.10.1"'
_ONESIGNAL_FRAG = ', "mp_lib": "onesignal", "$source": "onesignal", "source": "onesignal"'

_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_V4_SET = (0x4000 << 64) | (0x8000 << 48)
_EPOCH = dt.datetime(1970, 1, 1)
_TRANSLIT = str.maketrans({"ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "'": ""})


def _uuid4(rng: random.Random) -> str:
    h = "%032x" % ((rng.getrandbits(128) & _V4_CLEAR) | _V4_SET)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _epoch_ms(day: dt.date) -> int:
    return calendar.timegm(day.timetuple()) * 1000


def _add_months(day: dt.date, months: int) -> dt.date:
    y, m = divmod(day.month - 1 + months, 12)
    year, month = day.year + y, m + 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def _iso(ms: int) -> str:
    """Mixpanel's profile date format, UTC, no zone: '2026-09-03T10:05:30'."""
    return (_EPOCH + dt.timedelta(seconds=ms // 1000)).isoformat()


def _ascii(text: str) -> str:
    """'Łukasz.O'Brien' -> 'lukasz.obrien' (for e-mail addresses)."""
    return unicodedata.normalize("NFKD", text.translate(_TRANSLIT)).encode("ascii", "ignore").decode().lower()


def default_profiles(events: int) -> int:
    """The profile count used when ``profiles`` is not given: one profile per 20 events."""
    return max(1, events // EVENTS_PER_PROFILE)


# --------------------------------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------------------------------

class _User:
    """One person, alive only while it is being written.

    ``pre`` / ``post``: the (distinct_id fragment, id properties, id properties + device fragment) triples
    its events use before / after its identity events ``struct`` (name, distinct_id fragment, id
    properties, extra properties).
    """

    __slots__ = ("n", "uid", "persona", "role", "first", "last", "email", "city", "country", "lang", "plan",
                 "platform", "device_type", "frag", "first_ms", "until_ms", "created_ms", "pre", "post", "struct",
                 "signup", "os_kind", "os_value", "os_did", "subs", "alias", "alias_chain")


class _Gen:
    def __init__(self, rng: random.Random, start: dt.date, months: int, time_in_ms: bool):
        self.rng = rng
        self.start_ms = _epoch_ms(start)
        self.end_ms = _epoch_ms(_add_months(start, months))
        self.div = 1 if time_in_ms else 1000
        self.token = "%032x" % rng.getrandbits(128)
        self.session_id = "%d-%032x" % (rng.randrange(10**9), rng.getrandbits(128))
        self.messages = []
        for i in range(24):
            name, title, body = _CAMPAIGNS[i % len(_CAMPAIGNS)]
            if i >= len(_CAMPAIGNS):
                name = f"{name} · v{i // len(_CAMPAIGNS) + 1}"
            template = _uuid4(rng) if i % 3 else ""
            self.messages.append(', "Message ID": "%s", "Message Name": %s, "Message Title": %s, '
                                 '"Message Contents": %s, "template_id": "%s"'
                                 % (_uuid4(rng), _j(name), _j(title), _j(body), template))
        # One random() picks an event and its properties: (name fragment, properties, alternatives).
        self.products = []
        for nq, fn, weight in _PRODUCTS:
            pool = [fn(rng) for _ in range(weight * _POOL)]
            self.products.extend((nq, extra, pool) for extra in pool)
        self.interests = [rng.sample(_INTERESTS, i % 4) for i in range(64)]
        self.user_frags: dict[tuple, str] = {}
        self.ascii_names: dict[tuple, str] = {}
        self.os_round_robin = 0
        self.forced_os = 0
        self.forced_ops = 0
        self.last_usable_os: tuple[str, str] | None = None  # (value, its distinct_id fragment)
        self.last_anon: str | None = None
        self.last_ms = 0
        self.kinds = {"product": 0, "identity": 0, "onesignal": 0, "duplicate": 0, "repeat_no_insert_id": 0}
        self.names: dict[str, int] = {}  # by JSON-encoded name
        self.personas: dict[str, int] = {}
        self.os_kinds = {k: 0 for k in ONESIGNAL_ID_KINDS}
        self.ops = {op: 0 for op in UPDATE_OPS}

    # ---- identities ------------------------------------------------------------------------------

    def make_user(self, n: int, role: str) -> _User:
        """role: "profile" (in profiles.json), "anonymous" (never identified), "ghost" (updates only)."""
        rng = self.rng
        rand = rng.random
        u = _User()
        u.n, u.role = n, role
        u.first, u.last = _pick(rng, _FIRST), _pick(rng, _LAST)
        u.city, u.country, u.lang = _pick(rng, _CITIES)
        u.plan = _pick(rng, _PLANS)
        plat = _pick(rng, _PLATFORMS)
        u.platform, u.device_type = plat[0], plat[4]
        key = (plat, u.city)
        if key not in self.user_frags:
            self.user_frags[key] = (', "platform": "%s", "country": "%s", "$os": %s, "$city": %s, "mp_lib": "%s", '
                                    '"$lib_version": "%s"' % (plat[0], u.country, _j(plat[1]), _j(u.city), plat[2],
                                                             plat[3]))
        u.frag = self.user_frags[key]
        span = self.end_ms - self.start_ms
        u.first_ms = self.start_ms + int(rand() * span * 0.9)  # for new users; returning ones start at once
        u.until_ms = 0  # end of activity, set below
        ascii_name = self.ascii_names.get((u.first, u.last))
        if ascii_name is None:
            ascii_name = self.ascii_names[(u.first, u.last)] = _ascii(u.first + "." + u.last)
        style = rand()
        if style < 0.45:
            u.uid = "user_%06d" % n
        elif style < 0.75:
            u.uid = "%s%d@example.com" % (ascii_name, n)
        else:
            u.uid = str(1_000_000 + n)
        u.email = u.uid if "@" in u.uid else "%s%d@example.com" % (ascii_name, n)
        u.alias = u.alias_chain = None
        u.subs, u.struct = {}, []
        u.os_kind, u.os_value, u.os_did = "none", None, None
        uid = _j(u.uid)
        pre = post = [(uid, "")]
        if role == "anonymous":
            u.signup = False
            u.created_ms = u.first_ms
            u.until_ms = min(self.end_ms, u.first_ms + 3 * 86400_000 + int(rand() * span))
            if rand() < 0.5:
                dev = _uuid4(rng)
                u.persona = "anonymous_device"
                pre = post = [(_j("$device:" + dev), ', "$device_id": "%s"' % dev)]
            else:
                u.persona = "anonymous_uuid"
                pre = post = [(_j(_uuid4(rng)), "")]
            u.pre, u.post = self._with_frag(u, pre), self._with_frag(u, post)
            return u
        u.persona = _pick(rng, _PERSONAS)
        new = rand() < NEW_USER_SHARE  # signs up this period; the others signed up long ago
        u.signup = new
        if u.persona == "identify":
            r = rand()
            if r < 0.05:  # a legacy, non-UUIDv4 anon id: $identify must not merge it
                anon = "%011x-%014x-%08x" % (rng.getrandbits(44), rng.getrandbits(56), rng.getrandbits(32))
            elif r < 0.08 and self.last_anon:  # a shared device: this anon id was already merged
                anon = self.last_anon
            else:
                anon = _uuid4(rng)
            self.last_anon = anon
            pre = [(_j(anon), "")]
            u.struct = [("$identify", uid, "", ', "$identified_id": %s, "$anon_id": %s' % (uid, _j(anon)))]
        elif u.persona == "alias":
            u.alias = "crm-%06d" % n if rand() < 0.5 else "alias.%d@example.org" % n
            u.struct = [("$create_alias", uid, "", ', "alias": %s' % _j(u.alias))]
            post = [(uid, "")] * 3 + [(_j(u.alias), "")]
            if rand() < 0.3:  # an alias of the alias
                u.alias_chain = "legacy-%d" % n
                u.struct.append(("$create_alias", _j(u.alias), "", ', "alias": %s' % _j(u.alias_chain)))
                post.append((_j(u.alias_chain), ""))
        elif u.persona == "merge":
            legacy = _j("legacy_%06d" % n)
            pre = [(legacy, "")]
            u.struct = [("$merge", uid, "", ', "$distinct_ids": [%s, %s]' % (uid, legacy))]
            post = [(uid, "")] * 4 + [(legacy, "")]
        elif u.persona == "simplified":
            dev = _uuid4(rng)
            pre = [(_j("$device:" + dev), ', "$device_id": "%s"' % dev)]
            both = ', "$device_id": "%s", "$user_id": %s' % (dev, uid)
            # the first event with both ids merges: a Sign Up, or a Login on a new device
            u.struct = [("Sign Up" if new else "Login", uid, both, _pick(rng, _METHOD_LOGIN))]
            post = [(uid, both)] * 4 + [(uid, ', "$user_id": %s' % uid)]
            u.signup = False  # the structural event above is the Sign Up
        u.pre, u.post = self._with_frag(u, pre), self._with_frag(u, post)
        if new:
            u.created_ms = u.first_ms
        else:
            u.first_ms = self.start_ms
            u.created_ms = self.start_ms - int(rand() * 400 * 86400_000)
        u.until_ms = min(self.end_ms, u.first_ms + 3 * 86400_000 + int(rand() * span))
        self.assign_onesignal(u)
        return u

    @staticmethod
    def _with_frag(u: _User, ids: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
        return [(did, idp, idp + u.frag) for did, idp in ids]

    def assign_onesignal(self, u: _User) -> None:
        rng = self.rng
        if u.role == "ghost":  # updates-only users: a usable id set on a profile the export never showed
            kind = _pick(rng, ["external_uid", "external_ext", "subscription"])
        elif self.forced_os < len(ONESIGNAL_ID_KINDS):  # every kind appears in profiles.json, whatever the size
            kind = ONESIGNAL_ID_KINDS[self.forced_os]
            self.forced_os += 1
        else:
            kind = _pick(rng, _OS_KIND_TABLE)
        if kind == "duplicate" and self.last_usable_os is None:
            kind = "external_uid"
        u.os_kind = kind
        if kind == "external_uid":
            u.os_value = u.uid
        elif kind == "external_ext":
            u.os_value = "ext_%08x" % rng.getrandbits(32)
        elif kind == "subscription":
            u.os_value = _uuid4(rng)
            u.subs[osev.PUSH] = u.os_value  # a Subscription (former Player) id is one push subscription
        elif kind == "unusable_number":
            u.os_value = 10_000_000 + u.n
        elif kind == "unusable_blank":
            u.os_value = _pick(rng, ["", "   "])
        elif kind == "unusable_long":
            u.os_value = "ext_" + ("%0128x" % rng.getrandbits(512)) * 2
        elif kind == "duplicate":  # the id of an earlier profile: both users' messages arrive under it
            u.os_value, u.os_did = self.last_usable_os
        if kind in _USABLE:
            u.os_did = _j(u.os_value)
            if u.role == "profile":
                self.last_usable_os = (u.os_value, u.os_did)

    # ---- events ----------------------------------------------------------------------------------

    def times(self, k: int, lo: int, until: int) -> list[int]:
        """k sorted millisecond timestamps in [lo, until): sessions of a few events, seconds apart."""
        rand = self.rng.random
        hi = until - 1
        span = hi - lo
        sessions = max(1, k // (3 + int(rand() * 6)))
        out = []
        append = out.append
        for i in range(sessions):
            t = lo + int(rand() * span)
            for _ in range((i + 1) * k // sessions - i * k // sessions):
                t += 2_000 + int(rand() * 90_000)
                append(t if t < hi else hi)
        out.sort()
        return out

    def channel_frag(self, u: _User, channel: str) -> str:
        frag = u.subs.get((channel,))
        if frag is None:
            sub = u.subs.get(channel) or _uuid4(self.rng)
            u.subs[channel] = sub
            frag = u.subs[(channel,)] = (
                ', "message_type": "%s", "subscription_id": "%s", "device_type": "%s", "language": "%s"'
                % (channel, sub, _OS_DEVICE.get(channel, u.device_type), u.lang))
        return frag

    def onesignal_extra(self, u: _User) -> tuple[str, str]:
        """(name fragment, properties) of the next OneSignal message event."""
        rand = self.rng.random
        if self.os_round_robin < len(_CATALOG):  # every catalog name appears early on, whatever the size
            entry = _CATALOG[self.os_round_robin]
            self.os_round_robin += 1
        else:
            entry = _OS_TABLE[int(rand() * len(_OS_TABLE))]
        channel = entry.channels[int(rand() * len(entry.channels))]
        return _Q[entry.name], _pick(self.rng, self.messages) + self.channel_frag(u, channel)

    def user_events(self, u: _User, k: int) -> list[str]:
        """Exactly k event lines for one user, in time order except for deferred duplicates."""
        if k <= 0:
            return []
        rng = self.rng
        rand, hexid, div, names, products = rng.random, rng.randbytes, self.div, self.names, self.products
        n_products = len(products)
        times = self.times(k, u.first_ms, u.until_ms)
        struct = u.struct
        if struct and len(struct) + 2 > k:  # too few events to act out the identity story
            struct = []
            pre = post = [(_j(u.uid), "", u.frag)]
        else:
            pre, post = u.pre, u.post
        split = 1 + int(rand() * max(1, (k - len(struct)) // 3)) if struct else 0
        n_struct, si = len(struct), 0  # identity events left to write, from the first slot >= split
        signup = u.signup
        reachable = u.os_did is not None
        n_product = n_identity = n_onesignal = n_dup = n_repeat = 0
        out: list[str] = []
        append = out.append
        deferred: list[str] = []
        s = 0
        while s < k:
            t = times[s]
            ptime = t + 50 + int(rand() * 4_000)
            if si < n_struct and s >= split:
                name, did, idp, extra = struct[si]
                si += 1
                nq = _Q[name]
                append(f'{{"event": {nq}, "properties": {{"time": {t // div}, "distinct_id": {did}, '
                       f'"$insert_id": "{hexid(16).hex()}", "mp_processing_time_ms": {ptime}{idp}{u.frag}{extra}}}}}\n')
                if name in ("Sign Up", "Login"):
                    n_product += 1
                else:
                    n_identity += 1
                names[nq] = names.get(nq, 0) + 1
                s += 1
                continue
            phase = pre if s < split else post
            did, idp, ctx = phase[int(rand() * len(phase))]
            pool = None
            if signup and s >= split:
                signup = False
                nq, extra, onesignal = _Q["Sign Up"], _pick(rng, _METHOD_LOGIN), False
            elif reachable and s >= split and rand() < ONESIGNAL_SHARE:
                nq, extra = self.onesignal_extra(u)
                did, ctx, onesignal = u.os_did, _ONESIGNAL_FRAG, True
            else:
                nq, extra, pool = products[int(rand() * n_products)]
                onesignal = False
            r = rand()
            if r < REPEAT_RATE and not onesignal and s + 2 <= k:  # no $insert_id, sent twice: both count
                line = _LINE_NO_IID % (nq, t // div, did, ptime, idp + _SERVER_FRAG, extra)
                append(line)
                append(line)
                n_product += 1
                n_repeat += 1
                names[nq] = names.get(nq, 0) + 2
                s += 2
                continue
            iid = hexid(16).hex()
            head = f'{{"event": {nq}, "properties": {{"time": {t // div}, "distinct_id": {did}, "$insert_id": "{iid}", '
            append(f'{head}"mp_processing_time_ms": {ptime}{ctx}{extra}}}}}\n')
            if onesignal:
                n_onesignal += 1
            else:
                n_product += 1
            names[nq] = names.get(nq, 0) + 1
            s += 1
            if r < REPEAT_RATE + DUPLICATE_RATE and s < k:  # same (event, distinct_id, time, $insert_id)
                if rand() < 0.5:
                    dup = out[-1]  # a byte-identical retry
                else:  # a later copy with other properties changed: this is the copy that must win
                    if pool is not None:
                        extra = pool[int(rand() * len(pool))]
                    ptime += 60_000 + int(rand() * 3_600_000)
                    dup = f'{head}"mp_processing_time_ms": {ptime}{ctx}{extra}}}}}\n'
                (out if rand() < 0.6 else deferred).append(dup)
                n_dup += 1
                names[nq] += 1
                s += 1
        out.extend(deferred)
        self.last_ms = times[-1]
        kinds = self.kinds
        kinds["product"] += n_product
        kinds["identity"] += n_identity
        kinds["onesignal"] += n_onesignal
        kinds["duplicate"] += n_dup
        kinds["repeat_no_insert_id"] += n_repeat
        return out

    # ---- profiles and updates ----------------------------------------------------------------------

    def profile(self, u: _User, last_ms: int) -> str:
        rng = self.rng
        rand = rng.random
        props = {
            "$created": _iso(u.created_ms),
            "$email": u.email,
            "$name": f"{u.first} {u.last}",
            "$first_name": u.first,
            "$last_name": u.last,
            "$last_seen": _iso(max(last_ms, u.created_ms)),
            "$city": u.city,
            "$country_code": u.country,
            "plan": u.plan,
            "lifetime_value": round(rand() * 900, 2) if u.plan != "free" else 0,
            "interests": list(_pick(rng, self.interests)),
            "is_beta": rand() < 0.15,
            "login_count": int(rand() * 60),
        }
        if rand() < 0.4:
            props["birthday"] = "%04d-%02d-%02d" % (1950 + int(rand() * 55), 1 + int(rand() * 12), 1 + int(rand() * 28))
        if rand() < 0.3:
            props["Préférence de contact"] = _pick(rng, ["e-mail", "SMS", "aucune ✗"])
        if u.os_kind not in ("missing", "none"):
            props["$onesignal_user_id"] = u.os_value
        return _j({"$distinct_id": u.uid, "$properties": props})

    def updates(self, u: _User) -> list[str]:
        rng = self.rng
        rand = rng.random
        ops: list[tuple[str, object]] = []
        if u.os_kind not in ("missing", "none") and (u.role == "ghost" or rand() < 0.9):
            props = {"$onesignal_user_id": u.os_value}  # Mixpanel aliases this value to the distinct_id
            if u.role == "ghost":
                props.update({"$email": u.email, "$name": f"{u.first} {u.last}", "plan": u.plan})
            ops.append(("$set", props))
        forced = None
        if self.forced_ops < len(UPDATE_OPS):  # every operation appears, whatever the size
            forced = UPDATE_OPS[self.forced_ops]
            self.forced_ops += 1
        for op, p in (("$set", 0.3), ("$set_once", 0.2), ("$add", 0.25), ("$union", 0.15), ("$append", 0.1),
                      ("$remove", 0.08), ("$unset", 0.06), ("$delete", 0.01)):
            if op != forced and rand() >= p:
                continue
            if op == "$set":
                payload = {"plan": _pick(rng, _PLANS), "last_campaign": _pick(rng, _CAMPAIGNS)[0]}
            elif op == "$set_once":
                payload = {"first_platform": u.platform, "initial_referrer": _pick(rng, _REFERRERS)}
            elif op == "$add":
                payload = {"lifetime_value": round(rand() * 120, 2), "purchase_count": 1}
            elif op == "$union":
                payload = {"interests": _pick(rng, self.interests)[:2] or ["books"]}
            elif op == "$append":
                payload = {"visited_pages": _pick(rng, _PAGES)[0]}
            elif op == "$remove":
                payload = {"interests": _pick(rng, _INTERESTS)}
            elif op == "$unset":
                payload = ["is_beta"]
            else:
                payload = None
            ops.append((op, payload))
        if not ops:
            return []
        lo = u.first_ms
        stamps = sorted(lo + int(rand() * (self.end_ms - lo)) for _ in ops)
        aliases = [a for a in (u.alias, u.alias_chain) if a]
        out = []
        for (op, payload), ms in zip(ops, stamps, strict=True):
            did = u.uid
            if aliases and op != "$delete" and rand() < 0.5:
                did = _pick(rng, aliases)  # sent under an alias id: must land on the same profile
            upd = {"$token": self.token, "$distinct_id": did, "$time": ms, op: payload}
            if op == "$delete" and (op == forced or rand() < 0.5):
                upd["$ignore_alias"] = True
            out.append(_j(upd) + "\n")
            self.ops[op] += 1
        return out


# --------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------

class _Out:
    """A file written from buffered str lines, gzip or not, renamed into place only when complete.

    With gzip, compression runs in a thread (zlib releases the GIL) fed through a bounded queue.
    """

    def __init__(self, path: Path, compress: bool = False):
        self.path = path
        self.tmp = path.with_name(path.name + ".part")
        self.raw = open(self.tmp, "wb")
        self.buf: list[str] = []
        self.lines = 0
        self.error: BaseException | None = None
        self.gz = self.queue = self.thread = None
        if compress:
            self.gz = gzip.GzipFile(filename="", mode="wb", fileobj=self.raw, compresslevel=_GZIP_LEVEL, mtime=0)
            self.queue = queue.Queue(maxsize=4)
            self.thread = threading.Thread(target=self._pump, name=f"gzip {path.name}", daemon=True)
            self.thread.start()

    def _pump(self) -> None:
        while (chunk := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.gz.write(chunk)
                except BaseException as exc:  # reported by flush/close on the caller's thread
                    self.error = exc

    def write(self, text: str) -> None:
        self.buf.append(text)

    def extend(self, lines: list[str]) -> None:
        self.buf.extend(lines)
        self.lines += len(lines)

    def flush(self) -> None:
        if self.error is not None:
            raise self.error
        if self.buf:
            # line by line: one joined str holding an emoji would take 4 bytes per character
            data = b"".join([line.encode("utf-8") for line in self.buf])
            self.buf.clear()
            if self.queue is not None:
                self.queue.put(data)
            else:
                self.raw.write(data)

    def _stop(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()

    def close(self) -> int:
        self.flush()
        self._stop()
        if self.error is not None:
            raise self.error
        if self.gz is not None:
            self.gz.close()
        self.raw.close()
        os.replace(self.tmp, self.path)
        return self.path.stat().st_size

    def abort(self) -> None:
        try:
            self._stop()
            self.raw.close()
        finally:
            self.tmp.unlink(missing_ok=True)


class _Pages:
    """Profiles written as Engage query results: a page of up to ENGAGE_PAGE_SIZE, then the next."""

    def __init__(self, out: _Out, session_id: str, total: int):
        self.out, self.session_id, self.total = out, session_id, total
        self.count = self.pages = 0

    def add(self, profile: str) -> None:
        if self.count % ENGAGE_PAGE_SIZE == 0:
            if self.count:
                self._end_page()
            self.out.write('{"results": [\n')
        else:
            self.out.write(",\n")
        self.out.write(profile)
        self.count += 1

    def close(self) -> None:
        if not self.count:  # no profiles: still one (empty) page, as the API answers
            self.out.write('{"results": [')
        self._end_page()

    def _end_page(self) -> None:
        self.out.write('\n], "page": %d, "page_size": %d, "session_id": "%s", "status": "ok", "total": %d}\n'
                       % (self.pages, ENGAGE_PAGE_SIZE, self.session_id, self.total))
        self.pages += 1


def _budget(rng: random.Random, remaining: int, users_left: int) -> int:
    """Events for the next user: exponential around the running mean, 3 % heavy users, sums exactly."""
    if users_left <= 1:
        return remaining
    mean = remaining / users_left
    if rng.random() < 0.03:
        k = int(mean * (5 + rng.random() * 10))
    else:
        k = int(rng.expovariate(1 / (mean * 0.72 + 0.5)) + 0.5)
    return min(k, remaining)


def generate(out_dir, *, events: int, profiles: int | None = None, seed: int = 7,
             start: dt.date = dt.date(2026, 9, 1), months: int = 2, compress: bool = False,
             time_in_ms: bool = False, progress: Callable[[int], None] | None = None) -> dict:
    """Write events, profiles and profile updates into ``out_dir``; return counts of what was written.

    ``events`` is the exact number of event lines (duplicates included), spread over ``months`` calendar
    months from ``start`` (UTC). ``profiles`` defaults to ``events // 20``; one anonymous user per 8 profiles
    and one updates-only user per 100 profiles come on top. ``progress`` is called with the number of event
    lines written so far. Files are written under a ``.part`` name and renamed when complete.
    """
    return _run(out_dir, events=events, profiles=profiles, seed=seed, start=start, months=months,
                compress=compress, time_in_ms=time_in_ms, progress=progress, personas=False)


def _run(out_dir, *, events, profiles, seed, start, months, compress, time_in_ms, progress, personas) -> dict:
    if isinstance(events, bool) or not isinstance(events, int) or events < 0:
        raise ValueError(f"events must be a non-negative integer, got {events!r}")
    if profiles is None:
        profiles = default_profiles(events)
    if isinstance(profiles, bool) or not isinstance(profiles, int) or profiles < 0:
        raise ValueError(f"profiles must be a non-negative integer, got {profiles!r}")
    if not isinstance(months, int) or months < 1:
        raise ValueError(f"months must be a positive integer, got {months!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    events_name = EVENTS_FILE_GZ if compress else EVENTS_FILE

    rng = random.Random(seed)
    g = _Gen(rng, start, months, time_in_ms)
    files = []
    try:
        ev = _Out(out / events_name, compress)
        files.append(ev)
        pr = _Out(out / PROFILES_FILE)
        files.append(pr)
        up = _Out(out / UPDATES_FILE)
        files.append(up)
        remaining = events
        named_events, named_profiles, named_updates = _named_personas(g) if personas else ([], [], [])
        pages = _Pages(pr, g.session_id, total=len(named_profiles) + profiles)
        if personas:
            ev.extend(named_events[:remaining])
            remaining -= min(len(named_events), remaining)
            for p in named_profiles:
                pages.add(_j(p))
            up.extend([_j(x) + "\n" for x in named_updates])
        left = {"profile": profiles, "anonymous": profiles // 8, "ghost": profiles // 100}
        users_left = sum(left.values())
        n = 0
        while users_left:
            r = rng.randrange(users_left)
            role = "profile" if r < left["profile"] else \
                "anonymous" if r < left["profile"] + left["anonymous"] else "ghost"
            left[role] -= 1
            n += 1
            u = g.make_user(n, role)
            g.personas[u.persona] = g.personas.get(u.persona, 0) + 1
            k = _budget(rng, remaining, users_left)
            users_left -= 1
            remaining -= k
            lines = g.user_events(u, k)
            ev.extend(lines)
            if role == "profile":
                g.os_kinds[u.os_kind] += 1
                pages.add(g.profile(u, g.last_ms if lines else u.created_ms))
            if role != "anonymous":
                up.extend(g.updates(u))
            if len(ev.buf) >= _FLUSH_LINES:
                for f in files:
                    f.flush()
                if progress is not None:
                    progress(ev.lines)
        if remaining:  # no users at all (profiles=0): the events go to anonymous devices
            while remaining:
                n += 1
                u = g.make_user(n, "anonymous")
                g.personas[u.persona] = g.personas.get(u.persona, 0) + 1
                k = min(remaining, 1 + int(rng.expovariate(1 / 15)))
                ev.extend(g.user_events(u, k))
                remaining -= k
                if len(ev.buf) >= _FLUSH_LINES:
                    ev.flush()
                    if progress is not None:
                        progress(ev.lines)
        pages.close()
        sizes = {f.path.name: f.close() for f in files}
    except BaseException:
        for f in files:
            f.abort()
        raise
    if progress is not None:
        progress(ev.lines)
    return {
        "out_dir": str(out),
        "seed": seed,
        "start": _iso(g.start_ms)[:10],
        "end": _iso(g.end_ms)[:10],  # exclusive
        "time_unit": "ms" if time_in_ms else "s",
        "files": {
            events_name: {"lines": ev.lines, "bytes": sizes[events_name]},
            PROFILES_FILE: {"profiles": pages.count, "pages": pages.pages, "bytes": sizes[PROFILES_FILE]},
            UPDATES_FILE: {"lines": up.lines, "bytes": sizes[UPDATES_FILE]},
        },
        "events": ev.lines,
        "profiles": pages.count,
        "profile_updates": up.lines,
        "event_kinds": dict(g.kinds),
        "event_names": {json.loads(k): v for k, v in sorted(g.names.items())},
        "personas": dict(sorted(g.personas.items())),  # the generated crowd (named personas not included)
        "onesignal_ids": dict(g.os_kinds),  # crowd profiles in profiles.json, by $onesignal_user_id kind
        "update_ops": dict(g.ops),
    }


# --------------------------------------------------------------------------------------------------
# The committed sample: a crowd, named personas, broken lines
# --------------------------------------------------------------------------------------------------

SAMPLE_EVENTS = 4500  # event lines in data/sample/events.jsonl, named personas included
SAMPLE_PROFILES = 300  # crowd profiles; the named personas add theirs
SAMPLE_SEED = 2026
SAMPLE_FILES = (EVENTS_FILE, PROFILES_FILE, UPDATES_FILE, "broken/broken_events.jsonl", "broken/expected.tsv")

_WEB = {"platform": "web", "country": "US", "$os": "Mac OS X", "$city": "Austin", "mp_lib": "web",
        "$lib_version": "2.55.1"}
_IOS = {"platform": "ios", "country": "FR", "$os": "iOS", "$city": "Paris", "mp_lib": "swift", "$lib_version": "4.3.0"}
_SHARED_SUBSCRIPTION = "c0ffee00-1234-4abc-8def-0123456789ab"
_HEIDI_EXTERNAL_ID = 'ext/heidi "zoë" ✓'


def _named_personas(g: _Gen) -> tuple[list[str], list[dict], list[dict]]:
    """Hand-written users with readable ids (see data/sample/README.md). Insert ids are '<name>-NNNN'."""
    lines: list[str] = []
    profiles: list[dict] = []
    updates: list[dict] = []

    def ms(when: str) -> int:
        return calendar.timegm(dt.datetime.fromisoformat(when).timetuple()) * 1000

    def ev(name, when, did, iid, props=None, base=_WEB, kind=None, delay=1500, copies=1):
        p = {"time": ms(when) // g.div, "distinct_id": did}
        if iid:
            p["$insert_id"] = iid
        p["mp_processing_time_ms"] = ms(when) + delay
        p.update(base)
        p.update(props or {})
        line = _j({"event": name, "properties": p}) + "\n"
        for i in range(copies):
            lines.append(line)
            k = kind or ("identity" if name in ("$identify", "$create_alias", "$merge") else
                         "onesignal" if osev.is_onesignal_event(name) else "product")
            g.kinds[k if i == 0 else "repeat_no_insert_id"] += 1
            g.names[_j(name)] = g.names.get(_j(name), 0) + 1

    def msg(name, when, did, iid, channel, sub, n, device="iOS", lang="en"):
        title, body = _CAMPAIGNS[n][1:]
        props = {"$source": "onesignal", "source": "onesignal", "Message ID": "a0000000-0000-4000-8000-%012d" % n,
                 "Message Name": _CAMPAIGNS[n][0], "Message Title": title, "Message Contents": body,
                 "template_id": "b0000000-0000-4000-8000-%012d" % n, "message_type": channel,
                 "subscription_id": sub, "device_type": device, "language": lang}
        ev(name, when, did, iid, props, base={"mp_lib": "onesignal"})

    def profile(did, first, last, created, seen, os_id=None, plan="free", ltv=0, interests=(), beta=False,
                city=("Austin", "US")):
        props = {"$created": created, "$email": f"{did}@example.com" if "@" not in did else did,
                 "$name": f"{first} {last}", "$first_name": first, "$last_name": last, "$last_seen": seen,
                 "$city": city[0], "$country_code": city[1], "plan": plan, "lifetime_value": ltv,
                 "interests": list(interests), "is_beta": beta, "login_count": 3}
        if os_id is not None:
            props["$onesignal_user_id"] = os_id
        profiles.append({"$distinct_id": did, "$properties": props})

    def update(did, when, op, payload, ignore_alias=False):
        upd = {"$token": g.token, "$distinct_id": did, "$time": ms(when), op: payload}
        if ignore_alias:
            upd["$ignore_alias"] = True
        updates.append(upd)
        g.ops[op] += 1

    home = {"page": "/", "page_title": "Home"}
    pricing = {"page": "/pricing", "page_title": "Preise & Pläne"}
    account = {"page": "/account", "page_title": "Account"}

    def buy(amount, plan="pro", items=1, **more):
        return {**more, "amount": amount, "currency": "EUR", "plan": plan, "item_count": items}

    # alice: Original ID Merge, $identify from a UUIDv4 anon id; a duplicate Purchase whose later copy wins.
    alice, anon = "alice@example.com", "3b6f0c3e-8c1d-4f5a-9e2b-7d4c1a0f5e21"
    inbox = "e0000000-0000-4000-8000-00000000a11c"
    ev("Page View", "2026-09-03T10:00:00", anon, "alice-0001", home)
    ev("Page View", "2026-09-03T10:02:00", anon, "alice-0002", pricing)
    ev("$identify", "2026-09-03T10:05:00", alice, "alice-0003", {"$identified_id": alice, "$anon_id": anon})
    ev("Sign Up", "2026-09-03T10:05:30", alice, "alice-0004", {"method": "password"})
    ev("Purchase", "2026-09-03T10:20:00", alice, "alice-0005", buy(19.99))
    ev("Purchase", "2026-09-03T10:20:00", alice, "alice-0005", buy(24.99), kind="duplicate", delay=3_600_000)
    ev("Page View", "2026-10-02T09:00:00", alice, "alice-0006", account)
    msg("$campaign_delivery", "2026-10-05T08:00:00", alice, "alice-0007", "email", inbox, 5, device="Email")
    msg("Message Opened", "2026-10-05T08:30:00", alice, "alice-0008", "email", inbox, 5, device="Email")
    profile(alice, "Alice", "Anderson", "2026-09-03T10:05:30", "2026-10-05T08:30:00", alice, plan="pro", ltv=24.99,
            interests=["tech", "sports"])
    update(alice, "2026-09-03T10:06:00", "$set", {"$onesignal_user_id": alice, "plan": "pro"})
    update(alice, "2026-09-03T10:21:00", "$append", {"visited_pages": "/pricing"})
    update(alice, "2026-10-02T09:01:00", "$remove", {"interests": "sports"})

    # bob: $create_alias chain robert.b -> bob@example.com -> bob; events and updates under the aliases.
    phone = "50000000-0000-4000-8000-000000000b0b"
    ev("Sign Up", "2026-09-05T14:00:00", "bob", "bob-0001", {"method": "google"})
    ev("$create_alias", "2026-09-05T14:00:05", "bob", "bob-0002", {"alias": "bob@example.com"})
    ev("$create_alias", "2026-09-20T09:00:00", "bob@example.com", "bob-0003", {"alias": "robert.b"})
    ev("Page View", "2026-10-08T12:00:00", "robert.b", "bob-0004", home)
    ev("Purchase", "2026-10-09T12:00:00", "bob@example.com", "bob-0005", buy(42.0, plan="starter", items=2))
    msg("Message Sent", "2026-10-10T18:00:00", "ext_bob", "bob-0006", "push", phone, 2)
    msg("App Opened from Push", "2026-10-10T18:05:00", "ext_bob", "bob-0007", "push", phone, 2)
    profile("bob", "Bob", "Brown", "2026-09-05T14:00:00", "2026-10-10T18:05:00", "ext_bob", plan="starter", ltv=42.0)
    update("bob", "2026-09-05T14:01:00", "$set", {"$onesignal_user_id": "ext_bob"})
    update("bob@example.com", "2026-10-09T12:01:00", "$add", {"lifetime_value": 42.0, "purchase_count": 1})
    update("robert.b", "2026-10-09T12:02:00", "$union", {"interests": ["tech", "music"]})

    # carol: $merge of carol-legacy-77 into carol; in October only delivery events (not an October MTU).
    legacy, sms = "carol-legacy-77", "5e000000-0000-4000-8000-0000000ca201"
    ev("Page View", "2026-09-01T08:00:00", legacy, "carol-0001", {"page": "/help", "page_title": "Centre d’aide"})
    ev("Login", "2026-09-01T08:01:00", legacy, "carol-0002", {"method": "password"})
    ev("$merge", "2026-09-15T11:00:00", "carol", "carol-0003", {"$distinct_ids": ["carol", legacy]})
    ev("Feature Used", "2026-09-15T11:05:00", "carol", "carol-0004", {"feature": "dark mode", "is_first_use": True})
    msg("Message Received", "2026-10-04T09:00:00", "carol", "carol-0005", "sms", sms, 3, device="SMS")
    msg("$campaign_received", "2026-10-04T09:00:01", "carol", "carol-0006", "sms", sms, 3, device="SMS")
    msg("SMS Undelivered", "2026-10-12T09:00:00", "carol", "carol-0007", "sms", sms, 3, device="SMS")
    profile("carol", "Carol", "Castillo", "2026-09-01T08:00:00", "2026-09-15T11:05:00", "carol", plan="pro",
            ltv=120.5, city=("Madrid", "ES"))
    update("carol", "2026-09-15T11:01:00", "$set", {"$onesignal_user_id": "carol"})

    # dave: Simplified ID Merge, $device:<uuid> then an event with both $device_id and $user_id.
    dev, phone = "9c1e2f3a-4b5c-4d6e-8f70-81a2b3c4d5e6", "50000000-0000-4000-8000-00000000da7e"
    both = {"$device_id": dev, "$user_id": "dave"}
    cart = {"item_id": "sku-0042", "item_count": 1, "price": 59.9, "catégorie": "maison"}
    ev("Page View", "2026-09-10T19:00:00", "$device:" + dev, "dave-0001",
       {"$device_id": dev, "page": "/products/42", "page_title": "Widget 42"}, base=_IOS)
    ev("Add to Cart", "2026-09-10T19:03:00", "$device:" + dev, "dave-0002", {"$device_id": dev, **cart}, base=_IOS)
    ev("Sign Up", "2026-09-10T19:05:00", "dave", "dave-0003", {**both, "method": "apple"}, base=_IOS)
    ev("Purchase", "2026-10-03T18:00:00", "dave", "dave-0004", buy(59.9, **both), base=_IOS)
    msg("$campaign_delivery", "2026-10-03T18:30:00", "dave", "dave-0005", "push", phone, 6, lang="fr")
    msg("$app_open", "2026-10-03T18:31:00", "dave", "dave-0006", "push", phone, 6, lang="fr")
    profile("dave", "Dave", "Dubois", "2026-09-10T19:05:00", "2026-10-03T18:31:00", "dave", plan="pro", ltv=59.9,
            city=("Paris", "FR"))
    update("dave", "2026-09-10T19:06:00", "$set", {"$onesignal_user_id": "dave"})

    # erin: $onesignal_user_id is a Subscription (Player) UUID; her message events arrive under it.
    sub = "5f0d7a2c-1e3b-4c6d-a8e9-0b1c2d3e4f50"
    ev("Login", "2026-09-12T07:30:00", "erin", "erin-0001", {"method": "magic link"}, base=_IOS)
    for i, (name, when) in enumerate([
            ("Message Sent", "2026-09-20T08:00:00"), ("Message Received", "2026-09-20T08:00:02"),
            ("App Opened from Push", "2026-09-20T08:10:00"), ("$campaign_delivery", "2026-10-01T08:00:00"),
            ("$campaign_received", "2026-10-01T08:00:02"), ("Push Failed", "2026-10-08T08:00:00"),
            ("Push Unsubscribed", "2026-10-15T08:00:00"), ("$unsubscribe", "2026-10-15T08:00:01")], 2):
        msg(name, when, sub, "erin-%04d" % i, "push", sub, 1)
    profile("erin", "Erin", "Evans", "2025-06-01T12:00:00", "2026-10-15T08:00:01", sub, city=("London", "GB"))
    update("erin", "2026-09-12T07:31:00", "$set", {"$onesignal_user_id": sub})

    # frank: no $onesignal_user_id; a server event without $insert_id sent twice (both copies count).
    ev("Purchase", "2026-09-02T16:00:00", "frank", "frank-0001", buy(12.5, plan="starter"))
    ev("Purchase", "2026-10-20T16:00:00", "frank", "frank-0002", buy(80.0, items=3))
    ev("Page View", "2026-10-21T09:00:00", "frank", None, account, base={"mp_lib": "python", "$lib_version": "4.10.1"},
       copies=2)
    profile("frank", "Frank", "Fischer", "2024-11-30T09:00:00", "2026-10-21T09:00:00", plan="pro", ltv=92.5,
            city=("Berlin", "DE"))

    # grace: anonymous only (Simplified device id), no profile.
    dev = "0d9b8a7c-6e5f-4a3b-b2c1-d0e9f8a7b6c5"
    ev("Page View", "2026-09-25T21:00:00", "$device:" + dev, "grace-0001", {"$device_id": dev, **home})
    ev("Search", "2026-09-25T21:01:00", "$device:" + dev, "grace-0002",
       {"$device_id": dev, "query": "café crème", "results": 3})
    ev("Page View", "2026-10-25T21:00:00", "$device:" + dev, "grace-0003", {"$device_id": dev, **pricing})

    # heidi: an External ID with '/', spaces, quotes and unicode (must be URL-encoded by an exporter).
    heidi, inbox = _HEIDI_EXTERNAL_ID, "e0000000-0000-4000-8000-0000000ae1d1"
    ev("Login", "2026-10-06T10:00:00", "heidi", "heidi-0001", {"method": "password"})
    msg("$campaign_delivery", "2026-10-07T10:00:00", heidi, "heidi-0002", "email", inbox, 0, device="Email", lang="de")
    msg("Message Opened", "2026-10-07T11:00:00", heidi, "heidi-0003", "email", inbox, 0, device="Email", lang="de")
    profile("heidi", "Heidi", "Müller", "2026-10-06T10:00:00", "2026-10-07T11:00:00", heidi, city=("Zürich", "CH"))
    update("heidi", "2026-10-06T10:01:00", "$set", {"$onesignal_user_id": heidi})

    # ivan and judy: two profiles with the same Subscription id (a shared tablet).
    tablet = _SHARED_SUBSCRIPTION
    ev("Login", "2026-09-08T12:00:00", "ivan", "ivan-0001", {"method": "password"})
    ev("Login", "2026-10-08T12:00:00", "judy", "judy-0001", {"method": "password"})
    msg("Message Sent", "2026-10-09T12:00:00", tablet, "ivan-0002", "in_app", tablet, 7, device="Android")
    msg("Message Opened", "2026-10-09T12:01:00", tablet, "ivan-0003", "in_app", tablet, 7, device="Android")
    profile("ivan", "Ivan", "Ivanov", "2025-02-02T12:00:00", "2026-10-09T12:01:00", tablet)
    profile("judy", "Judy", "Jensen", "2025-03-03T12:00:00", "2026-10-09T12:01:00", tablet)
    update("ivan", "2026-09-08T12:01:00", "$set", {"$onesignal_user_id": tablet})
    update("judy", "2026-10-08T12:01:00", "$set", {"$onesignal_user_id": tablet})

    # ken, leo, mia: unusable $onesignal_user_id (a number, a blank string, an over-long string).
    ev("Login", "2026-09-14T12:00:00", "ken", "ken-0001", {"method": "google"})
    ev("Page View", "2026-10-14T12:00:00", "leo", "leo-0001", home)
    ev("Page View", "2026-10-15T12:00:00", "mia", "mia-0001", home)
    profile("ken", "Ken", "Kim", "2025-04-04T12:00:00", "2026-09-14T12:00:00", 4815162342)
    profile("leo", "Leo", "López", "2025-05-05T12:00:00", "2026-10-14T12:00:00", "   ")
    profile("mia", "Mia", "Martin", "2025-06-06T12:00:00", "2026-10-15T12:00:00", "ext_" + "m" * 300)

    # oscar: not in profiles.json; a profile update sets his $onesignal_user_id (so it is aliased).
    ev("Sign Up", "2026-10-02T10:00:00", "oscar", "oscar-0001", {"method": "google"})
    msg("$campaign_open", "2026-10-03T10:00:00", "ext_oscar", "oscar-0002", "email",
        "e0000000-0000-4000-8000-0000000005ca", 4, device="Email")
    update("oscar", "2026-10-02T10:01:00", "$set",
           {"$onesignal_user_id": "ext_oscar", "$email": "oscar@example.com", "$name": "Oscar Ortiz"})

    # peggy: set_once, unset, then deleted ($delete with $ignore_alias).
    ev("Page View", "2026-09-16T12:00:00", "peggy", "peggy-0001", home)
    profile("peggy", "Peggy", "Pérez", "2025-07-07T12:00:00", "2026-09-16T12:00:00", None, beta=True)
    update("peggy", "2026-09-16T12:01:00", "$set_once", {"initial_referrer": "newsletter"})
    update("peggy", "2026-09-17T12:00:00", "$unset", ["is_beta"])
    update("peggy", "2026-10-30T12:00:00", "$delete", None, ignore_alias=True)
    return lines, profiles, updates


# Each broken line has exactly one defect; the rest of the line is valid. (line text, reason keyword or None)
def _broken_lines() -> list[tuple[str, str | None]]:
    def good(n: int, event="Page View", **props) -> dict:
        p = {"time": 1790000000 + 60 * n, "distinct_id": f"broken-user-{n}", "$insert_id": f"broken-{n:04d}",
             "mp_lib": "web"}
        p.update(props)
        return {"event": event, "properties": p}

    def without(d: dict, key: str) -> dict:
        d["properties"].pop(key)
        return d

    rows: list[tuple[object, str | None]] = [
        (good(1), None),
        ('{"event": "Page View", "properties": {"time": 1790000120, "distinct_id": "broken-user-2"', "malformed JSON"),
        (["Page View", good(3)["properties"]], "not a JSON object"),
        ("Page View", "not a JSON object"),
        ({"properties": good(5)["properties"]}, 'missing "event"'),
        (good(6, event=""), "empty event name"),
        (good(7, event=42), '"event" must be a string'),
        ({"event": "Page View"}, "properties"),
        ({"event": "Page View", "properties": "time=1790000540&distinct_id=broken-user-9"}, "properties"),
        (good(10, event="Sign Up"), None),
        (without(good(11), "distinct_id"), "missing distinct_id"),
        (good(12, distinct_id="null"), "refused distinct_id"),
        (good(13, distinct_id="undefined"), "refused distinct_id"),
        (good(14, distinct_id="0"), "refused distinct_id"),
        (good(15, distinct_id="-1"), "refused distinct_id"),
        (good(16, distinct_id="00000000-0000-0000-0000-000000000000"), "refused distinct_id"),
        (good(17, distinct_id=""), "refused distinct_id"),
        (good(18, distinct_id={"id": 18}), "distinct_id must be a string"),
        (good(19, distinct_id=True), "distinct_id must be a string"),
        (without(good(20), "time"), "missing time"),
        (good(21, time="yesterday"), "time"),
        (good(22, time=86400), "before 1971"),
        (good(23, time=32472144000), "in the future"),  # 2999-01-01
        (good(24, **{"$insert_id": "x" * 40}), "$insert_id"),
        (good(25, **{"$insert_id": "bad id!*"}), "$insert_id"),
        (good(26, event="Purchase", amount=9.99), None),
    ]
    return [(row if isinstance(row, str) and row.startswith("{") else _j(row), reason) for row, reason in rows]


def write_sample(out_dir) -> dict:
    """(Re)write the committed sample: a small crowd plus named personas, and ``broken/``."""
    out = Path(out_dir)
    counts = _run(out, events=SAMPLE_EVENTS, profiles=SAMPLE_PROFILES, seed=SAMPLE_SEED, start=dt.date(2026, 9, 1),
                  months=2, compress=False, time_in_ms=False, progress=None, personas=True)
    broken = _broken_lines()
    (out / "broken").mkdir(exist_ok=True)
    (out / "broken" / "broken_events.jsonl").write_text("".join(line + "\n" for line, _ in broken), encoding="utf-8")
    # Tab-separated, not JSON, so that loading the sample folder does not read it as data.
    expected = [(i, reason) for i, (_, reason) in enumerate(broken, 1) if reason]
    (out / "broken" / "expected.tsv").write_text(
        "line\treason_contains\n" + "".join(f"{i}\t{reason}\n" for i, reason in expected), encoding="utf-8")
    counts["broken"] = {"lines": len(broken), "broken": len(expected), "valid": len(broken) - len(expected)}
    return counts
