"""Scheduled sync: run notebooks/sync.ipynb with papermill, once or every N minutes, one run at a time.

Each run writes its executed notebook under the runs folder, named by its UTC start time (cells,
outputs, errors, timings), and beside it a run record (JSON): the verdict (ok, partial, failed), per
cohort its status and counts, the load and the MTU count; and the kernel's own stderr (`.kernel.log`).
The verdict gives the exit code. A lock file keeps runs from overlapping, across processes too. An
overdue run (the previous one took longer than the interval) starts once, not once per missed slot.
Each run's outcome is logged and the schedule goes on; Ctrl-C or SIGTERM stops it between runs, or
interrupts the run in progress.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from toolkit.errors import SetupError, StoreError, SyncBusy, UsageError
from toolkit.resources import SYNC_NOTEBOOK
from toolkit.waiting import set_from_signal_handler, wait_until

DEFAULT_EVERY = timedelta(minutes=15)
log = logging.getLogger("toolkit.schedule")


@dataclass(frozen=True)
class SyncRun:
    notebook: Path          # the executed copy
    started: datetime
    ended: datetime
    status: str             # ok | partial | failed (see EXIT_CODES)
    error: str = ""         # why not ok: the record's summary, or the notebook's error
    record: Path | None = None      # the run record (JSON) beside the executed notebook
    alerts_not_delivered: tuple[str, ...] = ()     # alerts this run raised that no channel took, and why

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# Exit codes of `toolkit sync`, `export` and `schedule`, for cron and Airflow (README "Exit codes").
# busy: `toolkit sync` found another sync running and did nothing (not a failure, but nothing ran).
EXIT_CODES = {"ok": 0, "failed": 1, "usage": 2, "partial": 3, "busy": 4}


def exit_code(statuses: list[str]) -> int:
    """One exit code for several runs: 0 all ok (or none), 1 all failed, else 3 (some failed)."""
    if all(s == "ok" for s in statuses):
        return EXIT_CODES["ok"]
    return EXIT_CODES["failed"] if all(s == "failed" for s in statuses) else EXIT_CODES["partial"]


def wait_for_store(store_path: str | Path) -> None:
    """Wait here, where a terminal shows it, while another process holds the store. A store that stays
    busy or cannot be opened is left to the notebook: it meets the same error and its run record says so."""
    from toolkit.store import Store

    try:
        Store(store_path).close()
    except StoreError:
        pass


def parse_every(text: str) -> timedelta:
    """'15m', '90s', '1h' -> timedelta (at least one second)."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        amount, unit = float(text[:-1]), units[text[-1]]
    except (ValueError, KeyError, IndexError):
        raise UsageError(f'--every "{text}": expected a number followed by s, m or h, e.g. 15m') from None
    if amount * unit < 1:
        raise UsageError(f'--every "{text}": must be at least 1s')
    return timedelta(seconds=amount * unit)


def next_due(due: datetime, finished: datetime, every: timedelta) -> datetime:
    """When the next run starts: one interval after the previous slot; if that moment has already
    passed (an overdue run), right away, once, and the schedule restarts from then."""
    following = due + every
    return following if following > finished else finished


_held = threading.local()      # the runs folders whose lock this thread holds


@contextmanager
def sync_lock(runs_dir: Path) -> Iterator[None]:
    """Hold the runs folder's lock for one run, or raise SyncBusy at once, naming the process that holds
    it. Re-entrant in a thread: ``toolkit sync`` takes it before waiting for the store, then run_once."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / ".sync.lock"
    held: set[str] = _held.__dict__.setdefault("dirs", set())
    key = str(path.resolve())
    if key in held:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)     # not truncated: it names the holder
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise SyncBusy("another sync is running" + (f" (process {holder})" if holder.isdigit() else "")
                           + f": this one did nothing; the running sync exports what is due (lock {path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
    finally:
        os.close(fd)                                       # releases the flock


def run_once(runs_dir: Path, parameters: dict, notebook: Path = SYNC_NOTEBOOK,
             clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> SyncRun:
    """Execute the sync notebook once under the lock; a failing notebook is a failed run, not an error.
    The notebook writes its run record (per cohort, load, MTU) beside the executed copy; when it could
    not (it failed before its last cell), the record is written here, as a failed run. The kernel
    starts in the caller's working directory; the parameters carry absolute paths."""
    papermill = notebook_runner()

    with sync_lock(runs_dir):
        _record_a_killed_run(runs_dir)
        started = clock()
        output = runs_dir / f"sync-{started:%Y%m%dT%H%M%S%fZ}.ipynb"
        record = output.with_suffix(".json")
        log.info("sync started: %s", output)
        notebook_error = ""
        kernel_log = output.with_suffix(".kernel.log")
        try:
            papermill.execute_notebook(str(notebook), str(output), parameters={**parameters, "run_record": str(record)},
                                       kernel_name="python3", progress_bar=False,
                                       kernel_manager_class=_kernel_logged_to(kernel_log))
        except papermill.PapermillExecutionError as exc:
            notebook_error = f"the sync notebook failed: {exc.evalue or exc.ename}"
        data = _read_record(record)
        if data is None and notebook_error:
            data = {"status": "failed", "summary": notebook_error}
            write_record(record, data)
        status = data.get("status", "failed") if data else "ok"
        error = "" if status == "ok" or not data else data.get("summary") or notebook_error
        undelivered = tuple(((data or {}).get("alerts") or {}).get("not_delivered") or ())
        run = SyncRun(output, started, clock(), status, error, record if data else None, undelivered)
        for problem in undelivered:
            log.warning("alert not delivered: %s", problem)
        log.info("sync %s in %.1fs: %s; executed notebook %s", run.status if run.ok else run.status.upper(),
                 (run.ended - run.started).total_seconds(), run.error or "all cohorts ok", output)
        return run


