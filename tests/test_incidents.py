"""The pure rules of alerting (toolkit/incidents.py): which incidents hold given a sync's runs and the
time, and which open or resolve against those already open."""

from datetime import datetime, timedelta

from toolkit import incidents
from toolkit.incidents import Rules, RunFacts, SyncFacts

T = datetime(2026, 3, 1, 12, 0)


def run(run_id, status="ok", minutes=0, members=100, exportable=90, **kw):
    return RunFacts(run_id, status, T + timedelta(minutes=minutes), members, exportable, **kw)


def sync(*runs, cohort="Buyers", mode="dynamic", stopped_at=None):
    return SyncFacts(cohort, mode, T - timedelta(minutes=5), stopped_at, tuple(sorted(runs, key=lambda r: -r.run_id)))


def kinds(*syncs, now=T + timedelta(minutes=1), rules=None):
    return sorted(c.kind for c in incidents.conditions(syncs, now, rules or Rules()))


def test_a_healthy_sync_has_no_incident():
    assert kinds(sync(run(1), run(2, minutes=15)), now=T + timedelta(minutes=16)) == []


def test_the_latest_concluded_run_decides_and_interrupted_or_running_runs_say_nothing():
    assert kinds(sync(run(1, "failed", error="Access denied"))) == ["failed"]
    assert kinds(sync(run(1, "failed"), run(2, "interrupted", minutes=1))) == ["failed"]
    assert kinds(sync(run(1, "failed"), run(2, "ok", minutes=1))) == []
    assert kinds(sync(run(1, "partial", failed=3))) == ["partial"]
    assert kinds(sync(run(1, "paused", error="OneSignal answered 401"))) == ["paused"]
    assert kinds(sync(run(1, "stopped", error="would remove 80 of 100 users"))) == ["guard"]
    assert kinds(sync(run(1, "ok", tag_cap=2))) == ["tag_cap"]


def test_the_cause_names_the_error_and_the_advice_the_cohort():
    (c,) = incidents.conditions([sync(run(1, "failed", error="Access denied (HTTP 403)"))], T + timedelta(minutes=1))
    assert c.cause == "the latest run failed: Access denied (HTTP 403)" and c.run_id == 1
    text = incidents.opened_text(c)
    assert 'Sync of cohort "Buyers" failed' in text and "What to do:" in text and "toolkit connect" in text


def test_stale_after_two_missed_cycles_not_before_and_never_when_paused_or_stopped():
    one = sync(run(1))
    assert kinds(one, now=T + timedelta(minutes=30)) == []
    assert kinds(one, now=T + timedelta(minutes=31)) == ["stale"]
    assert kinds(sync(run(1, "paused")), now=T + timedelta(hours=5)) == ["paused"]
    assert kinds(sync(run(1), stopped_at=T), now=T + timedelta(hours=5)) == []
    assert kinds(sync(run(1), mode="once"), now=T + timedelta(hours=5)) == []
    never_ran = SyncFacts("New", "dynamic", T)
    assert kinds(never_ran, now=T + timedelta(minutes=31)) == ["stale"]
    # a failing sync that keeps running is failing, not stale
    assert kinds(sync(run(1, "failed"), run(2, "failed", minutes=60)), now=T + timedelta(minutes=61)) == ["failed"]


def test_a_sharp_drop_between_two_runs_is_shrinking_and_the_share_is_configurable():
    later = T + timedelta(minutes=16)
    assert kinds(sync(run(1, members=100), run(2, minutes=15, members=49, exportable=45)), now=later) == ["shrinking"]
    assert kinds(sync(run(1, members=100), run(2, minutes=15, members=50, exportable=45)), now=later) == []
    assert kinds(sync(run(1), run(2, minutes=15, members=100, exportable=40)), now=later) == ["shrinking"]
    assert kinds(sync(run(1, members=100), run(2, minutes=15, members=70, exportable=63)), now=later,
                 rules=Rules(shrink_share=0.25)) == ["shrinking"]
    # a failed run without counts is skipped as the baseline; a guard-stopped run alerts as the guard
    assert kinds(sync(run(1, members=100), run(2, "failed", 5, members=None, exportable=None),
                      run(3, minutes=15, members=10, exportable=9)), now=later) == ["shrinking"]
    assert kinds(sync(run(1), run(2, "stopped", 15, members=10, exportable=9)), now=later) == ["guard"]
    (c,) = incidents.conditions([sync(run(1), run(2, minutes=15, members=20, exportable=18))], later)
    assert "members fell from 100 to 20 (-80%)" in c.cause and "exportable users fell from 90 to 18" in c.cause


def test_changes_open_only_what_is_new_and_resolve_what_no_longer_holds():
    failed = incidents.Condition("A", "failed", "x", "y")
    stale = incidents.Condition("B", "stale", "x", "y")
    change = incidents.changes({("A", "failed"), ("C", "tag_cap")}, [failed, stale])
    assert change.opened == [stale] and change.resolved == [("C", "tag_cap")]
    assert incidents.changes({("A", "failed")}, [failed]) == incidents.Changes([], [])


def test_the_resolution_says_why():
    healthy = {"Buyers": sync(run(1, "failed"), run(2, "ok", minutes=15, members=120))}
    said = incidents.resolution("Buyers", "failed", healthy)
    assert said == "the run of 2026-03-01 12:15 UTC ended ok, 120 member(s)"
    assert incidents.resolution("Gone", "failed", healthy) == "the export was removed"
    stopped = {"Buyers": sync(run(1), stopped_at=T)}
    assert incidents.resolution("Buyers", "stale", stopped) == "the dynamic sync was stopped"
    text = incidents.resolved_text("Buyers", "failed", T, "the run of ... ended ok")
    assert text.startswith('Resolved: sync of cohort "Buyers" no longer failing (since 2026-03-01 12:00 UTC)')
