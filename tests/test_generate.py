"""The synthetic data generator and the committed sample (toolkit/synthetic/, data/sample/)."""

from __future__ import annotations

import calendar
import gzip
import json
import re
import tracemalloc
from collections import Counter, defaultdict
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from helpers import expected_reasons
from toolkit import Store, load
from toolkit import onesignal_events as osev
from toolkit.synthetic import (
    EVENTS_FILE,
    EVENTS_FILE_GZ,
    ONESIGNAL_ID_KINDS,
    PROFILES_FILE,
    SAMPLE_FILES,
    UPDATE_OPS,
    UPDATES_FILE,
    generate,
    write_sample,
)

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "sample"
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
INSERT_ID = re.compile(r"[A-Za-z0-9-]{1,36}")
SEP_1 = calendar.timegm((2026, 9, 1, 0, 0, 0))
NOV_1 = calendar.timegm((2026, 11, 1, 0, 0, 0))
REFUSED_IDS = {"anon", "anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", "<nil>", "0", "-1",
               "00000000-0000-0000-0000-000000000000", ""}


def read_events(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One medium run shared by the shape tests."""
    out = tmp_path_factory.mktemp("gen")
    counts = generate(out, events=6000, seed=11)
    return out, counts, read_events(out / EVENTS_FILE)


@pytest.fixture(scope="module")
def profiles(run):
    out, _, _ = run
    return json.loads((out / PROFILES_FILE).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def updates(run):
    out, _, _ = run
    return [json.loads(line) for line in read_lines(out / UPDATES_FILE)]


# ---- determinism -----------------------------------------------------------------------------------

def test_same_seed_same_bytes_and_other_seed_other_bytes(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    ca = generate(a, events=2500, seed=3)
    cb = generate(b, events=2500, seed=3)
    generate(c, events=2500, seed=4)
    for name in (EVENTS_FILE, PROFILES_FILE, UPDATES_FILE):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
        assert (a / name).read_bytes() != (c / name).read_bytes(), name
    assert {k: v for k, v in ca.items() if k != "out_dir"} == {k: v for k, v in cb.items() if k != "out_dir"}
    assert not list(a.glob("*.part"))


def test_gzip_is_deterministic_and_holds_the_same_lines(tmp_path):
    plain = generate(tmp_path / "plain", events=3000, seed=5)
    gz1 = generate(tmp_path / "gz1", events=3000, seed=5, compress=True)
    generate(tmp_path / "gz2", events=3000, seed=5, compress=True)
    raw = (tmp_path / "gz1" / EVENTS_FILE_GZ).read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert raw == (tmp_path / "gz2" / EVENTS_FILE_GZ).read_bytes()
    assert gzip.decompress(raw) == (tmp_path / "plain" / EVENTS_FILE).read_bytes()
    assert not (tmp_path / "gz1" / EVENTS_FILE).exists()
    assert gz1["files"][EVENTS_FILE_GZ]["lines"] == plain["events"] == 3000
    assert gz1["files"][EVENTS_FILE_GZ]["bytes"] == len(raw)


def test_time_in_ms_changes_only_the_time_unit(tmp_path):
    generate(tmp_path / "s", events=1500, seed=2)
    generate(tmp_path / "ms", events=1500, seed=2, time_in_ms=True)
    s = read_events(tmp_path / "s" / EVENTS_FILE)
    ms = read_events(tmp_path / "ms" / EVENTS_FILE)
    assert len(s) == len(ms)
    for a, b in zip(s, ms, strict=True):
        assert b["properties"]["time"] > 1e11 > a["properties"]["time"]
        assert b["properties"]["time"] // 1000 == a["properties"]["time"]
        assert {**b["properties"], "time": 0} == {**a["properties"], "time": 0}
    same = [(tmp_path / d / PROFILES_FILE).read_bytes() for d in ("s", "ms")]
    assert same[0] == same[1]


# ---- shape and counts ----------------------------------------------------------------------------------

def test_every_event_line_is_a_valid_mixpanel_export_record(run):
    out, counts, events = run
    assert len(events) == counts["events"] == counts["files"][EVENTS_FILE]["lines"] == 6000
    assert counts["files"][EVENTS_FILE]["bytes"] == (out / EVENTS_FILE).stat().st_size
    for e in events:
        assert set(e) == {"event", "properties"}
        assert isinstance(e["event"], str) and e["event"]
        p = e["properties"]
        assert isinstance(p["time"], int) and SEP_1 <= p["time"] < NOV_1
        assert isinstance(p["distinct_id"], str) and p["distinct_id"] not in REFUSED_IDS
        assert isinstance(p["mp_processing_time_ms"], int) and p["mp_processing_time_ms"] >= p["time"] * 1000
        assert isinstance(p.get("mp_lib"), str)
        if "$insert_id" in p:
            assert INSERT_ID.fullmatch(p["$insert_id"])
    assert sum(counts["event_kinds"].values()) == 6000
    assert sum(counts["event_names"].values()) == 6000
    assert Counter(e["event"] for e in events) == counts["event_names"]


def test_events_span_two_calendar_months_utc(run):
    _, counts, events = run
    months = Counter(datetime.fromtimestamp(e["properties"]["time"], UTC).strftime("%Y-%m") for e in events)
    assert set(months) == {"2026-09", "2026-10"}
    assert min(months.values()) > 1000
    assert (counts["start"], counts["end"]) == ("2026-09-01", "2026-11-01")


def test_start_and_months_are_calendar_months(tmp_path):
    counts = generate(tmp_path, events=800, start=date(2027, 1, 31), months=3)
    assert (counts["start"], counts["end"]) == ("2027-01-31", "2027-04-30")
    times = [e["properties"]["time"] for e in read_events(tmp_path / EVENTS_FILE)]
    assert calendar.timegm((2027, 1, 31, 0, 0, 0)) <= min(times)
    assert max(times) < calendar.timegm((2027, 4, 30, 0, 0, 0))


@pytest.mark.parametrize("n", [0, 1, 7, 99, 1234])
def test_exact_event_count_for_any_size(tmp_path, n):
    counts = generate(tmp_path, events=n)
    lines = read_lines(tmp_path / EVENTS_FILE)
    assert len(lines) == counts["events"] == n
    doc = json.loads((tmp_path / PROFILES_FILE).read_text(encoding="utf-8"))
    assert len(doc["results"]) == doc["total"] == counts["profiles"] == max(1, n // 20)


def test_no_profiles_puts_every_event_on_anonymous_users(tmp_path):
    counts = generate(tmp_path, events=300, profiles=0)
    events = read_events(tmp_path / EVENTS_FILE)
    assert len(events) == 300 and counts["profiles"] == 0
    assert json.loads((tmp_path / PROFILES_FILE).read_text())["results"] == []
    assert set(counts["personas"]) <= {"anonymous_device", "anonymous_uuid"}
    assert counts["event_kinds"]["identity"] == counts["event_kinds"]["onesignal"] == 0


def test_profiles_argument_and_default_ratio(tmp_path):
    assert generate(tmp_path / "a", events=2000, profiles=321)["profiles"] == 321
    assert generate(tmp_path / "b", events=2000)["profiles"] == 100


def test_profiles_come_in_engage_pages_of_a_thousand_and_load(tmp_path, new_store):
    counts = generate(tmp_path, events=3000, profiles=2345)
    pages, decoder, rest = [], json.JSONDecoder(), (tmp_path / PROFILES_FILE).read_text(encoding="utf-8")
    while rest := rest.lstrip():           # one JSON document after another
        page, end = decoder.raw_decode(rest)
        pages.append(page)
        rest = rest[end:]
    assert [p["page"] for p in pages] == [0, 1, 2] == list(range(counts["files"][PROFILES_FILE]["pages"]))
    assert [len(p["results"]) for p in pages] == [1000, 1000, 345]
    assert {p["total"] for p in pages} == {2345} and {p["page_size"] for p in pages} == {1000}
    assert len({p["session_id"] for p in pages}) == 1
    ids = [r["$distinct_id"] for p in pages for r in p["results"]]
    with Store(new_store(tmp_path / "s.duckdb")) as store:
        loaded = load(store, [tmp_path / PROFILES_FILE]).files[0]
        assert (loaded.rows_loaded, loaded.quarantined) == (2345, 0)
        stored = store.con.execute("SELECT distinct_id FROM profiles").fetchall()
    assert sorted(d for (d,) in stored) == sorted(ids)


def test_the_cli_command_writes_what_generate_writes(tmp_path, capsys):
    from toolkit.cli import main

    assert main(["generate", str(tmp_path / "cli"), "--events", "1500", "--seed", "4", "--gzip", "--time-in-ms"]) == 0
    assert "events 1,500" in capsys.readouterr().out
    generate(tmp_path / "api", events=1500, seed=4, compress=True, time_in_ms=True)
    for name in (EVENTS_FILE_GZ, PROFILES_FILE, UPDATES_FILE):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "api" / name).read_bytes(), name


def test_bad_arguments_are_refused(tmp_path):
    for kwargs in ({"events": -1}, {"events": 10, "profiles": -2}, {"events": 10, "months": 0}, {"events": 1.5}):
        with pytest.raises(ValueError):
            generate(tmp_path, **kwargs)


def test_progress_reports_event_lines_written(tmp_path):
    seen = []
    generate(tmp_path, events=40_000, progress=seen.append)
    assert seen and seen == sorted(seen) and seen[-1] == 40_000 and len(seen) > 2


def test_profiles_file_is_an_engage_query_result(run, profiles):
    _, counts, _ = run
    assert set(profiles) == {"results", "page", "page_size", "session_id", "status", "total"}
    assert profiles["status"] == "ok" and profiles["page"] == 0
    assert profiles["total"] == len(profiles["results"]) == counts["profiles"] == 300
    ids = [p["$distinct_id"] for p in profiles["results"]]
    assert len(set(ids)) == len(ids)
    types = defaultdict(set)
    for p in profiles["results"]:
        assert set(p) == {"$distinct_id", "$properties"}
        props = p["$properties"]
        for key in ("$created", "$email", "$name", "$first_name", "$last_name", "$last_seen", "$city", "plan",
                    "lifetime_value", "interests", "is_beta"):
            assert key in props, key
        datetime.fromisoformat(props["$created"])
        assert props["$last_seen"] >= props["$created"]
        for key, value in props.items():
            types[key].add(type(value).__name__)
    assert types["interests"] == {"list"} and types["is_beta"] == {"bool"}
    assert types["lifetime_value"] <= {"int", "float"} and "str" in types["$created"]


def test_profile_updates_have_exactly_one_operation_each(run, updates, profiles):
    _, counts, events = run
    assert len(updates) == counts["profile_updates"]
    ops = Counter()
    for u in updates:
        present = [k for k in u if k in UPDATE_OPS]
        assert len(present) == 1, u
        assert set(u) - {"$ignore_alias"} == {"$token", "$distinct_id", "$time", present[0]}
        assert isinstance(u["$time"], int) and u["$time"] > 1e12
        op, value = present[0], u[present[0]]
        ops[op] += 1
        if op == "$unset":
            assert isinstance(value, list)
        elif op == "$delete":
            assert value is None
        else:
            assert isinstance(value, dict) and value
        if op == "$add":
            assert all(isinstance(v, (int, float)) for v in value.values())
        if op == "$union":
            assert all(isinstance(v, list) for v in value.values())
    assert ops == counts["update_ops"] and set(ops) == set(UPDATE_OPS)
    assert any(u.get("$ignore_alias") is True for u in updates)
    assert len({u["$token"] for u in updates}) == 1
    # per user, updates are in time order (apply in file order == apply in $time order)
    last = {}
    for u in updates:
        assert u["$time"] >= last.get(u["$distinct_id"], 0)
        last[u["$distinct_id"]] = u["$time"]
    # some updates come under an alias id, some set $onesignal_user_id for users not in profiles.json
    aliases = {e["properties"]["alias"] for e in events if e["event"] == "$create_alias"}
    assert any(u["$distinct_id"] in aliases for u in updates)
    known = {p["$distinct_id"] for p in profiles["results"]}
    assert any(u["$distinct_id"] not in known and "$onesignal_user_id" in u.get("$set", {}) for u in updates)


# ---- identity ------------------------------------------------------------------------------------------

def test_original_and_simplified_id_merge_shapes(run):
    _, _, events = run
    by = defaultdict(list)
    for e in events:
        by[e["event"]].append(e["properties"])
    assert by["$identify"] and by["$create_alias"] and by["$merge"]
    for p in by["$identify"]:
        assert p["$identified_id"] == p["distinct_id"] and isinstance(p["$anon_id"], str)
    anon = [p["$anon_id"] for p in by["$identify"]]
    assert sum(map(bool, map(UUID4.fullmatch, anon))) > 0.8 * len(anon)
    for p in by["$create_alias"]:
        assert isinstance(p["alias"], str) and p["alias"] != p["distinct_id"]
    alias_targets = {p["distinct_id"] for p in by["$create_alias"]}
    assert alias_targets & {p["alias"] for p in by["$create_alias"]}, "no alias chain"
    for p in by["$merge"]:
        assert len(p["$distinct_ids"]) == 2 and p["distinct_id"] in p["$distinct_ids"]
    devices, merged_devices = set(), set()
    for e in events:
        p = e["properties"]
        if p["distinct_id"].startswith("$device:"):
            assert p["distinct_id"] == "$device:" + p["$device_id"] and UUID4.fullmatch(p["$device_id"])
            assert "$user_id" not in p
            devices.add(p["$device_id"])
        if "$user_id" in p:
            assert p["distinct_id"] == p["$user_id"]
            if "$device_id" in p:
                merged_devices.add(p["$device_id"])
    assert merged_devices and devices - merged_devices, "need merged and purely anonymous devices"
    assert merged_devices & devices, "need anonymous events before the merge"


# ---- OneSignal -----------------------------------------------------------------------------------------

def test_every_catalog_event_appears_with_onesignal_properties(run, profiles):
    _, _, events = run
    seen = {e["event"] for e in events}
    assert osev.NAMES <= seen
    usable = {p["$properties"]["$onesignal_user_id"] for p in profiles["results"]
              if isinstance(p["$properties"].get("$onesignal_user_id"), str)}
    for e in events:
        if e["event"] in osev.NAMES:
            p = e["properties"]
            assert p["$source"] == p["source"] == "onesignal"
            for key in ("Message ID", "Message Name", "message_type", "subscription_id", "device_type", "language",
                        "template_id"):
                assert key in p, key
            assert p["message_type"] in osev.BY_NAME[e["event"]].channels
            assert p["distinct_id"].strip()
    targets = {e["properties"]["distinct_id"] for e in events if e["event"] in osev.NAMES}
    assert targets & usable and any(UUID4.fullmatch(t) for t in targets)


def test_onesignal_user_id_kinds_are_all_present(run, profiles):
    _, counts, _ = run
    kinds = Counter()
    values = Counter()
    for p in profiles["results"]:
        props = p["$properties"]
        if "$onesignal_user_id" not in props:
            kinds["missing"] += 1
            continue
        v = props["$onesignal_user_id"]
        values[json.dumps(v)] += 1
        if not isinstance(v, str):
            kinds["not a string"] += 1
        elif not v.strip():
            kinds["blank"] += 1
        elif len(v) > 128:
            kinds["too long"] += 1
        elif UUID4.fullmatch(v):
            kinds["subscription uuid"] += 1
        elif v == p["$distinct_id"]:
            kinds["external = distinct_id"] += 1
        else:
            kinds["external other"] += 1
    assert set(kinds) == {"missing", "not a string", "blank", "too long", "subscription uuid",
                          "external = distinct_id", "external other"}
    assert kinds["missing"] < 0.3 * counts["profiles"]
    assert any(n > 1 for n in values.values()), "no OneSignal id shared by two profiles"
    assert set(counts["onesignal_ids"]) == set(ONESIGNAL_ID_KINDS) and all(counts["onesignal_ids"].values())


def test_catalog_classification():
    assert osev.kind_of("$campaign_delivery") == "delivery" and osev.kind_of("Message Sent") == "delivery"
    assert osev.kind_of("$app_open") == osev.kind_of("App Opened from Push") == "engagement"
    assert osev.kind_of("Message Opened") == osev.kind_of("$campaign_open") == "engagement"
    for name in ("Push Failed", "Email Bounced", "Reported as Spam", "Email Suppressed", "SMS Undelivered",
                 "Push Unsubscribed", "Email Unsubscribed", "$unsubscribe", "$message_suppressed"):
        assert osev.kind_of(name) == "delivery", name
    assert osev.kind_of("Purchase") is None and osev.kind_of("message sent") is None
    assert len(osev.NAMES) == len(osev.EVENTS) == 21
    assert osev.DELIVERY | osev.ENGAGEMENT == osev.NAMES and not osev.DELIVERY & osev.ENGAGEMENT
    assert osev.STRICT_EXEMPT <= osev.DOLLAR_NAMES
    assert set(osev.get("Message Sent").channels) == {"push", "in_app"}
    assert osev.get("Email Bounced").equivalent == "$campaign_bounced"


# ---- duplicates ----------------------------------------------------------------------------------------

def test_duplicates_share_the_dedup_key_and_the_later_copy_differs(run):
    out, counts, events = run
    lines = read_lines(out / EVENTS_FILE)
    groups = defaultdict(list)
    for i, e in enumerate(events):
        p = e["properties"]
        if "$insert_id" in p:
            groups[(e["event"], p["distinct_id"], p["time"], p["$insert_id"])].append(i)
    extra = sum(len(v) - 1 for v in groups.values())
    assert extra == counts["event_kinds"]["duplicate"]
    assert 0.01 <= extra / len(events) <= 0.02
    identical = changed = 0
    for idx in groups.values():
        if len(idx) < 2:
            continue
        first, later = idx[0], idx[-1]
        if lines[first] == lines[later]:
            identical += 1
        else:
            changed += 1
            a, b = events[first]["properties"], events[later]["properties"]
            assert b["mp_processing_time_ms"] > a["mp_processing_time_ms"]
    assert identical and changed
    assert any({k: v for k, v in events[i]["properties"].items() if k != "mp_processing_time_ms"}
               != {k: v for k, v in events[j]["properties"].items() if k != "mp_processing_time_ms"}
               for i, *_, j in (v for v in groups.values() if len(v) > 1))


def test_events_without_insert_id_are_repeated_exactly(run):
    out, counts, events = run
    lines = read_lines(out / EVENTS_FILE)
    no_iid = Counter(line for line, e in zip(lines, events, strict=True) if "$insert_id" not in e["properties"])
    assert no_iid and all(n == 2 for n in no_iid.values())
    assert len(no_iid) == counts["event_kinds"]["repeat_no_insert_id"]


def test_unicode_and_escaping_survive(run):
    out, _, events = run
    text = (out / EVENTS_FILE).read_text(encoding="utf-8")
    assert "Panier validé ✓" in text and "catégorie" in text
    queries = {e["properties"].get("query") for e in events}
    assert 'red "running" shoes' in queries and "tab\tand\nnewline" in queries and "C:\\temp\\file.txt" in queries


# ---- memory --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_memory_stays_flat(tmp_path):
    """Buffers are bounded and users are written one at a time: ~8 MiB traced at 20k or 200k events."""
    tracemalloc.start()
    try:
        generate(tmp_path, events=200_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"


# ---- the committed sample ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    counts = write_sample(out)
    return out, counts


def test_committed_sample_is_exactly_what_write_sample_writes(regenerated):
    out, _ = regenerated
    for name in SAMPLE_FILES:
        assert (SAMPLE / name).read_bytes() == (out / name).read_bytes(), (
            f"data/sample/{name} drifted: run `python -c 'from toolkit.synthetic import write_sample; "
            f"write_sample(\"data/sample\")'`")



def test_sample_readme_states_the_current_counts(regenerated):
    _, counts = regenerated
    readme = (SAMPLE / "README.md").read_text(encoding="utf-8")
    kinds = counts["event_kinds"]
    for fact in (f"{counts['events']:,} raw-export lines", f"{kinds['duplicate']} duplicate lines",
                 f"{counts['events'] - kinds['duplicate']:,} events remain", f"{counts['profiles']} profiles",
                 f"{counts['profile_updates']:,} Ingestion API", f"{kinds['onesignal']:,} OneSignal message events"):
        assert fact in readme, f"data/sample/README.md is out of date: expected {fact!r}"


def test_sample_size_and_span(regenerated):
    out, counts = regenerated
    events = read_events(out / EVENTS_FILE)
    assert 3000 <= len(events) == counts["events"] <= 6000
    assert 200 <= counts["profiles"] <= 400
    months = {datetime.fromtimestamp(e["properties"]["time"], UTC).month for e in events}
    assert months == {9, 10}
    assert osev.NAMES <= {e["event"] for e in events}


def test_sample_named_personas(regenerated):
    out, _ = regenerated
    events = read_events(out / EVENTS_FILE)
    profiles = {p["$distinct_id"]: p["$properties"]
                for p in json.loads((out / PROFILES_FILE).read_text(encoding="utf-8"))["results"]}
    updates = [json.loads(line) for line in read_lines(out / UPDATES_FILE)]
    by_id = defaultdict(list)
    for e in events:
        by_id[e["properties"]["distinct_id"]].append(e)

    ident = [e for e in by_id["alice@example.com"] if e["event"] == "$identify"]
    assert len(ident) == 1 and UUID4.fullmatch(ident[0]["properties"]["$anon_id"])
    assert by_id[ident[0]["properties"]["$anon_id"]]
    buys = [e["properties"]["amount"] for e in by_id["alice@example.com"] if e["event"] == "Purchase"]
    assert buys == [19.99, 24.99]  # same dedup key: the later copy (24.99) wins

    aliases = [(e["properties"]["distinct_id"], e["properties"]["alias"]) for e in events
               if e["event"] == "$create_alias" and e["properties"]["$insert_id"].startswith("bob-")]
    assert aliases == [("bob", "bob@example.com"), ("bob@example.com", "robert.b")]
    assert {u["$distinct_id"] for u in updates} >= {"bob", "bob@example.com", "robert.b"}

    merges = [e for e in by_id["carol"] if e["event"] == "$merge"]
    assert merges[0]["properties"]["$distinct_ids"] == ["carol", "carol-legacy-77"]

    assert any(e["properties"].get("$user_id") == "dave" and "$device_id" in e["properties"] for e in by_id["dave"])
    assert by_id["$device:9c1e2f3a-4b5c-4d6e-8f70-81a2b3c4d5e6"]

    erin = profiles["erin"]["$onesignal_user_id"]
    assert UUID4.fullmatch(erin) and len(by_id[erin]) == 8
    assert "$onesignal_user_id" not in profiles["frank"]
    assert "grace" not in profiles
    heidi = profiles["heidi"]["$onesignal_user_id"]
    assert all(c in heidi for c in '/ "ë') and by_id[heidi]
    assert profiles["ivan"]["$onesignal_user_id"] == profiles["judy"]["$onesignal_user_id"]
    assert profiles["ken"]["$onesignal_user_id"] == 4815162342 and profiles["leo"]["$onesignal_user_id"].strip() == ""
    assert len(profiles["mia"]["$onesignal_user_id"]) > 128
    assert "oscar" not in profiles
    assert any(u["$distinct_id"] == "oscar" and u.get("$set", {}).get("$onesignal_user_id") == "ext_oscar"
               for u in updates)
    assert any(u["$distinct_id"] == "peggy" and "$delete" in u and u["$ignore_alias"] for u in updates)
    franks = [e for e in by_id["frank"] if "$insert_id" not in e["properties"]]
    assert len(franks) == 2 and franks[0] == franks[1]


def _reference_check(line: str) -> str | None:
    """A minimal validator following Mixpanel's ingestion rules (as toolkit/loading/validation.py states
    them), to prove each broken line is broken as labelled."""
    try:
        rec = json.loads(line)
    except ValueError:
        return "malformed JSON"
    if not isinstance(rec, dict):
        return "not a JSON object"
    if "event" not in rec:
        return 'missing "event"'
    if not isinstance(rec["event"], str):
        return '"event" must be a string'
    if not rec["event"]:
        return "empty event name"
    if not isinstance(rec.get("properties"), dict):
        return "properties"
    p = rec["properties"]
    if "distinct_id" not in p:
        return "missing distinct_id"
    if not isinstance(p["distinct_id"], (str, int)) or isinstance(p["distinct_id"], bool):
        return "distinct_id must be a string"
    if str(p["distinct_id"]).strip().lower() in REFUSED_IDS:
        return "refused distinct_id"
    if "time" not in p:
        return "missing time"
    if not isinstance(p["time"], (int, float)) or isinstance(p["time"], bool):
        return "time"
    t = p["time"] / 1000 if p["time"] > 1e11 else p["time"]
    if t < calendar.timegm((1971, 1, 1, 0, 0, 0)):
        return "before 1971"
    if t > NOV_1 + 3600 * 24 * 365:
        return "in the future"
    iid = p.get("$insert_id")
    if iid is not None and not (isinstance(iid, str) and len(iid.encode()) <= 36 and INSERT_ID.fullmatch(iid)):
        return "$insert_id"
    return None


def test_broken_lines_are_broken_exactly_as_expected(regenerated):
    out, counts = regenerated
    lines = read_lines(out / "broken" / "broken_events.jsonl")
    expected = expected_reasons(out / "broken" / "expected.tsv")
    assert 15 <= len(expected) <= 25 and len(lines) - len(expected) >= 2
    assert counts["broken"] == {"lines": len(lines), "broken": len(expected), "valid": len(lines) - len(expected)}
    for n, line in enumerate(lines, 1):
        reason = _reference_check(line)
        if n in expected:
            assert reason is not None and expected[n] in reason, (n, line, reason, expected[n])
        else:
            assert reason is None, (n, line, reason)


def test_identity_events_are_never_skipped_by_duplicates(monkeypatch):
    """A duplicate takes two slots; the identity story must still be written in full."""
    import random

    from toolkit.synthetic import events
    from toolkit.synthetic.people import Crowd
    from toolkit.synthetic.period import Period
    from toolkit.synthetic.tally import Tally

    monkeypatch.setattr(events, "DUPLICATE_RATE", 0.4)
    monkeypatch.setattr(events, "REPEAT_RATE", 0.1)
    rng, period = random.Random(3), Period.of(date(2026, 9, 1), 2, False)
    stream, crowd = events.EventStream(rng, period, Tally()), Crowd(rng, period)
    checked = 0
    for n in range(3000):
        u = crowd.user(n, "profile")
        k = 2 + n % 7
        lines = stream.lines(u, k)
        assert len(lines) == k
        if u.story and len(u.story) + 2 <= k:
            written = [json.loads(line)["event"] for line in lines]
            for event in u.story:
                assert event.name in written, (u.persona, written)
            checked += 1
    assert checked > 500
