"""The scheduled sync's Mixpanel steps, when a project is configured: pull its new events and profiles into
the landing folder before the load, then fetch the members of the Mixpanel cohorts kept as toolkit cohorts
again. The service account comes from the environment or the 0600 file, never from a parameter: the
project's settings (`Project`) are a notebook parameter and hold no secret."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from toolkit import credentials
from toolkit.errors import UsageError
from toolkit.mixpanel import cohorts as mixpanel_cohorts
from toolkit.mixpanel.client import MixpanelClient
from toolkit.mixpanel.pull import pull
from toolkit.store import Store


@dataclass(frozen=True)
class Project:
    project_id: str
    region: str | None = None
    base_url: str | None = None          # one URL for both APIs (the Mixpanel emulator)
    from_date: date | None = None        # the first pull's first day; later pulls go on from the last
    profiles: bool = True

    @classmethod
    def of(cls, value: Project | dict | str | None) -> Project | None:
        """From the sync notebook's ``mixpanel`` parameter: None, a project id, or
        ``{"project_id", "region", "base_url", "from", "profiles"}``."""
        if value is None or isinstance(value, Project):
            return value
        if isinstance(value, str | int):
            value = {"project_id": str(value)}
        if not isinstance(value, dict) or not str(value.get("project_id") or "").strip():
            raise UsageError(f"mixpanel: expected a project id or an object with project_id, got {value!r}")
        unknown = set(value) - {"project_id", "region", "base_url", "from", "profiles"}
        if unknown:
            raise UsageError(f"mixpanel: unknown setting(s) {', '.join(sorted(unknown))}; expected project_id, "
                             "region, base_url, from, profiles")
        first = value.get("from")
        try:
            first = date.fromisoformat(first) if isinstance(first, str) else first
        except ValueError:
            raise UsageError(f"mixpanel: from {first!r} is not a date: expected YYYY-MM-DD") from None
        return cls(str(value["project_id"]).strip(), value.get("region"), value.get("base_url"), first,
                   bool(value.get("profiles", True)))


def pull_new(landing: str | Path | None, project: Project) -> dict:
    """Pull the project's new events (and profiles) into ``landing``; the pull's summary."""
    if not landing:
        raise UsageError(f"pulling Mixpanel project {project.project_id} needs a landing folder (landing=...)")
    account = credentials.require_mixpanel(project.project_id, region=project.region)
    return pull(landing, account, from_date=project.from_date, profiles=project.profiles,
                base_url=project.base_url).to_dict()


def refresh_cohorts(store: Store, project: Project, pull_error: str | None = None
                    ) -> tuple[list[mixpanel_cohorts.Refreshed], dict[str, str]]:
    """Fetch the members of each kept Mixpanel cohort again: (refreshed, name -> why it was not). A cohort
    whose members could not be fetched must not export its old members as if they were current. After a
    failed pull nothing is asked (the same account would fail again)."""
    linked = mixpanel_cohorts.linked(store, project.project_id)
    if not linked:
        return [], {}
    if pull_error:
        why = f"its members could not be fetched from Mixpanel: the pull failed ({pull_error})"
        return [], dict.fromkeys(linked, why)
    refreshed, failed = [], {}
    try:
        account = credentials.require_mixpanel(project.project_id, region=project.region)
        with MixpanelClient(account, project.base_url) as client:
            for name, cohort_id in sorted(linked.items()):
                try:
                    refreshed.append(mixpanel_cohorts.refresh_one(store, client, name, cohort_id))
                except Exception as exc:   # one cohort never stops the others
                    failed[name] = f"its members could not be fetched from Mixpanel: {_reason(exc)}"
    except Exception as exc:
        failed.update({name: f"its members could not be fetched from Mixpanel: {_reason(exc)}"
                       for name in linked if name not in failed and name not in {r.name for r in refreshed}})
    return refreshed, failed


def _reason(exc: BaseException) -> str:
    from toolkit.errors import ToolkitError

    return str(exc) if isinstance(exc, ToolkitError) else f"unexpected error: {exc or type(exc).__name__}"


def summary(pulled: dict | None, refreshed: list[mixpanel_cohorts.Refreshed]) -> dict[str, Any]:
    """What the run record keeps of the pull (JSON-ready; no secret is ever in it)."""
    return {"pulled_through": (pulled or {}).get("pulled_through"), "bytes": (pulled or {}).get("bytes"),
            "profiles": (pulled or {}).get("profiles"), "cohorts": [r.to_dict() for r in refreshed]}
