"""A cycle's plans, made together: every due cohort of one shared pass planned in a few statements.

Planning sixty cohorts one by one read each cohort's matched members into Arrow, hashed them, looked
up its kept fingerprint and, when it differed, diffed it against its snapshot: a dozen round trips per
cohort, most of the cycle's time once the evaluation itself is shared (``cohort_batch``). Here, over
the classified users of the pass (one row per user, a bit per cohort): one aggregation gives every
cohort's counts per reason and the fingerprint of its exportable members; one pass over
``export_members`` gives every kept fingerprint and snapshot size (``snapshots.kept_all``); one outer
join diffs all the cohorts whose fingerprints differ (``snapshots.diff_all``: for a snapshot in step
with the pass this one was brought up from, only the users evaluated again); one query counts the tags
the toolkit knows the added users carry (``tag_caps.other_tags_all``). The pure core then orders each
cohort's rows into its plan (``planning.plan``) and judges the removal guard, as a run alone does. The
tag cap is judged as of the cycle's start: what the cycle's other runs tag meanwhile is not counted (a
user OneSignal then refuses is recorded and held back, as any refusal).

A cohort this cannot plan as its run would is left out, and its run plans it alone: a static cohort,
one whose members the app's tag cap holds back (its plan leaves them out), one over the member limits.
"""

from __future__ import annotations

from collections.abc import Sequence

from toolkit import cohort_batch, kept_pass, matching, planning, snapshots
from toolkit.export.run_settings import ExportSettings
from toolkit.export.tag_caps import other_tags_all
from toolkit.export.wanted import MAX_COHORT_MEMBERS, Exportable, Planned, recheck_since
from toolkit.onesignal_ids import USER_ID_PROPERTY
from toolkit.sql import quote_ident

_EXPORTED = ", ".join(quote_ident(c) for c in snapshots.COLUMNS)
_HASH = f"hash({_EXPORTED})"


def plan_all(con, members: cohort_batch.Members, matched: str, chosen: Sequence[ExportSettings]
             ) -> dict[str, Exportable]:
    """The cohorts of ``chosen`` (one ``now``) that the pass evaluated, each as its ``Exportable`` with
    its plan and guard (``planned``), from ``matched``: the pass's users classified with their masks
    (``cohort_batch.classify``). Cohorts left out (see the module) are planned by their run."""
    if not chosen:
        return {}
    now = chosen[0].now
    held = {c for c, in con.execute("SELECT DISTINCT cohort FROM export_tag_caps").fetchall()}
    settings = {s.cohort: s for s in chosen
                if s.cohort in members.flags and s.cohort not in held and s.now == now}
    if not settings:
        return {}
    counts = _counts(con, members, matched, list(settings))
    limit = min(matching.COHORT_LIMIT, MAX_COHORT_MEMBERS)
    settings = {name: s for name, s in settings.items() if counts[name][1] <= limit}
    since = recheck_since(now)
    kept = snapshots.kept_all(con, list(settings), since)
    plans: dict[str, planning.Plan | None] = {
        name: planning.unchanged(counts[name][2], kept[name][0]) for name in settings}
    changed = [name for name, found in plans.items() if found is None]
    if changed:
        # A snapshot in step with the pass this one was brought up from differs from what is wanted now only
        # for the users evaluated again (who a load changed, whose matching facts changed, whose events crossed
        # a window's edge) and for its members not tagged (absent ones expire): only those are compared.
        # (For the default user-id property only: its facts are refreshed, and logged, per touched profile.)
        key = chosen[0]
        in_step = (snapshots.in_step_with(con, changed, snapshots.step_mark(members.refreshed_from,
                                                                            key.user_id_property, key.id_type))
                   if members.refreshed_from is not None and key.user_id_property == USER_ID_PROPERTY else set())
        diffs = {}
        for group, users in (([c for c in changed if c in in_step], _CHANGED_USERS),
                             ([c for c in changed if c not in in_step], None)):
            diffs.update(_diff(con, members, matched, group, since, users))
        for name in changed:
            adds, removes = diffs[name]
            plans[name] = planning.plan(adds, removes, counts[name][2].members - len(adds))
    ready = {name: the_plan for name, the_plan in plans.items() if the_plan is not None}
    known = other_tags_all(con, [(settings[name], [s.target.onesignal_id for s in the_plan.of(planning.ADD)])
                                 for name, the_plan in ready.items() if the_plan.counts.get(planning.ADD)])
    out = {}
    for name, chosen_settings in settings.items():
        the_plan = ready[name]
        # As ``wanted._plan``: an unchanged plan's snapshot is the wanted set; else the snapshot's size.
        size = the_plan.counts[planning.NOOP] if the_plan.recognised else kept[name][1]
        verdict = planning.removal_guard(the_plan, size or None, chosen_settings.max_removal_share,
                                         force=chosen_settings.force)
        # As ``tag_caps._over``: the adds that the tags the toolkit knows of would take over the cap.
        other = known.get(name, {})
        over = frozenset(s.distinct_id for s in the_plan.of(planning.ADD)
                         if other.get(s.target.onesignal_id, 0) + 1 > chosen_settings.tag_limit)
        total, exportable, _, left_out = counts[name]
        out[name] = Exportable(total, None, left_out, Planned(the_plan, verdict, exportable, over, other))
    return out


