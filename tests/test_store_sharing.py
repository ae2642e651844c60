"""Many readers, one writer, no tracebacks: separate processes share one store file.

DuckDB lets one process open a file read-write, or many read-only, never both. Here real processes
(the CLI, papermill-executed notebooks, a Jupyter kernel with the panels displayed, and a plain
process that holds the store) use the same file: readers and writers wait for each other, say who
holds the store, and fail with a plain message past their wait."""

import os
import subprocess
import sys
import textwrap

import psutil
import pytest
from cli_runner import toolkit

from helpers import NOW, ROOT, SAMPLE, nbformat, read_notebook
from toolkit import Store, cohorts, demo, export, matching
from toolkit.emulator import Emulator
from toolkit.errors import StoreError
from toolkit.onesignal import Credentials
from toolkit.store import Holder, lock_holder

pytest.importorskip("ipywidgets")
from toolkit import widgets  # noqa: E402  (needs ipywidgets)

NOTEBOOKS = ROOT / "notebooks"
CHURN = "Churn risk: active in September, silent in October"
PRO = "Pro plan in the US"
TECH = "Tech fans worth a call"
RAW = ("Traceback", "IO Error", "IOException", "_duckdb", "DuckDB", "Could not set lock")   # never shown to a person

HOLD = textwrap.dedent("""\
    # Holds a store until a line arrives on stdin, like a notebook kernel that keeps it open.
    import sys
    from toolkit import Store
    store = Store(sys.argv[1], read_only=sys.argv[2] == "read")
    print("held", flush=True)
    sys.stdin.readline()
    store.close()
    print("released", flush=True)
    sys.stdin.readline()
    """)


@pytest.fixture
def db(sample_store_file, tmp_path):
    path = tmp_path / "shared.duckdb"
    path.write_bytes(sample_store_file.read_bytes())
    return path


