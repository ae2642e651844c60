"""An events file: staged (its own transaction, rows invisible until the file is published), then
settled: refused rows to the quarantine, older copies of duplicate events dropped, identity links
recorded. The steps and their reasons: docs/design.md, "Loading a file"."""

from __future__ import annotations

from datetime import datetime

from toolkit.loading import derived, quarantine, readers, validation
from toolkit.loading.execute import epoch_ms, execute
from toolkit.loading.quarantine import REJECTS
from toolkit.loading.sources import Source
from toolkit.loading.summary import FileResult
from toolkit.sql import md5_key

# The dedup key as one number (store migration 9 fills it for rows loaded before): MD5 is the same in
# every DuckDB version, its hash() is not promised to be. Equal numbers are checked on the key itself.
DEDUP_KEY = md5_key("concat_ws(chr(0), {event}, {distinct_id}, {epoch_us}, {insert_id})")


def stage(con, source: Source, careful: bool, params: dict) -> None:
    """Insert every record of the file; a refused one holds only its reason (``rejected``)."""
    if careful and source.format == "jsonl":
        execute(con, readers.stage_lines(REJECTS), params)
    for lines in _ranges(con, source, careful):
        _stage_event_range(con, source, careful, params, lines)


def _ranges(con, source: Source, careful: bool) -> list:
    """The careful reader parses staged JSON Lines a few megabytes at a time (`readers.line_ranges`)."""
    return con.execute(readers.line_ranges(REJECTS)).fetchall() if careful and source.format == "jsonl" else [None]


def _stage_event_range(con, source: Source, careful: bool, params: dict, lines) -> None:
    execute(con, f"""
        INSERT INTO event_rows (event, distinct_id, time, insert_id, properties, file_id, rejected,
                                device_id, user_id, link_source, link_target, dedup_key)
        SELECT CASE WHEN reason IS NULL THEN ev_s END,
               CASE WHEN reason IS NULL THEN did_s END,
               CASE WHEN reason IS NULL THEN make_timestamp(CAST(round(time_ms) AS BIGINT) * 1000) END,
               CASE WHEN reason IS NULL THEN iid_s END,
               CASE WHEN reason IS NULL THEN props END,
               $file_id, reason,
               CASE WHEN reason IS NULL AND json_type(dev) IN ('VARCHAR', 'BIGINT', 'UBIGINT') THEN dev ->> '$' END,
               CASE WHEN reason IS NULL AND json_type(uid) IN ('VARCHAR', 'BIGINT', 'UBIGINT') THEN uid ->> '$' END,
               -- an identity event's ids, so that settling does not read `properties` (store migration 5)
               CASE WHEN reason IS NULL THEN CASE ev_s WHEN '$identify' THEN links['anon_id'] ->> '$'
                                                       WHEN '$create_alias' THEN links['alias'] ->> '$'
                                                       WHEN '$merge' THEN links['distinct_ids'] ->> '$[1]' END END,
               CASE WHEN reason IS NULL THEN CASE ev_s WHEN '$identify' THEN links['identified_id'] ->> '$'
                                                       WHEN '$create_alias' THEN did_s
                                                       WHEN '$merge' THEN links['distinct_ids'] ->> '$[0]' END END,
               CASE WHEN reason IS NULL AND iid_s IS NOT NULL
                    THEN {DEDUP_KEY.format(event="ev_s", distinct_id="did_s", insert_id="iid_s",
                                           epoch_us="CAST(round(time_ms) AS BIGINT) * 1000")} END
        FROM ({_checked_events(source, careful, numbered=False, lines=lines)})""", params)


def _checked_events(source: Source, careful: bool, numbered: bool, lines=None) -> str:
    """The file's records with ``time_ms`` and ``reason`` (NULL for a valid event)."""
    fields = readers.event_fields(source, careful, REJECTS, numbered, lines)
    time_ms = validation.time_ms_expr("tm")
    reason = validation.event_reason("ev", "props", "did", "time_ms", "tm", "iid", readers.MAX_RECORD_BYTES)
    return f"""
        WITH src AS (SELECT *, {validation.typed("ev", "did", "tm", "iid", texts=("ev", "did", "iid"),
                                                 numbers=("tm",))} FROM ({fields})),
        timed AS (SELECT *, {time_ms} AS time_ms FROM src)
        SELECT *, coalesce(doc_error, {reason}) AS reason FROM timed"""


