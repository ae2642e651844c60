"""The registered exports and app limits as the store keeps them: read, listed, stopped, moved, due, and
the app's data-tag cap."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from toolkit.errors import ExportError
from toolkit.export.helpers import _naive
from toolkit.store import Store

DEFAULT_TAG_LIMIT = 20          # data tags per user on OneSignal's paid plans (the integration needs one); Free: 2


def stop(store: Store, cohort: str, now: datetime | None = None) -> None:
    """Stop a dynamic sync: no further runs; OneSignal keeps the last export."""
    found = store.con.execute("UPDATE exports SET next_due_at = NULL, stopped_at = ? WHERE cohort = ? "
                              "AND mode = 'dynamic' AND stopped_at IS NULL RETURNING cohort",
                              [_naive(now), cohort]).fetchall()
    if not found:
        raise ExportError(f"no active dynamic sync for cohort {cohort!r}")


def follow_app(store: Store, app_id: str, base_url: str) -> None:
    """The app's registered exports go to ``base_url`` from now on (it answered there, e.g. a new
    emulator port)."""
    store.con.execute("UPDATE exports SET base_url = ? WHERE app_id = ? AND base_url <> ?",
                      [base_url, app_id, base_url])


def set_tag_limit(store: Store, app_id: str, tag_limit: int, now: datetime | None = None) -> None:
    """The app's data-tag cap per user, as its OneSignal plan says (Free 2, paid 20, or the plan's
    number): exports plan with it, and members it refused are tried again once it is raised."""
    if isinstance(tag_limit, bool) or not isinstance(tag_limit, int) or tag_limit < 1:
        raise ExportError(f"tag limit {tag_limit!r} for app {app_id}: expected a whole number of 1 or more "
                          "(OneSignal's Free plan allows 2 data tags per user, its paid plans 20)")
    store.con.execute("INSERT OR REPLACE INTO app_limits VALUES (?, ?, 'set', ?)", [app_id, tag_limit, _naive(now)])


def app_tag_limit(con, app_id: str | None) -> dict:
    """The app's data-tag cap and where it comes from: ``set`` (by a person), ``onesignal`` (its
    refusal named the number) or ``default`` (a paid plan's)."""
    row = con.execute("SELECT tag_limit, source FROM app_limits WHERE app_id = ?", [app_id]).fetchone() \
        if app_id else None
    return {"tag_limit": row[0], "source": row[1]} if row else _default_limit()


def _default_limit() -> dict:
    return {"tag_limit": DEFAULT_TAG_LIMIT, "source": "default"}


def _as_dicts(cursor) -> list[dict]:
    """The cursor's rows, each a dict by column name."""
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


@dataclass(frozen=True)
class Registered:
    """Every registration and app limit, read at once: a cycle's sixty settings each read theirs in two
    queries, ~0.1 s in all. Answers as ``registration`` and ``app_tag_limit`` do."""
    exports: Mapping[str, dict]
    limits: Mapping[str, dict]

    @classmethod
    def read(cls, con) -> Registered:
        exports = {found["cohort"]: found for found in _as_dicts(con.execute("SELECT * FROM exports"))}
        limits = {app: {"tag_limit": limit, "source": source}
                  for app, limit, source in con.execute("SELECT app_id, tag_limit, source FROM app_limits").fetchall()}
        return cls(exports, limits)

    def registration(self, cohort: str) -> dict | None:
        return self.exports.get(cohort)

    def tag_limit(self, app_id: str | None) -> dict:
        return self.limits.get(app_id or "") or _default_limit()


def due(store: Store, now: datetime | None = None) -> list[str]:
    """Cohorts whose dynamic sync is due (a paused one never is: ``states``)."""
    return [c for c, in store.con.execute(
        "SELECT cohort FROM exports WHERE mode = 'dynamic' AND stopped_at IS NULL AND paused_at IS NULL "
        "AND next_due_at <= ? "
        "ORDER BY next_due_at, cohort", [_naive(now)]).fetchall()]


def list_exports(store: Store) -> list[dict]:
    cursor = store.reader().execute("""
        SELECT e.cohort, e.mode, e.app_id, e.segment_name, e.segment_id, e.tag_key, e.next_due_at,
               e.stopped_at, e.paused_at, e.paused_reason,
               count(m.distinct_id) FILTER (WHERE m.status = 'tagged') AS in_segment
        FROM exports e LEFT JOIN export_members m USING (cohort) GROUP BY ALL ORDER BY e.cohort""")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def registration(con, cohort: str) -> dict | None:
    """The registered export of ``cohort`` (a row of ``exports``), or None."""
    found = _as_dicts(con.execute("SELECT * FROM exports WHERE cohort = ?", [cohort]))
    return found[0] if found else None
