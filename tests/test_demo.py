"""The first hour: `toolkit demo` into a fresh folder, every next step it prints pasted as is, and
`toolkit lab` starting JupyterLab with the store, the emulator's address and its key in the kernels'
environment."""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from cli_runner import toolkit

from helpers import ROOT, SAMPLE
from toolkit import cohorts, export
from toolkit.store import Store


def next_steps(output: str) -> list[str]:
    lines = output.split("next steps (paste as is):\n", 1)[1].splitlines()
    return [line.strip() for line in lines if line.startswith("  ") and not line.startswith("      ")]


def paste(cwd, command: str):
    return subprocess.run(shlex.split(command), capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.slow
def test_every_sample_cohort_has_members_as_of_the_samples_last_day(demo_run):
    cwd, output = demo_run.cwd, demo_run.output
    assert "cohorts evaluated as of 2026-10-31" in output
    with Store(cwd / "var" / "demo.duckdb", read_only=True) as store:
        names = {c["name"] for c in cohorts.list_cohorts(store)}
        last = {r["cohort"]: r for r in reversed(export.runs(store, limit=1000))}
    assert names == {c.name for c in cohorts.load_definitions(SAMPLE / "cohorts.yaml")}
    assert set(last) == names
    assert {name: r["status"] for name, r in last.items()} == dict.fromkeys(names, "ok")
    assert all(r["members"] > 0 and r["exportable"] > 0 for r in last.values()), last
    for name in ("New sign-ups", "Purchasers last 30 days"):
        assert last[name]["members"] > 0


@pytest.mark.slow
def test_every_printed_next_step_works_as_pasted(demo_copy):
    cwd, output = demo_copy.cwd, demo_copy.output
    steps = next_steps(output)
    assert [s for s in steps if " lab " in s] == ["{} lab --workdir var".format(steps[0].split(" quarantine")[0])]
    expected = {   # what each command must show, from the demo's store
        " quarantine ": "broken_events.jsonl:",
        " cohorts preview ": "42 members, 42 exportable",
        " export ": "added 0, removed 0",
        " mtu ": "2026-10",
    }
    run = [s for s in steps if " lab " not in s]
    assert len(run) == len(expected)
    for command in run:
        assert "--db var/demo.duckdb" in command
        out = paste(cwd, command)
        assert out.returncode == 0, f"{command}\n{out.stdout}{out.stderr}"
        want = next(text for key, text in expected.items() if key in command)
        assert want in out.stdout, f"{command}\n{out.stdout}"
    quarantined = paste(cwd, run[0]).stdout.splitlines()
    assert len(quarantined) == 23
    # The load summary's hint names the demo's store too.
    hint = next(line for line in output.splitlines() if "row(s) quarantined" in line)
    assert "quarantine --db var/demo.duckdb --file" in hint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, proc, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"toolkit lab exited ({proc.returncode}) before {what}")
        found = check()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"no {what} after {seconds}s")


def kernel_processes(proc) -> list[psutil.Process]:
    return [p for p in psutil.Process(proc.pid).children(recursive=True) if "ipykernel" in _command(p)]


