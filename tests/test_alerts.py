"""Alerts for unattended syncs, end to end: real store files, the real emulator over HTTP, the scheduled
sync's body (sync.run_scheduled) cycle after cycle, and alerts received by a webhook and an SMTP server
on 127.0.0.1. One alert per incident, a "resolved" when it ends, a channel that fails never stops a
sync and is reported, and the channel's secrets appear nowhere."""

import email
import io
import json
import logging
import stat
import sys
from datetime import timedelta
from email import policy

import pytest
from alert_receivers import SmtpServer, WebhookReceiver
from cli_runner import toolkit

from helpers import FOUR_USERS, NOW, a_new_buyer, buyers_and_panel
from toolkit import Store, alerts, cohorts, export, sync
from toolkit.emulator import Emulator

pytestmark = pytest.mark.slow     # end to end: alerts raised and resolved over a sync's cycles

# view_rps: the emulator takes views at any pace; a run reading back the users the tag cap refused paced its
# views at OneSignal's 1/s
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0, "max_attempts": 2, "view_rps": 50}
USERS = FOUR_USERS
HOOK_SECRET = "T0SECRET/B0SECRET/xoxb-hook-token-4f9a2c"
SMTP_SECRET = "smtp-pass-7d1e9b3c"


@pytest.fixture
def world(tmp_path, filled_once, held_open, users_unspaced, monkeypatch):
    """Four buyers with OneSignal ids, a dynamic sync of "Buyers" (and of the static "Panel") registered at
    NOW, the emulator holding the users (u1 and u2 carry a tag of their own), a webhook receiver and an
    SMTP server, and alerts configured to both. The loaded store is a copy of one loaded once per module."""
    db = held_open(filled_once(buyers_and_panel, tmp_path / "store.duckdb"))     # each cycle reopens it
    with Emulator(user_rate_limit=0) as emu, WebhookReceiver(f"/services/{HOOK_SECRET}") as hook, \
            SmtpServer() as smtp:
        app = emu.add_app()
        for u in USERS:
            emu.add_user(app.app_id, f"ext-{u}", tags={"vip": "1"} if u in ("u1", "u2") else None)
        for name, value in {"ONESIGNAL_APP_ID": app.app_id, "ONESIGNAL_API_KEY": app.api_key,
                            "TOOLKIT_CREDENTIALS": str(tmp_path / "no-credentials.json"),
                            "TOOLKIT_ALERT_CREDENTIALS": str(tmp_path / "alerts.json")}.items():
            monkeypatch.setenv(name, value)
        with Store(db) as store:
            export.register(store, "Buyers", "dynamic", app.app_id, emu.url, now=NOW)
            alerts.configure(store, webhook=hook.url, smtp=smtp.address, smtp_user="alerts", smtp_password=SMTP_SECRET,
                             mail_from="toolkit@example.com", mail_to=["growth@example.com"], timeout=0.5)
        yield {"db": db, "emu": emu, "app": app, "hook": hook, "smtp": smtp, "tmp": tmp_path}


def cycle(world, minutes, cohorts="due"):
    return sync.run_scheduled(world["db"], now=NOW + timedelta(minutes=minutes), cohorts=cohorts,
                              client_options=FAST)


def mails(world) -> list[str]:
    return [email.message_from_string(m["data"], policy=policy.default).get_content().replace("\r\n", "\n").strip()
            for m in world["smtp"].messages]


