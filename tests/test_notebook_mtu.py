"""notebooks/mtu_report.ipynb: committed clean, and it runs under papermill against a real store."""

import pytest

from helpers import NOW, ROOT, SAMPLE, nbformat, read_notebook
from toolkit import Store, load

NOTEBOOK = ROOT / "notebooks" / "mtu_report.ipynb"
SAMPLE_FILES = [SAMPLE / "events.jsonl", SAMPLE / "profiles.json", SAMPLE / "profile_updates.jsonl"]


def test_committed_notebook_has_no_outputs():
    nb = read_notebook(NOTEBOOK)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert any("parameters" in c.metadata.get("tags", []) for c in code)


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("rules,numbers", [("seed", ("221", "168")), ("strict", ("219", "167"))])
def test_notebook_runs_against_the_sample(tmp_path, rules, numbers):
    import papermill
    db = tmp_path / "sample.duckdb"
    with Store(db) as store:
        load(store, SAMPLE_FILES, now=NOW)    # the sample without its broken/ loader fixture
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters={"store_path": str(db), "rules": rules},
                               kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    text = _text(nb)
    assert f"rules: {rules}" in text
    for month, mtu in zip(("2026-09", "2026-10"), numbers, strict=True):
        assert any(line.split()[:2] == [month, mtu] for line in text.splitlines()), (month, mtu)