def settle(con, source: Source, file_id: int, now: datetime, result: FileResult,
                   careful: bool) -> None:
    params = {"path": str(source.path), "file_id": file_id, **validation.parameters(epoch_ms(now))}
    refused, kept = con.execute("SELECT count(*) FILTER (WHERE rejected IS NOT NULL), "
                                "count(*) FILTER (WHERE rejected IS NULL) FROM event_rows WHERE file_id = ?",
                                [file_id]).fetchone()
    if refused:
        _quarantine_events(con, source, careful, params)
    rejects = quarantine.rejected_line_rows(con)
    if rejects:
        con.execute(f"INSERT INTO quarantine SELECT ?, ?, record, reason, raw FROM ({rejects})",
                    [file_id, str(source.path)])
    # the file's id is new: only the two steps above can have quarantined rows under it
    result.quarantined = quarantine.count(con, file_id) if refused or rejects else 0
    result.rows_read = kept + result.quarantined
    _record_times(con, file_id)
    result.duplicates = _drop_duplicates(con, file_id)
    result.rows_loaded = kept - result.duplicates
    _record_event_links(con, file_id)
    derived.refresh_identity(con, file_id)


def _quarantine_events(con, source: Source, careful: bool, params: dict) -> None:
    """Quarantine the file's refused records with their line numbers, read again (only files with a
    refused record pay for numbering), and delete their staged rows."""
    reconstructed = ("'{\"event\":' || coalesce(ev::VARCHAR, 'null') || ',\"properties\":' "
                     "|| coalesce(props::VARCHAR, 'null') || '}'")
    if source.format == "csv":   # this read records the short rows again
        quarantine.drop_scratch(con)
    for lines in _ranges(con, source, careful):
        execute(con, f"""
            INSERT INTO quarantine
            SELECT $file_id, $path, record, reason,
                   left(coalesce(raw, {reconstructed}), {validation.QUARANTINED_RAW_CHARS})
            FROM ({_checked_events(source, careful, numbered=True, lines=lines)}) WHERE reason IS NOT NULL""", params)
    if not careful and source.format == "jsonl":
        _renumber_blank_lines(con, source, params["file_id"])
    if source.format == "csv":
        _renumber_csv_rows(con, params["file_id"])
    con.execute("DELETE FROM event_rows WHERE file_id = ? AND rejected IS NOT NULL", [params["file_id"]])


def _renumber_blank_lines(con, source: Source, file_id: int) -> None:
    """read_json numbers records, skipping blank lines; the quarantine needs the file's line numbers.
    Lines too long for the line reader are records too (the size check quarantined them already)."""
    con.execute(readers.stage_lines(REJECTS), {"path": str(source.path)})
    con.execute(f"""
        UPDATE quarantine SET line = m.line
        FROM (SELECT line, row_number() OVER (ORDER BY line) AS record FROM (
                  SELECT {readers.line_of('ordinality', REJECTS)} AS line
                  FROM {REJECTS}_lines WHERE raw IS NOT NULL AND trim(raw, {readers.LINE_BLANKS}) <> ''
                  UNION ALL SELECT line FROM {REJECTS})) m
        WHERE quarantine.file_id = ? AND quarantine.line = m.record""", [file_id])
    con.execute(f"DROP TABLE IF EXISTS {REJECTS}")


def _renumber_csv_rows(con, file_id: int) -> None:
    """CSV records are numbered as read (the header is line 1); rows refused for their number of
    fields were not read, so the lines after them move down."""
    con.execute(f"""UPDATE quarantine SET line = {readers.line_of('line', REJECTS)}
                    WHERE file_id = ? AND line IS NOT NULL""", [file_id])


def _record_times(con, file_id: int) -> None:
    """The file's first and last event time (store migration 22), so that a later file's dedup reads
    only the files whose times overlap its own (`_drop_duplicates`). Its refused rows are gone by now."""
    con.execute("""INSERT INTO event_file_times SELECT $f, min(time), max(time) FROM event_rows
                   WHERE file_id = $f HAVING count(time) > 0""", {"f": file_id})


