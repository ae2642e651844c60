"""The explorer, the export panel and the explorer/export/MTU notebooks over a lake (issue 17): they take the
CLI's engine choice (a parameter, else $TOOLKIT_ENGINE/$TOOLKIT_LAKE/..., as `toolkit lab --lake` sets them),
say which engine and lake they evaluate on, and show the numbers `toolkit cohorts preview --lake`,
`export --dry-run --lake` and `mtu --lake` give over the same lake.

The store here holds the sample's cohort definitions and no events: every member a panel shows comes from
the lake, so a panel that still read the store would show none."""

import json

import pytest
from cli_runner import toolkit

from helpers import NOW, SAMPLE
from toolkit import Store, cohorts, demo, engine, export, lab, report
from toolkit.emulator import App, Emulator
from toolkit.lake import home

pytest.importorskip("ipywidgets")
from toolkit import widgets  # noqa: E402  (needs ipywidgets)

VIP = "VIP support list"
CHURN = "Churn risk: active in September, silent in October"
AS_OF = NOW.isoformat()


@pytest.fixture
def definitions_only(tmp_path):
    """A store with the sample's cohorts and no data: what a lake user keeps locally."""
    path = tmp_path / "definitions.duckdb"
    with Store(path) as store:
        cohorts.save_all(store, cohorts.load_definitions(SAMPLE / "cohorts.yaml"), now=NOW)
    return path


def cli_json(*args):
    out = toolkit(*args, "--json")
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)


# -- the engine choice from parameters and the environment ---------------------------------------------

def test_a_notebook_setting_wins_over_its_environment_variable():
    env = {"TOOLKIT_ENGINE": "spark", "TOOLKIT_LAKE": "/env/lake", "TOOLKIT_SPARK_MASTER": "spark://h:7077"}
    assert engine.from_environment(environ=env) == engine.EngineChoice("spark", "/env/lake", "spark://h:7077")
    assert engine.from_environment(lake="/mine", environ={"TOOLKIT_LAKE": "/env/lake"}) == \
        engine.EngineChoice("duckdb", "/mine")
    assert engine.from_environment(environ={"TOOLKIT_LAKE": ""}) == engine.STORE     # blank: not set
    with pytest.raises(Exception, match="--lake PATH"):
        engine.from_environment(environ={"TOOLKIT_ENGINE": "spark"})
    for choice in (engine.STORE, engine.choose(lake="/l"), engine.choose("spark", "/l", remote="sc://h:15002")):
        assert engine.from_environment(environ=engine.environment(choice)) == choice


def test_lab_passes_the_engine_to_the_kernels(tmp_path):
    app = App("00000000-0000-4000-8000-000000000000", "k" * 40, "demo")
    env = lab.kernel_environment(tmp_path / "s.duckdb", app, "http://127.0.0.1:1",
                                 engine=engine.choose("spark", "/data/lake", master="local[1]"))
    assert (env["TOOLKIT_ENGINE"], env["TOOLKIT_LAKE"], env["TOOLKIT_SPARK_MASTER"]) == ("spark", "/data/lake",
                                                                                         "local[1]")
    assert "TOOLKIT_LAKE" not in lab.kernel_environment(tmp_path / "s.duckdb", app, "http://127.0.0.1:1")


def test_the_engine_line_says_where():
    assert report.engine_text() == "evaluated on DuckDB over the store"
    assert report.engine_text("duckdb", "/l") == "evaluated on DuckDB over the lake /l"
    assert report.engine_text("spark", "/l") == "evaluated on Spark (master local[2]) over the lake /l"
    assert report.engine_text("spark", "/l", remote="sc://h:1") == \
        "evaluated on Spark Connect at sc://h:1 over the lake /l"


