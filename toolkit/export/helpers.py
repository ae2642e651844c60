"""The export package's small helpers: timestamps as the store keeps them, and running a coroutine from anywhere."""

from __future__ import annotations

import asyncio
import concurrent.futures
from datetime import UTC, datetime

from toolkit.sql import to_utc_naive


def _run_async(coroutine):
    """asyncio.run, also from where a loop already runs (Jupyter, papermill): then in a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        running = False
    else:
        running = True
    if not running:          # not inside the except block: errors of the run must not chain to it
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _naive(moment: datetime | None) -> datetime:
    """UTC without tzinfo, as the store keeps timestamps."""
    return to_utc_naive(moment or datetime.now(UTC))
