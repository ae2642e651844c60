"""SQL relations over input files, built on DuckDB's own readers (nothing is read row by row in Python).

Every relation yields ``record`` (1-based line of a JSON Lines file, element of a JSON array, data
row of a CSV), ``raw`` (the record's text where DuckDB gives it), ``doc_error`` (why the record is
not a JSON object, else NULL) and the record's fields as JSON values. File paths are always bound
as the parameter ``$path``. JSON events have a fast path (``read_json``) and a careful one (each line
on its own, for a file ``read_json`` refuses): docs/design.md, "Loading a file".
"""

from __future__ import annotations

from toolkit.loading import pipelines
from toolkit.loading.sources import Source
from toolkit.loading.validation import QUARANTINED_RAW_CHARS, json_type_name

# A larger record is quarantined with its line and size. DuckDB's JSON parse of a record takes about
# eight times its text, and a reader thread parses a buffer of up to this size at once: 16 MiB keeps a
# load within its 1 GB (at 64 MiB, files of 1 MiB records ran out of memory). Mixpanel's own limit is 1 MB.
MAX_RECORD_BYTES = 16 << 20
# A line of blanks only is skipped: JSON's whitespace (space, \t, \n, \r) and the \v and \f that
# DuckDB's read_json skips as well, so that both readers skip the same lines. Any other character
# (\x1f, say) makes a line a record.
LINE_BLANKS = "' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13)"
DOCUMENT_BUFFER_BYTES = 4 << 20   # read_json_objects' buffer per thread (see _document_texts)
PARSE_BATCH_BYTES = 4 << 20       # JSON Lines text parsed per statement (see line_ranges)

_LINES = ("read_csv($path, columns={'raw': 'VARCHAR'}, delim='\\0', quote='', escape='', header=false, "
          f"auto_detect=false, strict_mode=false, max_line_size={MAX_RECORD_BYTES}, "
          "ignore_errors=true, store_rejects=true, rejects_table='{rejects}', rejects_scan='{rejects}_scan')")


# column -> the property Mixpanel gives a meaning, all pulled out of `properties` in one parse.
KEY_FIELDS = {"did": "distinct_id", "tm": "time", "iid": "$insert_id", "dev": "$device_id", "uid": "$user_id"}
# The ids an identity event links, pulled out of those events only (a few percent of rows), as the
# fields of the struct ``links`` (field -> property).
IDENTITY_EVENTS = ("$identify", "$create_alias", "$merge")
LINK_FIELDS = {"anon_id": "$anon_id", "identified_id": "$identified_id", "alias": "alias",
               "distinct_ids": "$distinct_ids"}


def event_fields(source: Source, careful: bool, rejects: str, numbered: bool = True,
                 lines: tuple[int, int] | None = None) -> str:
    """(record, raw, doc_error, ev, props, did, tm, iid, dev, uid, links) for an events
    file: the record's fields as JSON values, with the properties Mixpanel gives a meaning
    (`KEY_FIELDS`) pulled out, and for an identity event the ids it links (``links``, a struct of
    `LINK_FIELDS`: ``links['anon_id']``...).

    ``numbered=False`` leaves ``record`` NULL on the fast path: numbering rows keeps read_json on one
    thread, which doubles the time of a clean load that needs no line numbers. A record over
    `MAX_RECORD_BYTES` is not parsed (validation refuses it for its size); ``lines`` as in `documents`."""
    if source.layout == "pipelines":
        records = _pipelines_events(source, careful, rejects, numbered, lines)
    elif source.format == "csv":
        records = _flat_rows(csv_rows(source, rejects), first_record=2)
    elif source.format == "parquet":
        records = _parquet_rows()
    elif not careful:
        fmt = "newline_delimited" if source.format == "jsonl" else "array"
        record, ordinality = ("ordinality", " WITH ORDINALITY") if numbered else ("NULL::BIGINT", "")
        records = f"""SELECT {record} AS record, NULL::VARCHAR AS raw, NULL::VARCHAR AS doc_error,
                             event AS ev, properties AS props
                      FROM read_json($path, columns={{'event': 'JSON', 'properties': 'JSON'}}, format='{fmt}',
                                     maximum_object_size={MAX_RECORD_BYTES}){ordinality}"""
    else:
        records = f"""SELECT record, raw, doc_error, doc -> '$.event' AS ev, doc -> '$.properties' AS props
                      FROM ({documents(source, rejects, lines)})"""
    # One parse of the properties for all key fields; identity events get a second for their ids.
    # Positions come from the dicts that `_paths` reads too, so readers of the fields use their names.
    keys = ", ".join(f"k[{i}] AS {column}" for i, column in enumerate(KEY_FIELDS, 1))
    links = ", ".join(f"{field} := l[{i}]" for i, field in enumerate(LINK_FIELDS, 1))
    fits = f"strlen(props) <= {MAX_RECORD_BYTES}"
    # A Pipelines reader made `k` with the properties' one parse.
    k = "" if source.layout == "pipelines" else \
        f", CASE WHEN {fits} THEN json_extract(props, [{_paths(KEY_FIELDS)}]) END AS k"
    return f"""SELECT record, raw, doc_error, ev, props, {keys},
                      CASE WHEN l IS NOT NULL THEN struct_pack({links}) END AS links
               FROM (SELECT *{k},
                               CASE WHEN {fits} AND ev ->> '$' IN {IDENTITY_EVENTS}
                                    THEN json_extract(props, [{_paths(LINK_FIELDS)}]) END AS l
                     FROM ({records}))"""


