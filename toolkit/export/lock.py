"""One run per cohort: a thread lock, and an flock on a file beside the store that the kernel drops when its
holder dies, so a stale "running" record never blocks, whatever process now has its pid."""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from toolkit.errors import ExportError
from toolkit.store import Store

_running: dict[tuple[str, str], threading.Lock] = {}
# The error of a run whose process died while it held the lock (what its record reads once marked).
DEAD_RUN = "its process ended before the run did (killed or crashed); the next run sends the rest"


@contextmanager
def _run_lock(store: Store, cohort: str) -> Iterator[None]:
    """One run per cohort: a thread lock within this process, and an flock on a file beside the store
    across processes. The kernel drops the flock when its holder dies, however it dies, so liveness
    never rests on a process id that may since belong to another process."""
    lock = _running.setdefault((store.path, cohort), threading.Lock())
    if not lock.acquire(blocking=False):
        raise ExportError(f"an export of cohort {cohort!r} is already running")
    try:
        if store.path == ":memory:":         # no other process can reach this store
            yield
            return
        path = _lock_path(store, cohort)
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                raise ExportError(f"an export of cohort {cohort!r} is already running"
                                  + (f" (process {holder})" if holder.isdigit() else "")) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)                     # releases the flock
    finally:
        lock.release()


def _lock_path(store: Store, cohort: str) -> Path:
    return Path(f"{store.path}.export-locks") / f"{hashlib.sha1(cohort.encode()).hexdigest()[:16]}.lock"


def _is_running(store: Store, cohort: str) -> bool:
    """Whether a run of ``cohort`` is alive: a thread of this process or any process holds its lock.
    Taking the thread lock first keeps this process from starting that run while the lock is tried;
    another process cannot start one meanwhile, as it would need the store this process has open."""
    lock = _running.setdefault((store.path, cohort), threading.Lock())
    if not lock.acquire(blocking=False):
        return True
    try:
        if store.path == ":memory:":     # no other process can reach this store
            return False
        try:
            fd = os.open(_lock_path(store, cohort), os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False
    finally:
        lock.release()
