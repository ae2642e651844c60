"""Profiles (an Engage export's records) and profile updates (Ingestion API ``/engage``, one operation each)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from toolkit.synthetic import catalog
from toolkit.synthetic.people import User
from toolkit.synthetic.period import Period, iso
from toolkit.synthetic.tally import Tally
from toolkit.synthetic.values import encode, pick

# Every operation kind, with the chance that a user's updates include it.
OPERATION_RATES = (("$set", 0.3), ("$set_once", 0.2), ("$add", 0.25), ("$union", 0.15), ("$append", 0.1),
                   ("$remove", 0.08), ("$unset", 0.06), ("$delete", 0.01))


@dataclass
class Profile:
    """One Engage record; serialized with its properties in this order."""

    distinct_id: str
    first_name: str
    last_name: str
    email: str
    created: str  # Mixpanel's date format, '2026-09-03T10:05:30'
    last_seen: str
    city: str
    country_code: str
    plan: str
    lifetime_value: float
    interests: list[str]
    is_beta: bool
    login_count: int
    birthday: str | None = None
    contact_preference: str | None = None
    onesignal_user_id: str | int | None = None  # None: the profile has no $onesignal_user_id

    def to_json(self) -> str:
        props: dict[str, object] = {
            "$created": self.created, "$email": self.email, "$name": f"{self.first_name} {self.last_name}",
            "$first_name": self.first_name, "$last_name": self.last_name, "$last_seen": self.last_seen,
            "$city": self.city, "$country_code": self.country_code, "plan": self.plan,
            "lifetime_value": self.lifetime_value, "interests": self.interests, "is_beta": self.is_beta,
            "login_count": self.login_count}
        if self.birthday is not None:
            props["birthday"] = self.birthday
        if self.contact_preference is not None:
            props["Préférence de contact"] = self.contact_preference
        if self.onesignal_user_id is not None:
            props["$onesignal_user_id"] = self.onesignal_user_id
        return encode({"$distinct_id": self.distinct_id, "$properties": props})


@dataclass
class Update:
    """One profile update: one operation (catalog.UPDATE_OPS) and its payload."""

    token: str
    distinct_id: str
    time_ms: int
    op: str
    payload: dict[str, object] | list[str] | None  # $unset: property names; $delete: None
    ignore_alias: bool = False

    def to_json(self) -> str:
        upd: dict[str, object] = {"$token": self.token, "$distinct_id": self.distinct_id, "$time": self.time_ms,
                                  self.op: self.payload}
        if self.ignore_alias:
            upd["$ignore_alias"] = True
        return encode(upd)


class ProfileMaker:
    """A crowd user's profile and updates, drawn from ``rng``; updates counted into ``tally``."""

    def __init__(self, rng: random.Random, period: Period, token: str, tally: Tally):
        self.rng = rng
        self.period = period
        self.token = token
        self.tally = tally
        self.interests = [rng.sample(catalog.INTERESTS, i % 4) for i in range(64)]
        self._forced_ops = 0  # every operation appears, whatever the size

    def profile(self, u: User) -> Profile:
        rng = self.rng
        rand = rng.random
        last_ms = u.last_event_ms if u.last_event_ms is not None else u.created_ms
        p = Profile(distinct_id=u.uid, first_name=u.first, last_name=u.last, email=u.email,
                    created=iso(u.created_ms), last_seen=iso(max(last_ms, u.created_ms)), city=u.city.name,
                    country_code=u.city.country, plan=u.plan,
                    lifetime_value=round(rand() * 900, 2) if u.plan != "free" else 0,
                    interests=list(pick(rng, self.interests)), is_beta=rand() < 0.15, login_count=int(rand() * 60))
        if rand() < 0.4:
            p.birthday = f"{1950 + int(rand() * 55):04d}-{1 + int(rand() * 12):02d}-{1 + int(rand() * 28):02d}"
        if rand() < 0.3:
            p.contact_preference = pick(rng, catalog.CONTACT_PREFERENCES)
        if u.onesignal.is_set:
            p.onesignal_user_id = u.onesignal.value
        return p

    def updates(self, u: User) -> list[Update]:
        """The user's updates in time order; some under an alias id (they must land on the same profile)."""
        rng = self.rng
        rand = rng.random
        ops: list[tuple[str, dict[str, object] | list[str] | None]] = []
        if u.onesignal.is_set and (u.role == "ghost" or rand() < 0.9):
            props: dict[str, object] = {"$onesignal_user_id": u.onesignal.value}  # Mixpanel aliases it to the user
            if u.role == "ghost":
                props.update({"$email": u.email, "$name": u.name, "plan": u.plan})
            ops.append(("$set", props))
        forced = None
        if self._forced_ops < len(catalog.UPDATE_OPS):
            forced = catalog.UPDATE_OPS[self._forced_ops]
            self._forced_ops += 1
        for op, chance in OPERATION_RATES:
            if op == forced or rand() < chance:
                ops.append((op, self._payload(op, u)))
        if not ops:
            return []
        lo = u.first_ms
        stamps = sorted(lo + int(rand() * (self.period.end_ms - lo)) for _ in ops)
        aliases = [a for a in (u.alias, u.alias_chain) if a]
        out = []
        for (op, payload), ms in zip(ops, stamps, strict=True):
            did = u.uid
            if aliases and op != "$delete" and rand() < 0.5:
                did = pick(rng, aliases)
            out.append(Update(self.token, did, ms, op, payload,
                              ignore_alias=op == "$delete" and (op == forced or rand() < 0.5)))
            self.tally.update_ops[op] += 1
        return out

    def _payload(self, op: str, u: User) -> dict[str, object] | list[str] | None:
        rng = self.rng
        if op == "$set":
            return {"plan": pick(rng, catalog.PLANS), "last_campaign": pick(rng, catalog.CAMPAIGNS).name}
        if op == "$set_once":
            return {"first_platform": u.platform.name, "initial_referrer": pick(rng, catalog.REFERRERS)}
        if op == "$add":
            return {"lifetime_value": round(rng.random() * 120, 2), "purchase_count": 1}
        if op == "$union":
            return {"interests": pick(rng, self.interests)[:2] or ["books"]}
        if op == "$append":
            return {"visited_pages": pick(rng, catalog.PAGES)[0]}
        if op == "$remove":
            return {"interests": pick(rng, catalog.INTERESTS)}
        if op == "$unset":
            return ["is_beta"]
        return None