def test_a_revoked_key_raises_one_alert_by_webhook_and_email_and_one_resolved_after_recovery(world, monkeypatch):
    assert cycle(world, 1).status == "ok" and world["hook"].received == []
    monkeypatch.setenv("ONESIGNAL_API_KEY", "revoked-key-0123456789")     # OneSignal answers 403 from now on
    a_new_buyer(world["db"], world["emu"], world["app"].app_id, "u5", NOW + timedelta(minutes=16))
    assert [r.status for r in cycle(world, 16).runs] == ["paused"]          # OneSignal refused the key: paused
    for minutes in (31, 46):                         # a paused sync is skipped until a person resumes it
        result = cycle(world, minutes)
        assert result.runs == [] and [p["cohort"] for p in result.paused] == ["Buyers"]
    (alert,) = world["hook"].texts
    assert alert.startswith('Sync of cohort "Buyers" paused: ')
    assert "What to do:" in alert and "toolkit connect" in alert and "resume" in alert
    assert world["hook"].received[0]["body"]["blocks"][0]["text"]["text"] == alert      # Slack's shape
    assert mails(world) == [alert]
    assert world["smtp"].messages[0]["to"] == ["growth@example.com"]
    assert world["smtp"].logins == [("alerts", SMTP_SECRET)]
    assert result.alerts == {"opened": [], "resolved": [], "open": 1, "sent": 0, "not_delivered": []}

    monkeypatch.setenv("ONESIGNAL_API_KEY", world["app"].api_key)
    with Store(world["db"]) as store:
        export.resume(store, "Buyers", now=NOW + timedelta(minutes=60))
    result = cycle(world, 61)
    assert [r.status for r in result.runs] == ["ok"]
    assert result.alerts["resolved"] == [{"cohort": "Buyers", "kind": "paused"}] and result.alerts["sent"] == 2
    assert len(world["hook"].texts) == 2 and mails(world) == world["hook"].texts
    assert world["hook"].texts[1] == ('Resolved: sync of cohort "Buyers" no longer paused (since '
                                      f'{NOW + timedelta(minutes=16):%Y-%m-%d %H:%M} UTC): the run of '
                                      f'{NOW + timedelta(minutes=61):%Y-%m-%d %H:%M} UTC ended ok, 5 member(s).')
    cycle(world, 76)
    assert len(world["hook"].texts) == 2                                  # healthy: nothing more
    with Store(world["db"]) as store:
        (incident,) = alerts.incident_list(store)
    assert incident["kind"] == "paused" and incident["resolved_at"] is not None
    assert sorted((d["message"], d["channel"], d["ok"]) for d in incident["deliveries"]) == [
        ("opened", "email", True), ("opened", "webhook", True), ("resolved", "email", True),
        ("resolved", "webhook", True)]


def test_the_tag_cap_raises_one_alert_while_it_holds_members_back_and_resolves_when_raised(world):
    world["emu"].set_limits(world["app"].app_id, tag_limit=1)            # u1 and u2 carry a tag already
    for minutes in (1, 16):
        (run,) = cycle(world, minutes).runs
        assert run.status == "ok" and run.tag_cap == 2
    (alert,) = world["hook"].texts
    assert alert.startswith('Sync of cohort "Buyers" hit the data-tag cap: 2 member(s) were not tagged')
    assert "--tag-limit" in alert
    world["emu"].set_limits(world["app"].app_id, tag_limit=20)
    with Store(world["db"]) as store:
        export.set_tag_limit(store, world["app"].app_id, 20)
    (run,) = cycle(world, 31).runs
    assert run.tag_cap == 0 and run.added == 2
    assert len(world["hook"].texts) == 2 and world["hook"].texts[1].startswith(
        'Resolved: sync of cohort "Buyers" no longer held back by the data-tag cap')


def test_a_sharply_shrinking_cohort_raises_one_alert(world):
    with Store(world["db"]) as store:
        export.register(store, "Panel", "dynamic", world["app"].app_id, world["emu"].url, now=NOW)
        alerts.configure(store, shrink_share=0.3)
    cycle(world, 1)
    with Store(world["db"]) as store:                 # half the panel goes: the guard lets 50% through
        cohorts.save_all(store, [{"name": "Panel", "static_ids": USERS[:2]}])
    result = cycle(world, 16)
    assert {r.cohort: (r.status, r.members) for r in result.runs} == {"Buyers": ("ok", 4), "Panel": ("ok", 2)}
    (alert,) = world["hook"].texts
    assert alert.startswith('Sync of cohort "Panel" is shrinking sharply: members fell from 4 to 2 (-50%) and '
                            "exportable users fell from 4 to 2 (-50%)")
    cycle(world, 31)                                  # steady at 2: the drop is over
    assert len(world["hook"].texts) == 2 and world["hook"].texts[1].startswith(
        'Resolved: sync of cohort "Panel" no longer shrinking')


