"""Event properties that cohorts filter on, kept typed beside the JSON, so a filter reads a column
instead of parsing every event's ``properties`` (at 1M events, a filter on JSON cost 4x the cohort
without it: reading any row of ``properties`` decompresses and parses the column).

The registry is the table ``event_columns`` (store migration 10): one row per (property, event) pair a
cohort filtered on; each property has an id and four columns of ``event_rows``, filled for the rows of
its registered events only (other rows hold NULL there):

    ep<id>_type    json_type of the value: NULL when absent, 'NULL' for JSON null, 'VARCHAR', 'DOUBLE'...
    ep<id>_text    the value as text (json_extract_string): what string, boolean and date filters read
    ep<id>_number  that text as a number (NULL when it is not one): what number filters read
    ep<id>_list    the value when it is a JSON array: list filters cast it as the JSON path does

These are exactly the expressions the compiler applies to the extracted JSON (cohort_sql), computed
once, so answers are identical whichever path a filter takes.

Filled on demand (``ensure``: a definition needs a pair not registered yet: register it, add the
columns, backfill the rows, all in one transaction, then checkpoint it with vacuum off, as a load does,
so the backfill pays for writing its columns, not the next load's checkpoint) and at load (``fill``:
each events file's rows, in the transaction that publishes it). Loading reads the registry (data),
never the cohort compiler. A read-only store, or one at ``MAX_PROPERTIES``, leaves new pairs on the JSON path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import duckdb

from toolkit.sql import json_pointer, quote_ident
from toolkit.store import Store, connection

MAX_PROPERTIES = 64      # properties kept as columns; filters on more stay on JSON (4 columns each)
SUFFIXES = ("type", "text", "number", "list")
_VIEW = "resolved_events"


def prefix(column_id: int) -> str:
    return f"ep{column_id}"


def available(con) -> dict[tuple[str, str], str]:
    """(event, property) -> column prefix, for the pairs whose columns are filled and readable through
    ``resolved_events`` (a view redefined without them leaves every filter on JSON)."""
    rows = con.execute("SELECT event, property, id FROM event_columns").fetchall()
    if not rows:
        return {}
    exposed = {d[0] for d in con.execute(f"SELECT * FROM {_VIEW} LIMIT 0").description}
    return {(event, prop): prefix(i) for event, prop, i in rows
            if all(f"{prefix(i)}_{s}" in exposed for s in SUFFIXES)}


def ensure(store: Store, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Register and backfill the (event, property) pairs not registered yet (a writable store only),
    then return what ``available`` does. All or nothing: a failure registers and adds nothing."""
    con = connection(store)
    wanted = set(pairs)
    if not wanted:
        return {}
    known = available(con)
    missing = sorted(wanted - set(known))
    if missing and not store.read_only:
        vacuum = con.execute("SELECT current_setting('max_vacuum_tasks')").fetchone()[0]
        con.execute("SET max_vacuum_tasks = 0")
        try:
            with store.transaction():
                _register(con, missing)
            with contextlib.suppress(duckdb.Error):   # another transaction open: the close checkpoints
                con.execute("CHECKPOINT")
        except duckdb.Error:   # in the caller's transaction, or failed: nothing added, filters stay on JSON
            return known
        finally:
            con.execute("SET max_vacuum_tasks = ?", [vacuum])
        known = available(con)
    return known


def _register(con, pairs: list[tuple[str, str]]) -> None:
    ids = dict(con.execute("SELECT property, any_value(id) FROM event_columns GROUP BY property").fetchall())
    new_events: dict[str, list[str]] = {}
    for event, prop in pairs:
        if prop not in ids:
            if len(ids) >= MAX_PROPERTIES:
                continue
            ids[prop] = 1 + max(ids.values(), default=-1)
            for suffix, sql_type in zip(SUFFIXES, ("VARCHAR", "VARCHAR", "DOUBLE", "JSON"), strict=True):
                con.execute(f"ALTER TABLE event_rows ADD COLUMN {quote_ident(f'{prefix(ids[prop])}_{suffix}')} "
                            f"{sql_type}")
        con.execute("INSERT INTO event_columns VALUES (?, ?, ?)", [prop, event, ids[prop]])
        new_events.setdefault(prop, []).append(event)
    for prop, events in new_events.items():
        _update(con, ids[prop], prop, events, "true", {})


def fill(con, file_id: int) -> None:
    """Fill the registered columns for the rows of ``file_id`` (a load, in its publishing transaction)."""
    rows = con.execute("SELECT property, id, list(event ORDER BY event) FROM event_columns GROUP BY ALL").fetchall()
    for prop, column_id, events in rows:
        _update(con, column_id, prop, events, "file_id = $file_id", {"file_id": file_id})


def _update(con, column_id: int, prop: str, events: list[str], where: str, params: dict) -> None:
    """Set the property's columns from the JSON on the rows of ``events`` that ``where`` selects: the
    compiler's expressions (cohort_sql._typed and friends) on ``json_extract(properties, pointer)``."""
    value = "json_extract(properties, $pointer)"
    text = f"json_extract_string({value}, '$')"
    col = {s: quote_ident(f"{prefix(column_id)}_{s}") for s in SUFFIXES}
    con.execute(f"""
        UPDATE event_rows SET {col['type']} = json_type({value}),
                              {col['text']} = {text},
                              {col['number']} = TRY_CAST({text} AS DOUBLE),
                              {col['list']} = CASE WHEN json_type({value}) = 'ARRAY' THEN {value} END
        WHERE {where} AND event IN (SELECT unnest($events::VARCHAR[])) AND rejected IS NULL""",
                {**params, "pointer": json_pointer(prop), "events": events})
