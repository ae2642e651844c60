"""A dynamic sync held back (stopped by the removal guard, or paused by a person or by OneSignal's 401/403/404):
its dry run and preview (`toolkit export NAME --dry-run`, `export.preview_export`, the export panel) say so,
with what a run now would record and the way out. Real store files, the emulator over HTTP."""

from datetime import timedelta

import pytest
from cli_runner import toolkit

from helpers import FOUR_USERS, NOW, a_new_buyer, buyers_and_panel
from toolkit import Store, cohorts, export, report, sync
from toolkit.emulator import Emulator
from toolkit.errors import SyncPaused

pytestmark = pytest.mark.slow     # end to end: syncs held back, previewed and run

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0, "max_attempts": 2}
USERS = FOUR_USERS


@pytest.fixture
def world(tmp_path, filled_once, users_unspaced, monkeypatch):
    """Buyers and Panel registered as dynamic syncs at NOW; the emulator holds the four users."""
    db = filled_once(buyers_and_panel, tmp_path / "store.duckdb")
    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app()
        for u in USERS:
            emu.add_user(app.app_id, f"ext-{u}")
        for name, value in {"ONESIGNAL_APP_ID": app.app_id, "ONESIGNAL_API_KEY": app.api_key,
                            "TOOLKIT_CREDENTIALS": str(tmp_path / "no-credentials.json")}.items():
            monkeypatch.setenv(name, value)
        with Store(db) as store:
            for cohort in ("Buyers", "Panel"):
                export.register(store, cohort, "dynamic", app.app_id, emu.url, now=NOW)
        yield {"db": db, "emu": emu, "app": app}


def at(minutes):
    return NOW + timedelta(minutes=minutes)


def due(world, minutes, names=None):
    with Store(world["db"]) as store:
        return {r.cohort: r for r in sync.run_due(store, now=at(minutes), cohorts=names, client_options=FAST)}


def preview(world, cohort, minutes, force=False):
    with Store(world["db"], read_only=True) as store:
        return export.preview_export(store, cohort, now=at(minutes), force=force)


def runs_of(world):
    with Store(world["db"], read_only=True) as store:
        return store.con.execute("SELECT count(*) FROM export_runs").fetchone()[0]


def guard_stopped(world):
    """Panel shrinks to one of four: the guard stops its run at minute 16 (the sync is `guarded`)."""
    due(world, 1)
    with Store(world["db"]) as store:
        cohorts.save_all(store, [{"name": "Panel", "static_ids": USERS[:1]}])
    stopped = due(world, 16)["Panel"]
    assert stopped.status == "stopped" and stopped.error.startswith("would remove 3 of 4 users")
    return stopped


def test_the_preview_of_a_guard_stopped_sync_says_it_is_stopped_even_when_the_guard_would_pass_now(world):
    stopped = guard_stopped(world)
    with Store(world["db"]) as store:       # the panel comes back but one: the guard alone would let that through
        cohorts.save_all(store, [{"name": "Panel", "static_ids": USERS[:3]}])
    seen = preview(world, "Panel", 31)
    assert seen.verdict.ok and seen.removed == 1
    assert seen.status == "stopped" and seen.sync_stop["state"] == "guarded"
    assert seen.sync_stop["run_id"] == stopped.run_id and not seen.sync_stop["forced"]
    text = report.export_preview_text(seen)                    # the panel's and the notebook's text
    assert (f"the dynamic sync is STOPPED by the removal guard since {at(16):%Y-%m-%d %H:%M} UTC "
            f"(run #{stopped.run_id} lists the changes it did not send)") in text
    assert "toolkit export Panel --force" in text and "toolkit resume Panel" in text
    # what the dry run said is what the cycle's run records: nothing sent, "still stopped", the same words
    before = len(world["emu"].requests())
    run = due(world, 31)["Panel"]
    assert (run.status, run.error) == (seen.status, seen.refused) and len(world["emu"].requests()) == before
    assert "now the guard would pass" in run.error


def test_toolkit_export_dry_run_of_a_guard_stopped_sync_says_so_and_how_to_resume_and_writes_nothing(world):
    stopped = guard_stopped(world)
    written = runs_of(world)
    dry = toolkit("export", "Panel", "--dry-run", "--as-of", at(31).isoformat(), "--db", world["db"])
    assert dry.returncode == 1, dry.stdout + dry.stderr          # a run now would send nothing
    lines = dry.stdout.splitlines()
    assert lines[0] == "Panel: dry run, dynamic export stopped"
    assert "  removal guard: would remove 3 of 4 users (75%)" in dry.stdout
    assert (f"  the dynamic sync is STOPPED by the removal guard since {at(16):%Y-%m-%d %H:%M} UTC "
            f"(run #{stopped.run_id} lists the changes it did not send)") in lines
    assert ("  its runs send nothing until a person acts: confirm the removals: toolkit export Panel --force, "
            "or resume it: toolkit resume Panel (its next run plans and guards afresh)") in lines
    as_json = toolkit("export", "Panel", "--dry-run", "--json", "--as-of", at(31).isoformat(), "--db", world["db"])
    assert '"state": "guarded"' in as_json.stdout and '"status": "stopped"' in as_json.stdout
    # forced, the dry run says the removals would be confirmed and the stop ended; the forced run does it
    forced = toolkit("export", "Panel", "--dry-run", "--force", "--as-of", at(31).isoformat(), "--db", world["db"])
    assert forced.returncode == 0 and forced.stdout.splitlines()[0] == "Panel: dry run, dynamic export ok"
    assert "this forced export confirms the removals: it sends the changes above and ends the stop" in forced.stdout
    assert runs_of(world) == written                             # dry runs record nothing
    done = toolkit("export", "Panel", "--force", "--as-of", at(32).isoformat(), "--db", world["db"])
    assert done.returncode == 0 and "removed 3" in done.stdout
    after = preview(world, "Panel", 33)
    assert after.sync_stop is None and after.status == "ok"
    assert "STOPPED" not in report.dry_run_text(after) and "STOPPED" not in report.export_preview_text(after)