def _pipelines_events(source: Source, careful: bool, rejects: str, numbered: bool,
                      lines: tuple[int, int] | None) -> str:
    """A Data Pipelines events file as Export records (`pipelines.to_export_event` in SQL), with ``k`` (the
    `KEY_FIELDS` values) already made: ``event_name`` is the event; a present top-level field is the key's
    value, else the properties' own. The properties are parsed once; they are rewritten (one JSON merge,
    the top-level fields put back under Mixpanel's names) only for a record whose properties lack one of
    those values or hold another: a merge on every record cost half as much again as a load."""
    names = (pipelines.EVENT_NAME, *pipelines.EVENT_FIELDS, "properties")
    if careful:
        fields = ", ".join(f"doc -> '$.\"{name}\"' AS \"{name}\"" for name in names)
        rows = f"SELECT record, raw, doc_error, {fields} FROM ({documents(source, rejects, lines)})"
    else:
        fmt = "newline_delimited" if source.format == "jsonl" else "array"
        record, ordinality = ("ordinality", " WITH ORDINALITY") if numbered else ("NULL::BIGINT", "")
        columns = ", ".join(f"'{name}': 'JSON'" for name in names)
        rows = f"""SELECT {record} AS record, NULL::VARCHAR AS raw, NULL::VARCHAR AS doc_error, *
                   FROM read_json($path, columns={{{columns}}}, format='{fmt}',
                                  maximum_object_size={MAX_RECORD_BYTES}){ordinality}"""
    column_of = {name: column for column, name in pipelines.EVENT_FIELDS.items()}
    top = {}   # key column -> the top-level value as JSON, NULL when absent or null
    for key, name in KEY_FIELDS.items():
        column = f'"{column_of[name]}"'
        value = column
        if name == "time":   # a timestamp text: epoch seconds (whole ones as an integer, as Mixpanel sends)
            value = f"""CASE WHEN e IS NULL THEN {column}
                             WHEN e = floor(e) THEN CAST(e AS BIGINT)::VARCHAR::JSON ELSE e::VARCHAR::JSON END"""
        top[key] = f"CASE WHEN {column} IS NOT NULL AND {column}::VARCHAR <> 'null' THEN {value} END"
    differs = " OR ".join(f"(t_{key} IS NOT NULL AND (k0[{i}] IS NULL OR t_{key}::VARCHAR <> k0[{i}]::VARCHAR))"
                          for i, key in enumerate(KEY_FIELDS, 1))
    patch = ", ".join(f"""CASE WHEN t_{key} IS NOT NULL THEN '"{name}":' || t_{key}::VARCHAR END"""
                      for key, name in KEY_FIELDS.items())
    keys = ", ".join(f"coalesce(t_{key}, k0[{i}])" for i, key in enumerate(KEY_FIELDS, 1))
    tops = ", ".join(f"{sql} AS t_{key}" for key, sql in top.items())
    return f"""
        SELECT record, raw, doc_error, ev,
               CASE WHEN starts_with(p::VARCHAR, '{{') AND ({differs})
                    THEN json_merge_patch(p, '{{' || concat_ws(',', {patch}) || '}}') ELSE p END AS props,
               [{keys}] AS k
        FROM (SELECT *, CASE WHEN strlen(p) <= {MAX_RECORD_BYTES} THEN json_extract(p, [{_paths(KEY_FIELDS)}]) END AS k0
              FROM (SELECT record, raw, doc_error, "{pipelines.EVENT_NAME}" AS ev,
                           {json_object_text("properties")} AS p, {tops}
                    FROM (SELECT *, CASE WHEN starts_with("time"::VARCHAR, '"')
                                         THEN epoch(try_cast("time" ->> '$' AS TIMESTAMPTZ)) END AS e
                          FROM ({rows}))))"""


