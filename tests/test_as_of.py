"""--as-of DATE on every command that evaluates cohorts: preview, export, sync, schedule."""

import json
import shutil
from datetime import UTC, datetime

import pytest
from cli_runner import toolkit

from toolkit import export
from toolkit.cli import as_of
from toolkit.store import Store

END_OF_OCTOBER = datetime(2026, 10, 31, 23, 59, 59, 999999, tzinfo=UTC)




def test_a_date_means_the_whole_day_utc_and_a_time_is_utc_unless_it_says():
    assert as_of("2026-10-31") == END_OF_OCTOBER
    assert as_of("2026-10-31T12:30") == datetime(2026, 10, 31, 12, 30, tzinfo=UTC)
    assert as_of("2026-10-31T12:30+02:00") == datetime(2026, 10, 31, 10, 30, tzinfo=UTC)


@pytest.mark.parametrize("command", [("cohorts", "preview", "New sign-ups"), ("export", "New sign-ups", "--dry-run"),
                                     ("sync",), ("schedule",)])
@pytest.mark.parametrize("bad", ["2026-13-01", "31/10/2026", "yesterday"])
def test_a_bad_date_is_refused_with_the_value_and_the_expected_form(command, bad, tmp_path):
    out = toolkit(*command, "--db", tmp_path / "s.duckdb", "--as-of", bad)
    assert out.returncode == 2
    assert f"--as-of: '{bad}' is not a date: expected YYYY-MM-DD" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "s.duckdb").exists()


def test_preview_as_of_the_samples_last_day_finds_new_sign_ups(sample_store_file):
    sample_db = sample_store_file
    out = toolkit("cohorts", "preview", "New sign-ups", "--db", sample_db, "--as-of", "2026-10-31", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)["summary"]
    assert summary["now"].startswith("2026-10-31T23:59:59") and summary["members"] > 0
    later = json.loads(toolkit("cohorts", "preview", "New sign-ups", "--db", sample_db, "--as-of", "2027-06-01",
                               "--json").stdout)["summary"]
    assert later["members"] == 0          # nobody signed up in the 30 days before June 2027


def test_export_dry_run_as_of(sample_store_file):
    out = toolkit("export", "Purchasers last 30 days", "--dry-run", "--db", sample_store_file,
                  "--as-of", "2026-10-31", "--json")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["members"] > 0 and record["exportable"] > 0


@pytest.mark.slow
def test_sync_passes_as_of_to_the_notebook(sample_store_file, tmp_path):
    sample_db = shutil.copy(sample_store_file, tmp_path / "sample.duckdb")
    with Store(sample_db) as store:
        export.register(store, "Pro plan in the US", "once", "0c7d1f4e-5b2a-4c3d-9e8f-7a6b5c4d3e21",
                        "http://127.0.0.1:9")
    runs = tmp_path / "runs"
    out = toolkit("sync", "--db", sample_db, "--cohorts", "Pro plan in the US", "--dry-run", "--as-of", "2026-10-31",
                  "--runs-dir", runs, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    executed = json.loads(next(runs.glob("sync-*.ipynb")).read_text())
    injected = next(c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", []))
    assert 'now = "2026-10-31T23:59:59.999999+00:00"' in "".join(injected["source"])
    with Store(sample_db, read_only=True) as store:
        run = export.runs(store, "Pro plan in the US", limit=1)[0]
    assert run["members"] > 0 and str(run["started_at"]).startswith("2026-10-31 23:59:59")
