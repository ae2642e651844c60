"""The committed sample, data/sample/: a small crowd, hand-written named personas with readable ids, and
``broken/`` lines that a loader must quarantine (data/sample/README.md tells their stories)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit import onesignal_events as osev
from toolkit.synthetic.catalog import CAMPAIGNS, IDENTITY_EVENTS
from toolkit.synthetic.dataset import Named, write_dataset
from toolkit.synthetic.period import Period, parse_ms
from toolkit.synthetic.profiles import Profile, Update
from toolkit.synthetic.tally import Tally
from toolkit.synthetic.values import encode
from toolkit.synthetic.writer import EVENTS_FILE, PROFILES_FILE, UPDATES_FILE

SAMPLE_EVENTS = 4500  # event lines in data/sample/events.jsonl, named personas included
SAMPLE_PROFILES = 300  # crowd profiles; the named personas add theirs
SAMPLE_SEED = 2026
SAMPLE_FILES = (EVENTS_FILE, PROFILES_FILE, UPDATES_FILE, "broken/broken_events.jsonl", "broken/expected.tsv")

_WEB = {"platform": "web", "country": "US", "$os": "Mac OS X", "$city": "Austin", "mp_lib": "web",
        "$lib_version": "2.55.1"}
_IOS = {"platform": "ios", "country": "FR", "$os": "iOS", "$city": "Paris", "mp_lib": "swift", "$lib_version": "4.3.0"}
_SERVER = {"mp_lib": "python", "$lib_version": "4.10.1"}
_SHARED_SUBSCRIPTION = "c0ffee00-1234-4abc-8def-0123456789ab"
_HEIDI_EXTERNAL_ID = 'ext/heidi "zoë" ✓'


def write_sample(out_dir: str | Path) -> dict:
    """(Re)write the committed sample: a small crowd plus named personas, and ``broken/``."""
    out = Path(out_dir)
    counts = write_dataset(out, events=SAMPLE_EVENTS, profiles=SAMPLE_PROFILES, seed=SAMPLE_SEED,
                           start=dt.date(2026, 9, 1), months=2, compress=False, time_in_ms=False, progress=None,
                           named=named_personas)
    broken = broken_lines()
    (out / "broken").mkdir(exist_ok=True)
    (out / "broken" / "broken_events.jsonl").write_text("".join(line + "\n" for line, _ in broken), encoding="utf-8")
    # Tab-separated, not JSON, so that loading the sample folder does not read it as data.
    expected = [(i, reason) for i, (_, reason) in enumerate(broken, 1) if reason]
    (out / "broken" / "expected.tsv").write_text(
        "line\treason_contains\n" + "".join(f"{i}\t{reason}\n" for i, reason in expected), encoding="utf-8")
    counts["broken"] = {"lines": len(broken), "broken": len(expected), "valid": len(broken) - len(expected)}
    return counts


@dataclass
class Event:
    """One raw-export event of a named persona."""

    name: str
    time_ms: int
    distinct_id: str
    insert_id: str | None  # None: sent without $insert_id
    processing_ms: int  # mp_processing_time_ms
    properties: dict[str, object]

    def line(self, time_divisor: int) -> str:
        p: dict[str, object] = {"time": self.time_ms // time_divisor, "distinct_id": self.distinct_id}
        if self.insert_id:
            p["$insert_id"] = self.insert_id
        p["mp_processing_time_ms"] = self.processing_ms
        p.update(self.properties)
        return encode({"event": self.name, "properties": p}) + "\n"


@dataclass
class _Script:
    """What the named personas do, written down in order; counted into ``tally`` as it goes."""

    period: Period
    token: str
    tally: Tally
    named: Named = field(default_factory=Named)

    def ev(self, name: str, when: str, did: str, iid: str | None, props: Mapping[str, object] | None = None,
           base: Mapping[str, str] = _WEB, kind: str | None = None, delay: int = 1500, copies: int = 1) -> None:
        """An event at ``when`` (UTC), processed ``delay`` ms later; ``kind`` overrides the counted kind."""
        event = Event(name, parse_ms(when), did, iid, parse_ms(when) + delay, {**base, **(props or {})})
        line = event.line(self.period.time_divisor)
        kinds, names = self.tally.event_kinds, self.tally.event_names
        for i in range(copies):
            self.named.events.append(line)
            k = kind or ("identity" if name in IDENTITY_EVENTS else
                         "onesignal" if osev.is_onesignal_event(name) else "product")
            kinds[k if i == 0 else "repeat_no_insert_id"] += 1
            names[encode(name)] = names.get(encode(name), 0) + 1

    def msg(self, name: str, when: str, did: str, iid: str, channel: str, sub: str, n: int, device: str = "iOS",
            lang: str = "en") -> None:
        """A OneSignal message event of campaign ``n`` on ``channel`` to subscription ``sub``."""
        campaign = CAMPAIGNS[n]
        props: dict[str, object] = {
            "$source": "onesignal", "source": "onesignal", "Message ID": f"a0000000-0000-4000-8000-{n:012d}",
            "Message Name": campaign.name, "Message Title": campaign.title, "Message Contents": campaign.contents,
            "template_id": f"b0000000-0000-4000-8000-{n:012d}", "message_type": channel, "subscription_id": sub,
            "device_type": device, "language": lang}
        self.ev(name, when, did, iid, props, base={"mp_lib": "onesignal"})

    def profile(self, did: str, first: str, last: str, created: str, seen: str, os_id: str | int | None = None,
                plan: str = "free", ltv: float = 0, interests: tuple[str, ...] | list[str] = (), beta: bool = False,
                city: tuple[str, str] = ("Austin", "US")) -> None:
        self.named.profiles.append(Profile(
            distinct_id=did, first_name=first, last_name=last, email=did if "@" in did else f"{did}@example.com",
            created=created, last_seen=seen, city=city[0], country_code=city[1], plan=plan, lifetime_value=ltv,
            interests=list(interests), is_beta=beta, login_count=3, onesignal_user_id=os_id))

    def update(self, did: str, when: str, op: str, payload: dict[str, object] | list[str] | None,
               ignore_alias: bool = False) -> None:
        self.named.updates.append(Update(self.token, did, parse_ms(when), op, payload, ignore_alias))
        self.tally.update_ops[op] += 1


def named_personas(period: Period, token: str, tally: Tally) -> Named:
    """Hand-written users with readable ids (see data/sample/README.md). Insert ids are '<name>-NNNN'."""
    script = _Script(period, token, tally)
    for persona in _PERSONAS:
        persona(script)
    return script.named


home = {"page": "/", "page_title": "Home"}
pricing = {"page": "/pricing", "page_title": "Preise & Pläne"}
account = {"page": "/account", "page_title": "Account"}


def buy(amount: float, plan: str = "pro", items: int = 1) -> dict[str, object]:
    return {"amount": amount, "currency": "EUR", "plan": plan, "item_count": items}


def _alice(s: _Script) -> None:
    """Original ID Merge, $identify from a UUIDv4 anon id; a duplicate Purchase whose later copy wins."""
    alice, anon = "alice@example.com", "3b6f0c3e-8c1d-4f5a-9e2b-7d4c1a0f5e21"
    inbox = "e0000000-0000-4000-8000-00000000a11c"
    s.ev("Page View", "2026-09-03T10:00:00", anon, "alice-0001", home)
    s.ev("Page View", "2026-09-03T10:02:00", anon, "alice-0002", pricing)
    s.ev("$identify", "2026-09-03T10:05:00", alice, "alice-0003", {"$identified_id": alice, "$anon_id": anon})
    s.ev("Sign Up", "2026-09-03T10:05:30", alice, "alice-0004", {"method": "password"})
    s.ev("Purchase", "2026-09-03T10:20:00", alice, "alice-0005", buy(19.99))
    s.ev("Purchase", "2026-09-03T10:20:00", alice, "alice-0005", buy(24.99), kind="duplicate", delay=3_600_000)
    s.ev("Page View", "2026-10-02T09:00:00", alice, "alice-0006", account)
    s.msg("$campaign_delivery", "2026-10-05T08:00:00", alice, "alice-0007", "email", inbox, 5, device="Email")
    s.msg("Message Opened", "2026-10-05T08:30:00", alice, "alice-0008", "email", inbox, 5, device="Email")
    s.profile(alice, "Alice", "Anderson", "2026-09-03T10:05:30", "2026-10-05T08:30:00", alice, plan="pro", ltv=24.99,
              interests=["tech", "sports"])
    s.update(alice, "2026-09-03T10:06:00", "$set", {"$onesignal_user_id": alice, "plan": "pro"})
    s.update(alice, "2026-09-03T10:21:00", "$append", {"visited_pages": "/pricing"})
    s.update(alice, "2026-10-02T09:01:00", "$remove", {"interests": "sports"})


def _bob(s: _Script) -> None:
    """$create_alias chain robert.b -> bob@example.com -> bob; events and updates under the aliases."""
    phone = "50000000-0000-4000-8000-000000000b0b"
    s.ev("Sign Up", "2026-09-05T14:00:00", "bob", "bob-0001", {"method": "google"})
    s.ev("$create_alias", "2026-09-05T14:00:05", "bob", "bob-0002", {"alias": "bob@example.com"})
    s.ev("$create_alias", "2026-09-20T09:00:00", "bob@example.com", "bob-0003", {"alias": "robert.b"})
    s.ev("Page View", "2026-10-08T12:00:00", "robert.b", "bob-0004", home)
    s.ev("Purchase", "2026-10-09T12:00:00", "bob@example.com", "bob-0005", buy(42.0, plan="starter", items=2))
    s.msg("Message Sent", "2026-10-10T18:00:00", "ext_bob", "bob-0006", "push", phone, 2)
    s.msg("App Opened from Push", "2026-10-10T18:05:00", "ext_bob", "bob-0007", "push", phone, 2)
    s.profile("bob", "Bob", "Brown", "2026-09-05T14:00:00", "2026-10-10T18:05:00", "ext_bob", plan="starter", ltv=42.0)
    s.update("bob", "2026-09-05T14:01:00", "$set", {"$onesignal_user_id": "ext_bob"})
    s.update("bob@example.com", "2026-10-09T12:01:00", "$add", {"lifetime_value": 42.0, "purchase_count": 1})
    s.update("robert.b", "2026-10-09T12:02:00", "$union", {"interests": ["tech", "music"]})


def _carol(s: _Script) -> None:
    """$merge of carol-legacy-77 into carol; in October only delivery events (not an October MTU)."""
    legacy, sms = "carol-legacy-77", "5e000000-0000-4000-8000-0000000ca201"
    s.ev("Page View", "2026-09-01T08:00:00", legacy, "carol-0001", {"page": "/help", "page_title": "Centre d’aide"})
    s.ev("Login", "2026-09-01T08:01:00", legacy, "carol-0002", {"method": "password"})
    s.ev("$merge", "2026-09-15T11:00:00", "carol", "carol-0003", {"$distinct_ids": ["carol", legacy]})
    s.ev("Feature Used", "2026-09-15T11:05:00", "carol", "carol-0004", {"feature": "dark mode", "is_first_use": True})
    s.msg("Message Received", "2026-10-04T09:00:00", "carol", "carol-0005", "sms", sms, 3, device="SMS")
    s.msg("$campaign_received", "2026-10-04T09:00:01", "carol", "carol-0006", "sms", sms, 3, device="SMS")
    s.msg("SMS Undelivered", "2026-10-12T09:00:00", "carol", "carol-0007", "sms", sms, 3, device="SMS")
    s.profile("carol", "Carol", "Castillo", "2026-09-01T08:00:00", "2026-09-15T11:05:00", "carol", plan="pro",
              ltv=120.5, city=("Madrid", "ES"))
    s.update("carol", "2026-09-15T11:01:00", "$set", {"$onesignal_user_id": "carol"})


def _dave(s: _Script) -> None:
    """Simplified ID Merge, $device:<uuid> then an event with both $device_id and $user_id."""
    dev, phone = "9c1e2f3a-4b5c-4d6e-8f70-81a2b3c4d5e6", "50000000-0000-4000-8000-00000000da7e"
    both = {"$device_id": dev, "$user_id": "dave"}
    cart = {"item_id": "sku-0042", "item_count": 1, "price": 59.9, "catégorie": "maison"}
    s.ev("Page View", "2026-09-10T19:00:00", "$device:" + dev, "dave-0001",
         {"$device_id": dev, "page": "/products/42", "page_title": "Widget 42"}, base=_IOS)
    s.ev("Add to Cart", "2026-09-10T19:03:00", "$device:" + dev, "dave-0002", {"$device_id": dev, **cart}, base=_IOS)
    s.ev("Sign Up", "2026-09-10T19:05:00", "dave", "dave-0003", {**both, "method": "apple"}, base=_IOS)
    s.ev("Purchase", "2026-10-03T18:00:00", "dave", "dave-0004", {**both, **buy(59.9)}, base=_IOS)
    s.msg("$campaign_delivery", "2026-10-03T18:30:00", "dave", "dave-0005", "push", phone, 6, lang="fr")
    s.msg("$app_open", "2026-10-03T18:31:00", "dave", "dave-0006", "push", phone, 6, lang="fr")
    s.profile("dave", "Dave", "Dubois", "2026-09-10T19:05:00", "2026-10-03T18:31:00", "dave", plan="pro", ltv=59.9,
              city=("Paris", "FR"))
    s.update("dave", "2026-09-10T19:06:00", "$set", {"$onesignal_user_id": "dave"})


def _erin(s: _Script) -> None:
    """$onesignal_user_id is a Subscription (Player) UUID; her message events arrive under it."""
    sub = "5f0d7a2c-1e3b-4c6d-a8e9-0b1c2d3e4f50"
    s.ev("Login", "2026-09-12T07:30:00", "erin", "erin-0001", {"method": "magic link"}, base=_IOS)
    for i, (name, when) in enumerate([
            ("Message Sent", "2026-09-20T08:00:00"), ("Message Received", "2026-09-20T08:00:02"),
            ("App Opened from Push", "2026-09-20T08:10:00"), ("$campaign_delivery", "2026-10-01T08:00:00"),
            ("$campaign_received", "2026-10-01T08:00:02"), ("Push Failed", "2026-10-08T08:00:00"),
            ("Push Unsubscribed", "2026-10-15T08:00:00"), ("$unsubscribe", "2026-10-15T08:00:01")], 2):
        s.msg(name, when, sub, f"erin-{i:04d}", "push", sub, 1)
    s.profile("erin", "Erin", "Evans", "2025-06-01T12:00:00", "2026-10-15T08:00:01", sub, city=("London", "GB"))
    s.update("erin", "2026-09-12T07:31:00", "$set", {"$onesignal_user_id": sub})


def _frank(s: _Script) -> None:
    """no $onesignal_user_id; a server event without $insert_id sent twice (both copies count)."""
    s.ev("Purchase", "2026-09-02T16:00:00", "frank", "frank-0001", buy(12.5, plan="starter"))
    s.ev("Purchase", "2026-10-20T16:00:00", "frank", "frank-0002", buy(80.0, items=3))
    s.ev("Page View", "2026-10-21T09:00:00", "frank", None, account, base=_SERVER,
         copies=2)
    s.profile("frank", "Frank", "Fischer", "2024-11-30T09:00:00", "2026-10-21T09:00:00", plan="pro", ltv=92.5,
              city=("Berlin", "DE"))


def _grace(s: _Script) -> None:
    """anonymous only (Simplified device id), no profile."""
    dev = "0d9b8a7c-6e5f-4a3b-b2c1-d0e9f8a7b6c5"
    s.ev("Page View", "2026-09-25T21:00:00", "$device:" + dev, "grace-0001", {"$device_id": dev, **home})
    s.ev("Search", "2026-09-25T21:01:00", "$device:" + dev, "grace-0002",
         {"$device_id": dev, "query": "café crème", "results": 3})
    s.ev("Page View", "2026-10-25T21:00:00", "$device:" + dev, "grace-0003", {"$device_id": dev, **pricing})


def _heidi(s: _Script) -> None:
    """an External ID with '/', spaces, quotes and unicode (must be URL-encoded by an exporter)."""
    heidi, inbox = _HEIDI_EXTERNAL_ID, "e0000000-0000-4000-8000-0000000ae1d1"
    s.ev("Login", "2026-10-06T10:00:00", "heidi", "heidi-0001", {"method": "password"})
    s.msg("$campaign_delivery", "2026-10-07T10:00:00", heidi, "heidi-0002", "email", inbox, 0, device="Email",
          lang="de")
    s.msg("Message Opened", "2026-10-07T11:00:00", heidi, "heidi-0003", "email", inbox, 0, device="Email", lang="de")
    s.profile("heidi", "Heidi", "Müller", "2026-10-06T10:00:00", "2026-10-07T11:00:00", heidi, city=("Zürich", "CH"))
    s.update("heidi", "2026-10-06T10:01:00", "$set", {"$onesignal_user_id": heidi})


def _ivan_and_judy(s: _Script) -> None:
    """two profiles with the same Subscription id (a shared tablet)."""
    tablet = _SHARED_SUBSCRIPTION
    s.ev("Login", "2026-09-08T12:00:00", "ivan", "ivan-0001", {"method": "password"})
    s.ev("Login", "2026-10-08T12:00:00", "judy", "judy-0001", {"method": "password"})
    s.msg("Message Sent", "2026-10-09T12:00:00", tablet, "ivan-0002", "in_app", tablet, 7, device="Android")
    s.msg("Message Opened", "2026-10-09T12:01:00", tablet, "ivan-0003", "in_app", tablet, 7, device="Android")
    s.profile("ivan", "Ivan", "Ivanov", "2025-02-02T12:00:00", "2026-10-09T12:01:00", tablet)
    s.profile("judy", "Judy", "Jensen", "2025-03-03T12:00:00", "2026-10-09T12:01:00", tablet)
    s.update("ivan", "2026-09-08T12:01:00", "$set", {"$onesignal_user_id": tablet})
    s.update("judy", "2026-10-08T12:01:00", "$set", {"$onesignal_user_id": tablet})


def _ken_leo_mia(s: _Script) -> None:
    """unusable $onesignal_user_id (a number, a blank string, an over-long string)."""
    s.ev("Login", "2026-09-14T12:00:00", "ken", "ken-0001", {"method": "google"})
    s.ev("Page View", "2026-10-14T12:00:00", "leo", "leo-0001", home)
    s.ev("Page View", "2026-10-15T12:00:00", "mia", "mia-0001", home)
    s.profile("ken", "Ken", "Kim", "2025-04-04T12:00:00", "2026-09-14T12:00:00", 4815162342)
    s.profile("leo", "Leo", "López", "2025-05-05T12:00:00", "2026-10-14T12:00:00", "   ")
    s.profile("mia", "Mia", "Martin", "2025-06-06T12:00:00", "2026-10-15T12:00:00", "ext_" + "m" * 300)


def _oscar(s: _Script) -> None:
    """not in profiles.json; a profile update sets his $onesignal_user_id (so it is aliased)."""
    s.ev("Sign Up", "2026-10-02T10:00:00", "oscar", "oscar-0001", {"method": "google"})
    s.msg("$campaign_open", "2026-10-03T10:00:00", "ext_oscar", "oscar-0002", "email",
          "e0000000-0000-4000-8000-0000000005ca", 4, device="Email")
    s.update("oscar", "2026-10-02T10:01:00", "$set",
             {"$onesignal_user_id": "ext_oscar", "$email": "oscar@example.com", "$name": "Oscar Ortiz"})


def _peggy(s: _Script) -> None:
    """set_once, unset, then deleted ($delete with $ignore_alias)."""
    s.ev("Page View", "2026-09-16T12:00:00", "peggy", "peggy-0001", home)
    s.profile("peggy", "Peggy", "Pérez", "2025-07-07T12:00:00", "2026-09-16T12:00:00", None, beta=True)
    s.update("peggy", "2026-09-16T12:01:00", "$set_once", {"initial_referrer": "newsletter"})
    s.update("peggy", "2026-09-17T12:00:00", "$unset", ["is_beta"])
    s.update("peggy", "2026-10-30T12:00:00", "$delete", None, ignore_alias=True)


_PERSONAS = (_alice, _bob, _carol, _dave, _erin, _frank, _grace, _heidi, _ivan_and_judy, _ken_leo_mia, _oscar, _peggy)


# Each broken line has exactly one defect; the rest of the line is valid. (line text, reason keyword or None)
def broken_lines() -> list[tuple[str, str | None]]:
    def good(n: int, event: object = "Page View", **props: object) -> dict[str, Any]:
        p: dict[str, object] = {"time": 1790000000 + 60 * n, "distinct_id": f"broken-user-{n}",
                                "$insert_id": f"broken-{n:04d}", "mp_lib": "web"}
        p.update(props)
        return {"event": event, "properties": p}

    def without(d: dict[str, Any], key: str) -> dict[str, Any]:
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
    return [(row if isinstance(row, str) and row.startswith("{") else encode(row), reason) for row, reason in rows]


