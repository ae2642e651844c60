"""The export package's small helpers: timestamps as the store keeps them, and running a coroutine from anywhere
so that Ctrl-C stops it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import threading
from datetime import UTC, datetime

from toolkit.sql import to_utc_naive


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

        with _ctrl_c_calls(on_ctrl_c):
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
    arrives here as KeyboardInterrupt: the run's task is cancelled and waited for, then the interrupt goes
    on. Before, the wait went on until the whole export had been sent."""
    runner = asyncio.Runner(loop_factory=asyncio.new_event_loop)     # leaves this thread's loop alone
    loop = runner.get_loop()
    task = loop.create_task(coroutine)

    def run():
        with runner:
            return loop.run_until_complete(task)

    # Leaving the pool waits for the thread: the run's cleanup, on the store's connection, ends first.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="export-run") as pool:
        try:                 # the submit inside: a Ctrl-C as the run starts lands here too, not only in the wait
            return pool.submit(run).result()
        except KeyboardInterrupt:
            with contextlib.suppress(RuntimeError):      # the loop closed: the run is over already
                loop.call_soon_threadsafe(task.cancel)
            raise


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
