"""Monthly Tracked Users: the rule sets, the one-query count and its breakdown, on real loaded stores."""

import json
import math
from collections import defaultdict
from datetime import UTC, datetime

import pytest

from helpers import NOW, SAMPLE, T0, event, write_lines
from toolkit import Store, cli, load, mtu, report
from toolkit import onesignal_events as osev
from toolkit.errors import UsageError

ANON = "6f1c2a4e-3b5d-4e8f-9a0b-1c2d3e4f5a6b"    # a UUIDv4, so $identify merges it

# The documented lists, written out so that a change to the rules has to change this table too.
MIXPANEL = ["$identify", "$create_alias", "$merge", "$opt_in", "$mp_session_record", "$campaign_delivery",
            "$campaign_received", "$campaign_bounced", "$campaign_marked_spam", "$message_suppressed",
            "$unsubscribe", "$journey_entered", "$experiment_started", "Mailchimp Campaign - Open",
            "Mailchimp Campaign - Click", "Mailchimp Campaign - Sent", "Mailchimp Campaign - Unsubscribed",
            "Mailchimp Campaign - Bounce"]
DELIVERY_DISPLAY = ["Message Sent", "Message Received", "Push Failed", "Push Unsubscribed", "Email Bounced",
                    "Reported as Spam", "Email Failed", "Email Suppressed", "Email Unsubscribed", "SMS Failed",
                    "SMS Undelivered"]
ENGAGEMENT = ["$campaign_open", "$app_open", "Message Opened", "App Opened from Push"]
PRODUCT = ["Page View", "Purchase", "Sign Up", "message sent", "Message Bounced", "Experiment Started",
           "$campaign_click", "Panier validé ✓"]

# (event, seed, strict): what the event does to its user under each rule set.
CASES = ([(n, "exempt", "exempt") for n in MIXPANEL + DELIVERY_DISPLAY]
         + [(n, "qualifying", "exempt") for n in ENGAGEMENT]
         + [(n, "qualifying", "qualifying") for n in PRODUCT])


def load_events(store, tmp_path, records, now=NOW, name="events.jsonl"):
    summary = load(store, [write_lines(tmp_path / name, records)], now=now)
    assert summary.to_dict()["rows_quarantined"] == 0
    return summary


def ms(*args) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


# -- the rules (pure) -----------------------------------------------------------------------------

@pytest.mark.parametrize("name,seed,strict", CASES)
def test_classify_every_listed_event(name, seed, strict):
    assert mtu.classify(name, "seed") == seed
    assert mtu.classify(name, "strict") == strict


def test_the_table_covers_the_onesignal_catalogue_and_the_rule_sets_exactly():
    assert osev.NAMES <= {n for n, _, _ in CASES}
    assert mtu.exempt_names("seed") == set(MIXPANEL + DELIVERY_DISPLAY)
    assert mtu.exempt_names("strict") == set(MIXPANEL + DELIVERY_DISPLAY + ENGAGEMENT)
    assert mtu.exempt_names() == mtu.exempt_names("seed")
    with pytest.raises(ValueError, match="unknown MTU rule set"):
        mtu.exempt_names("lenient")


def test_sql_agrees_with_the_classifier_for_every_event(empty_store, tmp_path):
    # One user per event name, each doing only that event: counted exactly when it qualifies.
    load_events(empty_store, tmp_path, [event(n, f"user {n}", T0) for n, _, _ in CASES])
    for column, rules in ((1, "seed"), (2, "strict")):
        expected = sorted(f"user {case[0]}" for case in CASES if case[column] == "qualifying")
        assert mtu.counted_users(empty_store, "2026-09", rules) == expected
        [month] = mtu.report(empty_store, rules=rules)
        assert (month.mtu, month.exempt_only_users) == (len(expected), len(CASES) - len(expected))


# -- counting ---------------------------------------------------------------------------------------

def test_month_boundaries_are_utc(empty_store, tmp_path):
    load_events(empty_store, tmp_path, [
        event("Page View", "late", ms(2026, 9, 30, 23, 59, 59, 999)),
        event("Page View", "early", ms(2026, 10, 1, 0, 0, 0)),
        event("Page View", "new-year-eve", ms(2026, 12, 31, 23, 59, 59, 999)),
        event("Page View", "new-year", ms(2027, 1, 1)),
    ], now=datetime(2027, 2, 1, tzinfo=UTC))
    assert mtu.monthly(empty_store) == {"2026-09": 1, "2026-10": 1, "2026-12": 1, "2027-01": 1}
    assert mtu.counted_users(empty_store, "2026-09") == ["late"]
    assert mtu.counted_users(empty_store, "2026-10") == ["early"]
    assert mtu.counted_users(empty_store, "2026-12") == ["new-year-eve"]
    assert mtu.monthly(empty_store, month="2027-01") == {"2027-01": 1}


