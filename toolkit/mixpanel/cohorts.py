"""Mixpanel's own cohorts as toolkit cohorts: a cohort defined in Mixpanel's UI, stored here as a static
cohort whose members come from Engage (``filter_by_cohort``) and are fetched again on each pull.

Mixpanel publishes no cohort definitions, only members, so the stored cohort is its member list (its
``static_csv`` names the source: ``mixpanel:<project>/cohort/<id>``), versioned like any cohort: a refresh
that finds the same members keeps the version. Members are Mixpanel's distinct_ids (canonical there), matched
to profiles like any static cohort. A Mixpanel cohort that comes back empty keeps its previous members and is
reported (a static cohort cannot be empty, and the export's removal guard would refuse clearing it anyway).
Each refresh costs one Engage query per 1,000 members (60 queries/hour for the project).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass

from toolkit import cohorts
from toolkit.cohort_model import Cohort
from toolkit.errors import CohortError
from toolkit.mixpanel.client import MixpanelClient
from toolkit.store import Store

SOURCE = re.compile(r"^mixpanel:(\d+)/cohort/(\d+)$")


@dataclass
class Refreshed:
    name: str
    cohort_id: int
    members: int
    version: int | None
    status: str            # "saved" | "unchanged" | "empty (kept the previous members)"

    def to_dict(self) -> dict:
        return asdict(self)


def source(project_id: str, cohort_id: int) -> str:
    return f"mixpanel:{project_id}/cohort/{cohort_id}"


def linked(store: Store, project_id: str) -> dict[str, int]:
    """Stored cohorts that come from this project's Mixpanel cohorts: name -> Mixpanel cohort id."""
    out = {}
    for entry in cohorts.list_cohorts(store):
        stored = cohorts.get(store, entry["name"])
        match = SOURCE.match(stored.static_csv or "")
        if match and match.group(1) == str(project_id):
            out[entry["name"]] = int(match.group(2))
    return out


def choices(store: Store, client: MixpanelClient) -> list[dict]:
    """The project's Mixpanel cohorts (one cohorts-list query), each with ``kept_as``: the toolkit cohort it
    is kept as, else None (`adopt` keeps it)."""
    kept = {cohort_id: name for name, cohort_id in linked(store, client.account.project_id).items()}
    return [{"id": int(c["id"]), "name": str(c.get("name") or f"Mixpanel cohort {c['id']}"), "count": c.get("count"),
             "kept_as": kept.get(int(c["id"]))} for c in client.cohorts()]


def members(client: MixpanelClient, cohort_id: int) -> list[str]:
    """The cohort's distinct_ids, page by page through Engage (no properties asked for)."""
    return [str(r["$distinct_id"]) for page in client.engage(cohort_id=cohort_id, output_properties=[])
            for r in page]


def adopt(store: Store, client: MixpanelClient, cohort_id: int, name: str | None = None, *,
          now: dt.datetime | None = None) -> Refreshed:
    """Store Mixpanel cohort ``cohort_id`` as a toolkit cohort (named as in Mixpanel unless ``name``)."""
    listed = {int(c["id"]): c for c in client.cohorts()}
    if cohort_id not in listed:
        known = ", ".join(f"{i} ({c.get('name')})" for i, c in sorted(listed.items())) or "none"
        raise CohortError(f"Mixpanel project {client.account.project_id} has no cohort {cohort_id}; its cohorts: "
                          f"{known}")
    name = name or str(listed[cohort_id].get("name") or f"Mixpanel cohort {cohort_id}")
    if cohorts.version_of(store, name) is not None and linked(store, client.account.project_id).get(name) != cohort_id:
        raise CohortError(f'a cohort named "{name}" is already stored and does not come from Mixpanel cohort '
                          f"{cohort_id}: choose another name (--cohort-name)")
    return _save(store, client, name, cohort_id, str(listed[cohort_id].get("description") or ""), now)


def refresh(store: Store, client: MixpanelClient, *, now: dt.datetime | None = None) -> list[Refreshed]:
    """Fetch the members of every stored cohort that comes from this project's Mixpanel cohorts again."""
    return [refresh_one(store, client, name, cohort_id, now=now)
            for name, cohort_id in sorted(linked(store, client.account.project_id).items())]


def refresh_one(store: Store, client: MixpanelClient, name: str, cohort_id: int, *,
                now: dt.datetime | None = None) -> Refreshed:
    """Fetch the members of one kept Mixpanel cohort again (``linked`` gives its name and id)."""
    return _save(store, client, name, cohort_id, cohorts.get(store, name).description, now)


def _save(store: Store, client: MixpanelClient, name: str, cohort_id: int, description: str,
          now: dt.datetime | None) -> Refreshed:
    ids = members(client, cohort_id)
    before = cohorts.version_of(store, name)
    if not ids:
        return Refreshed(name, cohort_id, 0, before, "empty (kept the previous members)")
    cohort = Cohort(name, static_ids=tuple(sorted(set(ids))), static_csv=source(client.account.project_id, cohort_id),
                    description=description)
    version = cohorts.save(store, cohort, now=now, where=f"Mixpanel cohort {cohort_id}")
    return Refreshed(name, cohort_id, len(set(ids)), version, "unchanged" if version == before else "saved")