def _command(process: psutil.Process) -> str:
    """Its command line, or "" for a child that ended meanwhile (JupyterLab's short-lived helpers: one
    was a zombie not yet reaped when listed, and its cmdline raised)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


@pytest.mark.slow
def test_lab_starts_the_emulator_and_gives_the_kernels_store_app_key_and_address(demo_copy):
    cwd, output = demo_copy.cwd, demo_copy.output
    db = cwd / "var" / "demo.duckdb"
    state = json.loads((cwd / "var" / "onesignal.json").read_text())
    (app_id, app), = state["apps"].items()
    with Store(db, read_only=True) as store:
        old_urls = {r[0] for r in store.con.execute("SELECT DISTINCT base_url FROM exports").fetchall()}
    port, token = free_port(), "first-hour-test"
    command = shlex.split(next(s for s in next_steps(output) if " lab " in s)) + ["--no-browser", "--port", str(port)]
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "JUPYTER_TOKEN": token})
    lab = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"token {token}"}
    try:
        def up():
            try:
                return httpx.get(f"{lab}/api/status", headers=headers).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(up, "JupyterLab answering on 127.0.0.1", proc)
        kernel = httpx.post(f"{lab}/api/kernels", headers=headers, json={"name": "python3"}).json()
        assert kernel["id"]
        kernels = wait_for(lambda: kernel_processes(proc), "kernel process", proc)
        env = kernels[0].environ()
        assert env["TOOLKIT_DB"] == str(db)
        assert env["ONESIGNAL_APP_ID"] == app_id and env["ONESIGNAL_API_KEY"] == app["api_key"]
        assert env["TOOLKIT_AS_OF"] == "2026-10-31T23:59:59.999999+00:00"      # as the demo evaluated
        base_url = env["ONESIGNAL_BASE_URL"]
        assert base_url.startswith("http://127.0.0.1:") and base_url not in old_urls
        # The emulator answers there with that key, and the demo's exports moved to it.
        r = httpx.get(f"{base_url}/apps/{app_id}/segments", headers={"Authorization": f"Key {app['api_key']}"})
        assert r.status_code == 200, r.text
        with Store(db, read_only=True) as store:
            urls = {r[0] for r in store.con.execute("SELECT DISTINCT base_url FROM exports").fetchall()}
        assert urls == {base_url}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert app["api_key"] not in out
    with pytest.raises(httpx.ConnectError):      # the emulator stopped with Lab
        httpx.get(f"{base_url}/apps/{app_id}/segments")


# -- the pieces lab relies on ------------------------------------------------------------------------

def test_a_successful_connect_moves_the_apps_exports_to_that_address(empty_file_store, running_emulator,
                                                                     emulator_app):
    from toolkit import sync
    from toolkit.onesignal import Credentials

    store, app, url = empty_file_store, emulator_app, running_emulator.url
    other = "99999999-9999-4999-8999-999999999999"
    export.register(store, "A", "dynamic", app.app_id, "http://127.0.0.1:9")      # a dead emulator
    export.register(store, "B", "once", other, "http://127.0.0.1:9")
    failed = sync.connect(store, Credentials(app.app_id, "wrong-key-123"), url)
    assert not failed["connected"]

    def urls():
        return dict(store.con.execute("SELECT cohort, base_url FROM exports ORDER BY 1").fetchall())

    assert urls() == {"A": "http://127.0.0.1:9", "B": "http://127.0.0.1:9"}
    assert sync.connect(store, Credentials(app.app_id, app.api_key), url)["connected"]
    assert urls() == {"A": url, "B": "http://127.0.0.1:9"}     # only that app's exports


def test_the_default_api_address_comes_from_the_environment(monkeypatch):
    # read on each call, not on import: this process's environment, changed, is enough (two Python
    # processes took ~1.5 s of CPU)
    from toolkit.onesignal import default_base_url

    monkeypatch.delenv("ONESIGNAL_BASE_URL", raising=False)
    assert default_base_url() == "https://api.onesignal.com"
    monkeypatch.setenv("ONESIGNAL_BASE_URL", "http://127.0.0.1:8787")
    assert default_base_url() == "http://127.0.0.1:8787"


def test_the_emulator_prints_the_key_when_it_starts_from_a_saved_state(tmp_path):
    from toolkit.emulator import Emulator

    state = tmp_path / "onesignal.json"
    with Emulator(state_file=state) as emu:
        app = emu.add_app(api_key="saved-key-12345")
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "emulator", "--port", "0", "--state", str(state)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        lines = []
        while not lines or "Ctrl-C" not in lines[-1]:
            lines.append(proc.stdout.readline())
            assert lines[-1], "the emulator exited"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert any(app.app_id in line for line in lines)
    assert any("API key" in line and "saved-key-12345" in line for line in lines), lines


def test_lab_runs_jupyterlab_on_loopback_only():
    from toolkit import lab

    command = lab.lab_command(ROOT / "notebooks", 8899, browser=False)
    assert command[:3] == [sys.executable, "-m", "jupyterlab"]
    assert "--ServerApp.ip=127.0.0.1" in command and "--no-browser" in command
    assert f"--ServerApp.root_dir={ROOT / 'notebooks'}" in command


def test_lab_without_a_demo_says_to_run_it(tmp_path):
    out = toolkit("lab", "--workdir", tmp_path / "nothing")
    assert out.returncode == 1 and "toolkit demo --workdir" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_the_export_notebook_finds_store_app_key_address_and_day_in_the_lab_environment(demo_copy, tmp_path,
                                                                                         monkeypatch):
    """export_cohort.ipynb as Lab's kernels run it: no parameters, run away from notebooks/ (so the
    store comes from TOOLKIT_DB), connected to the emulator through the environment alone."""
    import papermill

    from toolkit import lab
    from toolkit.emulator import Emulator

    cwd = demo_copy.cwd
    db = cwd / "var" / "demo.duckdb"
    with Emulator(state_file=cwd / "var" / "onesignal.json") as emulator:
        app = lab.pick_app(emulator)
        with Store(db, read_only=True) as store:
            as_of = lab.demo.end_of_day(lab.demo.last_event_day(store))
        for name, value in lab.kernel_environment(db, app, emulator.url, as_of).items():
            monkeypatch.setenv(name, value)
        out = tmp_path / "export_cohort.ipynb"
        papermill.execute_notebook(str(ROOT / "notebooks" / "export_cohort.ipynb"), str(out), kernel_name="python3",
                                   parameters={"cohort": "Engaged with push"}, cwd=str(tmp_path), progress_bar=False)
    text = "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                   for c in json.loads(out.read_text())["cells"] for o in c.get("outputs", []))
    assert "Connected" in text and "Not connected" not in text     # the connect panel's own state
    assert "42 exportable of 42 members" in text and "add 0, remove 0" in text     # in sync as of the demo's day
    assert app.api_key not in out.read_text()