# -- the panels ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_explorer_shows_what_the_cli_previews_over_the_lake(definitions_only, sample_lake, funnel_as_text):
    on_store = widgets.cohort_explorer(definitions_only, now=NOW)
    on_store.select(CHURN)
    assert on_store.preview.summary["members"] == 0              # the store has no events
    assert on_store.engine_line.value == "evaluated on DuckDB over the store"

    explorer = widgets.cohort_explorer(definitions_only, now=NOW, engine=engine.choose(lake=str(sample_lake)))
    assert explorer.engine_line in explorer.widget.children     # visible in the panel
    assert explorer.engine_line.value == f"evaluated on DuckDB over the lake {sample_lake}"
    for name in (VIP, CHURN):
        explorer.select(name)
        cli = cli_json("cohorts", "preview", name, "--db", definitions_only, "--lake", sample_lake, "--as-of", AS_OF)
        summary = explorer.preview.summary
        assert summary["members"] == cli["summary"]["members"] > 0, name
        assert (summary["exportable"], summary["reasons"]) == (cli["summary"]["exportable"], cli["summary"]["reasons"])
        assert explorer.size.value.startswith(f"{cli['summary']['members']:,} members, "
                                              f"{cli['summary']['exportable']:,} exportable")
        assert sorted(explorer.preview.members["distinct_id"]) == sorted(m["distinct_id"] for m in cli["members"])
    explorer.close()


def test_a_broken_lake_is_named_in_the_explorer(definitions_only, tmp_path):
    explorer = widgets.cohort_explorer(definitions_only, now=NOW, engine=engine.choose(lake=str(tmp_path / "gone")))
    assert explorer.preview is None
    assert f"lake {tmp_path / 'gone'} does not exist" in explorer.size.value


@pytest.fixture
def sample_users(sample_store_file):
    with Store(sample_store_file, read_only=True) as store:
        return demo.seed_users(store)


@pytest.mark.slow
def test_the_export_panel_previews_and_exports_over_the_lake(definitions_only, sample_lake, sample_users):
    lake = str(sample_lake)
    with Emulator(user_rate_limit=0) as emulator:
        app = emulator.add_app()
        emulator.add_users(app.app_id, sample_users)
        connection = widgets.connect_panel(definitions_only, base_url=emulator.url)
        connection.app_id.value, connection.api_key.value = app.app_id, app.api_key
        connection.connect_button.click()
        assert connection.status.value == "Connected"
        panel = widgets.export_panel(definitions_only, connection, now=NOW, engine=engine.choose(lake=lake))
        assert panel.engine_line in panel.widget.children and lake in repr(panel)
        panel.select(CHURN)
        panel.preview_button.click()
        shown = panel.last_preview
        dry = cli_json("export", CHURN, "--dry-run", "--db", definitions_only, "--lake", lake, "--as-of", AS_OF,
                       "--app-id", app.app_id, "--base-url", emulator.url)
        assert (shown.members, shown.exportable, shown.added, shown.removed, shown.unchanged) == \
            (dry["members"], dry["exportable"], dry["added"], dry["removed"], dry["unchanged"])
        assert shown.added > 0 and panel.status.value.startswith(f"Preview: add {dry['added']:,}, remove 0")

        panel.export_button.click()
        record = panel.last_record
        assert record.status == "ok", panel.status.value
        assert (record.members, record.exportable) == (dry["members"], dry["exportable"])
        tagged = [u for u, tags in emulator.user_tags(app.app_id).items() if tags]
        assert tagged and len(tagged) + record.not_in_onesignal == dry["added"]
        with Store(definitions_only, read_only=True) as store:        # the members came home
            assert home.read(store, CHURN).summary["members"] == dry["members"]
            assert export.runs(store)[0]["exportable"] == dry["exportable"]
        panel.close()


# -- the notebooks -----------------------------------------------------------------------------------

def _execute(name, out, parameters, cwd):
    from test_notebooks import execute, text_of

    return text_of(execute(name, out, parameters, cwd))