def test_a_run_the_removal_guard_stops_raises_one_alert_until_a_forced_run(world):
    with Store(world["db"]) as store:
        export.register(store, "Panel", "dynamic", world["app"].app_id, world["emu"].url, now=NOW)
    cycle(world, 1)
    with Store(world["db"]) as store:                 # three of four would go: more than half
        cohorts.save_all(store, [{"name": "Panel", "static_ids": USERS[:1]}])
    for minutes in (16, 31):                          # a stopped run stays due: stopped again
        runs = {r.cohort: (r.status, r.removed) for r in cycle(world, minutes).runs}
        assert runs == {"Buyers": ("ok", 0), "Panel": ("stopped", 0)}
    (alert,) = world["hook"].texts
    assert alert.startswith('Sync of cohort "Panel" stopped by the removal guard: the removal guard stopped the '
                            "latest run: would remove 3 of 4 users (75%)")
    assert 'toolkit export "Panel" --force' in alert and "shrinking" not in alert
    with Store(world["db"]) as store:
        forced = sync.export_cohort(store, export.settings(store, "Panel", force=True,
                                                           now=NOW + timedelta(minutes=40)))
    assert forced.status == "ok" and forced.removed == 3
    cycle(world, 46)
    assert len(world["hook"].texts) == 2 and world["hook"].texts[1].startswith(
        'Resolved: sync of cohort "Panel" no longer stopped by the removal guard')


def test_a_guard_stopped_sync_stays_stopped_writing_its_members_once_until_a_person_confirms(world):
    with Store(world["db"]) as store:
        export.register(store, "Panel", "dynamic", world["app"].app_id, world["emu"].url, now=NOW)
    cycle(world, 1)
    with Store(world["db"]) as store:                 # three of four would go: more than half
        cohorts.save_all(store, [{"name": "Panel", "static_ids": USERS[:1]}])
    stopped = [next(r for r in cycle(world, minutes).runs if r.cohort == "Panel") for minutes in (16, 31, 46)]
    assert [(r.status, r.removed) for r in stopped] == [("stopped", 0)] * 3
    first, *later = stopped
    since = f"{NOW + timedelta(minutes=16):%Y-%m-%d %H:%M} UTC"
    for run in later:                                 # a short run: when, the counts now, and the way out
        assert run.error.startswith(f"still stopped by the removal guard since {since} (run #{first.run_id} ")
        assert "now: would remove 3 of 4 users (75%)" in run.error and "toolkit export 'Panel' --force" in run.error
    with Store(world["db"], read_only=True) as store:
        rows = store.con.execute("SELECT run_id, operation, outcome, count(*) FROM export_results WHERE run_id "
                                 "IN (SELECT unnest(?)) GROUP BY ALL", [[r.run_id for r in stopped]]).fetchall()
        assert rows == [(first.run_id, "remove", "not_sent", 3)]      # one set of per-member rows: the first stop's
        assert [r["status"] for r in export.runs(store, "Panel")] == ["stopped"] * 3 + ["ok"]
        assert export.member_fates(store.con, first.run_id).counts() == {("remove", "not_sent"): 3, ("no-op", "ok"): 1}
        assert "still stopped by the removal guard" in export.member_fates(store.con, later[-1].run_id).note
        (panel,) = export.overview(store, "Panel")
    assert (panel["state"], panel["guard_stopped_run"]) == ("guarded", first.run_id)
    assert "Panel is stopped by the removal guard since" in toolkit("runs", "Panel", "--db", world["db"]).stdout
    (alert,) = world["hook"].texts                    # one incident, one alert
    assert alert.startswith('Sync of cohort "Panel" stopped by the removal guard') and "toolkit resume" in alert
    # a person confirms the removals; then the cycles send again
    confirmed = toolkit("export", "Panel", "--force", "--as-of", (NOW + timedelta(minutes=50)).isoformat(),
                        "--db", world["db"])
    assert confirmed.returncode == 0 and "removed 3" in confirmed.stdout
    with Store(world["db"]) as store:
        cohorts.save_all(store, [{"name": "Panel", "static_ids": USERS[:2]}])
    runs = {r.cohort: (r.status, r.added, r.removed) for r in cycle(world, 66).runs}
    assert runs == {"Buyers": ("ok", 0, 0), "Panel": ("ok", 1, 0)}
    assert len(world["hook"].texts) == 2 and world["hook"].texts[1].startswith(
        'Resolved: sync of cohort "Panel" no longer stopped by the removal guard')