_CHANGED_USERS = (f"SELECT id FROM {kept_pass.USERS} "
                  "UNION SELECT distinct_id FROM export_members WHERE status <> 'tagged'")


def _diff(con, members: cohort_batch.Members, matched: str, names: list[str], since, users: str | None) -> dict:
    """``snapshots.diff_all`` of ``names``: the cohorts' bits of the mask as they are (one AND a row), a few
    cohorts at a time; only ``users``' rows, if given."""
    diffs: dict = {}
    for column, by_bit in _by_column(members, names).items():
        bits = sorted(by_bit)
        for start in range(0, len(bits), snapshots.MASK_BITS):
            some = bits[start:start + snapshots.MASK_BITS]
            keep = sum(1 << k for k in some)
            wanted = (f"SELECT {_EXPORTED}, {quote_ident(column)}::UHUGEINT & {keep} AS mask FROM {matched} "
                      f"WHERE exportable AND {quote_ident(column)} & {keep}::UBIGINT <> 0")
            diffs.update(snapshots.diff_all(con, wanted, [by_bit[k] if k in some else None
                                                          for k in range(some[-1] + 1)], since, users))
    return diffs


def _by_column(members: cohort_batch.Members, names: list[str]) -> dict[str, dict[int, str]]:
    """The cohorts by mask column, then by bit."""
    out: dict[str, dict[int, str]] = {}
    for name in names:
        column, k = members.flags[name]
        out.setdefault(column, {})[k] = name
    return out


def _counts(con, members: cohort_batch.Members, matched: str, names: list[str]
            ) -> dict[str, tuple[int, int, planning.Fingerprint, dict[str, int]]]:
    """Per cohort, in one pass over ``matched``: (members, exportable, the fingerprint of the exportable
    members, the others by reason), as ``matching.summarize`` and ``snapshots.fingerprint`` give them.
    Each member's hash is computed once and summed in two 32-bit halves. The members are summed per mask
    (users in the same cohorts: ~210k masks at 10M), those sums per byte of each mask (at most 256 values
    each), and a cohort's totals are the sums of its byte's values that have its bit. Sixty cohorts' bits
    read from every member took 0.8 s of CPU at 10M; read from every mask, 0.83-0.89 s in all on a loaded
    machine, where this takes 0.26-0.31 s."""
    masks = members.masks
    listed = ", ".join(quote_ident(c) for c in masks)
    by_byte = " UNION ALL ".join(
        f"SELECT {j} AS col, i, ({quote_ident(column)} >> (8 * i)) & 255 AS v, exportable, reason, n, hi, lo "
        f"FROM _groups, range(8) AS r(i)" for j, column in enumerate(masks))
    rows = con.execute(f"""
        WITH _groups AS MATERIALIZED (
            SELECT exportable, reason, {listed}, count(*) AS n, sum(hi) AS hi, sum(lo) AS lo
            FROM (SELECT *, CASE WHEN exportable THEN {_HASH} ELSE 0 END AS _h,
                         (_h >> 32)::BIGINT AS hi, (_h & 4294967295)::BIGINT AS lo FROM {matched})
            GROUP BY ALL)
        SELECT col, i, v, exportable, reason, sum(n), sum(hi), sum(lo) FROM ({by_byte}) GROUP BY ALL""").fetchall()
    wanted = {members.flags[name]: name for name in names}
    sums = {name: [0, 0, 0] for name in names}          # members, exportable, digest
    left_out: dict[str, dict[str, int]] = {name: {} for name in names}
    for col, i, v, exportable, reason, n, hi, lo in rows:
        for j in range(8):
            name = wanted.get((masks[col], 8 * i + j)) if v >> j & 1 else None
            if name is None:
                continue
            found = sums[name]
            found[0] += n
            if exportable:
                found[1] += n
                found[2] += (int(hi) << 32) + int(lo)
            elif n and reason in matching.REASONS:
                left_out[name][reason] = left_out[name].get(reason, 0) + n
    return {name: (total, exportable, planning.Fingerprint(exportable, digest),
                   {r: left_out[name][r] for r in matching.REASONS if left_out[name].get(r)})
            for name, (total, exportable, digest) in sums.items()}
