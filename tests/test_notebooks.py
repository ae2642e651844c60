"""The widget notebooks: committed clean, and they run headless under papermill against a real store
and the OneSignal emulator, with the key only in the kernel's environment and never in the output."""

import ast

import nbformat
import pytest

from conftest import NOW, ROOT, SAMPLE
from toolkit import Store, cohorts, demo, export, load, matching
from toolkit.emulator import Emulator

pytest.importorskip("ipywidgets")
from toolkit import widgets  # noqa: E402  (needs ipywidgets)

NOTEBOOKS = ROOT / "notebooks"
CHURN = "Churn risk: active in September, silent in October"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_have_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert "widgets" not in nb.metadata                  # no saved widget state either


@pytest.mark.parametrize("name", ["explore_cohorts", "export_cohort"])
def test_widget_notebooks_take_papermill_parameters_but_no_key(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    (parameters,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    names = {t.id for node in ast.parse(parameters.source).body if isinstance(node, ast.Assign) for t in node.targets}
    assert {"store_path", "cohort", "now"} <= names and not any("key" in n.lower() for n in names)


@pytest.fixture
def sample_db(tmp_path):
    path = tmp_path / "s.duckdb"
    with Store(path) as store:
        load(store, [SAMPLE], now=NOW)
        cohorts.save_all(store, cohorts.load_definitions(SAMPLE / "cohorts.yaml"))
    return path


@pytest.fixture
def emulator():
    with Emulator(user_rate_limit=0) as emu:
        yield emu


@pytest.fixture
def app(emulator, sample_db, monkeypatch, tmp_path):
    with Store(sample_db) as store:
        users = demo.seed_users(store)
    app = emulator.add_app()
    emulator.add_users(app.app_id, users)
    # The kernel inherits this process's environment: the only way the key reaches the notebook.
    monkeypatch.setenv("ONESIGNAL_APP_ID", app.app_id)
    monkeypatch.setenv("ONESIGNAL_API_KEY", app.api_key)
    monkeypatch.setenv("TOOLKIT_CREDENTIALS", str(tmp_path / "no-credentials.json"))
    return app


def execute(name: str, out, parameters: dict, cwd):
    papermill = pytest.importorskip("papermill")
    papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out), parameters=parameters,
                               kernel_name="python3", cwd=str(cwd), progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    return nb


def text_of(nb) -> str:
    return "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                     for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_explore_notebook_prints_the_cohorts_matchability(sample_db, app, tmp_path):
    with Store(sample_db, read_only=True) as store:
        summary = matching.preview(store, CHURN, now=NOW).summary
    out = tmp_path / "explore.ipynb"
    nb = execute("explore_cohorts", out, {"store_path": str(sample_db), "cohort": CHURN.swapcase(),   # any case
                                          "now": NOW.isoformat()}, tmp_path)
    text = text_of(nb)
    assert f"{summary['members']:,} members, {summary['exportable']:,} exportable" in text
    for reason, count in summary["reasons"].items():
        assert (f"  {reason}: {count:,}" in text) == (count > 0)
    assert "funnel: " + " -> ".join(f"{s} {n:,}" for s, n in widgets.funnel(summary)) in text
    assert app.api_key not in out.read_text()


@pytest.mark.slow
def test_export_notebook_connects_from_the_environment_and_dry_runs(sample_db, emulator, app, tmp_path):
    with Store(sample_db, read_only=True) as store:
        exportable = matching.preview(store, CHURN, now=NOW).summary["exportable"]
    out = tmp_path / "export.ipynb"
    nb = execute("export_cohort", out, {"store_path": str(sample_db), "base_url": emulator.url,
                                        "cohort": CHURN, "now": NOW.isoformat()}, tmp_path)
    text = text_of(nb)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.output_type == "stream")
    assert "status='Connected'" in text and "Connected" not in printed   # one live status: a print goes stale
    assert f"{CHURN}: {exportable:,} exportable" in text
    assert f"add {exportable:,}, remove 0, no-op 0" in text and "removal guard: passes" in text
    assert app.api_key not in out.read_text()
    with Store(sample_db, read_only=True) as store:
        assert export.list_exports(store) == [] and export.runs(store) == []    # a dry run registers nothing
        assert store.con.execute("SELECT status FROM connections").fetchall() == [("connected",)]
    assert not any(tags for tags in emulator.user_tags(app.app_id).values())   # nothing was sent
