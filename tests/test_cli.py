"""The `toolkit` command against real store files: in this process through `cli.main`, and as a real
process where the process is what is tested (the exit status a shell sees, a reader closing the pipe)."""

import contextlib
import json
import subprocess
import sys

import pytest
from cli_runner import toolkit

from helpers import ROOT, event, write_lines


def test_the_command_as_a_process_gives_the_shell_its_exit_status(tmp_path):
    """`python -m toolkit`: 0 all good, 1 failed (the message on stderr, no traceback), 2 usage."""
    def command(*args):
        return subprocess.run([sys.executable, "-m", "toolkit", *map(str, args)], capture_output=True, text=True,
                              cwd=ROOT, timeout=300)

    write_lines(tmp_path / "e.jsonl", [event("A"), event("B", "undefined")])
    db = tmp_path / "s.duckdb"
    refused = command("load", tmp_path / "e.jsonl", "--strict", "--db", db)
    assert refused.returncode == 1 and "line 2: refused distinct_id" in refused.stderr
    assert "Traceback" not in refused.stderr
    status = command("status", "--db", db, "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["events"] == 0
    usage = command("export", "Buyers", "--once", "--dynamic", "--db", db)
    assert usage.returncode == 2 and "not allowed with argument --once" in usage.stderr


@pytest.mark.slow
def test_a_load_in_a_terminal_shows_its_progress_and_a_piped_one_shows_none(tmp_path):
    """The bar is tqdm's, shown where a person watches (a terminal: a pseudo-terminal here), never
    in a pipe or a log."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    write_lines(tmp_path / "e.jsonl", [event("A"), event("B")])
    primary, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # a new pty is 0 wide
    with subprocess.Popen([sys.executable, "-m", "toolkit", "load", str(tmp_path / "e.jsonl"),
                           "--db", str(tmp_path / "s.duckdb")], stdin=terminal, stdout=terminal, stderr=terminal,
                          cwd=ROOT, env={**os.environ, "TOOLKIT_SETTLE_SECONDS": "0"}) as proc:
        os.close(terminal)
        seen = b""
        with contextlib.suppress(OSError):   # EIO once the process has closed the terminal
            while chunk := os.read(primary, 4096):
                seen += chunk
        assert proc.wait(timeout=300) == 0, seen
    os.close(primary)
    shown = seen.decode(errors="replace")
    assert "load: 100%" in shown and "e.jsonl" in shown, shown
    piped = subprocess.run([sys.executable, "-m", "toolkit", "load", str(tmp_path / "e.jsonl"),
                            "--db", str(tmp_path / "piped.duckdb")], capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "TOOLKIT_SETTLE_SECONDS": "0"}, timeout=300)
    assert piped.returncode == 0 and "load:" not in piped.stderr + piped.stdout, piped.stderr


def test_load_status_quarantine_json(tmp_path):
    db = tmp_path / "s.duckdb"
    data = tmp_path / "in"
    data.mkdir()
    write_lines(data / "e.jsonl", [event("A", insert_id="k"), event("A", insert_id="k"), "{bad"])
    out = toolkit("load", data, "--db", db, "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["events"], summary["duplicates_dropped"], summary["rows_quarantined"]) == (1, 1, 1)
    status = json.loads(toolkit("status", "--db", db, "--json").stdout)
    assert status["events"] == 1 and status["months"][0]["month"] == "2026-09"
    rows = json.loads(toolkit("quarantine", "--db", db, "--json").stdout)["rows"]
    assert [(r["line"], r["reason"]) for r in rows] == [(3, "malformed JSON")]
    text = toolkit("load", data, "--db", db).stdout
    assert "0 loaded, 1 skipped" in text


def test_db_from_environment(tmp_path):
    db = tmp_path / "env.duckdb"
    write_lines(tmp_path / "e.jsonl", [event("A")])
    assert toolkit("load", tmp_path / "e.jsonl", env={"TOOLKIT_DB": str(db)}).returncode == 0
    assert json.loads(toolkit("status", "--json", env={"TOOLKIT_DB": str(db)}).stdout)["events"] == 1


def test_strict_exits_non_zero_and_names_the_line(tmp_path):
    write_lines(tmp_path / "e.jsonl", [event("A"), event("B", "undefined")])
    out = toolkit("load", tmp_path / "e.jsonl", "--strict", "--db", tmp_path / "s.duckdb")
    assert out.returncode == 1
    assert "e.jsonl" in out.stderr and "line 2: refused distinct_id" in out.stderr


def test_missing_file_is_a_clear_error(tmp_path):
    out = toolkit("load", tmp_path / "nope.jsonl", "--db", tmp_path / "s.duckdb")
    assert out.returncode == 1 and "nope.jsonl: no such file or folder" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_demo_is_the_main_job_and_a_rerun_sends_nothing(demo_copy):
    """The demo run once for the session (conftest's demo_run, exit status 0), then again in a copy."""
    workdir, stdout = demo_copy.workdir, demo_copy.output
    assert "4,433" in stdout and "rows quarantined              23" in stdout
    assert "sync notebook ran" in stdout and "Churn risk" in stdout and "2026-10" in stdout
    executed = sorted((workdir / "runs").glob("sync-*.ipynb"))
    assert len(executed) == 1
    state = json.loads((workdir / "onesignal.json").read_text())
    (app,) = state["apps"].values()
    assert app["api_key"] not in executed[0].read_text()
    assert len(app["segments"]) == 11
    assert sum(any(k.startswith("mp_") for k in u["tags"]) for u in app["users"]) > 100
    again = toolkit("demo", "--workdir", workdir)
    assert again.returncode == 0, again.stderr
    rows = [line.split() for line in again.stdout.splitlines() if line.rstrip().endswith(" ok")]
    assert rows and all(r[-4:-1] == ["0", "0", "0"] for r in rows)     # added, removed, not in OS


def test_mtu_command(tmp_path):
    db = tmp_path / "s.duckdb"
    assert toolkit("load", ROOT / "data" / "sample", "--db", db).returncode == 0
    out = toolkit("mtu", "--db", db, "--json")
    months = {m["month"]: m for m in json.loads(out.stdout)["months"]}
    assert set(months) == {"2026-09", "2026-10"} and months["2026-10"]["mtu"] > 0
    assert "2026-09" in toolkit("mtu", "--db", db, "--month", "2026-09").stdout
    bad = toolkit("mtu", "--db", db, "--month", "2026-13")
    assert bad.returncode == 2 and "YYYY-MM" in bad.stderr


@pytest.mark.slow
def test_connect_and_export_against_the_emulator(tmp_path, sample_store_copy):
    """The done-when of the export issue, through the real command: connect, export --once and
    --dynamic; segment members equal the exportable members OneSignal has; a rerun after the data
    changed sends only the difference. The store: the sample loaded with its cohorts (a copy)."""
    from toolkit import Store, matching
    from toolkit.demo import seed_users
    from toolkit.emulator import Emulator

    db = sample_store_copy
    with Store(db) as store:
        users = seed_users(store)
        exportable = {r.onesignal_id for r in matching.preview(store, "Tech fans worth a call").exportable
                      .itertuples()}
    with Emulator(user_rate_limit=0) as emu:
        app = emu.add_app()
        emu.add_users(app.app_id, users)
        env = {"ONESIGNAL_API_KEY": app.api_key, "TOOLKIT_CREDENTIALS": str(tmp_path / "none.json")}
        common = ["--db", db, "--app-id", app.app_id, "--base-url", emu.url]
        connected = toolkit("connect", *common, env=env)
        assert connected.returncode == 0 and "Connected" in connected.stdout
        assert app.api_key not in connected.stdout + connected.stderr
        bad = toolkit("connect", *common, env={**env, "ONESIGNAL_API_KEY": "wrong-key-123456"})
        assert bad.returncode == 1 and "Not connected" in bad.stdout

        once = json.loads(toolkit("export", "Tech fans worth a call", "--once", *common, "--json", env=env).stdout)
        segment = {s["name"]: s for s in emu.state["apps"][app.app_id]["segments"]}["(Mixpanel) Tech fans worth a call"]
        in_onesignal = {u.get("external_id") or u["subscription_ids"][0] for u in users}
        members = set(segment["members"]["external_ids"])
        assert members == {x for x in exportable & in_onesignal if not _is_uuid(x)}
        assert once["added"] + once["not_in_onesignal"] == len(exportable) and once["status"] == "ok"

        dynamic = json.loads(toolkit("export", "Engaged with push", "--dynamic", *common, "--json", env=env).stdout)
        assert dynamic["mode"] == "dynamic" and dynamic["status"] == "ok"
        again = json.loads(toolkit("export", "Tech fans worth a call", *common, "--json", env=env).stdout)
        assert (again["added"], again["removed"], again["unchanged"]) == (
            0, 0, once["added"] + once["not_in_onesignal"])

        # The data changes: one exported member loses the OneSignal id; only that removal is sent.
        leaver = sorted(m for m in members)[0]
        with Store(db) as store:
            (who,) = store.con.execute("SELECT distinct_id FROM resolved_profiles "
                                       "WHERE properties ->> '$.\"$onesignal_user_id\"' = ?", [leaver]).fetchone()
        write_lines(tmp_path / "updates.jsonl", [{"$distinct_id": who, "$unset": ["$onesignal_user_id"]}])
        assert toolkit("load", tmp_path / "updates.jsonl", "--db", db).returncode == 0
        user_patches = lambda: sum(1 for r in emu.requests() if r["method"] == "PATCH" and "/users/" in r["path"])  # noqa: E731
        before = user_patches()
        third = json.loads(toolkit("export", "Tech fans worth a call", *common, "--json", env=env).stdout)
        assert (third["added"], third["removed"]) == (0, 1)
        assert user_patches() - before == 1
        runs = json.loads(toolkit("runs", "--db", db, "--json").stdout)["runs"]
        assert [r["cohort"] for r in runs][:2] == ["Tech fans worth a call", "Tech fans worth a call"]


def _is_uuid(value):
    from toolkit.loading.identity import is_uuid4

    return is_uuid4(value)


@pytest.mark.slow
def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    db = tmp_path / "s.duckdb"
    data = tmp_path / "in"
    data.mkdir()
    write_lines(data / "e.jsonl", ["{bad"] * 3000)         # a long quarantine listing
    assert toolkit("load", data, "--db", db).returncode == 0
    # `toolkit quarantine | head -1`: the reader closes the pipe after one line
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "quarantine", "--db", str(db), "--limit", "3000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