def test_the_preview_of_a_sync_paused_by_a_refused_key_says_it_is_paused_as_a_run_is_refused(world, monkeypatch):
    due(world, 1)
    monkeypatch.setenv("ONESIGNAL_API_KEY", "revoked-key-0123456789")          # OneSignal answers 403 from now on
    a_new_buyer(world["db"], world["emu"], world["app"].app_id, "u5", at(16))
    paused = due(world, 16)["Buyers"]
    assert paused.status == "paused" and "403" in paused.error
    seen = preview(world, "Buyers", 31)
    assert seen.verdict.ok and seen.added == 1                  # the plan alone would run
    assert seen.status == "paused" and seen.sync_stop["state"] == "paused"
    with Store(world["db"]) as store, pytest.raises(SyncPaused) as refused:
        sync.export_cohort(store, export.settings(store, "Buyers", now=at(31), client_options=FAST))
    assert seen.refused == str(refused.value)                   # the dry run's error is the run's refusal
    text = report.export_preview_text(seen)
    reason = seen.sync_stop["reason"]
    assert reason.startswith("OneSignal answered 403") and paused.error.startswith(reason)
    assert f"  the dynamic sync is PAUSED since {at(16):%Y-%m-%d %H:%M} UTC: {reason}\n" in text
    assert "toolkit resume Buyers" in text
    dry = toolkit("export", "Buyers", "--dry-run", "--as-of", at(31).isoformat(), "--db", world["db"])
    assert dry.returncode == 1
    assert dry.stdout.splitlines()[0] == "Buyers: dry run, dynamic export refused (paused)"
    assert "403" in dry.stdout and "until you fix the cause and resume it: toolkit resume Buyers" in dry.stdout
    assert dry.stdout.lower().count("paused") == 2              # said once (and in the head line), not thrice


def test_the_export_panel_preview_says_a_sync_is_stopped_or_paused(world):
    pytest.importorskip("ipywidgets")
    from toolkit import widgets

    guard_stopped(world)
    panel = widgets.export_panel(world["db"], now=at(31))
    panel.cohort.value = "Panel"
    panel.preview_button.click()
    assert panel.status.value.endswith("the sync is STOPPED by the removal guard: tick Force to confirm the "
                                       "removals, or resume it")
    assert "STOPPED by the removal guard since" in panel.diff.value
    panel.force.value = True
    panel.preview_button.click()
    assert panel.status.value.endswith("guard passes") and "this forced export confirms" in panel.diff.value
    with Store(world["db"]) as store:
        export.pause(store, "Buyers", "holiday freeze", now=at(20))
    panel.cohort.value = "Buyers"
    panel.preview_button.click()
    assert panel.status.value.endswith("the sync is PAUSED: the scheduler skips it until you resume it")
    assert f"PAUSED since {at(20):%Y-%m-%d %H:%M} UTC: holiday freeze" in panel.diff.value


@pytest.mark.parametrize("parallel", [1, sync.PARALLEL_RUNS])
def test_a_cohort_named_twice_in_a_cycle_runs_once_and_the_cycle_ends(world, parallel):
    """A cohort named twice (and once more in another case, which resolves to it) runs once. It ran once per
    name: with one run at a time, each took a slot and the cohort's runs gave one back between them, so the
    next cohort waited for a slot for ever, and the merged sends for it; at once, the second run failed on
    the first's lock (a failed run, an alert)."""
    import threading

    a_new_buyer(world["db"], world["emu"], world["app"].app_id, "u5", at(1))
    found: dict = {}

    def cycle():
        with Store(world["db"]) as store:
            found["runs"] = sync.run_due(store, now=at(1), cohorts=["Buyers", "Buyers", "buyers", "Panel"],
                                         client_options=FAST, parallel=parallel)

    worker = threading.Thread(target=cycle, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the cycle never ended"
    assert [(r.cohort, r.status, r.added) for r in found["runs"]] == [("Buyers", "ok", 5), ("Panel", "ok", 4)]
    with Store(world["db"], read_only=True) as store:
        assert store.con.execute("SELECT cohort, count(*) FROM export_runs GROUP BY ALL ORDER BY 1").fetchall() == [
            ("Buyers", 1), ("Panel", 1)]
    updates = [r for r in world["emu"].requests() if r["method"] == "PATCH"]
    assert len(updates) <= 9                  # each cohort's change to a user sent once at most
    assert world["emu"].user_tags(world["app"].app_id) == {
        f"ext-{u}": {export.tag_key("Buyers"): "1", **({export.tag_key("Panel"): "1"} if u != "u5" else {})}
        for u in [*USERS, "u5"]}