def test_resuming_a_guard_stopped_sync_plans_and_guards_it_afresh(world):
    with Store(world["db"]) as store:
        export.register(store, "Panel", "dynamic", world["app"].app_id, world["emu"].url, now=NOW)
    cycle(world, 1)
    with Store(world["db"]) as store:
        cohorts.save_all(store, [{"name": "Panel", "static_ids": USERS[:1]}])
    first = next(r for r in cycle(world, 16).runs if r.cohort == "Panel")
    resumed = toolkit("resume", "Panel", "--db", world["db"])
    since = f"{NOW + timedelta(minutes=16):%Y-%m-%d %H:%M}"
    assert resumed.returncode == 0
    assert f"stopped by the removal guard since {since}, run #{first.run_id}" in resumed.stdout
    again = next(r for r in cycle(world, 31).runs if r.cohort == "Panel")    # still shrunk: a fresh stop
    assert again.status == "stopped" and again.error.startswith("would remove 3 of 4 users")
    with Store(world["db"], read_only=True) as store:
        assert export.member_fates(store.con, again.run_id).counts()[("remove", "not_sent")] == 3
        assert export.overview(store, "Panel")[0]["guard_stopped_run"] == again.run_id


def test_users_onesignal_refuses_make_one_partial_alert_resolved_once_they_pass(world):
    world["emu"].faults.inject("refuse", method="PATCH", path="/ext-u4", times=2)     # two runs refused
    for minutes in (1, 16):
        (run,) = cycle(world, minutes).runs
        assert (run.status, run.failed) == ("partial", 1)
    (alert,) = world["hook"].texts
    assert alert.startswith('Sync of cohort "Buyers" partially failed: the latest run left 1 user(s) not updated: '
                            "1 user(s) not updated in OneSignal, the next run retries them: user 'u4'")
    (run,) = cycle(world, 31).runs
    assert run.status == "ok" and run.added == 1
    assert len(world["hook"].texts) == 2 and world["hook"].texts[1].startswith(
        'Resolved: sync of cohort "Buyers" no longer partially failing')


def test_a_sync_that_stops_running_is_stale_after_two_cycles(world):
    with Store(world["db"]) as store:
        export.register(store, "Panel", "dynamic", world["app"].app_id, world["emu"].url, now=NOW)
    cycle(world, 1)
    for minutes in (16, 31):                           # only Panel runs (Buyers' schedule is "lost")
        cycle(world, minutes, cohorts="Panel")
    assert world["hook"].texts == []                   # 30 minutes: not yet two missed cycles
    cycle(world, 46, cohorts="Panel")
    cycle(world, 61, cohorts="Panel")
    (alert,) = world["hook"].texts
    last = NOW + timedelta(minutes=1)
    assert alert.startswith(f'Sync of cohort "Buyers" is stale: has not run since {last:%Y-%m-%d %H:%M} UTC '
                            "(45 min; it should run every 15 min)")
    assert "toolkit schedule" in alert
    cycle(world, 62)                                   # the schedule is back: Buyers runs
    assert len(world["hook"].texts) == 2 and world["hook"].texts[1].startswith(
        'Resolved: sync of cohort "Buyers" no longer stale')


