"""How the loader talks to DuckDB: statements with only the named parameters they use, Python values
as a relation named in the SQL, and times as epoch milliseconds (what validation compares against)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import duckdb


def execute(con, sql: str, params: dict):
    """Execute with only the named parameters the statement uses (DuckDB refuses extra ones)."""
    return con.execute(sql, {k: v for k, v in params.items() if re.search(rf"\${k}\b", sql)})


SMALL_ROWS = 10_000   # up to this many rows, `registered` makes a temp table instead (no pyarrow, no pandas)


@contextmanager
def registered(con, name: str, **columns: list) -> Iterator[None]:
    """Columns of Python values readable as the relation ``name`` within the block.

    Through Arrow: 500k id pairs take 0.16 s, as a pandas frame 0.3 s, as list parameters (unnest)
    2 s. But registering Arrow makes DuckDB import pandas (0.5 s, and pyarrow 0.2 s, in a fresh
    process): a small load's few values go as list parameters into a temp table instead."""
    rows = len(next(iter(columns.values()), []))
    if 0 < rows <= SMALL_ROWS:
        select = ", ".join(f"unnest(${column}) AS {column}" for column in columns)
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT {select}", columns)
        try:
            yield
        finally:
            with contextlib.suppress(duckdb.Error):   # an aborted transaction drops it anyway
                con.execute(f"DROP TABLE IF EXISTS {name}")
        return
    import pyarrow as pa

    con.register(name, pa.table(columns))
    try:
        yield
    finally:
        con.unregister(name)


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
