"""Profile snapshots (Engage exports) and profile updates: parsed in DuckDB, a few megabytes of JSON at
a time, applied in the file's one transaction. Updates fold in Python (`profile_ops`): operations are
sequential per profile."""

from __future__ import annotations

import json
from datetime import datetime

from toolkit.errors import LoadError
from toolkit.loading import derived, profile_ops, quarantine, readers, validation
from toolkit.loading.execute import epoch_ms, execute, registered
from toolkit.loading.quarantine import REJECTS
from toolkit.loading.sources import Source
from toolkit.loading.summary import FileResult
from toolkit.store import profile_facts

PROFILE_BATCH_BYTES = 16 << 20   # JSON Lines text parsed per statement (see stage_records)


def stage_records(con, source: Source) -> None:
    """Fill the temp table ``_records`` (line, raw, doc_error, paged, item, doc) of a profile or update
    file, one row per profile or update: Engage pages are unnested. A few megabytes of JSON are parsed
    at a time (see `readers.line_ranges`): 2,048 Engage pages of 450 KB at once would need gigabytes."""
    if source.format not in ("jsonl", "json"):
        raise LoadError(str(source.path), f"{source.kind} must be JSON or JSON Lines, not {source.format}")
    con.execute("""CREATE OR REPLACE TEMP TABLE _records (line BIGINT, raw VARCHAR, doc_error VARCHAR,
                                                          paged BOOLEAN, item BIGINT, doc JSON)""")
    ranges = [None]
    if source.format == "jsonl":
        con.execute(readers.stage_lines(REJECTS), {"path": str(source.path)})
        ranges = con.execute(readers.line_ranges(REJECTS, PROFILE_BATCH_BYTES)).fetchall()
    for lines in ranges:
        execute(con, f"INSERT INTO _records {readers.profile_items(source, REJECTS, lines)}",
                {"path": str(source.path)})


