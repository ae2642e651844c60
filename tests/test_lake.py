"""The lake (toolkit/lake/): `toolkit lake export` writes a store's data as Parquet by day, and DuckDB over
that lake (or over a Mixpanel Data Pipelines JSON folder holding the same data) gives the same members,
matchability and MTU as the store, member for member. Spark over the lake: tests/test_spark_lake.py."""

import json
import shutil

import duckdb
import pytest
from cli_runner import toolkit

from helpers import NOW, SAMPLE
from toolkit import cohorts, engine, load, matching, mtu
from toolkit.errors import LakeError, UsageError
from toolkit.lake import find, home, writer
from toolkit.store import Store


def _names(store):
    return [c["name"] for c in cohorts.list_cohorts(store)]


@pytest.mark.slow
def test_export_writes_events_by_day_profiles_and_mappings(sample_lake, sample_store_file):
    days = sorted(p.name for p in (sample_lake / "events").iterdir())
    with Store(sample_store_file, read_only=True) as store:
        want_days = [f"date={d}" for d, in store.con.execute(
            "SELECT DISTINCT strftime(time, '%Y-%m-%d') FROM events ORDER BY 1").fetchall()]
        counts = store.con.execute("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM profiles), "
                                   "(SELECT count(*) FROM identity_map)").fetchall()[0]
    assert days == want_days
    con = duckdb.connect()
    for files, want in (("events/*/*.parquet", counts[0]), ("profiles/*.parquet", counts[1])):
        assert con.execute(f"SELECT count(*) FROM read_parquet('{sample_lake}/{files}')").fetchall()[0][0] == want
    mapped = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{sample_lake}/identity_mappings/*.parquet')").fetchall()
    assert [c[0] for c in mapped] == ["distinct_id", "resolved_distinct_id"]
    found = find(sample_lake)
    assert (found.kind, found.deduplicated, len(found.mappings)) == ("parquet", True, 1)


@pytest.mark.slow
def test_duckdb_over_the_lake_gives_the_stores_members_and_mtu(sample_lake, sample_store_copy):
    with Store(sample_store_copy) as store, engine.Evaluator(engine.choose(lake=str(sample_lake))) as ev:
        names = _names(store)
        assert len(names) >= 10
        for name in names:
            want = matching.preview(store, name, now=NOW)
            got = ev.preview(store, name, now=NOW)
            assert got.members.equals(want.members), name
            assert got.summary["reasons"] == want.summary["reasons"]
            back = home.read(store, name)          # the members came home, as they were
            assert back.members.equals(want.members), name
        for rules in mtu.RULE_SETS:
            assert ev.mtu(store, rules=rules) == mtu.report(store, rules=rules)
        assert ev.mtu(store, "2026-10") == mtu.report(store, "2026-10")
        assert store.con.execute("SELECT count(DISTINCT cohort) FROM lake_members").fetchall()[0][0] == len(names)


@pytest.mark.slow
def test_identity_from_links_when_the_lake_has_no_mappings(tmp_path):
    """Without Mixpanel's identity mappings the links are extracted from the lake and resolved by the
    loader's resolver: the same map as a load of the same events and profiles."""
    with Store(tmp_path / "s.duckdb") as store:
        load(store, [SAMPLE / "events.jsonl", SAMPLE / "profiles.json"], now=NOW)
        cohorts.save_all(store, cohorts.load_definitions(SAMPLE / "cohorts.yaml"))
        writer.export_store(store, tmp_path / "lake")
        shutil.rmtree(tmp_path / "lake" / "identity_mappings")
        want = set(store.con.execute("SELECT distinct_id, canonical_id FROM identity_map").fetchall())
        assert len(want) > 100
        with engine.Evaluator(engine.choose(lake=str(tmp_path / "lake"))) as ev:
            assert ev.lake.identity == "links"
            assert set(ev.lake.con.execute("SELECT distinct_id, canonical_id FROM identity_map").fetchall()) == want
            for name in _names(store):
                assert ev.preview(store, name, now=NOW).members.equals(
                    matching.preview(store, name, now=NOW).members), name


@pytest.mark.slow
def test_a_lake_is_written_as_a_data_pipelines_folder_once(sample_lake, sample_store_file, tmp_path):
    project = writer.export_pipelines(sample_lake, tmp_path / "bucket", "3141592")
    assert project == tmp_path / "bucket" / "3141592" and [p.name for p in project.parent.iterdir()] == ["3141592"]
    found = find(tmp_path / "bucket")
    assert (found.kind, found.deduplicated) == ("pipelines", False)
    days = sorted(p.relative_to(project / "mp_master_event").as_posix()
                  for p in (project / "mp_master_event").glob("*/*/*"))
    with Store(sample_store_file, read_only=True) as store:
        assert days == [d for d, in store.con.execute(
            "SELECT DISTINCT strftime(time, '%Y/%m/%d') FROM events ORDER BY 1").fetchall()]
        with_key = store.con.execute("SELECT count(*) FROM events WHERE insert_id IS NOT NULL").fetchall()[0][0]
    con = duckdb.connect()
    stale = con.execute("SELECT count(*), count(*) FILTER (WHERE json_extract(json, '$.properties.stale') = 'true' "
                        "AND json_extract(json, '$.properties.mp_processing_time_ms') IS NULL) FROM "
                        f"read_json_objects('{project}/mp_master_event/*/*/*/part-0.json.gz')").fetchall()[0]
    assert stale == (with_key, with_key)            # every keyed event's older copy, marked
    assert {p.parent.name for p in project.glob("*/*.json")} == {"mp_people_data", "mp_identity_mappings_data"}
    with pytest.raises(LakeError, match="3141592 exists"):
        writer.export_pipelines(sample_lake, tmp_path / "bucket", "3141592")


