"""``ExportSettings``: everything one run follows, built once by ``settings`` from the cohort's registration
and the caller's overrides; registering an export (stored by the run that follows, if it succeeds)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from toolkit import cohorts, credentials
from toolkit.errors import ExportError
from toolkit.export.helpers import _naive
from toolkit.export.naming import segment_name, tag_key, tag_key_problem
from toolkit.export.registry import DEFAULT_TAG_LIMIT, Registered, app_tag_limit, registration
from toolkit.onesignal import default_base_url
from toolkit.onesignal_ids import USER_ID_PROPERTY
from toolkit.store import Store

MODES = ("once", "dynamic")


MAX_DYNAMIC_SYNCS = 60


DEFAULT_MAX_REMOVAL_SHARE = 0.5


# What a successful run stores of its settings: a new registration, or a registered export's new address.
SAVE_REGISTRATION, SAVE_ADDRESS = "registration", "address"


@dataclass(frozen=True)
class ExportSettings:
    """Everything one export run follows, decided before it starts (``settings`` builds it from the
    cohort's registration, read once, and the caller's overrides) and passed down unchanged."""
    cohort: str
    mode: str = "once"                        # once | dynamic
    app_id: str | None = None                 # None only in a dry run of an unregistered cohort
    base_url: str | None = None
    user_id_property: str = USER_ID_PROPERTY
    id_type: str = "auto"                     # auto | external_id | subscription_id
    tag_key: str = ""                         # the registered key; default tag_key(cohort)
    segment_id: str | None = None             # the registered segment of this app, if known
    saves: str | None = None                  # SAVE_REGISTRATION / SAVE_ADDRESS when the run ends ok or partial
    dry_run: bool = False
    force: bool = False                       # pass the removal guard
    tag_limit: int = DEFAULT_TAG_LIMIT        # data tags a user may carry in the app (app_limits)
    max_removal_share: float = DEFAULT_MAX_REMOVAL_SHARE
    now: datetime = field(default_factory=lambda: datetime.now(UTC))    # as of when cohorts are evaluated
    # OneSignalClient's options: timeouts, retries, concurrency, rate limits
    client_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    # A cycle's merged sender for this app (export.merged.MergedSends); None: the run sends on its own
    sends: Any = field(default=None, hash=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ExportError(f"mode {self.mode!r}: expected once or dynamic")
        if not self.tag_key:
            object.__setattr__(self, "tag_key", tag_key(self.cohort))
        problem = tag_key_problem(self.tag_key)
        if problem:
            raise ExportError(f"cohort {self.cohort!r}: its tag key {problem}")


def settings(store: Store, cohort: str, *, mode: str | None = None, app_id: str | None = None,
             base_url: str | None = None, user_id_property: str | None = None, id_type: str | None = None,
             dry_run: bool = False, force: bool = False, now: datetime | None = None,
             client_options: Mapping[str, Any] | None = None, tag_limit: int | None = None,
             known: Registered | None = None) -> ExportSettings:
    """As ``_settings`` says, with the app's data-tag cap (``tag_limit`` overrides it for this run).
    ``known``: the registrations and limits, read once for many settings."""
    chosen = _settings(store, cohort, mode=mode, app_id=app_id, base_url=base_url, user_id_property=user_id_property,
                       id_type=id_type, dry_run=dry_run, force=force, now=now, client_options=client_options,
                       known=known)
    limit = known.tag_limit(chosen.app_id) if known else app_tag_limit(store.reader(), chosen.app_id)
    return replace(chosen, tag_limit=tag_limit if tag_limit is not None else limit["tag_limit"])


def _settings(store: Store, cohort: str, *, mode: str | None, app_id: str | None, base_url: str | None,
              user_id_property: str | None, id_type: str | None, dry_run: bool, force: bool,
              now: datetime | None, client_options: Mapping[str, Any] | None,
              known: Registered | None = None) -> ExportSettings:
    """The settings of one export run of ``cohort``: its registration, read here once, with the
    caller's overrides. With ``mode`` (once/dynamic) the run (re)registers the export, overwriting the
    previous one; without, it runs the registered export again (at ``base_url`` if given). A new
    registration or address is stored only if the run ends ok or partial, so a failed or refused export
    leaves the registered one as it was. A dry run rehearses and registers nothing; an unregistered
    cohort is rehearsed as a one-time export. A registered export is found by its exact name, any other
    name as ``cohorts.resolve_name`` finds it (any case, else "did you mean")."""
    con = store.reader()
    found = known.registration(cohort) if known else registration(con, cohort)
    if found is None:
        resolved = cohorts.resolve_name(store, cohort)
        if resolved != cohort:
            cohort, found = resolved, registration(con, resolved)
    per_run: dict[str, Any] = {"dry_run": dry_run, "force": force, "now": now or datetime.now(UTC),
                               "client_options": dict(client_options or {})}
    if mode is not None and not dry_run:
        return _registering(con, cohort, mode, app_id or (found or {}).get("app_id")
                            or os.environ.get(credentials.ENV_APP), base_url or (found or {}).get("base_url"),
                            user_id_property, id_type, found, **per_run)
    if found is None:
        if not dry_run:
            raise ExportError(f'cohort "{cohort}" has no export yet: choose --once or --dynamic')
        return ExportSettings(cohort, mode or "once", app_id, base_url, user_id_property or USER_ID_PROPERTY,
                              id_type or "auto", **per_run)
    moved = bool(base_url) and base_url != found["base_url"] and not dry_run
    return ExportSettings(cohort, mode or found["mode"], found["app_id"], base_url or found["base_url"],
                          user_id_property or found["user_id_property"] or USER_ID_PROPERTY,
                          id_type or found["id_type"] or "auto", found["tag_key"], found["segment_id"],
                          SAVE_ADDRESS if moved else None, **per_run)


def _registering(con, cohort: str, mode: str, app_id: str | None, base_url: str | None,
                 user_id_property: str | None, id_type: str | None, found: dict | None, **run) -> ExportSettings:
    """Settings that register the export of ``cohort``: checked here (mode, app, the dynamic-sync limit),
    stored by the run that follows them, if it succeeds."""
    if mode not in MODES:
        raise ExportError(f"mode {mode!r}: expected once or dynamic")
    if not app_id:
        raise ExportError("say which OneSignal app: --app-id or $ONESIGNAL_APP_ID")
    if mode == "dynamic":
        dynamic = con.execute("SELECT count(*) FROM exports WHERE mode = 'dynamic' AND stopped_at IS NULL "
                              "AND cohort <> ?", [cohort]).fetchone()[0]
        if dynamic >= MAX_DYNAMIC_SYNCS:
            raise ExportError(f"{dynamic} dynamic syncs are active; Mixpanel allows {MAX_DYNAMIC_SYNCS} per "
                              "project. Stop one (toolkit export NAME --stop) or use a one-time export.")
    segment_id = found["segment_id"] if found and found["app_id"] == app_id else None
    # A registered key is kept: the members its snapshot lists carry that key.
    return ExportSettings(cohort, mode, app_id, base_url or default_base_url(), user_id_property or USER_ID_PROPERTY,
                          id_type or "auto", (found or {}).get("tag_key") or "", segment_id=segment_id,
                          saves=SAVE_REGISTRATION, **run)


def register(store: Store, cohort: str, mode: str, app_id: str, base_url: str, *,
             user_id_property: str = USER_ID_PROPERTY, id_type: str = "auto",
             now: datetime | None = None) -> None:
    """Record the export of ``cohort`` (``once`` or ``dynamic``) without running it; a new export
    overwrites the previous one (its snapshot stays, so switching mode sends only the difference)."""
    con = store.con
    found = registration(con, cohort)
    _save_registration(con, _registering(con, cohort, mode, app_id, base_url, user_id_property, id_type, found,
                                         now=now or datetime.now(UTC)))


def _save_registration(con, settings: ExportSettings, segment_id: str | None = None) -> None:
    """Store ``settings`` as the cohort's registration: a new one (created now; a dynamic sync is due
    at once), or a registered export's new address (its schedule kept)."""
    if settings.saves == SAVE_ADDRESS:
        con.execute("UPDATE exports SET base_url = ? WHERE cohort = ?", [settings.base_url, settings.cohort])
        return
    now = _naive(settings.now)
    # A new registration is a person's act: it replaces a paused one, pause and all.
    con.execute("""INSERT OR REPLACE INTO exports (cohort, mode, app_id, base_url, tag_key, segment_name, segment_id,
                       user_id_property, id_type, created_at, next_due_at, stopped_at, paused_at, paused_reason)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL)""", [
        settings.cohort, settings.mode, settings.app_id, settings.base_url, settings.tag_key,
        segment_name(settings.cohort), segment_id or settings.segment_id, settings.user_id_property,
        settings.id_type, now, now if settings.mode == "dynamic" else None])
