"""Spark over a lake gives what DuckDB gives, member for member: every sample cohort's members and
matchability reasons, MTU per month, a Data Pipelines folder read in place (dedup and identity links on
Spark), and an export to the OneSignal emulator. One Spark session (conftest's ``spark``)."""

import shutil

import pytest
from cli_runner import toolkit

from helpers import NOW
from toolkit import cohorts, engine, matching, mtu, sync
from toolkit.demo import seed_users
from toolkit.lake import home, writer
from toolkit.lake.duck import DuckLake
from toolkit.lake.layout import find
from toolkit.sql import Query
from toolkit.store import Store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def on_spark(spark, sample_lake):
    with engine.Evaluator(engine.choose("spark", lake=str(sample_lake))) as ev:
        yield ev


def test_every_sample_cohort_has_the_same_members_and_reasons_on_spark(on_spark, sample_store_copy):
    with Store(sample_store_copy) as store:
        names = [c["name"] for c in cohorts.list_cohorts(store)]
        assert len(names) >= 10
        for name in names:
            want = matching.preview(store, name, now=NOW)
            got = on_spark.preview(store, name, now=NOW)
            assert got.members.equals(want.members), name      # every column: id, kind, reason, detail
            assert got.summary["engine"] == "spark"
            assert home.read(store, name).members.equals(want.members), name
        for rules in mtu.RULE_SETS:
            assert on_spark.mtu(store, rules=rules) == mtu.report(store, rules=rules)
        assert on_spark.mtu(store, "2026-09", "strict") == mtu.report(store, "2026-09", "strict")


def test_a_data_pipelines_folder_on_spark_equals_duckdb(spark, sample_lake, sample_store_copy, tmp_path):
    """JSON read in place, copies deduplicated and, with no identity mappings, the links extracted
    on Spark and resolved by the loader's resolver: the same map and members as DuckDB's."""
    project = writer.export_pipelines(sample_lake, tmp_path / "bucket", "3141592")
    shutil.rmtree(project / "mp_identity_mappings_data")
    with Store(sample_store_copy) as store, DuckLake(find(project)).prepare() as duck, \
            engine.Evaluator(engine.choose("spark", lake=str(tmp_path / "bucket"))) as ev:
        assert ev.lake.identity == "links"
        mapped = ev.lake.arrow(Query("SELECT distinct_id, canonical_id FROM identity_map", {}))
        assert sorted(mapped.to_pylist(), key=str) == sorted(
            duck.con.sql("SELECT distinct_id, canonical_id FROM identity_map").to_arrow_table().to_pylist(), key=str)
        assert len(mapped) > 100
        counted = Query("SELECT count(*) AS n FROM resolved_events", {})
        assert ev.lake.arrow(counted).to_pylist() == [{"n": store.con.execute("SELECT count(*) FROM events")
                                                      .fetchall()[0][0]}]
        on_duck = engine.Evaluator(engine.choose(lake=str(tmp_path / "bucket")))
        for name in ("VIP support list", "Churn risk: active in September, silent in October", "Engaged with push"):
            assert ev.preview(store, name, now=NOW).members.equals(on_duck.preview(store, name, now=NOW).members)
        on_duck.close()


def _users(state: dict, app_id: str) -> dict:
    """Each user of the app by its external id or subscription ids, with its tags."""
    return {(u["external_id"], tuple(sorted(s["id"] for s in u["subscriptions"]))): u["tags"]
            for u in state["apps"][app_id]["users"]}


def _segments(state: dict, app_id: str) -> list:
    return sorted((s["name"], s["filters"]) for s in state["apps"][app_id]["segments"])