@pytest.fixture
def env(tmp_path):
    """What a child process needs: this worktree's toolkit, and a generous wait (a busy machine)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "TOOLKIT_STORE_WAIT": "300",
            "TOOLKIT_CREDENTIALS": str(tmp_path / "no-credentials.json")}


class Holding:
    """A separate process holding the store (read-write unless ``mode`` is "read") until released."""

    def __init__(self, db, env, tmp_path, mode="write"):
        script = tmp_path / "hold_store.py"
        script.write_text(HOLD)
        self.proc = subprocess.Popen([sys.executable, str(script), str(db), mode], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout.readline() == "held\n"

    def release(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "released\n"

    def end(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("\n\n")
            self.proc.stdin.close()
            self.proc.wait()


@pytest.fixture
def holding(db, env, tmp_path):
    made = []

    def hold(mode="write"):
        made.append(Holding(db, env, tmp_path, mode))
        return made[-1]
    yield hold
    for h in made:
        h.end()


# -- the lock error, read --------------------------------------------------------------------------

def test_the_holder_is_read_from_duckdbs_lock_error_and_its_command_line():
    message = ('IO Error: Could not set lock on file "/x/s.duckdb": Conflicting lock is held in '
               f'/usr/bin/python3.11 (PID {os.getpid()}). See also https://duckdb.org/docs/current/connect/concurrency')
    holder = lock_holder(message)
    assert holder.pid == os.getpid()
    own = " ".join(psutil.Process().cmdline())          # from /proc, not DuckDB's executable path
    assert holder.command in (own, own[:159] + "…")     # (pytest's, or an xdist worker's)
    assert lock_holder("IO Error: Cannot open file: No such file or directory") is None
    kernel = Holder(4242, "/usr/bin/python -m ipykernel_launcher -f /run/kernel-1.json")
    assert str(kernel) == ("process 4242 (a Jupyter notebook kernel, "
                           "/usr/bin/python -m ipykernel_launcher -f /run/kernel-1.json)")


# -- waiting, across processes -------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("command,said", [
    (["cohorts", "load", SAMPLE / "cohorts.yaml"], f"{CHURN}: v1"),
    (["sync", "--runs-dir", "runs"], "sync ok"),             # the wait shows in the terminal, not in the notebook
], ids=["cohorts load", "sync"])
def test_a_writer_waits_for_the_holder_names_it_once_and_goes_on(db, env, holding, tmp_path, command, said):
    held = holding()
    writer = subprocess.Popen([sys.executable, "-m", "toolkit", *map(str, command), "--db", str(db)], env=env,
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    waiting = writer.stderr.readline()      # the writer's own wait bounds this (TOOLKIT_STORE_WAIT)
    assert waiting.startswith(f"store {db} is in use by process {held.proc.pid} (")
    assert "hold_store.py" in waiting and "waiting up to 300s" in waiting and "TOOLKIT_STORE_WAIT" in waiting
    held.release()
    out, err = writer.communicate()
    assert writer.returncode == 0, err
    assert said in out
    # said once, nothing raw (the kernel's own stderr goes to its log beside the executed notebook)
    assert "is in use by process" not in err and not any(raw in waiting + err for raw in RAW)


@pytest.mark.slow
def test_past_its_wait_a_command_fails_with_a_plain_message(db, env, holding):
    held = holding()
    for command in (["status"], ["export", CHURN, "--stop"]):       # a reader, a writer
        done = toolkit(*command, "--db", db, env={**env, "TOOLKIT_STORE_WAIT": "0.2"})
        assert done.returncode == 1
        waiting, error = done.stderr.splitlines()
        assert waiting.startswith(f"store {db} is in use by process {held.proc.pid} (")
        assert "waiting up to 0.2s" in waiting
        assert error.startswith(f"error: store {db} is in use by process {held.proc.pid} (")
        assert "hold_store.py" in error and "stayed busy for 0.2s" in error and "TOOLKIT_STORE_WAIT" in error
        assert not any(raw in done.stderr for raw in RAW)
    held.release()
    assert toolkit("status", "--db", db, env={**env, "TOOLKIT_STORE_WAIT": "0"}).returncode == 0


@pytest.mark.slow
def test_readers_share_the_store_without_waiting(db, env, holding):
    holding("read")                         # another reader (a notebook reading)
    quick = {**env, "TOOLKIT_STORE_WAIT": "0"}
    for command in (["status"], ["cohorts", "list"], ["cohorts", "preview", CHURN], ["runs"], ["quarantine"],
                    ["mtu"], ["export", CHURN, "--dry-run"]):
        done = toolkit(*command, "--db", db, env=quick)
        assert done.returncode == 0, (command, done.stderr)
    assert "members" in toolkit("cohorts", "preview", CHURN, "--db", db, env=quick).stdout


@pytest.mark.slow
def test_a_panel_says_who_holds_the_store_and_recovers(db, holding, monkeypatch):
    monkeypatch.setenv("TOOLKIT_STORE_WAIT", "0.2")
    held = holding()
    panel = widgets.export_panel(str(db), now=NOW)
    assert panel.status.value.startswith(f"store {db} is in use by process {held.proc.pid} (")
    assert "hold_store.py" in panel.status.value and "stayed busy" in panel.status.value
    assert panel.cohort.options == ()
    connection = widgets.connect_panel(str(db), base_url="http://127.0.0.1:9")
    assert not connection.connect(Credentials("some-app", "some-key"))
    assert connection.status.value.startswith(f"Not connected: store {db} is in use by process {held.proc.pid} (")
    held.release()
    panel.refresh()
    assert CHURN in panel.cohort.options and panel.cohort.value == panel.cohort.options[0]
    panel.cohort.value = CHURN
    panel.preview_button.click()
    assert panel.status.value.startswith("Preview: add ")


def test_a_store_open_for_writing_in_this_process_is_read_through_it(db):
    with Store(db) as writing:
        with Store(db, read_only=True) as reading:      # DuckDB refuses a second, differently opened one
            assert cohorts.list_cohorts(reading) == cohorts.list_cohorts(writing)
    with Store(db, read_only=True):
        with pytest.raises(StoreError, match="already open in this process"):
            Store(db)


def test_a_reader_of_a_missing_store_gets_an_empty_one(tmp_path):
    with Store(tmp_path / "new" / "s.duckdb", read_only=True) as store:
        assert cohorts.list_cohorts(store) == []


# -- the notebooks and the CLI on one store at once ------------------------------------------------------

@pytest.fixture
def unlimited_emulator():
    with Emulator(user_rate_limit=0) as emu:
        yield emu


@pytest.fixture
def app_with_due_syncs(unlimited_emulator, db, env):
    app = unlimited_emulator.add_app()
    with Store(db) as store:
        unlimited_emulator.add_users(app.app_id, demo.seed_users(store))
        for name in (PRO, TECH):                        # due dynamic syncs for `toolkit sync`
            export.register(store, name, "dynamic", app.app_id, unlimited_emulator.url)
    env.update(ONESIGNAL_APP_ID=app.app_id, ONESIGNAL_API_KEY=app.api_key)
    return app


def tagged(emulator, app, cohort) -> int:
    key = export.tag_key(cohort)
    return sum(bool(u["tags"].get(key)) for u in emulator.state["apps"][app.app_id]["users"])


def expected_tagged(db, cohort) -> int:
    """Exportable members of the cohort that the emulator knows."""
    with Store(db, read_only=True) as store:
        wanted = export.targets(matching.preview(store, cohort))
        seeded = {u.get("external_id") or u["subscription_ids"][0] for u in demo.seed_users(store)}
    return sum(t.onesignal_id in seeded for t in wanted.values())


def papermill(name, out, parameters, env):
    args = [sys.executable, "-m", "papermill", str(NOTEBOOKS / f"{name}.ipynb"), str(out), "--no-progress-bar",
            "-k", "python3"]
    for key, value in parameters.items():
        args += ["-p", key, str(value)]
    return subprocess.Popen(args, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=out.parent)


def outputs(path) -> str:
    nb = nbformat.read(path, as_version=4)
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    return "\n".join(o.get("text", "") + o.get("data", {}).get("text/plain", "")
                     for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_notebooks_read_while_sync_and_export_write(db, env, unlimited_emulator, app_with_due_syncs, tmp_path):
    with Store(db, read_only=True) as store:
        churn = matching.preview(store, CHURN).summary
    started = {
        "sync": subprocess.Popen([sys.executable, "-m", "toolkit", "sync", "--db", str(db),
                                  "--runs-dir", str(tmp_path / "runs")], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE),
        "export": subprocess.Popen([sys.executable, "-m", "toolkit", "export", CHURN, "--once", "--db", str(db),
                                    "--base-url", unlimited_emulator.url, "--app-id", app_with_due_syncs.app_id],
                                   env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE),
        "explore": papermill("explore_cohorts", tmp_path / "explore.ipynb", {"store_path": db, "cohort": CHURN}, env),
        "mtu": papermill("mtu_report", tmp_path / "mtu.ipynb", {"store_path": db}, env),
    }
    done = {name: (proc.communicate(), proc.returncode) for name, proc in started.items()}
    for name, ((out, err), code) in done.items():
        assert code == 0, (name, out, err)
        assert "Traceback" not in err, (name, err)
    assert f"{churn['members']:,} members, {churn['exportable']:,} exportable" in outputs(tmp_path / "explore.ipynb")
    assert "rules: seed" in outputs(tmp_path / "mtu.ipynb")
    for name in (CHURN, PRO, TECH):
        assert tagged(unlimited_emulator, app_with_due_syncs, name) == expected_tagged(db, name) > 0, name
    with Store(db, read_only=True) as store:
        assert {(r["cohort"], r["status"]) for r in export.runs(store)} == {(CHURN, "ok"), (PRO, "ok"), (TECH, "ok")}


# -- a live kernel with the panels displayed ----------------------------------------------------------

def notebook_code(name: str, parameters: dict) -> str:
    """A notebook's code as papermill would run it: its parameters, then ours, then the other cells."""
    nb = read_notebook(NOTEBOOKS / f"{name}.ipynb")
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    return "\n".join([code[0], *(f"{k} = {v!r}" for k, v in parameters.items()), *code[1:]])


