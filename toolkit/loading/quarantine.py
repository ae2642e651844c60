"""The quarantine: rows a load refused, each with its file, line and reason, and the scratch tables
in which DuckDB's readers leave the lines they could not decode or split."""

from __future__ import annotations

from collections.abc import Sequence

from toolkit.loading import readers
from toolkit.loading.execute import registered
from toolkit.loading.sources import Source

REJECTS = "_load_rejects"   # temp tables {REJECTS}, {REJECTS}_scan (the CSV reader's), {REJECTS}_lines


SCRATCH = (REJECTS, f"{REJECTS}_scan", f"{REJECTS}_lines", "_records")


def drop_scratch(con) -> None:
    """Drop what an earlier file's reading left. A DROP each: listing the temp tables (duckdb_tables())
    took 12-15 ms at 1M-10M events, as it sizes every table of the store; four drops take ~2 ms."""
    for table in SCRATCH:
        con.execute(f"DROP TABLE IF EXISTS temp.{table}")


def rejected_line_rows(con) -> str | None:
    """SQL for the lines the reader rejected (`readers.rejected_lines`), or None if it rejected none.
    Asked of information_schema, not duckdb_tables(): that sizes every table, and the first time a
    process asks, it reads their sizes from disk (12 ms at 10M events, against ~3 ms)."""
    exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_catalog = 'temp' "
                         "AND table_name = ?", [REJECTS]).fetchone()[0]
    if not exists:
        return None
    return readers.rejected_lines(REJECTS)


def from_table(con, table: str, source: Source, file_id: int,
               extra: Sequence[tuple[int, str, str]] = ()) -> int:
    """Quarantine the rows of ``table`` that have a reason, the lines the reader rejected, and
    ``extra`` (line, reason, raw) rows found in Python; return how many rows of ``table`` went."""
    path = str(source.path)
    refused, = con.execute(f"INSERT INTO quarantine SELECT ?, ?, line, reason, raw FROM {table} "
                           "WHERE reason IS NOT NULL", [file_id, path]).fetchone()
    rejects = rejected_line_rows(con)
    if rejects:
        con.execute(f"INSERT INTO quarantine SELECT ?, ?, record, reason, raw FROM ({rejects})", [file_id, path])
    if extra:
        line, reason, raw = (list(column) for column in zip(*extra, strict=True))
        with registered(con, "_found_bad", line=line, reason=reason, raw=raw):
            con.execute("INSERT INTO quarantine SELECT ?, ?, line, reason, raw FROM _found_bad", [file_id, path])
    return refused


def count(con, file_id: int) -> int:
    return con.execute("SELECT count(*) FROM quarantine WHERE file_id = ?", [file_id]).fetchone()[0]


def strict_message(con, file_id: int, count: int) -> str:
    rows = con.execute("SELECT line, reason FROM quarantine WHERE file_id = ? ORDER BY line LIMIT 5",
                       [file_id]).fetchall()
    listed = "; ".join(f"line {line}: {reason}" for line, reason in rows)
    return f"refused under --strict: {count} bad row(s), nothing loaded from this file ({listed})"
