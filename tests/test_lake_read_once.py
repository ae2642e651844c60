"""DuckDB over a Mixpanel Data Pipelines JSON folder reads the folder once per session (toolkit/lake/duck.py):
the parsed, deduplicated events and the identity mappings are kept, so the cohorts a panel or a sync
evaluates one after another do not parse every JSON file again. A new session reads the folder again."""

import shutil

import pytest

from helpers import NOW
from toolkit import engine, matching
from toolkit.errors import LakeError
from toolkit.lake import writer
from toolkit.lake.duck import DuckLake
from toolkit.lake.layout import find
from toolkit.sql import Query
from toolkit.store import Store

CHURN = "Churn risk: active in September, silent in October"
PRO = "Pro plan in the US"


@pytest.fixture(scope="module")
def bucket(sample_lake, tmp_path_factory):
    root = tmp_path_factory.mktemp("bucket")
    writer.export_pipelines(sample_lake, root, "3141592")
    return root


def _moved_away(bucket, tmp_path):
    """The folder's files gone (moved aside): what a session that still read them would trip on."""
    away = tmp_path / "away"
    shutil.copytree(bucket, away / "copy")
    return away / "copy"


@pytest.mark.slow
def test_a_session_reads_the_pipelines_folder_once(bucket, sample_store_copy, tmp_path):
    folder = _moved_away(bucket, tmp_path)
    with Store(sample_store_copy) as store, engine.Evaluator(engine.choose(lake=str(folder))) as ev:
        first = ev.preview(store, CHURN, now=NOW)
        shutil.rmtree(folder)                  # every JSON file gone: the session reads none of them again
        assert ev.preview(store, PRO, now=NOW).members.equals(matching.preview(store, PRO, now=NOW).members)
        assert first.members.equals(matching.preview(store, CHURN, now=NOW).members)
        assert ev.mtu(store)                    # MTU from what was read too


@pytest.mark.slow
def test_read_once_off_reads_the_json_at_every_query_and_a_new_session_sees_a_change(bucket, tmp_path):
    folder = _moved_away(bucket, tmp_path)
    count = "SELECT count(*) FROM resolved_events"
    with DuckLake(find(folder), read_once=False).prepare() as each_time:
        before = each_time.con.execute(count).fetchall()[0][0]
        with DuckLake(find(folder)).prepare() as once:
            day = sorted((find(folder).root / "mp_master_event").rglob("part-1.json"))[0]
            extra = day.with_name("part-2.json")
            line = day.read_text().splitlines()[0].replace('"insert_id":', '"insert_id_was":')    # a new event
            extra.write_text(line.replace('"distinct_id":"', '"distinct_id":"new-') + "\n")
            assert once.con.execute(count).fetchall()[0][0] == before          # kept what it read
        with DuckLake(find(folder)).prepare() as again:
            assert again.con.execute(count).fetchall()[0][0] == before + 1      # a new session reads it
        extra.unlink()
        shutil.rmtree(find(folder).root / "mp_master_event")
        with pytest.raises(LakeError):                      # without read_once, every query reads the files
            each_time.arrow(Query(count, {}))


@pytest.mark.slow
def test_the_parsed_files_are_kept_beside_the_store_until_they_change(bucket, sample_store_copy, tmp_path):
    """Each JSON file is parsed once, into `<store>.lake-cache/`; a later session parses only new or changed
    files, drops the entries of removed ones, and gives the same members as the store."""
    folder = _moved_away(bucket, tmp_path)
    files = find(folder).events

    def session(same_as_the_store=True):
        with Store(sample_store_copy, read_only=True) as store, \
                engine.Evaluator(engine.choose(lake=str(folder))) as ev:
            got = ev.preview(store, CHURN, now=NOW)
            if same_as_the_store:
                assert got.members.equals(matching.preview(store, CHURN, now=NOW).members)
            return ev.lake.parsed, sorted(cache.rglob("events-*.parquet"))

    cache = engine.lake_cache(Store(sample_store_copy, read_only=True))
    assert cache == sample_store_copy.with_name(sample_store_copy.name + ".lake-cache")
    parsed, entries = session()
    assert parsed == len(files) == len(entries)
    assert session() == (0, entries)                               # nothing parsed again
    (kept,) = cache.rglob("lake-events-*.parquet")                  # the deduplicated events of these files

    day = sorted(p for p in files if p.name == "part-1.json")[0]
    first = day.read_text().splitlines()[0]
    (day.parent / "part-2.json").write_text(first.replace('"distinct_id":"', '"distinct_id":"new-') + "\n")
    [p for p in files if p.name == "part-0.json.gz"][0].unlink()     # a file of stale copies gone
    parsed, now_entries = session(same_as_the_store=False)
    assert parsed == 1 and len(now_entries) == len(entries)          # one new, one dropped
    assert [p.name for p in cache.rglob("lake-events-*.parquet")] != [kept.name]     # a new set: deduplicated again
    with Store(sample_store_copy, read_only=True) as store, engine.Evaluator(engine.choose(lake=str(folder))) as ev:
        ev.preview(store, CHURN, now=NOW)
        count = ev.lake.con.execute("SELECT count(*) FROM resolved_events WHERE sent_distinct_id LIKE 'new-%'")
        assert count.fetchall() == [(1,)]


@pytest.mark.slow
def test_a_malformed_file_is_named_when_it_is_parsed_into_the_cache(bucket, sample_store_copy, tmp_path):
    folder = _moved_away(bucket, tmp_path)
    day = sorted(p for p in find(folder).events if p.name == "part-1.json")[0]
    bad = day.with_name("part-9.json")
    bad.write_text('{"event_name": "x", "time": 1}\n{not json\n')
    with Store(sample_store_copy, read_only=True) as store, engine.Evaluator(engine.choose(lake=str(folder))) as ev:
        with pytest.raises(LakeError, match=f"{bad} is not readable"):
            ev.preview(store, CHURN, now=NOW)
    assert not list(engine.lake_cache(Store(sample_store_copy, read_only=True)).rglob(".events-*"))   # no half file
