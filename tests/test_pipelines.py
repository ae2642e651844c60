"""Mixpanel Data Pipelines folders as a source: the same data written as a Pipelines folder and served by the
Mixpanel emulator loads to the same store (events, profiles, identity map, cohort members); a run's new files
(late events) load alone; the people table and the identity mappings are replaced by each export; Mixpanel's
mappings win over our own resolution."""

import gzip
import json
import re
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from mixpanel_fixtures import COHORTS, FIRST_DAY, day_start, events, profiles

from helpers import write_lines
from toolkit import cohorts, load
from toolkit.cohort_model import Cohort, EventRule
from toolkit.loading import pipelines
from toolkit.mixpanel import cohorts as mixpanel_cohorts
from toolkit.mixpanel.client import MixpanelClient, ServiceAccount
from toolkit.mixpanel.emulator import MixpanelEmulator
from toolkit.mixpanel.pull import pull
from toolkit.store import Store

SECRET = "pipelines-test-secret-7c1e"
PROJECT = "4242"
ANON = "3f2b8c1e-9d4a-4e6b-a1c2-7f8e9d0a1b2c"
NOW = datetime(2026, 10, 6, tzinfo=UTC)
FAST = dict(backoff_base=0.01, backoff_max=0.05, rate_limited_wait=0.05)


def put(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_lines(path, records)


def dataset() -> list[dict]:
    """Three days of events, a duplicate sent twice, an $identify from an anonymous id and a device that
    becomes a user (Simplified ID Merge)."""
    records = events(days=3, per_day=30)
    t = day_start(FIRST_DAY) + 5000
    records += [
        {"event": "Page View", "properties": {"time": t, "distinct_id": ANON, "$insert_id": "anon-1", "plan": "free"}},
        {"event": "$identify", "properties": {"time": t + 1, "distinct_id": "u1", "$anon_id": ANON,
                                              "$identified_id": "u1", "$insert_id": "ident-1"}},
        {"event": "Purchase", "properties": {"time": t + 2, "distinct_id": "$device:dev-9", "$device_id": "dev-9",
                                             "$user_id": "u9", "$insert_id": "dev-1", "amount": 30}},
        records[0],   # sent twice: dedup keeps one
    ]
    return records


def write_pipelines(root: Path, records: list[dict], people: list[dict], mappings: list[dict]) -> Path:
    """``records`` as a daily JSON pipeline writes them: one gzip file per day in mp_master_event/Y/M/D/."""
    by_day: dict[date, list[dict]] = {}
    for record in records:
        moment = datetime.fromtimestamp(record["properties"]["time"], UTC)
        by_day.setdefault(moment.date(), []).append(pipelines.from_export_event(record))
    for day, rows in by_day.items():
        folder = Path(pipelines.day_folder(root, PROJECT, day))
        folder.mkdir(parents=True, exist_ok=True)
        with gzip.open(folder / "part-000000.json.gz", "wt", encoding="utf-8") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in rows)
    put(Path(pipelines.table_path(root, PROJECT, pipelines.PEOPLE)) / "people-0.json",
                [{"distinct_id": p["$distinct_id"], "properties": p["$properties"]} for p in people])
    put(Path(pipelines.table_path(root, PROJECT, pipelines.IDENTITY)) / "mappings-0.json", mappings)
    return root / PROJECT


def snapshot(store: Store) -> dict:
    con = store.con
    return {
        "events": sorted((e, d, str(t), i, dev, u, json.dumps(json.loads(p), sort_keys=True)) for e, d, t, i, dev, u, p
                         in con.execute("SELECT event, distinct_id, time, insert_id, device_id, user_id, properties "
                                        "FROM events").fetchall()),
        "profiles": sorted((d, json.loads(p)["$email"]) for d, p in
                           con.execute("SELECT distinct_id, properties FROM resolved_profiles").fetchall()),
        "identity": sorted(con.execute("SELECT distinct_id, canonical_id FROM identity_map").fetchall()),
    }


@pytest.fixture
def emulator_folder(tmp_path):
    folder = tmp_path / "mp"
    put(folder / "events.jsonl", dataset())
    (folder / "profiles.json").write_text(json.dumps({"results": profiles()}))
    (folder / "cohorts.json").write_text(json.dumps(COHORTS))
    return folder