def _drop_duplicates(con, file_id: int) -> int:
    """Delete every copy but the most recent of events sharing the dedup key: the copy from the latest
    file, within a file the one Mixpanel processed last (`mp_processing_time_ms`); copies alike in
    both are told apart by their properties, so the outcome never depends on the reader's row order.

    The published files hold one copy of each key (every load deduplicated them), and the new file
    is the latest: so an earlier copy of one of its keys always loses, and goes without reading its
    properties; only copies within the new file are ranked (their properties sit in the newest row
    groups). Copies are found by the key's number (`dedup_key`, store migration 9): the new file's
    numbers are counted, the store scanned for them (one number column), and only rows sharing a number
    are checked on the key itself. Copies share their time, so the scan reads only the files whose
    first-to-last event times (migration 22) overlap the new file's: the range of their ids, which
    DuckDB's zone maps of `file_id` turn into row groups skipped unread. In a store loaded in time order,
    as Mixpanel's daily exports load, a delta's dedup reads the last days' files, not the store.
    (Before: hashing the whole store's keys took 1 s at 10M events, a semi-join on the four text columns
    2.4 s, this 0.2 s; reading the properties of 2,000 copies spread over 1M events, 1.7 s. Loading 10M
    events, counting the file's keys with their four text columns took 6.7 s, its numbers alone 1.75 s;
    finding its own copies by the text columns 4.4 s, by rowid 3.1 s, most of it reading those rows'
    properties to rank them.)"""
    # (CREATE TABLE AS answers its number of rows: no count query after it)
    keys, = con.execute("""
        CREATE OR REPLACE TEMP TABLE _new_keys AS
        SELECT dedup_key, count(*) AS copies FROM event_rows
        WHERE file_id = $f AND dedup_key IS NOT NULL GROUP BY dedup_key""", {"f": file_id}).fetchone()
    if not keys:
        con.execute("DROP TABLE _new_keys")
        return 0
    earlier = within = candidates = 0
    first, last = overlapping_files(con, file_id)
    if first is not None:
        candidates, = con.execute("""
            CREATE OR REPLACE TEMP TABLE _earlier AS
            SELECT rowid AS r, dedup_key FROM event_rows
            WHERE dedup_key IN (SELECT dedup_key FROM _new_keys) AND file_id BETWEEN $first AND $last""",
                                  {"first": first, "last": last}).fetchone()
    if candidates:
        earlier = con.execute(f"""
            DELETE FROM event_rows WHERE rowid IN (
                SELECT s.rowid FROM event_rows s SEMI JOIN (
                    SELECT event, distinct_id, time, insert_id FROM event_rows
                    WHERE rowid IN ({_rows_of_keys("SELECT dedup_key FROM _earlier")})) n
                    ON s.insert_id = n.insert_id AND s.time = n.time AND s.event = n.event
                   AND s.distinct_id = n.distinct_id
                WHERE s.rowid IN (SELECT r FROM _earlier))""", {"f": file_id}).fetchone()[0]
    if con.execute("SELECT max(copies) > 1 FROM _new_keys").fetchone()[0]:
        # rows whose number has copies; equal numbers of unequal keys rank apart, in partitions of one
        within = con.execute(f"""
            DELETE FROM event_rows WHERE rowid IN (
                SELECT rowid FROM event_rows
                WHERE rowid IN ({_rows_of_keys("SELECT dedup_key FROM _new_keys WHERE copies > 1")})
                QUALIFY row_number() OVER (
                    PARTITION BY event, distinct_id, time, insert_id
                    ORDER BY try_cast(properties ->> 'mp_processing_time_ms' AS DOUBLE) DESC NULLS LAST,
                             properties::VARCHAR DESC) > 1)""", {"f": file_id}).fetchone()[0]
    con.execute("DROP TABLE _new_keys")
    con.execute("DROP TABLE IF EXISTS _earlier")
    return earlier + within


def overlapping_files(con, file_id: int) -> tuple[int | None, int | None]:
    """The first and last id of the files before ``file_id`` whose event times overlap its own (None,
    None: none does, so none can hold an earlier copy of its events)."""
    return con.execute("""
        SELECT min(o.file_id), max(o.file_id) FROM event_file_times o JOIN event_file_times n
            ON o.first_time <= n.last_time AND o.last_time >= n.first_time
        WHERE n.file_id = $f AND o.file_id < $f""", {"f": file_id}).fetchone()


def _rows_of_keys(numbers: str) -> str:
    """SQL for the rowids of the new file's ($f) rows whose dedup number is among ``numbers``: asked by
    rowid, DuckDB reads the text columns of those rows alone, not of the whole file."""
    return f"SELECT rowid FROM event_rows WHERE file_id = $f AND dedup_key IN ({numbers})"


def _record_event_links(con, file_id: int) -> None:
    """Links from $identify, $create_alias and $merge (their ids were taken out at staging), and
    Simplified ID Merge: the first event carrying both $device_id and $user_id links them."""
    con.execute(f"""
        INSERT INTO identity_links (kind, source, target, time_ms, file_id)
        SELECT kind, source, target, time_ms, $f FROM (
            SELECT CASE event WHEN '$identify' THEN 'identify' WHEN '$create_alias' THEN 'alias'
                              ELSE 'merge' END AS kind,
                   link_source AS source, link_target AS target, epoch_ms(time) AS time_ms
            FROM event_rows WHERE file_id = $f AND event IN {readers.IDENTITY_EVENTS}
            UNION ALL
            SELECT 'simplified', '$device:' || device_id, user_id, min(epoch_ms(time))
            FROM event_rows WHERE file_id = $f AND device_id IS NOT NULL AND user_id IS NOT NULL
            GROUP BY device_id, user_id)
        WHERE source IS NOT NULL AND target IS NOT NULL AND source <> target""", {"f": file_id})
