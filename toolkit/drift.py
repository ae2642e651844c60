"""Drift between a cohort's snapshot (who the toolkit tagged) and what OneSignal holds: pure.

OneSignal is read in two ways (``toolkit.reconcile`` does the I/O): its CSV export, one row per
subscription with the user's tags, and, for the members the export does not show, the View user API
(1 request/s per app, so only for those). A user without any subscription is in no export row: a
member tagged by External ID that the export misses is viewed to tell "lost the tag" from "deleted".
A member tagged by Subscription (Player) ID that no row shows has lost that subscription: deleted.

Three kinds of drift, each a list of users:
- tagged outside: users carrying the cohort's tag whom the snapshot does not hold as tagged;
- lost tag: snapshot members OneSignal still has, without the tag;
- deleted: snapshot members OneSignal no longer has.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field

from toolkit.errors import ExportError

EXTERNAL_ID, SUBSCRIPTION_ID = "external_id", "subscription_id"


@dataclass(frozen=True, order=True)
class Member:
    """A snapshot row the toolkit holds as tagged: who, and the OneSignal id it was tagged by."""
    distinct_id: str
    onesignal_id: str
    id_type: str                 # external_id | subscription_id


@dataclass(frozen=True)
class SeenUser:
    """One OneSignal user as the CSV export shows it: its External ID (None: anonymous), its
    subscriptions, and whether it carries the cohort's tag."""
    external_id: str | None
    subscription_ids: tuple[str, ...]
    tagged: bool

    @property
    def alias(self) -> tuple[str, str]:
        """How to address the user: by External ID, else by one of its subscriptions."""
        return (EXTERNAL_ID, self.external_id) if self.external_id else (SUBSCRIPTION_ID, self.subscription_ids[0])


@dataclass
class Drift:
    in_sync: int = 0                                          # snapshot members tagged in OneSignal
    tagged_outside: list[tuple[str, str]] = field(default_factory=list)    # (alias label, alias id)
    lost_tag: list[Member] = field(default_factory=list)
    deleted: list[Member] = field(default_factory=list)
    unseen: list[Member] = field(default_factory=list)        # not in the export: to view, then classify

    @property
    def drifted(self) -> bool:
        return bool(self.tagged_outside or self.lost_tag or self.deleted)


def users_from_rows(rows: Iterable[Mapping[str, str]], tag_key: str,
                    relevant: Container[str] | None = None) -> list[SeenUser]:
    """The users of the CSV export's rows (``id``, ``tags`` as a JSON object, ``external_user_id``):
    rows sharing an External ID are one user; an anonymous row is a user of its own. With ``relevant``
    (the snapshot's ids), an untagged row naming none of them is skipped: an app of ten million users
    then costs the memory of the cohort, not of the app."""
    by_external: dict[str, tuple[list[str], bool]] = {}
    anonymous: list[SeenUser] = []
    needle = json.dumps(tag_key)
    for line, row in enumerate(rows, 2):                  # line 1 is the header
        subscription = (row.get("id") or "").strip()
        tagged = _has_tag(row.get("tags"), tag_key, needle, line, subscription)
        external = (row.get("external_user_id") or "") or None
        if not tagged and relevant is not None and subscription not in relevant and external not in relevant:
            continue
        if external is None:
            if subscription:
                anonymous.append(SeenUser(None, (subscription,), tagged))
            continue
        subscriptions, was_tagged = by_external.get(external, ([], False))
        if subscription:
            subscriptions.append(subscription)
        by_external[external] = (subscriptions, was_tagged or tagged)
    return [SeenUser(e, tuple(subs), tagged) for e, (subs, tagged) in by_external.items()] + anonymous


def _has_tag(text: str | None, tag_key: str, needle: str, line: int, subscription: str) -> bool:
    # Most rows of an app's export lack the key: not parsing them halves the read of a big export. (A
    # key JSON writes escaped would be missed, but tag keys are lowercase letters, digits and "_".)
    if not text or needle not in text:
        return False
    try:
        tags = json.loads(text)
    except ValueError:
        tags = None
    if not isinstance(tags, dict):
        raise ExportError(f"OneSignal's CSV export, line {line} (subscription {subscription!r}): the tags "
                          f"column is not a JSON object: {text[:80]!r}")
    value = tags.get(tag_key)
    return value is not None and value != ""


def classify(members: Iterable[Member], seen: Iterable[SeenUser],
             views: Mapping[tuple[str, str], Mapping[str, str] | None] | None = None, *, tag_key: str) -> Drift:
    """Sort the snapshot's tagged ``members`` against the users the export showed (``seen``) and the
    views read for members it did not show (``views``: (id_type, id) -> the user's tags, None when
    OneSignal has no such user). Members the export missed and no view covers come back ``unseen``."""
    views = views or {}
    users = list(seen)
    by_alias: dict[tuple[str, str], int] = {}
    for index, user in enumerate(users):
        if user.external_id:
            by_alias[(EXTERNAL_ID, user.external_id)] = index
        for subscription in user.subscription_ids:
            by_alias[(SUBSCRIPTION_ID, subscription)] = index
    drift = Drift()
    matched: set[int] = set()
    for member in sorted(members):
        key = (member.id_type, member.onesignal_id)
        found = by_alias.get(key)
        if found is not None:
            matched.add(found)
            if users[found].tagged:
                drift.in_sync += 1
            else:
                drift.lost_tag.append(member)
        elif member.id_type == SUBSCRIPTION_ID:
            drift.deleted.append(member)         # every subscription is in the export: this one is gone
        elif key in views:
            tags = views[key]
            if tags is None:
                drift.deleted.append(member)
            elif tags.get(tag_key) not in (None, ""):
                drift.in_sync += 1               # a user without subscriptions, tagged
            else:
                drift.lost_tag.append(member)
        else:
            drift.unseen.append(member)
    drift.tagged_outside = sorted(u.alias for i, u in enumerate(users) if u.tagged and i not in matched)
    return drift