@pytest.mark.slow
def test_a_pipelines_folder_loads_to_the_same_store_as_the_same_data_pulled(new_store, emulator_folder, tmp_path,
                                                                            mixpanel_seconds):
    mappings = [{"distinct_id": ANON, "resolved_distinct_id": "u1"},
                {"distinct_id": "$device:dev-9", "resolved_distinct_id": "u9"}]
    folder = write_pipelines(tmp_path / "bucket", dataset(), profiles(), mappings)
    buyers = Cohort("buyers", rules=(EventRule("Purchase"),))
    stores = {}
    with MixpanelEmulator(emulator_folder, project_id=PROJECT, secret=SECRET, page_size=7, **mixpanel_seconds) as emu, \
            MixpanelClient(ServiceAccount(emu.username, SECRET, PROJECT), emu.url, **FAST) as client:
        pulled = Store(new_store(tmp_path / "pulled.duckdb"))
        pull(tmp_path / "landing", client.account, from_date=FIRST_DAY, to_date=date(2026, 10, 3), profiles=True,
             client=client, today=date(2026, 10, 3))
        assert not load(pulled, [tmp_path / "landing"], now=NOW).refused
        from_folder = Store(new_store(tmp_path / "folder.duckdb"))
        summary = load(from_folder, [folder], now=NOW)
        assert not summary.refused and summary.to_dict()["files_loaded"] == 5   # 3 days, people, mappings
        for name, store in (("pulled", pulled), ("folder", from_folder)):
            mixpanel_cohorts.adopt(store, client, 11)
            cohorts.save(store, buyers)
            stores[name] = {**snapshot(store), "Power users": cohorts.evaluate(store, "Power users", now=NOW),
                            "buyers": cohorts.evaluate(store, "buyers", now=NOW)}
            store.close()
    pulled_view, folder_view = stores["pulled"], stores["folder"]
    assert folder_view == pulled_view
    # What was compared is the data: every event once, Mixpanel's merges, members on both sides.
    assert len(folder_view["events"]) == 3 * 30 + 3
    assert {(ANON, "u1"), ("$device:dev-9", "u9"), ("ext-1", "u1")} <= set(folder_view["identity"])
    assert folder_view["Power users"] == ["u1", "u2", "u3"] and "u9" in folder_view["buyers"]


def test_a_reload_reads_only_the_new_files_of_a_run_late_events_included(new_store, tmp_path):
    records = events(days=2, per_day=10)
    folder = write_pipelines(tmp_path / "bucket", records, profiles(3), [])
    with Store(new_store(tmp_path / "s.duckdb")) as store:
        load(store, [folder], now=NOW)
        late = {"event": "Purchase", "properties": {"time": day_start(FIRST_DAY) + 99, "distinct_id": "u5",
                                                    "$insert_id": "late-1"}}
        day = Path(pipelines.day_folder(tmp_path / "bucket", PROJECT, FIRST_DAY))
        put(day / "part-000001.json", [pipelines.from_export_event(late), pipelines.from_export_event(records[0])])
        summary = load(store, [folder], now=NOW)
        loaded = [f.path for f in summary.files if f.status == "loaded"]
        assert loaded == [str(day / "part-000001.json")], summary.to_dict()
        assert summary.to_dict()["duplicates_dropped"] == 1      # the repeat of an event loaded before
        assert store.con.execute("SELECT count(*) FROM events").fetchone()[0] == 21


@pytest.mark.slow
def test_each_people_and_mappings_export_replaces_the_previous_one(new_store, tmp_path):
    root = tmp_path / "bucket"
    folder = write_pipelines(root, events(days=1, per_day=3), profiles(4),
                             [{"distinct_id": "anon-a", "resolved_distinct_id": "u1"}])
    people = Path(pipelines.table_path(root, PROJECT, pipelines.PEOPLE))
    mapped = Path(pipelines.table_path(root, PROJECT, pipelines.IDENTITY))
    with Store(new_store(tmp_path / "s.duckdb")) as store:
        load(store, [folder], now=NOW)
        assert store.con.execute("SELECT count(*) FROM profiles").fetchone()[0] == 4
        # The next export: two files in place of the one; u0 and u3 are gone from Mixpanel, u1 changed.
        (people / "people-0.json").unlink()
        put(people / "people-a.json", [{"distinct_id": "u1", "properties": {"$email": "new@example.com"}}])
        put(people / "people-b.json", [{"distinct_id": "u2", "properties": {"$email": "u2@example.com"}}])
        (mapped / "mappings-0.json").unlink()
        put(mapped / "mappings-1.json", [{"distinct_id": "anon-b", "resolved_distinct_id": "u2"}])
        summary = load(store, [folder], now=NOW)
        assert not summary.refused
        assert sorted(store.con.execute("SELECT distinct_id, properties ->> '$.\"$email\"' FROM profiles").fetchall()) \
            == [("u1", "new@example.com"), ("u2", "u2@example.com")]
        assert store.con.execute("SELECT * FROM identity_map").fetchall() == [("anon-b", "u2")]
        # The facts matching reads follow: the removed profiles have none.
        facts = {d for d, in store.con.execute("SELECT distinct_id FROM user_id_facts").fetchall()}
        assert facts == {"u1", "u2"}


def test_an_export_not_all_loaded_keeps_the_previous_one(new_store, tmp_path):
    root = tmp_path / "bucket"
    folder = write_pipelines(root, [], profiles(4), [])
    people = Path(pipelines.table_path(root, PROJECT, pipelines.PEOPLE))
    with Store(new_store(tmp_path / "s.duckdb")) as store:
        load(store, [folder], now=NOW)
        (people / "people-0.json").unlink()
        put(people / "people-a.json", [{"distinct_id": "u1", "properties": {"$email": "x"}}])
        (people / "people-b.json.gz").write_bytes(b"not gzip")
        summary = load(store, [folder], now=NOW)
        assert [f.path for f in summary.refused] == [str(people / "people-b.json.gz")]
        assert store.con.execute("SELECT count(*) FROM profiles").fetchone()[0] == 4