class Kernel:
    def __init__(self, env, cwd):
        from jupyter_client.manager import start_new_kernel

        self.manager, self.client = start_new_kernel(kernel_name="python3", env=env, cwd=str(cwd),
                                                     startup_timeout=120)

    def run(self, code: str) -> str:
        shown = []

        def hook(msg):
            if msg["msg_type"] == "stream":
                shown.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                shown.append("\n".join(msg["content"]["traceback"]))
        reply = self.client.execute_interactive(code, output_hook=hook, timeout=600)
        assert reply["content"]["status"] == "ok", "".join(shown)
        return "".join(shown)

    def stop(self):
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.mark.slow
def test_with_the_panels_displayed_in_a_kernel_sync_and_export_work(db, env, unlimited_emulator, app_with_due_syncs,
                                                                    tmp_path):
    kernel = Kernel(env, tmp_path)
    try:
        kernel.run(notebook_code("export_cohort", {"store_path": str(db), "base_url": unlimited_emulator.url}))
        kernel.run(notebook_code("explore_cohorts", {"store_path": str(db), "cohort": CHURN}))
        assert kernel.run("print(connection.status.value, exporter.cohort.value is not None)") == "Connected True\n"

        sync_run = toolkit("sync", "--db", db, "--runs-dir", tmp_path / "runs", env={**env, "TOOLKIT_STORE_WAIT": "0"})
        assert sync_run.returncode == 0, sync_run.stdout + sync_run.stderr
        exported = toolkit("export", CHURN, "--once", "--db", db, "--base-url", unlimited_emulator.url,
                           env={**env, "TOOLKIT_STORE_WAIT": "0"})
        assert exported.returncode == 0, exported.stderr

        # The panels see what the others wrote, and export themselves.
        shown = kernel.run(f"exporter.refresh(); exporter.cohort.value = {CHURN!r}; exporter.preview_button.click()\n"
                           "print(exporter.status.value); print(sorted(exporter.sync_choice.options))")
        status, dynamic = shown.splitlines()
        assert status.startswith("Preview: add 0, remove 0, no-op ") and dynamic == repr(sorted([PRO, TECH]))
        kernel.run(f"exporter.cohort.value = {PRO!r}; exporter.mode.value = 'once'; exporter.export_button.click()\n"
                   "assert exporter.status.value == 'Export ok', exporter.status.value")
        assert tagged(unlimited_emulator, app_with_due_syncs, PRO) == expected_tagged(db, PRO)
        assert toolkit("status", "--db", db, env={**env, "TOOLKIT_STORE_WAIT": "0"}).returncode == 0
    finally:
        kernel.stop()


@pytest.mark.slow
def test_notebooks_default_to_the_store_in_toolkit_db(db, env, tmp_path):
    """`toolkit lab` sets $TOOLKIT_DB for the kernels: the notebooks read that store when no path is given."""
    with Store(db, read_only=True) as store:
        churn = matching.preview(store, CHURN).summary
    env = {**env, "TOOLKIT_DB": str(db)}
    started = [papermill("explore_cohorts", tmp_path / "explore.ipynb", {"cohort": CHURN}, env),
               papermill("mtu_report", tmp_path / "mtu.ipynb", {}, env)]
    for proc in started:
        out, err = proc.communicate()
        assert proc.returncode == 0, err
    assert f"{churn['members']:,} members, {churn['exportable']:,} exportable" in outputs(tmp_path / "explore.ipynb")
    assert "2026-10" in outputs(tmp_path / "mtu.ipynb")


def test_a_wait_that_is_not_a_number_is_refused_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_STORE_WAIT", "soon")
    with pytest.raises(StoreError, match=r"\$TOOLKIT_STORE_WAIT must be a number of seconds \(0 or more\), not 'soon'"):
        Store(tmp_path / "s.duckdb")
