"""The scheduler: papermill runs, the lock, the overdue rule, failures and signals."""

import json
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from helpers import ROOT, nbformat
from toolkit import schedule
from toolkit.errors import ToolkitError

T = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
M = timedelta(minutes=15)


def notebook(path, body):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    params = nbformat.v4.new_code_cell("marker = 'default'\nfail = False")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)
    return path


@pytest.mark.parametrize("due,finished,expected", [
    (T, T + timedelta(minutes=2), T + M),             # on time: the next slot
    (T, T + M, T + M),                                # finished exactly at the next slot
    (T, T + timedelta(minutes=40), T + timedelta(minutes=40)),   # overdue: once, right away
])
def test_next_due(due, finished, expected):
    assert schedule.next_due(due, finished, M) == expected


def test_parse_every():
    assert schedule.parse_every("15m") == M and schedule.parse_every("90s") == timedelta(seconds=90)
    for bad in ("15", "m", "0.1s", "10x"):
        with pytest.raises(ToolkitError, match="--every"):
            schedule.parse_every(bad)


def test_waits_are_made_in_slices_and_end_when_over_or_out_of_time():
    """``waiting.wait_until``: no single wait longer than a slice (so a signal is seen), True as soon as what
    it waits for happened, False once the time is out."""
    from toolkit import waiting

    asked: list[float] = []

    def never(timeout: float) -> bool:
        asked.append(timeout)
        threading.Event().wait(timeout)
        return False

    started = time.monotonic()
    assert waiting.wait_until(never, 0.35) is False
    assert time.monotonic() - started >= 0.35 and 0 < max(asked) <= waiting.SLICE
    calls = iter([False, False, True])
    assert waiting.wait_until(lambda timeout: next(calls)) is True
    assert waiting.wait_until(lambda timeout: True, 0) is False      # no time at all: not even one look


def test_an_event_set_on_a_signal_never_waits_for_the_lock_the_interrupted_wait_holds():
    """A signal handler runs in the main thread between two bytecodes, perhaps inside ``Event.wait`` while
    that holds the event's lock (not reentrant): ``event.set()`` there waited for ever (the schedule hung
    after logging "stopping on SIGTERM"). ``waiting.set_from_signal_handler`` returns at once and the event
    is set when the wait lets go."""
    from toolkit import waiting

    event = threading.Event()
    with event._cond:               # where the wait holds it when the signal lands
        done = threading.Thread(target=waiting.set_from_signal_handler, args=(event,), daemon=True)
        done.start()
        done.join(2)
        assert not done.is_alive() and not event.is_set()
    assert event.wait(5)


def test_lock_is_exclusive_across_processes(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from toolkit.schedule import sync_lock
        with sync_lock(Path({str(tmp_path)!r})):
            print("held", flush=True)
            time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(schedule.SyncBusy, match="another sync is running"):
            with schedule.sync_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with schedule.sync_lock(tmp_path):      # released when its holder dies
        pass


@pytest.mark.slow
def test_run_once_executes_with_parameters_and_keeps_the_notebook(tmp_path):
    nb = notebook(tmp_path / "nb.ipynb", "print('marker is', marker)\nassert not fail")
    run = schedule.run_once(tmp_path / "runs", {"marker": "hello"}, nb)
    assert run.ok and run.notebook.parent == tmp_path / "runs" and run.notebook.name.startswith("sync-")
    outputs = json.dumps(nbformat.read(run.notebook, 4).cells[-1].outputs)
    assert "marker is hello" in outputs


@pytest.mark.slow
def test_the_kernels_own_stderr_goes_to_a_log_beside_the_notebook_not_to_the_terminal(tmp_path, capfd):
    """A kernel writes warnings (and, at times, a shutdown's traceback) to its own stderr: an unattended
    sync's terminal and log show only the sync's words; the kernel's stay beside its executed notebook."""
    nb = notebook(tmp_path / "nb.ipynb", "import os\nos.write(2, b'the kernel itself\\n')\nprint('in the cell')")
    run = schedule.run_once(tmp_path / "runs", {}, nb)
    assert run.ok
    assert "the kernel itself" in run.notebook.with_suffix(".kernel.log").read_text()
    assert "the kernel itself" not in capfd.readouterr().err
    assert "in the cell" in json.dumps(nbformat.read(run.notebook, 4).cells[-1].outputs)


@pytest.mark.slow
def test_failed_runs_are_recorded_and_the_schedule_goes_on(tmp_path):
    nb = notebook(tmp_path / "nb.ipynb", "assert not fail, 'boom'")
    runs = schedule.schedule(tmp_path / "runs", {"fail": True}, timedelta(seconds=0.1), notebook=nb, max_runs=2)
    assert [r.ok for r in runs] == [False, False]
    assert "boom" in runs[0].error and len(list((tmp_path / "runs").glob("sync-*.ipynb"))) == 2


@pytest.mark.slow
def test_stop_event_ends_the_schedule_between_runs(tmp_path):
    nb = notebook(tmp_path / "nb.ipynb", "pass")
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    runs = schedule.schedule(tmp_path / "runs", {}, timedelta(hours=1), notebook=nb, stop=stop)
    assert len(runs) == 1 and runs[0].ok


@pytest.mark.slow
@pytest.mark.parametrize("elsewhere", [False, True], ids=["signal to the process", "signal to another thread"])
def test_sigterm_stops_cleanly(tmp_path, elsewhere):
    """SIGTERM between runs ends the schedule at once. The kernel may give the signal to any thread, and its
    handler runs only when the main thread runs Python: a wait of the whole interval put it off for an hour.
    ``elsewhere``: a thread of the scheduler's process gives the signal to itself."""
    nb = notebook(tmp_path / "nb.ipynb", "pass")
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import logging, signal, sys, threading, time
        from datetime import timedelta
        from pathlib import Path
        from toolkit.schedule import schedule

        def to_itself():     # a line on stdin: SIGTERM to this thread, once the main one waits for the next run
            sys.stdin.readline()
            while sys._current_frames()[threading.main_thread().ident].f_code.co_name != "wait":
                time.sleep(0.01)
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

        threading.Thread(target=to_itself, daemon=True).start()
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="log: %(message)s", force=True)
        runs = schedule(Path({str(tmp_path / 'runs')!r}), {{}}, timedelta(hours=1), notebook=Path({str(nb)!r}))
        print("runs", len(runs), flush=True)
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    said = []
    for line in proc.stdout:                  # the first run ends (the scheduler logs it), then signal
        said.append(line)
        if re.match(r"log: sync \w+ in ", line):
            break
    else:
        raise AssertionError(f"the schedule ended before its first run did: {''.join(said)}")
    if elsewhere:
        proc.stdin.write("stop\n")
        proc.stdin.flush()
    else:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "runs 1" in out, "".join(said) + out
