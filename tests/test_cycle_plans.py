"""A cycle's plans made together (toolkit/export/cycle_plans.py): every cohort's plan, removal guard, tag-cap
verdict and counts are exactly what planning it alone gives (``export.exportable`` then
``tag_caps._capped_plan``), against snapshots of every kind: unchanged, changed, moved ids, absent members
expired or not, a kept fingerprint or none, a hand-edited one; users carrying other tags under a low cap."""

import random
from datetime import timedelta

import pytest

from helpers import NOW
from toolkit import Store, cohort_batch, cohorts, export, snapshots, sync
from toolkit.export import cycle_plans, tag_caps

pytestmark = pytest.mark.slow     # end to end: whole cycles planned against cohorts planned alone

APP = "00000000-0000-4000-8000-0000000c7c1e"
URL = "http://127.0.0.1:9"


def _registered(path, seed: int):
    """The sample's cohorts registered as dynamic syncs, each with a snapshot that differs from its members
    in a way of ``seed``'s choosing."""
    rng = random.Random(seed)
    store = Store(path)
    con = store.con
    names = [c["name"] for c in cohorts.list_cohorts(store)]
    for name in names:
        export.register(store, name, "dynamic", APP, URL, now=NOW)
    export.set_tag_limit(store, APP, rng.choice([1, 2, 3]))
    since = NOW.replace(tzinfo=None)
    for i, name in enumerate(names):
        rows = export.exportable(store, export.settings(store, name, now=NOW)).table.to_pylist()
        shape = "same" if i == 0 else rng.choice(["same", "changed", "changed", "moved", "empty"])
        kept = []
        for row in rows:
            if shape == "empty" or (shape != "same" and rng.random() < 0.3):
                continue                                                # an add
            if shape == "moved" and rng.random() < 0.5:
                row = {**row, "onesignal_id": row["onesignal_id"] + "-old"}     # a removal and an add
            status, checked = "tagged", since
            if i and rng.random() < 0.2:            # absent: still counted, or looked for again (expired)
                status, checked = "absent", since - timedelta(hours=rng.choice([1, 48]))
            kept.append((name, row["distinct_id"], row["onesignal_id"], row["id_type"], status, checked))
        if shape == "changed":
            kept += [(name, f"gone-{i}-{k}", f"ext-gone-{k}", "external_id", "tagged", since) for k in range(3)]
        if kept:
            con.executemany("INSERT INTO export_members VALUES (?, ?, ?, ?, ?, ?)", kept)
        if i == 0 or rng.random() < 0.7:
            snapshots.keep(con, name)           # else no fingerprint is kept: the rows decide
        if kept and i and rng.random() < 0.15:        # a hand edit after the fingerprint was kept
            con.execute("DELETE FROM export_members WHERE cohort = ? AND distinct_id = ?", [name, kept[0][1]])
    members = con.execute("SELECT DISTINCT onesignal_id FROM export_members ORDER BY 1").fetchall()
    for (onesignal_id,) in members[::4]:        # tags OneSignal showed besides the exports' own
        con.execute("INSERT INTO known_user_tags VALUES (?, ?, ?, ?)",
                    [APP, onesignal_id, ["vip", export.tag_key(names[0])], since])
    return store, names


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_plans_made_together_equal_each_cohort_planned_alone(sample_store_copy, seed, monkeypatch):
    if seed % 2:
        monkeypatch.setattr(snapshots, "MASK_BITS", 3)      # the changed cohorts diffed a few at a time
    if seed >= 2:
        monkeypatch.setattr(cohort_batch, "MASK_BITS", 4)   # the cohorts' bits in several mask columns
    store, names = _registered(sample_store_copy, seed)
    with store:
        chosen = [export.settings(store, name, now=NOW + timedelta(minutes=15)) for name in names]
        members = cohort_batch.evaluate(store, names, now=chosen[0].now)
        matched = cohort_batch.classify(store, members)
        together = cycle_plans.plan_all(store.con, members, matched.table, chosen)
        assert set(together) == set(members.flags)         # every dynamic cohort; the static ones alone
        assert len(members.masks) == (1 if seed < 2 else -(-len(members.flags) // 4))
        kinds = set()
        for settings in chosen:
            if settings.cohort not in together:
                continue
            alone = export.exportable(store, settings)
            the_plan, verdict, caps = tag_caps._capped_plan(store.con, settings, alone.table)
            found = together[settings.cohort]
            assert found.planned is not None and found.table is None
            assert (found.members, found.count, dict(found.left_out)) == \
                (alone.members, alone.count, dict(alone.left_out)), settings.cohort
            assert found.planned.plan == the_plan, settings.cohort
            assert found.planned.plan.recognised == the_plan.recognised, settings.cohort
            assert found.planned.verdict == verdict, settings.cohort
            assert (found.planned.over, dict(found.planned.other)) == (caps.over, dict(caps.other)), settings.cohort
            kinds |= {"unchanged" if the_plan.recognised else "changed", "stopped" if not verdict.ok else "passed",
                      "over the cap" if caps.over else "under the cap"}
        assert {"unchanged", "changed", "passed"} <= kinds, kinds       # the snapshots gave plans of each kind


def test_a_cohort_the_tag_cap_holds_members_of_is_planned_alone(sample_store_copy):
    store, names = _registered(sample_store_copy, 5)
    with store:
        chosen = [export.settings(store, name, now=NOW) for name in names]
        members = cohort_batch.evaluate(store, names, now=NOW)
        held = next(iter(members.flags))
        store.con.execute("INSERT INTO export_tag_caps VALUES (?, 'someone', 'ext-someone', 'external_id', 1, 0, ?)",
                          [held, NOW.replace(tzinfo=None)])
        together = cycle_plans.plan_all(store.con, members, cohort_batch.classify(store, members).table, chosen)
        assert held not in together and set(together) == set(members.flags) - {held}


def test_the_cycle_plans_its_cohorts_together_and_records_what_each_alone_would(sample_store_copy, tmp_path,
                                                                              monkeypatch):
    """A dry-run cycle's run records equal each cohort's own dry run; no cohort of the shared pass is
    planned on its own (the per-cohort diff and fingerprint are never called for them)."""
    store, names = _registered(sample_store_copy, 1)
    later = NOW + timedelta(minutes=15)
    fields = ("cohort", "status", "members", "exportable", "added", "removed", "unchanged", "tag_cap", "error",
              "guard")
    with store:
        alone = [sync.export_cohort(store, export.settings(store, name, now=later, dry_run=True)) for name in names]
        static = {c["name"] for c in cohorts.list_cohorts(store) if c["kind"] == "static"}
        calls = []
        real_diff = snapshots.diff

        def counted(con, cohort, *args):
            calls.append(cohort)
            return real_diff(con, cohort, *args)

        monkeypatch.setattr(snapshots, "diff", counted)
        together = sync.run_due(store, now=later, dry_run=True, cohorts=names)
    assert [[r.to_dict()[k] for k in fields] for r in together] == [[r.to_dict()[k] for k in fields] for r in alone]
    assert set(calls) <= static          # only a static cohort is diffed alone
    assert sum(r.added + r.removed for r in together) > 0


def test_a_dry_run_cycle_records_each_members_fate_as_its_own_dry_run_and_meets_a_running_export(sample_store_copy):
    """The dry runs a cycle records together (``export.rehearse``: one transaction) list every member's fate
    as each cohort's own dry run does, under run ids of their own; a cohort whose export is running
    meanwhile fails alone, as its own dry run would, and the others are still recorded."""
    store, names = _registered(sample_store_copy, 2)
    later = NOW + timedelta(minutes=15)
    with store:
        alone = {name: sync.export_cohort(store, export.settings(store, name, now=later, dry_run=True))
                 for name in names}
        busy = next(name for name in names if alone[name].added + alone[name].removed)
        with export._run_lock(store, busy):
            together = sync.run_due(store, now=later, dry_run=True, cohorts=names)
        fates = {r.cohort: export.member_fates(store.con, r.run_id).table.drop(["run_id"]).to_pylist()
                 for r in together if r.cohort != busy}
        assert fates == {name: export.member_fates(store.con, r.run_id).table.drop(["run_id"]).to_pylist()
                         for name, r in alone.items() if name != busy}
    assert [r.cohort for r in together] == names
    assert len({r.run_id for r in together} | {r.run_id for r in alone.values()}) == 2 * len(names)
    failed = next(r for r in together if r.cohort == busy)
    assert failed.status == "failed" and "already running" in failed.error
    assert sum(len(rows) for rows in fates.values()) > 0


def test_settings_read_once_for_a_cycle_are_each_cohorts_own(sample_store_copy):
    """``export.settings`` from the registrations and limits read once (``Registered``, as ``run_due`` reads
    them) equals reading each cohort's: a registered app's cap, the default cap of another app, a name in
    another case, and an unregistered cohort's dry run."""
    from toolkit.export.registry import Registered

    store, names = _registered(sample_store_copy, 3)
    with store:
        export.register(store, names[0], "once", "00000000-0000-4000-8000-0000000000ff", URL, now=NOW)
        store.con.execute("DELETE FROM exports WHERE cohort = ?", [names[-1]])
        known = Registered.read(store.reader())
        asked = [*names, names[1].upper()]
        assert [export.settings(store, name, now=NOW, dry_run=True, known=known) for name in asked] == \
            [export.settings(store, name, now=NOW, dry_run=True) for name in asked]
        limits = {s.tag_limit for s in (export.settings(store, name, now=NOW, known=known) for name in names[:-1])}
        assert len(limits) == 2