def test_merged_identities_count_once_and_anonymous_users_count(empty_store, tmp_path):
    load_events(empty_store, tmp_path, [
        event("Page View", ANON, T0),                       # anonymous, later identified
        event("$identify", "alice", T0 + 1, **{"$identified_id": "alice", "$anon_id": ANON}),
        event("Purchase", "alice", T0 + 2),
        event("Page View", "$device:d9", T0 + 3),           # anonymous for good
        event("Page View", "$device:d1", T0 + 4, **{"$device_id": "d1"}),
        event("Sign Up", "dave", T0 + 5, **{"$device_id": "d1", "$user_id": "dave"}),
    ])
    assert mtu.counted_users(empty_store, "2026-09") == ["$device:d9", "alice", "dave"]
    [month] = mtu.report(empty_store)
    assert (month.mtu, month.qualifying_events, month.exempt_events) == (3, 5, 1)


def test_guardrail_uses_qualifying_events(empty_store, tmp_path):
    records = [event("Page View", "heavy", T0 + i) for i in range(2_001)]
    records += [event("Page View", "light", T0 + i) for i in range(1_000)]
    # October: one user with one qualifying event drowned in exempt ones - no guardrail.
    october = ms(2026, 10, 5) // 1000
    records += [event("Page View", "quiet", october)]
    records += [event("Message Sent", "quiet", october + i) for i in range(5_000)]
    load_events(empty_store, tmp_path, records)
    sep, oct_ = mtu.report(empty_store)
    assert (sep.users_counted, sep.qualifying_events, sep.guardrail_applied) == (2, 3_001, True)
    assert sep.mtu == math.ceil(3_001 / 1_000) == 4 and sep.events_per_user == 1500.5
    assert (oct_.mtu, oct_.exempt_events, oct_.guardrail_applied) == (1, 5_000, False)
    assert "guardrail applied in 2026-09" in report.mtu_text(mtu.report(empty_store))
    assert report.mtu_text(mtu.report(empty_store)).count("guardrail applied") == 1


def test_guardrail_needs_strictly_more_than_1000_per_user(empty_store, tmp_path):
    load_events(empty_store, tmp_path, [event("Page View", u, T0 + i) for u in ("a", "b") for i in range(1_000)])
    [month] = mtu.report(empty_store)
    assert (month.mtu, month.guardrail_applied) == (2, False)


def test_breakdown_under_both_rule_sets(empty_store, tmp_path):
    load_events(empty_store, tmp_path, [
        event("Page View", "product", T0), event("Message Sent", "product", T0 + 1),
        event("App Opened from Push", "engaged", T0), event("$campaign_delivery", "engaged", T0 + 1),
        event("Message Received", "delivered", T0), event("Push Failed", "delivered", T0 + 1),
        event("$mp_session_record", "recorded", T0),
    ])
    [seed] = mtu.report(empty_store, rules="seed")
    assert seed == mtu.MonthMTU(month="2026-09", rules="seed", mtu=2, users_counted=2, qualifying_events=2,
                                exempt_events=5, exempt_only_users=2, engagement_only_users=1,
                                guardrail_applied=False, events_per_user=1.0, mtu_without_onesignal=1)
    [strict] = mtu.report(empty_store, rules="strict")
    assert strict == mtu.MonthMTU(month="2026-09", rules="strict", mtu=1, users_counted=1, qualifying_events=1,
                                  exempt_events=6, exempt_only_users=3, engagement_only_users=0,
                                  guardrail_applied=False, events_per_user=1.0, mtu_without_onesignal=1)
    assert mtu.counted_users(empty_store, "2026-09") == ["engaged", "product"]
    assert mtu.counted_users(empty_store, "2026-09", "strict") == ["product"]


def test_a_requested_month_without_events_is_zero_and_bad_months_are_refused(empty_store, tmp_path):
    load_events(empty_store, tmp_path, [event("Page View", "u1", T0)])
    [empty] = mtu.report(empty_store, month="2026-12")
    assert (empty.month, empty.mtu, empty.users_counted) == ("2026-12", 0, 0)
    for bad in ("2026-13", "2026-9", "2026-09-01", "Sept"):
        with pytest.raises(ValueError, match="YYYY-MM"):
            mtu.report(empty_store, month=bad)


def test_an_empty_store(empty_store):
    assert mtu.report(empty_store) == [] and mtu.monthly(empty_store) == {}
    assert "no events" in report.mtu_text(mtu.report(empty_store))


