"""`toolkit pull` in-process against the Mixpanel emulator: pulls and loads into --db, lists Mixpanel's
cohorts, and a wrong secret exits 1 with words that name what to check and never the secret."""

import json

import pytest
from mixpanel_fixtures import write_folder

from toolkit import cli
from toolkit.mixpanel.emulator import MixpanelEmulator
from toolkit.store import Store

SECRET = "cli-test-secret-5e7a9b"


@pytest.fixture
def emu(tmp_path, monkeypatch, mixpanel_seconds):
    with MixpanelEmulator(write_folder(tmp_path / "mp"), project_id="4242", secret=SECRET, **mixpanel_seconds) as e:
        monkeypatch.setenv("MIXPANEL_USERNAME", e.username)
        monkeypatch.setenv("MIXPANEL_SECRET", SECRET)
        monkeypatch.setenv("MIXPANEL_PROJECT_ID", "4242")
        monkeypatch.setenv("MIXPANEL_BASE_URL", e.url)
        monkeypatch.setenv("TOOLKIT_MIXPANEL_CREDENTIALS", str(tmp_path / "none.json"))
        yield e


@pytest.mark.slow
def test_pull_then_load_into_the_store(emu, tmp_path, capsys):
    db = tmp_path / "s.duckdb"
    code = cli.main(["pull", str(tmp_path / "landing"), "--from", "2026-10-01", "--to", "2026-10-04", "--profiles",
                     "--db", str(db), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and len(out["chunks"]) == 4 and out["profiles"] == 20 and out["load"]["events"] == 200
    with Store(db, read_only=True) as store:
        assert store.con.execute("SELECT count(*) FROM events").fetchone()[0] == 200
        assert store.con.execute("SELECT count(*) FROM profiles").fetchone()[0] == 20
    code = cli.main(["pull", str(tmp_path / "landing"), "--to", "2026-10-04", "--db", str(db)])
    text = capsys.readouterr().out
    assert code == 0 and "pulled through 2026-10-04" in text and "duplicates dropped" in text


def test_pull_lists_mixpanel_cohorts(emu, tmp_path, capsys):
    assert cli.main(["pull", str(tmp_path), "--cohorts"]) == 0
    text = capsys.readouterr().out
    assert "Power users" in text and "Lapsed" in text


def test_a_wrong_secret_exits_1_without_the_secret(emu, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MIXPANEL_SECRET", "a-wrong-secret-value")
    code = cli.main(["pull", str(tmp_path / "landing"), "--from", "2026-10-01", "--db", str(tmp_path / "s.duckdb")])
    err = capsys.readouterr().err
    assert code == 1 and "Unable to authenticate request" in err and "MIXPANEL_SECRET" in err
    assert "a-wrong-secret-value" not in err


def test_a_first_pull_without_from_is_a_clear_error(emu, tmp_path, capsys):
    assert cli.main(["pull", str(tmp_path / "landing"), "--no-load"]) == 1
    assert "--from" in capsys.readouterr().err


@pytest.mark.slow
def test_pull_keeps_a_mixpanel_cohort_and_refreshes_it_on_the_next_pull(emu, tmp_path, capsys):
    db, landing = str(tmp_path / "s.duckdb"), str(tmp_path / "landing")
    assert cli.main(["pull", landing, "--from", "2026-10-01", "--to", "2026-10-01", "--cohort", "11",
                     "--db", db, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(c["name"], c["members"], c["status"]) for c in out["mixpanel_cohorts"]] == [("Power users", 3, "saved")]
    emu.data.add_cohort({"id": 11, "name": "Power users", "members": ["u1", "u9"]})
    assert cli.main(["pull", landing, "--to", "2026-10-01", "--db", db]) == 0
    assert 'Mixpanel cohort 11 as "Power users": 2 members (saved, version 2)' in capsys.readouterr().out
    assert cli.main(["cohorts", "list", "--db", db, "--json"]) == 0
    assert "mixpanel:4242/cohort/11" in capsys.readouterr().out          # the summary names its source