@pytest.mark.parametrize("mode", ["500", "hang"])
def test_a_failing_webhook_never_stops_the_sync_is_recorded_and_gets_the_alert_once_it_answers(world, monkeypatch,
                                                                                              mode):
    cycle(world, 1)
    world["hook"].mode = mode
    monkeypatch.setenv("ONESIGNAL_API_KEY", "revoked-key-0123456789")
    a_new_buyer(world["db"], world["emu"], world["app"].app_id, "u5", NOW + timedelta(minutes=16))
    result = cycle(world, 16)
    assert [r.status for r in result.runs] == ["paused"] and result.mtu_error is None
    record = result.to_record()
    said = "answered HTTP 500 (tried 2 time(s))" if mode == "500" else "no answer within 0.5 s (tried 2 time(s))"
    assert record["alerts"]["not_delivered"] == [f"webhook http://127.0.0.1:{world['hook'].server.server_address[1]}: "
                                                 f"{said}"]
    assert "alerts not delivered: webhook" in record["summary"]
    assert mails(world) and world["hook"].received == []          # email still went
    world["hook"].mode = "ok"
    result = cycle(world, 31)
    assert result.alerts["not_delivered"] == [] and result.alerts["sent"] == 1
    (alert,) = world["hook"].texts                                  # the pending alert, once
    assert alert.startswith('Sync of cohort "Buyers" paused')
    cycle(world, 46)
    assert len(world["hook"].texts) == 1 and len(mails(world)) == 1
    with Store(world["db"]) as store:
        (incident,) = alerts.incident_list(store)
    webhook = [(d["ok"], d["error"]) for d in incident["deliveries"] if d["channel"] == "webhook"]
    assert webhook == [(False, record["alerts"]["not_delivered"][0]), (True, None)]


def test_an_unreachable_webhook_and_smtp_server_are_reported_and_the_sync_still_ok(world):
    with Store(world["db"]) as store:
        alerts.configure(store, webhook="http://127.0.0.1:9/hook-never-there", smtp="127.0.0.1:9")
        export.register(store, "Panel", "dynamic", world["app"].app_id, world["emu"].url, now=NOW)
    cycle(world, 1, cohorts="Panel")
    result = cycle(world, 40, cohorts="Panel")           # Buyers never ran: stale
    assert result.status == "ok" and [r.status for r in result.runs] == ["ok"]
    problems = result.alerts["not_delivered"]
    assert [p.split(":")[0] for p in problems] == ["webhook http", "email via 127.0.0.1"]
    assert "cannot reach it" in problems[0] and "hook-never-there" not in " ".join(problems)


