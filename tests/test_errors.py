"""One error hierarchy: every error class lives in toolkit/errors.py under ToolkitError, user input raises
a subclass of it (never a bare ValueError or ToolkitError), and the command turns each into its words and
its documented exit code in one place (cli.main)."""

import ast
import inspect
import json
import threading

import pytest

from helpers import ROOT, toolkit_sources
from toolkit import Store, cli, errors, mtu, report, schedule
from toolkit.emulator.limits import Faults
from toolkit.errors import (
    CohortError,
    CredentialsError,
    ExportError,
    InvalidCredentials,
    OneSignalError,
    SetupError,
    SyncBusy,
    ToolkitError,
    UsageError,
)
from toolkit.onesignal import REDACTOR, Credentials


def test_every_error_class_is_defined_in_errors_and_documented():
    elsewhere = [f"{path.relative_to(ROOT)}: {node.name}" for path, tree in toolkit_sources().items()
                 if path.name != "errors.py" for node in ast.walk(tree)
                 if isinstance(node, ast.ClassDef) and (node.name.endswith(("Error", "Busy", "Failed"))
                                                        or any(getattr(b, "id", "").endswith("Error")
                                                               for b in node.bases))]
    assert elsewhere == []
    classes = [c for c in vars(errors).values() if inspect.isclass(c) and issubclass(c, Exception)]
    assert len(classes) > 20 and all(issubclass(c, ToolkitError) for c in classes)
    for c in classes:
        assert c.__module__ == "toolkit.errors" and (c.__doc__ or "").strip(), c


def test_the_old_homes_still_resolve():
    from toolkit import cohort_model, credentials, export, matching, onesignal, sync
    from toolkit.emulator import state

    assert (export.ExportError, credentials.CredentialsError, sync.SyncFailed, state.EmulatorError,
            cohort_model.DefinitionError, matching.MatchingError, onesignal.AuthError, schedule.SyncBusy) == (
        errors.ExportError, errors.CredentialsError, errors.SyncFailed, errors.EmulatorError,
        errors.DefinitionError, errors.MatchingError, errors.AuthError, errors.SyncBusy)


def test_nothing_raises_a_bare_toolkit_error():
    bare = [f"{path.relative_to(ROOT)}:{node.lineno}" for path, tree in toolkit_sources().items()
            for node in ast.walk(tree) if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
            and getattr(node.exc.func, "id", "") == "ToolkitError"]
    assert bare == []


def test_the_special_ones_keep_their_shape():
    assert issubclass(InvalidCredentials, CredentialsError) and issubclass(InvalidCredentials, ValueError)
    with pytest.raises(InvalidCredentials):
        Credentials("app", "two\nlines-of-key")
    assert str(errors.LoadError("a.jsonl", "no such file")) == "a.jsonl: no such file"
    REDACTOR.add("zq7xk3wv9bj2m4vj8tpq2rsb")
    error = errors.AuthError("answered 401 to zq7xk3wv9bj2m4vj8tpq2rsb", status=401, messages=["no"])
    assert (error.status, error.messages) == (401, ["no"]) and "zq7xk3wv9bj2" not in str(error)
    assert str(error).endswith("and that it belongs to this app.")     # the class's hint
    assert issubclass(errors.PlanRefused, errors.BadRequest) and issubclass(errors.BadRequest, OneSignalError)


# -- each kind of user input raises a subclass ----------------------------------------------------------

def test_a_bad_month_or_rule_set_is_a_usage_error(new_store, tmp_path):
    with Store(new_store(tmp_path / "s.duckdb")) as store:
        for month, rules in (("2026-13", "seed"), (None, "nope")):
            with pytest.raises(UsageError) as bad:
                mtu.report(store, month, rules)
            assert isinstance(bad.value, ValueError) and cli.exit_status(bad.value) == 2


def test_a_bad_every_is_a_usage_error_and_exits_2(tmp_path, capsys):
    with pytest.raises(UsageError, match='--every "5x"'):
        schedule.parse_every("5x")
    assert cli.main(["schedule", "--db", str(tmp_path / "s.duckdb"), "--runs-dir", str(tmp_path / "runs"),
                     "--every", "0.5s"]) == 2
    assert capsys.readouterr().err == 'error: --every "0.5s": must be at least 1s\n'


def test_bad_emulator_fault_options_are_usage_errors():
    for args in ((1.5,), (0.6, 0.6)):
        with pytest.raises(UsageError):
            Faults(*args)
    with pytest.raises(UsageError, match="expected one of"):
        Faults().inject("explode")


def test_lab_without_the_demo_is_a_setup_error(tmp_path, capsys):
    assert cli.main(["lab", "--workdir", str(tmp_path), "--no-browser"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the emulator's saved state ") and "run `toolkit demo --workdir" in err
    from toolkit import lab

    with pytest.raises(SetupError):
        lab.run(tmp_path, browser=False)


# -- the command: one except, the documented exit codes ----------------------------------------------

def test_exit_codes_follow_the_readme():
    assert [cli.exit_status(e) for e in (SyncBusy("x"), UsageError("x"), ExportError("x"), CohortError("x"),
                                          OneSignalError("x"), ToolkitError("x"))] == [4, 2, 1, 1, 1, 1]
    assert cli.EXIT_CODES == {"ok": 0, "failed": 1, "usage": 2, "partial": 3, "busy": 4}
    main = inspect.getsource(cli)
    assert main.count("except ToolkitError") == 1 and "except StoreError" not in main


@pytest.fixture
def another_sync(tmp_path):
    """The runs folder's lock, held by another thread (the lock is re-entrant within one thread)."""
    runs, taken, done = tmp_path / "runs", threading.Event(), threading.Event()

    def hold():
        with schedule.sync_lock(runs):
            taken.set()
            done.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(60)
    yield runs
    done.set()
    holder.join()


def test_a_busy_sync_answers_on_stdout_with_exit_4(tmp_path, another_sync, capsys):
    command = ["sync", "--db", str(tmp_path / "s.duckdb"), "--runs-dir", str(another_sync)]
    assert cli.main(command) == 4
    out = capsys.readouterr()
    assert out.out.startswith("sync skipped: another sync is running") and out.err == ""
    assert cli.main([*command, "--json"]) == 4
    answer = json.loads(capsys.readouterr().out)
    assert answer["status"] == "busy" and not answer["ok"] and "this one did nothing" in answer["error"]
    assert list(another_sync.glob("sync-*.ipynb")) == []


def test_error_words():
    assert report.error_text(ExportError("cohort 'x' has no export")) == "error: cohort 'x' has no export"
    assert report.error_text(SyncBusy("another sync is running")) == "sync skipped: another sync is running"