def test_mixpanels_mappings_win_over_our_resolution(new_store, tmp_path):
    """Our events say u7 merged into u8 and ANON identified as u1; Mixpanel's mappings say u7 is its own
    user's (w7) and ANON is u2's. Mixpanel's answer is the one a person sees in Mixpanel's UI."""
    t = day_start(FIRST_DAY) + 10
    records = [{"event": "$merge", "properties": {"time": t, "distinct_id": "u8", "$distinct_ids": ["u8", "u7"],
                                                  "$insert_id": "m1"}},
               {"event": "$identify", "properties": {"time": t, "distinct_id": "u1", "$anon_id": ANON,
                                                     "$identified_id": "u1", "$insert_id": "i1"}}]
    mappings = [{"distinct_id": "u7", "resolved_distinct_id": "w7"},
                {"distinct_id": ANON, "resolved_distinct_id": "u2"}]
    folder = write_pipelines(tmp_path / "bucket", records, [], mappings)
    with Store(new_store(tmp_path / "s.duckdb")) as store:
        load(store, [folder], now=NOW)
        mapped = dict(store.con.execute("SELECT * FROM identity_map").fetchall())
        assert mapped == {"u7": "w7", "u8": "w7", ANON: "u2"}
        refused = store.con.execute("SELECT kind, refused FROM identity_links WHERE refused IS NOT NULL").fetchall()
        assert refused == [("identify", refused[0][1])] and "already merged" in refused[0][1]


def test_pipelines_fields_are_checked_and_named(new_store, tmp_path):
    day = Path(pipelines.day_folder(tmp_path / "bucket", PROJECT, FIRST_DAY))
    put(day / "part-0.json", [
        {"event_name": "Buy", "time": "2026-10-01T10:00:00Z", "distinct_id": "u1", "insert_id": "ok-1",
         "properties": json.dumps({"amount": 2})},                      # timestamp text and JSON text: read
        {"event_name": "Buy", "time": 1790848800, "distinct_id": None, "insert_id": "no-id", "properties": {}},
        {"event_name": "Buy", "time": 1790848801, "distinct_id": "u3", "insert_id": "top-wins",   # top-level wins
         "properties": {"distinct_id": "old", "time": 1790848801, "$insert_id": "top-wins", "n": 1}},
    ])
    (day / "part-1.json").write_text('{"event_name": "Buy", "time": 1790848800, "distinct_id": "u2", '
                                     '"properties": {}}\n{not json\n')
    with Store(new_store(tmp_path / "s.duckdb")) as store:
        summary = load(store, [tmp_path / "bucket"], now=NOW)
        assert summary.to_dict()["events"] == 3
        row = store.con.execute("SELECT distinct_id, properties FROM events WHERE insert_id = 'top-wins'").fetchone()
        assert row[0] == "u3" and json.loads(row[1]) == {"distinct_id": "u3", "time": 1790848801,
                                                         "$insert_id": "top-wins", "n": 1}
        row = store.con.execute("SELECT time, properties ->> '$.amount' FROM events "
                                "WHERE insert_id = 'ok-1'").fetchone()
        assert row == (datetime(2026, 10, 1, 10, 0), "2")
        assert sorted(store.con.execute("SELECT line, reason FROM quarantine").fetchall()) == [
            (2, "malformed JSON"), (2, "missing distinct_id")]


def test_the_layout_module_reads_paths_and_maps_fields_both_ways():
    path = "s3://bucket/4242/mp_master_event/2026/10/01/07/part-3.json.gz"     # an hourly pipeline's file
    assert (pipelines.table_of(path), pipelines.project_of(path), pipelines.event_day(path)) == (
        pipelines.EVENTS, "4242", date(2026, 10, 1))
    assert pipelines.table_of("/data/4242/mp_people_data/p.json") == pipelines.PEOPLE
    assert pipelines.table_of("/data/4242/events/mp_people_data") is None      # a file's own name is no folder
    assert pipelines.event_day("/data/4242/mp_master_event/2026/13/01/x.json") is None
    record = {"event": "Buy", "properties": {"time": 1790848800, "distinct_id": "u1", "$insert_id": "a", "n": 1}}
    assert pipelines.to_export_event(pipelines.from_export_event(record)) == record
    assert pipelines.to_export_event({"event_name": "Buy", "time": "2026-10-01 10:00:00.5 UTC", "distinct_id": "u1",
                                      "properties": {"distinct_id": "old"}})["properties"] == {
        "time": 1790848800.5, "distinct_id": "u1"}


def test_the_load_report_counts_identity_mappings(tmp_path):
    from cli_runner import toolkit

    folder = write_pipelines(tmp_path / "bucket", [], profiles(2), [{"distinct_id": "a", "resolved_distinct_id": "u1"}])
    out = toolkit("load", "--db", tmp_path / "s.duckdb", folder, env={"TOOLKIT_SETTLE_SECONDS": "0"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"identity mappings\s+1\n", out.stdout) and re.search(r"profiles\s+2\n", out.stdout)