@pytest.mark.slow
def test_a_data_pipelines_folder_is_read_in_place_and_deduplicated(sample_lake, sample_store_copy, tmp_path):
    writer.export_pipelines(sample_lake, tmp_path / "bucket", "3141592")
    found = find(tmp_path / "bucket")
    assert (found.kind, found.deduplicated) == ("pipelines", False)
    with Store(sample_store_copy) as store, engine.Evaluator(engine.choose(lake=str(tmp_path / "bucket"))) as ev:
        count = ev.lake.con.execute("SELECT count(*), count(*) FILTER (WHERE properties LIKE '%\"stale\"%') "
                                    "FROM resolved_events").fetchall()[0]
        assert count == (store.con.execute("SELECT count(*) FROM events").fetchall()[0][0], 0)
        for name in _names(store):
            assert ev.preview(store, name, now=NOW).members.equals(
                matching.preview(store, name, now=NOW).members), name
        assert ev.mtu(store) == mtu.report(store)


@pytest.mark.slow
def test_export_refuses_a_non_empty_target_and_replaces_only_when_asked(sample_store_file, tmp_path):
    target = tmp_path / "lake"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with Store(sample_store_file, read_only=True) as store:
        with pytest.raises(LakeError, match=f"{target} is not empty.*--replace"):
            writer.export_store(store, target)
        assert [p.name for p in target.iterdir()] == ["notes.txt"]
        writer.export_store(store, target, replace=True)
    assert sorted(p.name for p in target.iterdir()) == ["_toolkit_lake.json", "events", "identity_mappings", "profiles"]
    assert [p.name for p in tmp_path.iterdir()] == ["lake"]       # nothing beside it: no partial, no old copy


