"""The widget notebooks: committed clean, and they run headless under papermill against a real store
and the OneSignal emulator, with the key only in the kernel's environment and never in the output."""

import ast

import pytest

from helpers import NOW, ROOT, SAMPLE, nbformat, read_notebook
from toolkit import Store, cohorts, demo, export, load, matching
from toolkit.emulator import Emulator

pytest.importorskip("ipywidgets")
from toolkit import widgets  # noqa: E402  (needs ipywidgets)

NOTEBOOKS = ROOT / "notebooks"
CHURN = "Churn risk: active in September, silent in October"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_have_no_outputs(path):
    nb = read_notebook(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert "widgets" not in nb.metadata                  # no saved widget state either


@pytest.mark.parametrize("name", ["explore_cohorts", "export_cohort"])
def test_widget_notebooks_take_papermill_parameters_but_no_key(name):
    nb = read_notebook(NOTEBOOKS / f"{name}.ipynb")
    (parameters,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    names = {t.id for node in ast.parse(parameters.source).body if isinstance(node, ast.Assign) for t in node.targets}
    assert {"store_path", "cohort", "now"} <= names and not any("key" in n.lower() for n in names)


@pytest.fixture
def fresh_sample_file(tmp_path):
    path = tmp_path / "s.duckdb"
    with Store(path) as store:
        load(store, [SAMPLE], now=NOW)
        cohorts.save_all(store, cohorts.load_definitions(SAMPLE / "cohorts.yaml"))
    return path


@pytest.fixture
def unlimited_emulator():
    with Emulator(user_rate_limit=0) as emu:
        yield emu


@pytest.fixture
def sample_app_in_env(unlimited_emulator, fresh_sample_file, monkeypatch, tmp_path):
    with Store(fresh_sample_file) as store:
        users = demo.seed_users(store)
    app = unlimited_emulator.add_app()
    unlimited_emulator.add_users(app.app_id, users)
    # The kernel inherits this process's environment: the only way the key reaches the notebook.
    monkeypatch.setenv("ONESIGNAL_APP_ID", app.app_id)
    monkeypatch.setenv("ONESIGNAL_API_KEY", app.api_key)
    monkeypatch.setenv("TOOLKIT_CREDENTIALS", str(tmp_path / "no-credentials.json"))
    return app


def execute(name: str, out, parameters: dict, cwd):
    import papermill
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out), parameters=parameters,
                               kernel_name="python3", cwd=str(cwd), progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    return nb


def text_of(nb) -> str:
    return "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                     for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_explore_notebook_prints_the_cohorts_matchability(fresh_sample_file, sample_app_in_env, tmp_path):
    with Store(fresh_sample_file, read_only=True) as store:
        summary = matching.preview(store, CHURN, now=NOW).summary
    out = tmp_path / "explore.ipynb"
    nb = execute("explore_cohorts", out, {"store_path": str(fresh_sample_file), "cohort": CHURN.swapcase(),   # any case
                                          "now": NOW.isoformat()}, tmp_path)
    text = text_of(nb)
    assert f"{summary['members']:,} members, {summary['exportable']:,} exportable" in text
    for reason, count in summary["reasons"].items():
        assert (f"  {reason}: {count:,}" in text) == (count > 0)
    assert "funnel: " + " -> ".join(f"{s} {n:,}" for s, n in widgets.funnel(summary)) in text
    assert sample_app_in_env.api_key not in out.read_text()


@pytest.mark.slow
def test_export_notebook_connects_from_the_environment_and_dry_runs(fresh_sample_file, unlimited_emulator,
                                                                    sample_app_in_env, tmp_path):
    with Store(fresh_sample_file, read_only=True) as store:
        exportable = matching.preview(store, CHURN, now=NOW).summary["exportable"]
    out = tmp_path / "export.ipynb"
    nb = execute("export_cohort", out, {"store_path": str(fresh_sample_file), "base_url": unlimited_emulator.url,
                                        "cohort": CHURN, "now": NOW.isoformat()}, tmp_path)
    text = text_of(nb)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.output_type == "stream")
    assert "status='Connected'" in text and "Connected" not in printed   # one live status: a print goes stale
    assert f"{CHURN}: {exportable:,} exportable" in text
    assert f"add {exportable:,}, remove 0, no-op 0" in text and "removal guard: passes" in text
    assert sample_app_in_env.api_key not in out.read_text()
    with Store(fresh_sample_file, read_only=True) as store:
        assert export.list_exports(store) == [] and export.runs(store) == []    # a dry run registers nothing
        assert store.con.execute("SELECT status FROM connections").fetchall() == [("connected",)]
    assert not any(tags for tags in unlimited_emulator.user_tags(sample_app_in_env.app_id).values())  # nothing was sent