def apply_snapshots(con, source: Source, file_id: int, now: datetime, result: FileResult,
                    careful: bool = True) -> None:
    """Snapshots replace each profile's properties (under its canonical id at load time)."""
    stage_records(con, source)
    params = {"path": str(source.path), "file_id": file_id, **validation.parameters(epoch_ms(now))}
    # Engage's {$distinct_id, $properties}, or a Data Pipelines people row {distinct_id, properties}
    did_key, props_key = ("distinct_id", "properties") if source.layout == "pipelines" else ("$distinct_id",
                                                                                             "$properties")
    reason = validation.profile_reason("did", "props", did_key, props_key)
    rows, = execute(con, f"""
        CREATE OR REPLACE TEMP TABLE _profiles AS
        WITH r00 AS (SELECT *, json_extract(doc, ['$."{did_key}"', '$."{props_key}"']) AS k FROM _records),
        r0 AS (SELECT line, item, paged, raw, doc_error, k[1] AS did, {readers.json_object_text("k[2]")} AS props,
                      doc FROM r00),
        r AS (SELECT *, {validation.typed("did", "props", texts=("did",))} FROM r0),
        v AS (SELECT *, coalesce(doc_error, {reason}) AS reason FROM r)
        SELECT line, item, reason || CASE WHEN paged THEN ' (results[' || (item - 1) || '])' ELSE '' END AS reason,
               CASE WHEN reason IS NOT NULL
                    THEN left(CASE WHEN paged THEN doc::VARCHAR ELSE coalesce(raw, doc::VARCHAR) END,
                              {validation.QUARANTINED_RAW_CHARS}) END AS raw,
               did_s AS distinct_id, props,
               CASE WHEN reason IS NULL THEN props -> '$."$onesignal_user_id"' END AS onesignal_id
        FROM v""", params).fetchone()
    _refuse_deep_profiles(con)
    refused = quarantine.from_table(con, "_profiles", source, file_id)
    # Replaced by delete and insert: INSERT OR REPLACE checks every row for a conflict (twice as slow).
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _placed AS
        SELECT coalesce(m.canonical_id, p.distinct_id) AS distinct_id, p.props, p.line
        FROM _profiles p LEFT JOIN identity_map m ON m.distinct_id = p.distinct_id
        WHERE p.reason IS NULL
        QUALIFY row_number() OVER (PARTITION BY coalesce(m.canonical_id, p.distinct_id)
                                   ORDER BY p.line DESC, p.item DESC) = 1""")
    con.execute("DELETE FROM profiles WHERE distinct_id IN (SELECT distinct_id FROM _placed)")
    con.execute(f"INSERT INTO profiles SELECT distinct_id, props, $now::TIMESTAMP, $file_id, line, "
                f"{profile_facts('props')} FROM _placed",
                {"now": now.replace(tzinfo=None), "file_id": file_id})
    con.execute("DROP TABLE _placed")
    result.rows_read, result.rows_loaded = rows, rows - refused
    result.quarantined = quarantine.count(con, file_id)
    # Seed rule: a profile carrying $onesignal_user_id aliases that value to the profile.
    con.execute("""
        INSERT INTO identity_links (kind, source, target, time_ms, file_id, line)
        SELECT 'onesignal', value, distinct_id, $now_ms, $file_id, line
        FROM (SELECT *, onesignal_id ->> '$' AS value FROM _profiles
              WHERE reason IS NULL AND json_type(onesignal_id) = 'VARCHAR')
        WHERE trim(value) <> '' AND value <> distinct_id""",
                {"now_ms": epoch_ms(now), "file_id": file_id})
    derived.refresh_identity(con, file_id)


def _refuse_deep_profiles(con) -> None:
    """Refuse profiles nested deeper than `validation.MAX_DEPTH`: matching and updates read profiles in
    Python, whose reader fails on deep nesting. Only profiles with that many brackets are looked at."""
    candidates = con.execute(f"""SELECT line, item, props::VARCHAR FROM _profiles
                                 WHERE reason IS NULL AND strlen(props::VARCHAR) > $d * 2
                                   AND {validation.openers('props::VARCHAR')} > $d""",
                             {"d": validation.MAX_DEPTH}).fetchall()
    deep = [(line, item) for line, item, text in candidates if validation.json_depth(text) > validation.MAX_DEPTH]
    if deep:
        with registered(con, "_deep", line=[line for line, _ in deep], item=[item for _, item in deep]):
            con.execute(f"""UPDATE _profiles SET reason = 'nested more than {validation.MAX_DEPTH} levels deep',
                                                 raw = left(props::VARCHAR, {validation.QUARANTINED_RAW_CHARS})
                            FROM _deep f WHERE _profiles.line = f.line AND _profiles.item = f.item""")


def apply_updates(con, source: Source, file_id: int, now: datetime, result: FileResult,
                  careful: bool = True) -> None:
    """Updates fold in file order per profile (`profile_ops`); one that sets a new
    $onesignal_user_id links it to the profile."""
    stage_records(con, source)
    params = {"path": str(source.path), "file_id": file_id, "ops": list(profile_ops.OPS),
              **validation.parameters(epoch_ms(now))}
    id_reason = validation.distinct_id_reason("did", "$distinct_id")
    time_ms = validation.time_ms_expr("tm")
    rows, = execute(con, f"""
        CREATE OR REPLACE TEMP TABLE _updates AS
        WITH r0 AS (SELECT line, item, paged, raw, doc_error, doc, doc -> '$."$distinct_id"' AS did,
                           doc -> '$."$time"' AS tm,
                           list_filter(json_keys(doc), lambda k: list_contains($ops, k)) AS ops
                    FROM _records),
        r AS (SELECT *, {validation.typed("did", "tm", texts=("did",), numbers=("tm",))} FROM r0),
        v AS (SELECT *, coalesce(doc_error, CASE {id_reason}
                 WHEN len(ops) = 0 THEN 'no operation (expected one of ' || array_to_string($ops, ', ') || ')'
                 WHEN len(ops) > 1 THEN 'more than one operation: ' || array_to_string(ops, ', ')
                 END) || CASE WHEN paged THEN ' (results[' || (item - 1) || '])' ELSE '' END AS reason FROM r)
        SELECT v.line, v.item, v.reason,
               left(CASE WHEN v.paged THEN v.doc::VARCHAR ELSE coalesce(v.raw, v.doc::VARCHAR) END,
                    {validation.QUARANTINED_RAW_CHARS}) AS raw,
               v.did_s AS distinct_id,
               CASE WHEN v.doc ->> '$."$ignore_alias"' = 'true' THEN v.did_s
                    ELSE coalesce(m.canonical_id, v.did_s) END AS target,
               v.ops[1] AS op, v.doc -> ('$."' || v.ops[1] || '"') AS value,
               coalesce({time_ms}, $now_ms) AS time_ms
        FROM v LEFT JOIN identity_map m ON m.distinct_id = v.did_s AND v.reason IS NULL""", params).fetchone()
    # The fold runs in Python (operations are sequential per profile); rows stream in batches.
    cursor = con.execute("""
        SELECT u.line, u.item, u.raw, u.target, u.op, u.value, u.time_ms, p.properties
        FROM _updates u LEFT JOIN profiles p ON p.distinct_id = u.target
        WHERE u.reason IS NULL ORDER BY u.target, u.line, u.item""")
    states: dict[str, tuple[dict | None, int]] = {}
    bad: list[tuple[int, str, str]] = []
    links: list[tuple[str, str, int, int]] = []
    applied = 0
    while batch := cursor.fetchmany(50_000):
        for line, _item, raw, target, op, value, time_ms, current in batch:
            try:
                argument = json.loads(value) if value is not None else None
            except RecursionError:
                bad.append((line, f"{op} value nested too deeply (at most {validation.MAX_DEPTH} levels)", raw))
                continue
            problem = profile_ops.check(op, argument)
            if problem:
                bad.append((line, problem, raw))
                continue
            props, _ = states.get(target, (json.loads(current) if current else None, line))
            before = (props or {}).get("$onesignal_user_id")
            props = profile_ops.apply(props, op, argument)
            after = (props or {}).get("$onesignal_user_id")
            if isinstance(after, str) and after.strip() and after != before and after != target:
                links.append((after, target, time_ms, line))
            states[target] = (props, line)
            applied += 1
    quarantine.from_table(con, "_updates", source, file_id, extra=bad)
    _write_profile_states(con, states, file_id, now)
    if links:
        source_ids, target_ids, times, lines = (list(column) for column in zip(*links, strict=True))
        with registered(con, "_new_links", source=source_ids, target=target_ids, time_ms=times, line=lines):
            con.execute("INSERT INTO identity_links (kind, source, target, time_ms, file_id, line) "
                        "SELECT 'onesignal', source, target, time_ms, ?, line FROM _new_links", [file_id])
        derived.refresh_identity(con, file_id)
    result.rows_read = rows   # CREATE TABLE AS answered its number of rows
    result.rows_loaded = applied
    result.quarantined = quarantine.count(con, file_id)


def _write_profile_states(con, states: dict[str, tuple[dict | None, int]], file_id: int,
                          now: datetime) -> None:
    """Write the folded profiles: each written id's row is deleted (one scan of `profiles` for the
    deleted and the kept alike), then the kept ones inserted. Delete and insert, not INSERT OR REPLACE:
    that updates the rows in place, and DuckDB's checkpoint then rewrites every row group holding one,
    properties and all (1,981 updates spread over 1M profiles: 3.6 s of CPU at close); deleted rows
    are only marked."""
    if not states:
        return
    with registered(con, "_written", distinct_id=list(states),
                    properties=[None if props is None else json.dumps(props, ensure_ascii=False)
                                for props, _ in states.values()],
                    line=[line for _, line in states.values()]):
        con.execute("DELETE FROM profiles WHERE distinct_id IN (SELECT distinct_id FROM _written)")
        if any(props is None for props, _ in states.values()):   # their facts go (derived.refresh_facts)
            derived.touch(con, "SELECT distinct_id FROM _written WHERE properties IS NULL")
        con.execute("INSERT INTO profiles SELECT distinct_id, properties::JSON, ?::TIMESTAMP, ?, "
                    f"line, {profile_facts('properties::JSON')} FROM _written WHERE properties IS NOT NULL",
                    [now.replace(tzinfo=None), file_id])