KILLED = ("this sync stopped before it could write its record (killed, or the machine stopped): its load was "
          "rolled back, its exports keep what they sent, and the next sync ran them again")


def _record_a_killed_run(runs_dir: Path) -> None:
    """The latest executed notebook without a record beside it is a run that died (a failing notebook
    gets its record from run_once): give it one, so no run is left without a verdict. Runs never
    overlap, so only the latest can be such a run."""
    latest = max(runs_dir.glob("sync-*.ipynb"), default=None)
    if latest is not None and not latest.with_suffix(".json").exists():
        write_record(latest.with_suffix(".json"), {"status": "failed", "interrupted": True, "summary": KILLED})
        log.warning("the previous sync (%s) did not finish: %s", latest, KILLED)


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"status": "failed", "summary": f"the run record {path} cannot be read: {exc}"}


def write_record(path: Path, data: dict) -> None:
    """Write a run record as JSON through a temporary file and a rename: never half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(data, indent=2, default=str, ensure_ascii=False), encoding="utf-8")
    os.replace(temp, path)


def _kernel_logged_to(path: Path) -> type:
    """A kernel manager for papermill whose kernel writes its own stderr to ``path``, beside the executed
    notebook, not to the terminal or the log of the sync: the kernel's warning at start (every run) and, at
    times, a traceback as it shuts down, none of them the sync's words. What the cells print stays in the
    notebook."""
    from jupyter_client.manager import AsyncKernelManager

    class KernelLogged(AsyncKernelManager):
        async def start_kernel(self, **options):   # type: ignore[override]  # (the sync base class says None)
            with open(path, "ab") as log:       # the kernel keeps its own descriptor
                return await super().start_kernel(stderr=log, **options)

    return KernelLogged


def notebook_runner():
    """papermill, or a clear error when the notebooks extra is not installed."""
    try:
        import papermill
    except ImportError:
        raise SetupError("running the sync notebook needs the notebooks extra: "
                           "pip install 'toolkit[notebooks]'") from None
    return papermill


def schedule(runs_dir: Path, parameters: dict, every: timedelta = DEFAULT_EVERY, *,
             notebook: Path = SYNC_NOTEBOOK, max_runs: int | None = None,
             stop: threading.Event | None = None,
             clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> list[SyncRun]:
    """Run the sync every ``every`` until stopped (SIGINT/SIGTERM, ``stop`` set, or ``max_runs``)."""
    stop = stop or threading.Event()
    restore = _stop_on_signals(stop)
    runs: list[SyncRun] = []
    try:
        due = clock()
        while not stop.is_set() and (max_runs is None or len(runs) < max_runs):
            try:
                runs.append(run_once(runs_dir, parameters, notebook, clock))
            except SyncBusy as exc:
                log.warning("skipped: %s", exc)
            due = next_due(due, clock(), every)
            if max_runs is not None and len(runs) >= max_runs:
                break
            wait_until(stop.wait, max(0.0, (due - clock()).total_seconds()))   # in slices: SIGTERM is seen
    finally:
        restore()
    return runs


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """SIGTERM and SIGINT set ``stop``: the run in progress ends (a Ctrl-C in a terminal also reaches
    the notebook's kernel and interrupts it), then the schedule stops. Signal handlers can only be
    set from the main thread; elsewhere this is a no-op and ``stop`` is the way to end it."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        log.info("stopping on %s", signal.Signals(signum).name)
        set_from_signal_handler(stop)
        signal.signal(signal.SIGINT, signal.default_int_handler)   # a second Ctrl-C stops at once

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)
    return restore
