"""Words a user reads: no Python or DuckDB names, JSON type names, plain --help, cohort names found
whatever their case, and a "did you mean" when they are not found."""

import argparse
import json
import re

import pytest
from cli_runner import toolkit

from helpers import event, write_lines
from toolkit import Store, cohorts
from toolkit.cli import _parser
from toolkit.cohorts import CohortError, DefinitionError

LEAKS = re.compile(r"``|ubigint|varchar|bigint|Preview\.|cohorts\.save|DataFrame|Traceback|\bNone\b|"
                   r"[A-Z][a-z]+Error\b")


@pytest.fixture
def named(tmp_path):
    db = tmp_path / "s.duckdb"
    write_lines(tmp_path / "e.jsonl", [event("Purchase", f"u{i}", insert_id=f"i{i}") for i in range(3)])
    with Store(db) as store:
        from toolkit import load
        load(store, [tmp_path / "e.jsonl"])
        cohorts.save_all(store, [{"name": "Pro plan in the US", "rules": [{"event": "Purchase"}]},
                                 {"name": "Buyers", "rules": [{"event": "Purchase"}]},
                                 {"name": "buyers", "rules": [{"event": "Purchase", "count": 2}]}])
    return db


def test_cohort_names_match_case_insensitively_when_unambiguous(named):
    with Store(named) as store:
        assert cohorts.get(store, "PRO PLAN IN THE US").name == "Pro plan in the US"
        assert cohorts.resolve_name(store, "pro plan in the us") == "Pro plan in the US"
        assert cohorts.get(store, "buyers").rules[0].count == 2          # exact wins over case-folded
        with pytest.raises(CohortError, match='"BUYERS" matches 2 cohorts that differ only in case: '
                                              '"Buyers", "buyers"; give the exact name'):
            cohorts.get(store, "BUYERS")
        with pytest.raises(CohortError, match='no cohort "Pro plan in US" in the store; did you mean '
                                              '"Pro plan in the US"\\?') as err:
            cohorts.get(store, "Pro plan in US")
        assert not LEAKS.search(str(err.value))
        with pytest.raises(CohortError, match='no cohort "zzz" in the store; known: Buyers, Pro plan in the US, '
                                              'buyers \\(store definitions with: toolkit cohorts load FILE\\)'):
            cohorts.get(store, "zzz")


def test_the_cli_finds_a_cohort_in_any_case_and_suggests_close_names(named):
    found = toolkit("cohorts", "preview", "pro plan in THE us", "--db", named, "--rows", "1")
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith("cohort Pro plan in the US (v1)")
    assert "... 2 more not shown (--rows N shows more, --json lists them all)" in found.stdout
    missing = toolkit("cohorts", "preview", "Pro plan US", "--db", named)
    assert missing.returncode == 1 and 'did you mean "Pro plan in the US"?' in missing.stderr
    assert not LEAKS.search(found.stdout + missing.stderr)
    runs = toolkit("runs", "--cohort", "PRO plan in the us", "--db", named)
    assert runs.returncode == 0 and runs.stdout.strip() == "no export runs yet"
    typo = toolkit("runs", "--cohort", "Pro plan in te US", "--db", named)
    assert typo.returncode == 1 and 'did you mean "Pro plan in the US"?' in typo.stderr


def test_help_texts_are_plain():
    parser = _parser()
    texts = [parser.format_help()]
    todo = [parser]
    while todo:
        for action in todo.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    texts.append(sub.format_help())
                    todo.append(sub)
    assert len(texts) > 15
    for text in texts:
        assert not LEAKS.search(text), text
    out = toolkit("--help")
    assert out.returncode == 0 and "Exit status: 0 all good" in " ".join(out.stdout.split())


def test_quarantine_reasons_name_json_types(tmp_path):
    write_lines(tmp_path / "e.jsonl", [
        {"event": 5, "properties": {"time": 1_790_000_000, "distinct_id": "u"}},
        {"event": "A", "properties": {"time": "yesterday", "distinct_id": "u"}},
        {"event": "A", "properties": {"time": 1_790_000_000, "distinct_id": 2.5}},
        '"just a string"'])
    db = tmp_path / "s.duckdb"
    assert toolkit("load", tmp_path / "e.jsonl", "--db", db).returncode == 0
    reasons = [r["reason"] for r in json.loads(toolkit("quarantine", "--db", db, "--json").stdout)["rows"]]
    assert reasons == ['"event" must be a string, got number', "time must be a number, got string",
                       "distinct_id must be a string, got number", "not a JSON object (got string)"]


def test_definition_errors_show_values_as_json():
    with pytest.raises(DefinitionError) as err:
        cohorts.parse({"name": "x", "rules": [{"event": "A", "count": {"at": None}}]}, "defs.yaml")
    assert str(err.value).endswith('got {"at": null}')
    assert not LEAKS.search(str(err.value))
