"""A user's event lines: product events, the identity story, OneSignal messages, retries and repeats.

Lines are assembled from JSON fragments serialized once (per constant, per user, per message) rather than
with ``json.dumps`` per event; every value that reaches a line went through the JSON encoder or is an
integer, a formatted float or a hex/UUID string. About 1.5 % of the lines repeat an event with the same
(event, distinct_id, time, ``$insert_id``): half byte-identical, half a later copy (higher
``mp_processing_time_ms``, further down the file) with other properties changed, which must win. A few
events without ``$insert_id`` are written twice, byte-identical: both count.
"""

from __future__ import annotations

import random
from typing import NamedTuple

from toolkit.onesignal_events import MessageEvent
from toolkit.synthetic import catalog
from toolkit.synthetic.catalog import NAME_JSON
from toolkit.synthetic.people import IdentityEvent, IdSet, User
from toolkit.synthetic.period import Period
from toolkit.synthetic.tally import Tally
from toolkit.synthetic.values import encode, pick, uuid4

DUPLICATE_RATE = 0.016  # chance that an event with an $insert_id is sent twice
REPEAT_RATE = 0.002  # chance that a product event is sent twice WITHOUT an $insert_id
ONESIGNAL_SHARE = 0.22  # share of a reachable user's events that are OneSignal message events
POOL = 64  # pre-serialized property sets per product event and per weight unit
MESSAGES = 24  # OneSignal messages (campaigns and their versions) a data set's message events come from

_SERVER_PROPS = ', "mp_lib": "python", "$lib_version": "4.10.1"'  # an event sent from a server, no $insert_id
_ONESIGNAL_PROPS = ', "mp_lib": "onesignal", "$source": "onesignal", "source": "onesignal"'


class Product(NamedTuple):
    """One pre-serialized product event: its name and properties, and the alternatives a later copy of a
    duplicate picks its changed properties from."""

    name: str
    props: str
    alternatives: list[str]