def json_object_text(col: str) -> str:
    """SQL: ``col`` (JSON), or the JSON its string holds when it is text holding an object (a warehouse's
    JSON column exported as text)."""
    return (f"CASE WHEN starts_with({col}::VARCHAR, '\"') AND json_valid({col} ->> '$') "
            f"AND starts_with(ltrim({col} ->> '$'), '{{') THEN ({col} ->> '$')::JSON ELSE {col} END")


def csv_rows(source: Source, rejects: str) -> str:
    """A CSV file's rows with the header's columns. A row with too few or too many fields goes to the
    temp table ``{rejects}`` with its line (see `rejected_lines`); ``record`` numbers the rows read, so
    the loader puts the file's line numbers back (`line_of`). Each scan adds to ``{rejects}``."""
    delim = {",": ",", ";": ";", "\t": "\\t", "|": "|"}[source.delimiter]
    return (f"read_csv($path, delim='{delim}', header=true, auto_detect=true, sample_size=-1, "
            f"max_line_size={MAX_RECORD_BYTES}, ignore_errors=true, store_rejects=true, "
            f"rejects_table='{rejects}', rejects_scan='{rejects}_scan')")


def _paths(fields: dict[str, str]) -> str:
    """The JSON paths of the properties ``fields`` names, in its order."""
    return ", ".join(f"'$.\"{name}\"'" for name in fields.values())


def stage_lines(rejects: str) -> str:
    """Read a JSON Lines file into the temp table ``{rejects}_lines`` (ordinal, raw).

    Lines DuckDB cannot decode (bad UTF-8) land in the temp table ``{rejects}`` instead; `documents`
    puts the line numbers of the others back in place. Only the careful path pays for this copy.
    """
    return (f"CREATE OR REPLACE TEMP TABLE {rejects}_lines AS SELECT ordinality, raw "
            f"FROM {_LINES.replace('{rejects}', rejects)} WITH ORDINALITY")


def documents(source: Source, rejects: str, lines: tuple[int, int] | None = None) -> str:
    """(record, raw, doc_error, doc) with each record checked on its own (JSON Lines: after `stage_lines`;
    ``lines`` limits the staged lines read, see `line_ranges`)."""
    return f"""
        SELECT record, raw,
               CASE WHEN NOT json_valid(raw) THEN 'malformed JSON'
                    WHEN json_type(raw) <> 'OBJECT'
                        THEN 'not a JSON object (got ' || {json_type_name('json_type(raw)')} || ')' END AS doc_error,
               CASE WHEN json_valid(raw) AND json_type(raw) = 'OBJECT' THEN raw::JSON END AS doc
        FROM ({_document_texts(source, rejects, lines)})"""


def line_ranges(rejects: str, batch_bytes: int = PARSE_BATCH_BYTES) -> str:
    """(first, last) ordinals of runs of staged lines holding about ``batch_bytes`` of text each:
    DuckDB keeps every JSON parse of a vector (2,048 lines) until the vector is done, each JSON
    function its own, so parsing a file of 1 MiB lines in one statement needs gigabytes (the careful
    events reader parses each line about five times: 4 MiB at a time keeps it within 600 MB)."""
    return f"""SELECT min(ordinality), max(ordinality) FROM (
                   SELECT ordinality, (sum(coalesce(strlen(raw), 0)) OVER (ORDER BY ordinality)) // {int(batch_bytes)}
                          AS part
                   FROM {rejects}_lines) GROUP BY part ORDER BY part"""


def profile_items(source: Source, rejects: str, lines: tuple[int, int] | None = None) -> str:
    """(record, raw, doc_error, paged, item, doc): one row per profile or update, the items of an Engage
    page (``paged``) unnested, each with its 1-based place in the page. A page's own text is not
    carried along (``raw`` is NULL). JSON Lines: after `stage_lines`; ``lines`` limits the staged lines.

    Every JSON function parses its argument again, and 450 KB pages add up: the types come from one
    parse, the items from another (a third checks a JSON Lines line is JSON at all)."""
    valid = "json_valid(raw)" if source.format == "jsonl" else "true"   # read_json_objects parsed them
    return f"""
        SELECT record, CASE WHEN NOT paged THEN raw END AS raw, doc_error, paged,
               generate_subscripts(items, 1) AS item, unnest(items) AS doc
        FROM (SELECT *, CASE WHEN paged THEN json_extract(raw, '$.results[*]')
                             WHEN doc_error IS NULL THEN [raw::JSON] ELSE [NULL::JSON] END AS items
              FROM (SELECT record, raw, coalesce(types[2] = 'ARRAY', false) AS paged,
                           CASE WHEN types IS NULL THEN 'malformed JSON'
                                WHEN types[1] <> 'OBJECT'
                                    THEN 'not a JSON object (got ' || {json_type_name('types[1]')} || ')'
                           END AS doc_error
                    FROM (SELECT record, raw, CASE WHEN {valid} THEN json_type(raw, ['$', '$.results']) END AS types
                          FROM ({_document_texts(source, rejects, lines)}))))"""


