"""Waits in short slices, so that a signal is seen while waiting.

The kernel may give a signal (Ctrl-C's SIGINT, SIGTERM) to any thread of the process, and Python runs its
handler, and raises the KeyboardInterrupt it may raise, only when the main thread next runs Python. A wait
with no timeout (or a long one) puts that off until it ends: a stopped cycle waited for a hung request's
timeout and its retry (1 whole-cycle Ctrl-C test in 5 under load), a stopped schedule slept on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

SLICE = 0.1     # seconds: how late a signal given to another thread may be seen


def wait_until(over: Callable[[float], bool], seconds: float | None = None) -> bool:
    """Call ``over(timeout)``, a wait of at most ``timeout`` seconds that says whether what it waits for
    happened (``Event.wait``, ``Lock.acquire(timeout=...)``), in slices, until it did or ``seconds`` (default:
    no end) passed; whether it did."""
    end = None if seconds is None else time.monotonic() + seconds
    while True:
        left = SLICE if end is None else min(SLICE, end - time.monotonic())
        if left <= 0:
            return False
        if over(left):
            return True


def set_from_signal_handler(event: threading.Event) -> None:
    """``event.set()`` for a signal handler. The handler runs in the main thread between two of its
    bytecodes, perhaps inside ``event.wait()`` while that holds the event's lock, which is not reentrant:
    a set there waits for ever (a SIGTERM once hung the schedule after "stopping on SIGTERM"). A thread
    of its own sets it as soon as the main thread lets go."""
    threading.Thread(target=event.set, name="set-on-signal", daemon=True).start()