@pytest.mark.slow
def test_the_cli_dry_run_the_panel_and_the_notebook_show_what_preview_export_says(fresh_sample_file, unlimited_emulator,
                                                                                  sample_app_in_env,
                                                                                   tmp_path, capsys):
    """One store, one cohort with members to add, to remove and unchanged since its last export: the
    CLI's dry run (text and JSON), the export panel's Preview and the export notebook's dry run all show
    export.preview_export's numbers, samples and guard verdict, and none of them writes."""
    import html
    import json
    from datetime import timedelta

    from toolkit import cli, report, sync
    from toolkit.onesignal import Credentials

    cohort = "New sign-ups"                   # the last 30 days: twenty days on, some left and some joined
    with Store(fresh_sample_file) as store:
        earlier = export.settings(store, cohort, mode="once", app_id=sample_app_in_env.app_id,
                                  base_url=unlimited_emulator.url, now=NOW - timedelta(days=20))
        assert sync.export_cohort(store, earlier, Credentials(sample_app_in_env.app_id,
                                                              sample_app_in_env.api_key)).status == "ok"
        runs_before = export.runs(store)
    with Store(fresh_sample_file, read_only=True) as store:
        expected = export.preview_export(store, cohort, now=NOW)
    counts = (expected.added, expected.removed, expected.unchanged)
    assert all(counts) and expected.exportable == expected.added + expected.unchanged
    line = f"add {counts[0]:,}, remove {counts[1]:,}, no-op {counts[2]:,}"

    exit_code = 0 if expected.verdict.ok else 1
    cli_args = ["export", cohort, "--dry-run", "--db", str(fresh_sample_file), "--as-of", NOW.isoformat()]
    assert cli.main([*cli_args, "--json"]) == exit_code
    shown = json.loads(capsys.readouterr().out)
    assert (shown["added"], shown["removed"], shown["unchanged"]) == counts
    assert (shown["members"], shown["exportable"], shown["guard"]) == (expected.members, expected.exportable,
                                                                        expected.verdict.reason)
    assert [s["distinct_id"] for s in shown["samples"]["remove"]] == [s.distinct_id for s in expected.samples["remove"]]
    assert cli.main(cli_args) == exit_code
    text = capsys.readouterr().out
    assert text.strip() == report.dry_run_text(expected)
    assert f"added {counts[0]:,}, removed {counts[1]:,}, unchanged {counts[2]:,}" in text

    panel = widgets.export_panel(fresh_sample_file, now=NOW)
    panel.cohort.value = cohort
    panel.preview_button.click()
    assert panel.last_preview == expected
    assert f"Preview: {line};" in panel.status.value
    assert html.escape(report.export_preview_text(expected)) in panel.diff.value and line in panel.diff.value

    nb = execute("export_cohort", tmp_path / "export.ipynb", {"store_path": str(fresh_sample_file),
                                                              "base_url": unlimited_emulator.url,
                                                              "cohort": cohort, "now": NOW.isoformat()}, tmp_path)
    assert report.export_preview_text(expected) in text_of(nb) and line in text_of(nb)

    with Store(fresh_sample_file, read_only=True) as store:
        assert export.runs(store) == runs_before                  # previews record nothing


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_papermill_reads_every_parameter_and_its_help(path, caplog):
    """A parameter line papermill cannot parse is left out of `papermill --help-notebook` and warned about
    in every scheduled run's output (the sync notebook's `master` line did, for an `=` in its comment)."""
    import papermill

    with caplog.at_level("WARNING", logger="papermill"):
        parameters = papermill.inspect_notebook(str(path))
    assert not [r.getMessage() for r in caplog.records if r.name.startswith("papermill")]
    assert all(p["help"] for p in parameters.values()), [n for n, p in parameters.items() if not p["help"]]