def test_an_interrupted_export_leaves_nothing(sample_store_file, tmp_path):
    def interrupt(done, total):
        raise KeyboardInterrupt

    with Store(sample_store_file, read_only=True) as store, pytest.raises(KeyboardInterrupt):
        writer.export_store(store, tmp_path / "lake", on_progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_a_lake_file_added_after_the_export_is_deduplicated_again(sample_lake, tmp_path):
    copy = tmp_path / "lake"
    shutil.copytree(sample_lake, copy)
    day = sorted((copy / "events").iterdir())[0]
    shutil.copy(next(day.glob("*.parquet")), day / "again.parquet")      # every event of that day twice
    assert not find(copy).deduplicated
    with engine.Evaluator(engine.choose(lake=str(copy))) as ev:
        count = "SELECT count(*) FROM {} WHERE insert_id IS NOT NULL"
        twice = ev.lake.con.execute(count.format(f"'{day}/again.parquet'")).fetchall()[0][0]
        assert twice > 0
        assert ev.lake.con.execute(count.format("lake_events")).fetchall()[0][0] == \
            ev.lake.con.execute(count.format("lake_events_src")).fetchall()[0][0] - twice


# -- bad input ---------------------------------------------------------------------------------------

def test_a_missing_lake_is_named(tmp_path):
    with pytest.raises(LakeError, match=f"lake {tmp_path / 'nowhere'} does not exist"):
        find(tmp_path / "nowhere")


def test_a_folder_without_events_is_named(tmp_path):
    (tmp_path / "events").mkdir()
    with pytest.raises(LakeError, match=f"lake {tmp_path} holds no events: {tmp_path / 'events'} has no .parquet"):
        find(tmp_path)
    (tmp_path / "events").rmdir()
    with pytest.raises(LakeError, match="holds no events: expected events/date=YYYY-MM-DD"):
        find(tmp_path)


def test_a_malformed_parquet_file_is_named(sample_lake, tmp_path, sample_store_file):
    copy = tmp_path / "lake"
    shutil.copytree(sample_lake, copy)
    bad = sorted((copy / "events").iterdir())[3] / "broken.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with Store(sample_store_file, read_only=True) as store, \
            pytest.raises(LakeError, match=f"cannot read its events: {bad} is not readable"):
        engine.Evaluator(engine.choose(lake=str(copy))).preview(store, "VIP support list", now=NOW)


def test_engine_options_are_checked():
    with pytest.raises(UsageError, match="--lake PATH"):
        engine.choose("spark")
    with pytest.raises(UsageError, match="add --engine spark"):
        engine.choose(lake="x", master="local[2]")
    with pytest.raises(UsageError, match="not both"):
        engine.choose("spark", lake="x", master="local[2]", remote="sc://h:15002")


# -- the command -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_commands_over_a_lake(sample_store_copy, tmp_path):
    out = toolkit("lake", "export", "--store", sample_store_copy, tmp_path / "lake", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["events"] > 4000
    again = toolkit("lake", "export", "--store", sample_store_copy, tmp_path / "lake")
    assert again.returncode == 1 and "is not empty" in again.stderr
    preview = toolkit("cohorts", "preview", "VIP support list", "--db", sample_store_copy, "--lake", tmp_path / "lake",
                      "--as-of", "2026-10-31", "--json")
    on_store = toolkit("cohorts", "preview", "VIP support list", "--db", sample_store_copy, "--as-of", "2026-10-31",
                       "--json")
    assert preview.returncode == 0, preview.stderr
    assert json.loads(preview.stdout)["members"] == json.loads(on_store.stdout)["members"]
    assert json.loads(preview.stdout)["summary"]["engine"] == "duckdb"
    months = toolkit("mtu", "--db", sample_store_copy, "--lake", tmp_path / "lake", "--json")
    assert json.loads(months.stdout) == json.loads(toolkit("mtu", "--db", sample_store_copy, "--json").stdout)
    bad = toolkit("mtu", "--db", sample_store_copy, "--engine", "spark")
    assert bad.returncode == 2 and "--lake PATH" in bad.stderr
    missing = toolkit("mtu", "--db", sample_store_copy, "--lake", tmp_path / "nowhere")
    assert missing.returncode == 1 and f"lake {tmp_path / 'nowhere'} does not exist" in missing.stderr


@pytest.mark.slow
def test_the_scheduled_sync_evaluates_over_the_lake(sample_lake, sample_store_copy):
    """run_scheduled (the sync notebook's body) with an engine: the same dry-run records and MTU."""
    from toolkit import sync

    names = "VIP support list, Engaged with push"
    on_store = sync.run_scheduled(sample_store_copy, cohorts=names, dry_run=True, now=NOW)
    on_lake = sync.run_scheduled(sample_store_copy, cohorts=names, dry_run=True, now=NOW,
                                 engine=engine.choose(lake=str(sample_lake)))
    assert on_lake.status == on_store.status
    columns = ["cohort", "status", "members", "exportable", "added", "removed", "unchanged"]
    assert on_lake.table[columns].equals(on_store.table[columns])
    assert on_lake.mtu.equals(on_store.mtu)
    with Store(sample_store_copy, read_only=True) as store:
        assert {c for c, in store.con.execute("SELECT cohort FROM lake_evaluations").fetchall()} == \
            {"VIP support list", "Engaged with push"}
    broken = sync.run_scheduled(sample_store_copy, cohorts=names, dry_run=True, now=NOW,
                                engine=engine.choose(lake=str(sample_lake) + "-missing"))
    assert broken.status == "failed" and f"lake {sample_lake}-missing does not exist" in broken.summary
