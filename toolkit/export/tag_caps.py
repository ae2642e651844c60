"""The app's data-tag cap: who it keeps out of a run (``TagCaps``), counting the tags the toolkit knows each
user carries besides this cohort's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import pyarrow as pa

from toolkit import planning
from toolkit.export.helpers import _naive
from toolkit.export.run_settings import ExportSettings
from toolkit.export.wanted import RECHECK_ABSENT, Planned, _plan, _targets
from toolkit.planning import ADD, GuardVerdict, Target


@dataclass(frozen=True)
class TagCaps:
    """Who the app's data-tag cap keeps out of this run. ``held``: members OneSignal refused before under
    this cap (or one higher) whose known tags have not dropped since: not sent again until the cap is
    raised, their other tags go, or a day has passed. ``over``: adds that would carry more tags than the
    cap, counting the tags the toolkit knows they have (``other``, by OneSignal id): recorded
    ``tag_cap`` without a request."""
    limit: int
    held: Mapping[str, Target] = field(default_factory=dict)
    over: frozenset[str] = frozenset()
    other: Mapping[str, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.held) + len(self.over)

    def sendable(self, wanted: Mapping[str, Target] | pa.Table) -> Mapping[str, Target] | pa.Table:
        """``wanted`` without the held members (the plan then neither adds nor removes them)."""
        if not self.held:
            return wanted
        if isinstance(wanted, pa.Table):
            import pyarrow.compute as pc

            return wanted.filter(pc.invert(pc.is_in(wanted["distinct_id"], pa.array(list(self.held), pa.string()))))
        return {d: t for d, t in wanted.items() if d not in self.held}


def other_tags(con, settings: ExportSettings, ids: Sequence[str]) -> dict[str, int]:
    """How many data tags each of these users (OneSignal ids as exports address them) carries besides
    this cohort's, as far as the toolkit knows: the tags of the app's other exports (their snapshots),
    and the rest of what OneSignal showed of the user when the cap refused it (``known_user_tags``).
    Users with none are left out."""
    if not ids or not knows_other_tags(con, settings):
        return {}
    import pyarrow as pa  # the ids reach DuckDB as an Arrow table: a list parameter of 1M took 6 s

    con.register("cap_ids", pa.table({"onesignal_id": pa.array(ids, pa.string())}))
    try:
        rows = con.execute("""
            WITH ids AS (SELECT DISTINCT onesignal_id FROM cap_ids),
            managed AS (SELECT tag_key FROM exports WHERE app_id = $app UNION SELECT $key),
            toolkit AS (SELECT m.onesignal_id, e.tag_key FROM export_members m JOIN exports e USING (cohort)
                        WHERE e.app_id = $app AND m.status = 'tagged' AND e.tag_key <> $key
                          AND m.onesignal_id IN (SELECT onesignal_id FROM ids)),
            viewed AS (SELECT onesignal_id, unnest(tag_keys) AS tag_key FROM known_user_tags
                       WHERE app_id = $app AND onesignal_id IN (SELECT onesignal_id FROM ids))
            SELECT onesignal_id, count(DISTINCT tag_key)::INTEGER FROM (
                SELECT * FROM toolkit
                UNION ALL SELECT * FROM viewed WHERE tag_key NOT IN (SELECT tag_key FROM managed))
            GROUP BY onesignal_id""", {"app": settings.app_id, "key": settings.tag_key}).fetchall()
    finally:
        con.unregister("cap_ids")
    return dict(rows)


def other_tags_all(con, wanted: Sequence[tuple[ExportSettings, Sequence[str]]]) -> dict[str, dict[str, int]]:
    """``other_tags`` of many cohorts' users at once (settings, OneSignal ids): per cohort, as it gives
    them, in one pass over the snapshots instead of one per cohort."""
    rows = [(s.cohort, s.app_id, s.tag_key, i) for s, ids in wanted if s.app_id for i in dict.fromkeys(ids)]
    if not rows:
        return {}
    names = ("cohort", "app_id", "tag_key", "onesignal_id")
    con.register("cap_ids", pa.table({name: pa.array([r[i] for r in rows], pa.string())
                                      for i, name in enumerate(names)}))
    try:
        found = con.execute("""
            WITH ids AS (SELECT DISTINCT app_id, onesignal_id FROM cap_ids),
            toolkit AS (SELECT DISTINCT e.app_id, m.onesignal_id, e.tag_key FROM export_members m
                        JOIN exports e USING (cohort) JOIN ids ON ids.app_id = e.app_id
                                                              AND ids.onesignal_id = m.onesignal_id
                        WHERE m.status = 'tagged'),
            viewed AS (SELECT k.app_id, k.onesignal_id, unnest(k.tag_keys) AS tag_key FROM known_user_tags k
                       JOIN ids USING (app_id, onesignal_id)),
            tags AS (SELECT * FROM toolkit
                     UNION ALL SELECT * FROM viewed v
                     WHERE v.tag_key NOT IN (SELECT tag_key FROM exports e WHERE e.app_id = v.app_id))
            SELECT c.cohort, c.onesignal_id, count(DISTINCT t.tag_key)::INTEGER
            FROM cap_ids c JOIN tags t ON t.app_id = c.app_id AND t.onesignal_id = c.onesignal_id
                                      AND t.tag_key <> c.tag_key
            GROUP BY ALL""").fetchall()
    finally:
        con.unregister("cap_ids")
    out: dict[str, dict[str, int]] = {}
    for cohort, onesignal_id, n in found:
        out.setdefault(cohort, {})[onesignal_id] = n
    return out


def knows_other_tags(con, settings: ExportSettings) -> bool:
    """Whether the toolkit knows of any tag beside this cohort's on any user of the app (mostly not: then
    a million adds need no look-up)."""
    return bool(settings.app_id) and con.execute(
        """SELECT EXISTS (SELECT 1 FROM known_user_tags WHERE app_id = $app)
               OR EXISTS (SELECT 1 FROM export_members m JOIN exports e USING (cohort)
                          WHERE e.app_id = $app AND e.tag_key <> $key AND m.status = 'tagged')""",
        {"app": settings.app_id, "key": settings.tag_key}).fetchall()[0][0]


def _held(con, settings: ExportSettings, wanted: Mapping[str, Target] | pa.Table) -> TagCaps:
    """The members the cap refused before and that are still out of reach (see ``TagCaps``)."""
    rows = con.execute("SELECT distinct_id, onesignal_id, id_type, tag_limit, other_tags, checked_at "
                       "FROM export_tag_caps WHERE cohort = ?", [settings.cohort]).fetchall()
    if not rows:
        return TagCaps(settings.tag_limit)
    if isinstance(wanted, pa.Table):      # only the few refused members are looked up, not a million
        import pyarrow.compute as pc

        wanted = _targets(wanted.filter(pc.is_in(wanted["distinct_id"],
                                                    pa.array([r[0] for r in rows], pa.string()))))
    known = other_tags(con, settings, [r[1] for r in rows])
    recheck_after = _naive(settings.now) - RECHECK_ABSENT
    held = {d: Target(o, t) for d, o, t, limit, other, checked in rows
            if wanted.get(d) == Target(o, t) and settings.tag_limit <= limit and known.get(o, 0) >= other
            and checked > recheck_after}
    return TagCaps(settings.tag_limit, held)


def _over(con, settings: ExportSettings, caps: TagCaps, the_plan: planning.Plan) -> TagCaps:
    """``caps`` with the plan's adds that the tags the toolkit knows of would take over the cap."""
    if not the_plan.counts.get(ADD) or not knows_other_tags(con, settings):
        return caps
    adds = the_plan.of(ADD)
    known = other_tags(con, settings, [s.target.onesignal_id for s in adds])
    over = frozenset(s.distinct_id for s in adds if known.get(s.target.onesignal_id, 0) + 1 > caps.limit)
    return replace(caps, over=over, other=known)


def _capped_plan(con, settings: ExportSettings, wanted: Mapping[str, Target] | pa.Table | None,
                 planned: Planned | None = None) -> tuple[planning.Plan, GuardVerdict, TagCaps]:
    """The plan and guard of ``_plan`` for the members the cap does not hold back, and the cap's verdict.
    A plan made with the cycle's others (``planned``: only for a cohort the cap held nobody of) is taken
    as it is."""
    if planned is not None:
        return planned.plan, planned.verdict, TagCaps(settings.tag_limit, over=planned.over, other=planned.other)
    assert wanted is not None
    caps = _held(con, settings, wanted)
    the_plan, verdict = _plan(con, settings, caps.sendable(wanted))
    return the_plan, verdict, _over(con, settings, caps, the_plan)