def _document_texts(source: Source, rejects: str, lines: tuple[int, int] | None = None) -> str:
    """(record, raw): each record's text. A JSON document is an array of records, or one object per
    record (an Engage page holds its profiles in `results`).

    DuckDB keeps the parse of every JSON value in a vector until the vector is done. read_json_objects
    fills a vector from one buffer, sized by ``maximum_object_size`` (a larger object still reads), so
    `DOCUMENT_BUFFER_BYTES` bounds what is parsed at once; a range of staged lines bounds it for JSON Lines."""
    if source.format == "jsonl":
        within = f" WHERE ordinality BETWEEN {int(lines[0])} AND {int(lines[1])}" if lines else ""
        return f"""SELECT {line_of('ordinality', rejects)} AS record, raw
                   FROM (SELECT * FROM {rejects}_lines{within})   -- the range first: trim reads every line
                   WHERE raw IS NOT NULL AND trim(raw, {LINE_BLANKS}) <> ''"""
    return f"""SELECT ordinality AS record, json::VARCHAR AS raw
               FROM read_json_objects($path, format='auto', maximum_object_size={DOCUMENT_BUFFER_BYTES})
               WITH ORDINALITY"""


def line_of(ordinal: str, rejects: str) -> str:
    """The physical line of the ``ordinal``-th line the CSV reader emitted, given the lines it rejected."""
    return (f"({ordinal} + (SELECT count(*) FROM (SELECT line - row_number() OVER (ORDER BY line) AS before "
            f"FROM (SELECT DISTINCT line FROM {rejects})) WHERE before < {ordinal}))")


def rejected_lines(rejects: str) -> str:
    """(record, reason, raw) of lines the reader could not decode or split (one row per line: the CSV
    reader reports a row short of two fields twice)."""
    size = "try_cast(regexp_extract(error_message, 'Actual Size:\\s*(\\d+)', 1) AS BIGINT)"
    fields = "regexp_extract(error_message, 'Expected Number of Columns: (\\d+) Found: (\\d+)', ['want', 'got'])"
    return f"""SELECT line AS record,
                      CASE WHEN error_type = 'LINE SIZE OVER MAXIMUM' THEN {record_too_large(size)}
                           WHEN error_type IN ('MISSING COLUMNS', 'TOO MANY COLUMNS')
                               THEN 'row has ' || {fields}.got || ' fields, the header has ' || {fields}.want
                           ELSE 'unreadable line: ' || error_message END AS reason,
                      left(ltrim(csv_line, chr(10) || chr(13)), {QUARANTINED_RAW_CHARS}) AS raw
               FROM (SELECT DISTINCT ON (line) * FROM {rejects} ORDER BY line, column_idx)"""


def record_too_large(size: str) -> str:
    """SQL: the reason a record of ``size`` bytes is refused."""
    return (f"'record too large: ' || coalesce(round({size} / 1048576, 1) || ' MiB', 'size unknown') "
            f"|| ' (at most {MAX_RECORD_BYTES >> 20} MiB)'")


def _flat_rows(rows: str, first_record: int) -> str:
    """A table with one column per property (and `event`): properties are every column but `event`."""
    return f"""SELECT ordinality + {first_record - 1} AS record, NULL::VARCHAR AS raw, NULL::VARCHAR AS doc_error,
                      to_json(rec) -> '$.event' AS ev,
                      json_merge_patch(to_json(rec), '{{"event": null, "ordinality": null}}') AS props
               FROM (SELECT * FROM {rows} WITH ORDINALITY) rec"""


def _parquet_rows() -> str:
    """Parquet with `event` and `properties` (a struct, or JSON text), or flat like CSV."""
    return """SELECT record, NULL::VARCHAR AS raw, NULL::VARCHAR AS doc_error, doc -> '$.event' AS ev,
                     CASE WHEN json_type(doc -> '$.properties') = 'VARCHAR' AND json_valid(doc ->> '$.properties')
                          THEN (doc ->> '$.properties')::JSON
                          WHEN (doc -> '$.properties') IS NOT NULL THEN doc -> '$.properties'
                          ELSE json_merge_patch(doc, '{"event": null}') END AS props
              FROM (SELECT ordinality AS record, json_merge_patch(to_json(rec), '{"ordinality": null}') AS doc
                    FROM (SELECT * FROM read_parquet($path) WITH ORDINALITY) rec)"""