def test_secrets_appear_in_no_output_store_log_or_record(world, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("ONESIGNAL_API_KEY", "revoked-key-0123456789")
    world["hook"].mode = "500"
    record = cycle(world, 1).to_record()
    world["hook"].mode = "ok"
    cycle(world, 16)
    secrets_path = world["tmp"] / "alerts.json"
    assert stat.S_IMODE(secrets_path.stat().st_mode) == 0o600
    assert json.loads(secrets_path.read_text()) == {"webhook_url": world["hook"].url, "smtp_password": SMTP_SECRET}
    outputs = [toolkit("alerts", *args, "--db", world["db"]) for args in
               (["configure"], ["configure", "--json"], ["list"], ["list", "--json"], ["test"], ["test", "--json"])]
    assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
    with Store(world["db"]) as store:
        settings = alerts.current(store)
        stored = []
        for table, column in store.con.execute(
                "SELECT table_name, column_name FROM information_schema.columns WHERE data_type LIKE 'VARCHAR%'"
                ).fetchall():
            stored += [str(v) for v, in store.con.execute(f'SELECT "{column}" FROM "{table}"').fetchall()]
    assert settings.webhook_url == world["hook"].url and settings.smtp_password == SMTP_SECRET
    texts = [repr(settings), str(settings.shown()), json.dumps(record, default=str), caplog.text,
             *stored, *(o.stdout + o.stderr for o in outputs)]
    for secret in ("T0SECRET", "xoxb-hook-token", SMTP_SECRET):
        assert not [t for t in texts if secret in t], secret
        assert secret.encode() not in world["db"].read_bytes()
    assert "webhook: http://127.0.0.1:" in outputs[0].stdout and "delivered" in outputs[4].stdout


def test_configure_reads_the_webhook_from_stdin_and_refuses_bad_values_naming_the_option(world, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("https://hooks.example.com/services/XYZSECRET123\n"))
    out = toolkit("alerts", "configure", "--webhook", "-", "--db", world["db"], "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["webhook"] == "https://hooks.example.com"
    assert "XYZSECRET123" not in out.stdout
    for args, said in ((["--webhook", "ftp://x/y"], "--webhook: expected an http:// or https:// URL"),
                       (["--smtp", "mailhost"], '--smtp "mailhost": expected HOST:PORT'),
                       (["--to", "nobody"], '--to "nobody": expected an email address'),
                       (["--shrink-share", "2"], "--shrink-share 2.0: expected a share between 0 and 1"),
                       (["--timeout", "0"], "--timeout 0.0: expected a number of seconds")):
        out = toolkit("alerts", "configure", *args, "--db", world["db"])
        assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
    with Store(world["db"]) as store:                  # nothing half-written by the refusals
        assert alerts.current(store).webhook_host == "https://hooks.example.com"
    out = toolkit("alerts", "configure", "--webhook", "", "--smtp", "", "--db", world["db"])
    assert out.returncode == 0 and "webhook: none" in out.stdout and "email: none" in out.stdout
    out = toolkit("alerts", "test", "--db", world["db"])
    assert out.returncode == 1 and "no alert channel is configured" in out.stderr


def test_toolkit_sync_says_an_alert_was_not_delivered_and_its_notebook_holds_no_secret(world, held_open):
    """The sync notebook run by papermill: the stale "Buyers" (registered, never run) raises an alert the
    webhook refuses; the sync itself is ok (exit 0) and its output and run record say so."""
    held_open.release()                 # the notebook's kernel, another process, opens the store
    with Store(world["db"]) as store:
        export.register(store, "Panel", "dynamic", world["app"].app_id, world["emu"].url, now=NOW)
    world["hook"].mode = "500"
    out = toolkit("sync", "--db", world["db"], "--runs-dir", world["tmp"] / "runs", "--cohorts", "Panel")
    assert out.returncode == 0, out.stdout + out.stderr
    port = world["hook"].server.server_address[1]
    assert out.stdout.startswith("sync ok\n")
    assert f"alert not delivered: webhook http://127.0.0.1:{port}: answered HTTP 500" in out.stdout
    (record_path,) = (world["tmp"] / "runs").glob("sync-*.json")
    record = json.loads(record_path.read_text())
    assert record["alerts"]["opened"][0]["cohort"] == "Buyers" and record["alerts"]["opened"][0]["kind"] == "stale"
    assert len(mails(world)) == 1                          # email took it
    executed = record_path.with_suffix(".ipynb").read_text() + record_path.read_text()
    for secret in ("T0SECRET", SMTP_SECRET, world["app"].api_key):
        assert secret not in executed


def test_a_check_that_breaks_is_reported_in_the_record_and_the_sync_still_runs(world, monkeypatch):
    def broken(store, now):
        raise RuntimeError("boom")

    monkeypatch.setattr(alerts, "check", broken)
    result = cycle(world, 1)
    assert result.status == "ok" and [r.status for r in result.runs] == ["ok"]
    assert result.to_record()["alerts"]["not_delivered"] == [
        "alerts not checked: unexpected error: boom (details in the log)"]
