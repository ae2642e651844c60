"""The export package's small helpers: timestamps as the store keeps them, and running a coroutine from anywhere
so that Ctrl-C stops it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from datetime import UTC, datetime

from toolkit.sql import to_utc_naive
from toolkit.waiting import wait_until


def _run_async(coroutine):
    """asyncio.run, also from where a loop already runs (Jupyter, papermill): then in a thread. Either way
    Ctrl-C ends it in KeyboardInterrupt, after the coroutine's cleanup ran, even if it finished anyway."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        running = False
    else:
        running = True
    if not running:          # not inside the except block: errors of the run must not chain to it
        return _run_here(coroutine)
    return _run_in_thread(coroutine)


_cycle = threading.local()


class CycleStop:
    """A cycle's Ctrl-C, passed on to its runs: each run listening is told the moment it is set. (Each run's
    loop looked every 50 ms: sixty loops waking 1,200 times a second took the interpreter lock from the
    cycle's sends.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._listeners: list = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with self._lock:
            self._set = True
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener()

    @contextlib.contextmanager
    def listening(self, listener):
        """``listener()`` is called (from the thread that sets it) if the stop is set meanwhile, or now."""
        with self._lock:
            already = self._set
            if not already:
                self._listeners.append(listener)
        if already:
            listener()
        try:
            yield
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)


@contextlib.contextmanager
def stopped_by(stop: CycleStop):
    """A run started in this thread meanwhile ends as a Ctrl-C ends it (cancelled, its cleanup recorded,
    KeyboardInterrupt) once ``stop`` is set: a cycle's runs are threads, and a signal reaches only the main
    one (sync.run_due sets it there)."""
    _cycle.stop = stop
    try:
        yield
    finally:
        _cycle.stop = None


def _run_here(coroutine):
    """asyncio.run, whose Ctrl-C handling this repeats (the first cancels the task, so its cleanup records what
    was sent; a second raises at once), but remembering the press: asyncio.run raises KeyboardInterrupt only
    if the task ends cancelled, so a cancellation swallowed on the way (a library catching CancelledError)
    let an interrupted export finish as if nobody had pressed Ctrl-C."""
    with asyncio.Runner() as runner:
        loop = runner.get_loop()
        task = loop.create_task(coroutine)
        pressed = False

        def on_ctrl_c(signum, frame) -> None:
            nonlocal pressed
            if pressed or task.done():
                raise KeyboardInterrupt
            pressed = True
            task.cancel()
            loop.call_soon_threadsafe(lambda: None)      # wake a loop waiting in select()

        def on_cycle_stop() -> None:      # in this loop: a run of a cycle takes the cycle's Ctrl-C as its own
            nonlocal pressed
            if not (pressed or task.done()):
                pressed = True
                task.cancel()

        def cycle_stopped() -> None:      # in the thread that stopped the cycle
            with contextlib.suppress(RuntimeError):      # the loop closed: the run is over already
                loop.call_soon_threadsafe(on_cycle_stop)

        stop = getattr(_cycle, "stop", None)
        listening = stop.listening(cycle_stopped) if stop is not None else contextlib.nullcontext()
        with listening, _ctrl_c_calls(on_ctrl_c):
            try:
                result = loop.run_until_complete(task)
            except asyncio.CancelledError:
                if pressed:
                    raise KeyboardInterrupt from None
                raise
        if pressed:
            raise KeyboardInterrupt
        return result


def _run_in_thread(coroutine):
    """The coroutine on a loop in a thread of its own while this thread waits. Ctrl-C (the kernel's interrupt)
    arrives here as KeyboardInterrupt: the run's task is cancelled and its cleanup waited for, then the
    interrupt goes on. Before, the wait went on until the whole export had been sent."""
    runner = asyncio.Runner(loop_factory=asyncio.new_event_loop)     # leaves this thread's loop alone
    loop = runner.get_loop()
    task = loop.create_task(coroutine)
    outcome: dict = {}
    finished = threading.Event()     # not Thread.join: interrupted, 3.11's join can mark a running thread ended

    def run() -> None:
        try:
            with runner:
                outcome["result"] = loop.run_until_complete(task)
        except BaseException as error:   # noqa: B036 - handed to the waiting thread, which raises it
            outcome["error"] = error
        finally:
            finished.set()

    thread = threading.Thread(target=run, name="export-run")
    try:
        # Started with SIGINT blocked (the thread inherits the mask, for good), so the signal lands in this
        # thread and never inside thread.start(): a KeyboardInterrupt there left the run going, unwaited for.
        with _sigint_blocked():
            thread.start()
        wait_until(finished.wait)        # in slices: a signal the kernel gave another thread is seen soon
    except KeyboardInterrupt:
        with contextlib.suppress(RuntimeError):      # the loop closed: the run is over already
            loop.call_soon_threadsafe(task.cancel)
        if thread.is_alive():
            finished.wait()      # the run's cleanup, on the store's connection, ends first
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


@contextlib.contextmanager
def _sigint_blocked():
    """SIGINT held back from this thread meanwhile (and from threads started meanwhile, for good); one that
    arrives is delivered when this ends. Where there is no signal mask (Windows) nothing is held."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def _ctrl_c_calls(handler):
    """SIGINT calls ``handler`` meanwhile, where Python's own handler is in place (the main thread). A SIGINT
    ignored (a script's background job starts so) or handled by the host program stays as it is."""
    ours = (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    if ours:
        signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        if ours and signal.getsignal(signal.SIGINT) is handler:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _naive(moment: datetime | None) -> datetime:
    """UTC without tzinfo, as the store keeps timestamps."""
    return to_utc_naive(moment or datetime.now(UTC))