def test_cli_entry_text_json_and_usage_errors(tmp_path, capsys):
    db = str(tmp_path / "s.duckdb")
    with Store(db) as store:
        load_events(store, tmp_path, [event("Page View", "u1", T0), event("Message Sent", "u2", T0)])
    assert cli.main(["mtu", "--db", db]) == 0
    text = capsys.readouterr().out
    assert "2026-09" in text and "rules: seed" in text
    assert cli.main(["mtu", "--db", db, "--month", "2026-09", "--rules", "strict", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rules"] == "strict" and "$app_open" in data["exempt"]
    [month] = data["months"]
    assert (month["month"], month["mtu"], month["exempt_only_users"]) == ("2026-09", 1, 1)
    assert cli.main(["mtu", "--db", db, "--month", "09/2026"]) == 2
    assert capsys.readouterr().err == 'error: month must be a calendar month as YYYY-MM, not "09/2026"\n'
    with Store(db, read_only=True) as store, pytest.raises(UsageError) as bad_rules:
        mtu.report(store, rules="nope")
    assert cli.exit_status(bad_rules.value) == 2


def test_frame_and_text_chart(empty_store, tmp_path):
    load_events(empty_store, tmp_path, [event("Page View", "u1", T0), event("Message Sent", "u2", T0)])
    frame = mtu.report_frame(empty_store)
    assert list(frame.index) == ["2026-09"] and frame.loc["2026-09", "mtu"] == 1
    assert frame.loc["2026-09", "exempt_only_users"] == 1
    assert "2026-09" in mtu.chart_text(frame) and "exempt-only users" in mtu.chart_text(frame)


# -- the sample data against its README ---------------------------------------------------------------

# data/sample/README.md, "Named personas": MTU in September / October 2026 under the seed rule.
PERSONAS = {
    "alice@example.com": (True, True), "bob": (True, True), "carol": (True, False), "dave": (True, True),
    "erin": (True, False), "frank": (True, True), "$device:0d9b8a7c-6e5f-4a3b-b2c1-d0e9f8a7b6c5": (True, True),
    "heidi": (False, True), "ivan": (True, True), "judy": (False, True), "ken": (True, False),
    "leo": (False, True), "mia": (False, True), "oscar": (False, True), "peggy": (True, False),
}


# The sample's own files: its README says broken/ is a loader fixture, to be loaded on its own
# (its 3 valid lines would add 3 September users: 224 instead of 221).
SAMPLE_FILES = [SAMPLE / "events.jsonl", SAMPLE / "profiles.json", SAMPLE / "profile_updates.jsonl"]


@pytest.fixture(scope="module")
def clean_sample(tmp_path_factory):
    with Store(tmp_path_factory.mktemp("sample") / "sample.duckdb") as s:
        assert not load(s, SAMPLE_FILES, now=NOW).refused
        yield s


@pytest.mark.parametrize("month,column", [("2026-09", 0), ("2026-10", 1)])
def test_sample_personas_match_the_readme(clean_sample, month, column):
    counted = set(mtu.counted_users(clean_sample, month))
    assert {p for p in PERSONAS if p in counted} == {p for p, yes in PERSONAS.items() if yes[column]}


def test_sample_totals(clean_sample):
    seed = {r.month: r for r in mtu.report(clean_sample)}
    strict = {r.month: r for r in mtu.report(clean_sample, rules="strict")}
    assert {m: r.mtu for m, r in seed.items()} == {"2026-09": 221, "2026-10": 168}
    assert {m: r.mtu for m, r in strict.items()} == {"2026-09": 219, "2026-10": 167}
    # October: carol and erin get only delivery events; ivan counts through in-app events alone.
    october = seed["2026-10"]
    assert (october.exempt_only_users, october.engagement_only_users, october.mtu_without_onesignal) == (2, 1, 167)
    strict_october = set(mtu.counted_users(clean_sample, "2026-10", "strict"))
    assert set(mtu.counted_users(clean_sample, "2026-10")) - strict_october == {"ivan"}
    assert not any(r.guardrail_applied for r in seed.values())


@pytest.mark.parametrize("rules", mtu.RULE_SETS)
def test_sample_matches_a_plain_python_recount(clean_sample, rules):
    # The same definition, counted row by row in Python from the resolved events.
    users, seen, events = defaultdict(set), defaultdict(set), defaultdict(lambda: [0, 0])
    for name, user, time in clean_sample.con.execute("SELECT event, distinct_id, time FROM resolved_events").fetchall():
        month = time.strftime("%Y-%m")
        seen[month].add(user)
        qualifies = mtu.classify(name, rules) == "qualifying"
        events[month][0 if qualifies else 1] += 1
        if qualifies:
            users[month].add(user)
    for r in mtu.report(clean_sample, rules=rules):
        assert (r.users_counted, r.qualifying_events, r.exempt_events) == (len(users[r.month]), *events[r.month])
        assert r.exempt_only_users == len(seen[r.month] - users[r.month])


def test_chart_legend_sits_outside_the_plot(clean_sample):
    plt = pytest.importorskip("matplotlib.pyplot")
    ax = mtu.chart(mtu.report_frame(clean_sample))
    fig = ax.figure
    try:
        fig.canvas.draw()
        (legend,) = fig.legends or [ax.get_legend()]
        assert [t.get_text() for t in legend.get_texts()] == [
            "MTU (counted)", "exempt-only users (not counted)", "MTU without OneSignal events"]
        # Outside the axes, it covers neither the bars nor the line.
        assert not legend.get_window_extent().overlaps(ax.get_window_extent())
        assert fig.bbox.contains(*legend.get_window_extent().min) and fig.bbox.contains(*legend.get_window_extent().max)
    finally:
        plt.close(fig)