def session_times(rand: random.Random, k: int, lo: int, until: int) -> list[int]:
    """k sorted millisecond timestamps in [lo, until): sessions of a few events, seconds apart."""
    draw = rand.random
    hi = until - 1
    span = hi - lo
    sessions = max(1, k // (3 + int(draw() * 6)))
    out: list[int] = []
    append = out.append
    for i in range(sessions):
        t = lo + int(draw() * span)
        for _ in range((i + 1) * k // sessions - i * k // sessions):
            t += 2_000 + int(draw() * 90_000)
            append(t if t < hi else hi)
    out.sort()
    return out


def _messages(rng: random.Random) -> list[str]:
    """The properties of the OneSignal messages sent during the period (a template for two in three)."""
    out = []
    for i in range(MESSAGES):
        name, title, body = catalog.CAMPAIGNS[i % len(catalog.CAMPAIGNS)]
        if i >= len(catalog.CAMPAIGNS):
            name = f"{name} · v{i // len(catalog.CAMPAIGNS) + 1}"
        template = uuid4(rng) if i % 3 else ""
        out.append(f', "Message ID": "{uuid4(rng)}", "Message Name": {encode(name)}, '
                   f'"Message Title": {encode(title)}, "Message Contents": {encode(body)}, "template_id": "{template}"')
    return out


def _products(rng: random.Random) -> list[Product]:
    """One random() picks a product event and its properties: POOL entries per weight unit."""
    products: list[Product] = []
    for event in catalog.PRODUCT_EVENTS:
        pool = [event.properties(rng) for _ in range(event.weight * POOL)]
        products.extend(Product(event.name, props, pool) for props in pool)
    return products


class EventStream:
    """Writes the event lines of one user after another; counts them into ``tally``."""

    def __init__(self, rng: random.Random, period: Period, tally: Tally):
        self.rng = rng
        self.period = period
        self.tally = tally
        self.messages = _messages(rng)
        self.products = _products(rng)
        self._catalog_shown = 0  # every catalog name appears early on, whatever the size

    def lines(self, u: User, k: int) -> list[str]:
        """Exactly k event lines for one user, in time order except for deferred duplicates.

        One loop over the lines with its names bound locally: it runs once per line (5 s for 1M lines), so the
        common line is written inline and only the rare ones (identity, duplicate, message) call out.
        """
        if k <= 0:
            return []
        rng = self.rng
        rand, hexid = rng.random, rng.randbytes
        div, names, products = self.period.time_divisor, self.tally.event_names, self.products
        n_products = len(products)
        times = session_times(rng, k, u.first_ms, u.until_ms)
        story = u.story
        if story and len(story) + 2 > k:  # too few events to act out the identity story
            story = []
            pre = post = [IdSet(encode(u.uid), "", u.device_props)]
        else:
            pre, post = u.pre, u.post
        split = 1 + int(rand() * max(1, (k - len(story)) // 3)) if story else 0
        n_story, si = len(story), 0  # identity events left to write, from the first slot >= split
        signup = u.signup
        messages_to = u.onesignal.distinct_id  # the distinct_id OneSignal sends its events under, if any
        n_product = n_identity = n_onesignal = n_dup = n_repeat = 0
        out: list[str] = []
        append = out.append
        deferred: list[str] = []
        s = 0
        while s < k:
            t = times[s]
            ptime = t + 50 + int(rand() * 4_000)
            if si < n_story and s >= split:
                append(self._identity_line(story[si], u, t // div, ptime))
                if story[si].name in ("Sign Up", "Login"):
                    n_product += 1
                else:
                    n_identity += 1
                si += 1
                s += 1
                continue
            phase = pre if s < split else post
            did, idp, ctx = phase[int(rand() * len(phase))]
            pool = None
            if signup and s >= split:
                signup = False
                name, extra, onesignal = NAME_JSON["Sign Up"], pick(rng, catalog.LOGIN_METHOD_PROPS), False
            elif messages_to and s >= split and rand() < ONESIGNAL_SHARE:
                name, extra = self._message(u)
                did, ctx, onesignal = messages_to, _ONESIGNAL_PROPS, True
            else:
                name, extra, pool = products[int(rand() * n_products)]
                onesignal = False
            r = rand()
            if r < REPEAT_RATE and not onesignal and s + 2 <= k:  # no $insert_id, sent twice: both count
                line = (f'{{"event": {name}, "properties": {{"time": {t // div}, "distinct_id": {did}, '
                        f'"mp_processing_time_ms": {ptime}{idp}{_SERVER_PROPS}{extra}}}}}\n')
                append(line)
                append(line)
                n_product += 1
                n_repeat += 1
                names[name] = names.get(name, 0) + 2
                s += 2
                continue
            iid = hexid(16).hex()
            head = (f'{{"event": {name}, "properties": {{"time": {t // div}, "distinct_id": {did}, '
                    f'"$insert_id": "{iid}", ')
            append(f'{head}"mp_processing_time_ms": {ptime}{ctx}{extra}}}}}\n')
            if onesignal:
                n_onesignal += 1
            else:
                n_product += 1
            names[name] = names.get(name, 0) + 1
            s += 1
            if r < REPEAT_RATE + DUPLICATE_RATE and s < k:  # same (event, distinct_id, time, $insert_id)
                dup = self._duplicate(out[-1], head, ptime, ctx, extra, pool)
                (out if rand() < 0.6 else deferred).append(dup)
                n_dup += 1
                names[name] += 1
                s += 1
        out.extend(deferred)
        u.last_event_ms = times[-1]
        kinds = self.tally.event_kinds
        kinds["product"] += n_product
        kinds["identity"] += n_identity
        kinds["onesignal"] += n_onesignal
        kinds["duplicate"] += n_dup
        kinds["repeat_no_insert_id"] += n_repeat
        return out

    def _identity_line(self, event: IdentityEvent, u: User, time: int, ptime: int) -> str:
        name = NAME_JSON[event.name]
        names = self.tally.event_names
        names[name] = names.get(name, 0) + 1
        return (f'{{"event": {name}, "properties": {{"time": {time}, "distinct_id": {event.distinct_id}, '
                f'"$insert_id": "{self.rng.randbytes(16).hex()}", "mp_processing_time_ms": {ptime}'
                f'{event.id_props}{u.device_props}{event.extra}}}}}\n')

    def _duplicate(self, line: str, head: str, ptime: int, ctx: str, extra: str, pool: list[str] | None) -> str:
        """A second copy of ``line`` (whose start is ``head``): a byte-identical retry, or a later copy with
        other properties changed, the copy that must win."""
        rand = self.rng.random
        if rand() < 0.5:
            return line
        if pool is not None:
            extra = pool[int(rand() * len(pool))]
        ptime += 60_000 + int(rand() * 3_600_000)
        return f'{head}"mp_processing_time_ms": {ptime}{ctx}{extra}}}}}\n'

    def _message(self, u: User) -> tuple[str, str]:
        """(name, properties) of the user's next OneSignal message event, as JSON fragments."""
        rand = self.rng.random
        entry: MessageEvent
        if self._catalog_shown < len(catalog.ONESIGNAL_EVENTS):
            entry = catalog.ONESIGNAL_EVENTS[self._catalog_shown]
            self._catalog_shown += 1
        else:
            entry = catalog.ONESIGNAL_TABLE[int(rand() * len(catalog.ONESIGNAL_TABLE))]
        channel = entry.channels[int(rand() * len(entry.channels))]
        return NAME_JSON[entry.name], pick(self.rng, self.messages) + self._channel_props(u, channel)

    def _channel_props(self, u: User, channel: str) -> str:
        """The user's subscription on ``channel`` (made on first use), as message properties."""
        props = u.message_props.get(channel)
        if props is None:
            sub = u.subscriptions.get(channel) or uuid4(self.rng)
            u.subscriptions[channel] = sub
            device = catalog.ONESIGNAL_DEVICE.get(channel, u.platform.device_type)
            props = u.message_props[channel] = (f', "message_type": "{channel}", "subscription_id": "{sub}", '
                                                f'"device_type": "{device}", "language": "{u.city.language}"')
        return props