@pytest.mark.slow
def test_the_explorer_notebook_evaluates_over_the_lake_parameter(definitions_only, sample_lake, tmp_path):
    cli = cli_json("cohorts", "preview", CHURN, "--db", definitions_only, "--lake", sample_lake, "--as-of", AS_OF)
    text = _execute("explore_cohorts", tmp_path / "explore.ipynb",
                    {"store_path": str(definitions_only), "cohort": CHURN, "now": AS_OF, "lake": str(sample_lake)},
                    tmp_path)
    s = cli["summary"]
    assert f"{s['members']:,} members, {s['exportable']:,} exportable" in text and s["members"] > 0
    assert f"evaluated on DuckDB over the lake {sample_lake}" in text


@pytest.mark.slow
def test_the_mtu_notebook_counts_over_the_lake_named_by_the_environment(definitions_only, sample_lake, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("TOOLKIT_LAKE", str(sample_lake))      # as `toolkit lab --lake` passes it to the kernels
    months = cli_json("mtu", "--db", definitions_only, "--lake", sample_lake)["months"]
    assert months and cli_json("mtu", "--db", definitions_only)["months"] == []
    with Store(definitions_only, read_only=True) as store, engine.Evaluator(engine.choose(lake=str(sample_lake))) as ev:
        counted = ev.mtu(store)
    assert [m.to_dict() for m in counted] == months                 # what the CLI counts over the lake
    text = _execute("mtu_report", tmp_path / "mtu.ipynb", {"store_path": str(definitions_only)}, tmp_path)
    assert f"evaluated on DuckDB over the lake {sample_lake}" in text
    assert report.mtu_text(counted, "seed") in text


@pytest.mark.slow
def test_the_export_notebook_dry_runs_over_the_lake(definitions_only, sample_lake, tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_CREDENTIALS", str(tmp_path / "no-credentials.json"))
    monkeypatch.delenv("ONESIGNAL_API_KEY", raising=False)
    dry = cli_json("export", CHURN, "--dry-run", "--db", definitions_only, "--lake", sample_lake, "--as-of", AS_OF)
    text = _execute("export_cohort", tmp_path / "export.ipynb",
                    {"store_path": str(definitions_only), "cohort": CHURN, "now": AS_OF, "lake": str(sample_lake)},
                    tmp_path)
    assert dry["added"] > 0 and f"add {dry['added']:,}, remove 0, no-op 0" in text
    assert f"evaluated on DuckDB over the lake {sample_lake}" in text


@pytest.mark.slow
def test_the_panels_on_spark_show_what_duckdb_shows_over_the_lake(spark, definitions_only, sample_lake):
    """Spark local (conftest's session): the explorer and the export panel's Preview give the numbers the
    CLI gives over the same lake on DuckDB, and say they ran on Spark."""
    on_spark = engine.choose("spark", lake=str(sample_lake))
    explorer = widgets.cohort_explorer(definitions_only, now=NOW, engine=on_spark)
    assert explorer.engine_line.value == f"evaluated on Spark (master local[2]) over the lake {sample_lake}"
    panel = widgets.export_panel(definitions_only, now=NOW, engine=on_spark)
    for name in (CHURN, VIP):
        cli = cli_json("cohorts", "preview", name, "--db", definitions_only, "--lake", sample_lake, "--as-of", AS_OF)
        explorer.select(name)
        assert explorer.preview.summary["engine"] == "spark"
        assert sorted(explorer.preview.members["distinct_id"]) == sorted(m["distinct_id"] for m in cli["members"])
        assert explorer.preview.summary["reasons"] == cli["summary"]["reasons"]
        dry = cli_json("export", name, "--dry-run", "--db", definitions_only, "--lake", sample_lake,
                       "--as-of", AS_OF)
        panel.select(name)
        panel.preview_button.click()
        shown = panel.last_preview
        assert (shown.members, shown.exportable, shown.added) == (dry["members"], dry["exportable"], dry["added"])
    explorer.close()
    panel.close()