def test_a_cohort_evaluated_on_spark_exports_as_one_evaluated_on_duckdb(on_spark, sample_lake, sample_store_file,
                                                                       tmp_path):
    from toolkit.emulator import Emulator
    from toolkit.export import settings

    stores = {kind: tmp_path / f"{kind}.duckdb" for kind in ("duckdb", "spark")}
    with Emulator(user_rate_limit=0) as emu:
        apps = {}
        for kind, path in stores.items():
            shutil.copy(sample_store_file, path)
            with Store(path) as store:
                apps[kind] = emu.add_app()
                emu.add_users(apps[kind].app_id, seed_users(store))
        records = {}
        for kind, path in stores.items():
            with Store(path) as store:
                chosen = settings(store, "Tech fans worth a call", mode="dynamic", app_id=apps[kind].app_id,
                                  base_url=emu.url, now=NOW)
                records[kind] = sync.export_cohort(store, chosen, _credentials(apps[kind]),
                                                   evaluator=on_spark if kind == "spark" else None).to_dict()
        state = emu.state
    for kind in records:
        assert records[kind]["status"] == "ok", records[kind]
    counts = ("members", "exportable", "added", "removed", "unchanged", "not_in_onesignal", "failed")
    assert {k: records["spark"][k] for k in counts} == {k: records["duckdb"][k] for k in counts}
    assert records["spark"]["added"] > 0
    assert _users(state, apps["spark"].app_id) == _users(state, apps["duckdb"].app_id)
    assert _segments(state, apps["spark"].app_id) == _segments(state, apps["duckdb"].app_id)


def _credentials(app):
    from toolkit.onesignal import Credentials

    return Credentials(app.app_id, app.api_key)


def test_the_commands_run_on_spark(spark, sample_lake, sample_store_copy):
    preview = toolkit("cohorts", "preview", "VIP support list", "--db", sample_store_copy, "--engine", "spark",
                      "--lake", sample_lake, "--as-of", "2026-10-31", "--json")
    on_store = toolkit("cohorts", "preview", "VIP support list", "--db", sample_store_copy, "--as-of", "2026-10-31",
                       "--json")
    assert preview.returncode == 0, preview.stderr
    import json

    assert json.loads(preview.stdout)["members"] == json.loads(on_store.stdout)["members"]
    months = toolkit("mtu", "--db", sample_store_copy, "--engine", "spark", "--lake", sample_lake, "--json")
    assert json.loads(months.stdout) == json.loads(toolkit("mtu", "--db", sample_store_copy, "--json").stdout)


def test_a_malformed_parquet_file_is_named_on_spark(spark, sample_lake, sample_store_copy, tmp_path):
    from toolkit.errors import LakeError

    copy = tmp_path / "lake"
    shutil.copytree(sample_lake, copy)
    bad = sorted((copy / "events").iterdir())[3] / "broken.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with Store(sample_store_copy) as store, engine.Evaluator(engine.choose("spark", lake=str(copy))) as ev, \
            pytest.raises(LakeError, match=f"lake {copy}: cannot read .*{bad}"):
        ev.mtu(store)          # reads every event file


def test_a_cohort_query_reads_the_kept_relations_and_broadcasts_the_identity_map(spark, sample_lake,
                                                                                 sample_store_copy):
    """The profiles' ranking and the user-id facts are computed once per engine, not again in each
    query (Spark's cache did not serve the cohort queries), and the events meet the identity map in a
    broadcast join even where Spark would guess a sort-merge join (a shuffle of all the events)."""
    from toolkit.cohort_sql import compile_cohort

    with engine.Evaluator(engine.choose("spark", lake=str(sample_lake))) as ev, Store(sample_store_copy) as store:
        ev.lake.spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")    # Spark broadcasts nothing itself
        members = compile_cohort(cohorts.get(store, "Purchasers last 30 days"), NOW, lambda _: None)
        query = matching.classify_sql(members, facts=ev.lake.facts())
        plan = ev.lake.sql(query)._jdf.queryExecution().executedPlan().toString()
    assert "Window" not in plan            # row_number() over the profiles: resolved_profiles and the facts
    assert "BroadcastHashJoin" in plan     # the events with the identity map: only its hint asks for one
