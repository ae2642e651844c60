"""Mixpanel's rules for a valid row, as SQL expressions over JSON values (one place, one wording).

Each ``*_reason`` expression yields NULL for a valid row, else the reason it is quarantined. The
expressions read columns named by the loader (see ``toolkit.loading``) and the bound parameter
``$now_ms``; values are always parameters, never spliced into SQL text.
"""

from __future__ import annotations

import re

# distinct_id values Mixpanel refuses (compared case-insensitively, surrounding blanks ignored).
REFUSED_DISTINCT_IDS = (
    "", "anon", "anonymous", "nil", "none", "null", "n/a", "na", "undefined", "unknown", "<nil>",
    "0", "-1", "00000000-0000-0000-0000-000000000000",
)
MIN_TIME_MS = 31_536_000_000          # 1971-01-01T00:00:00Z
MAX_FUTURE_MS = 3_600_000              # one hour
MS_THRESHOLD = 1e11                    # a `time` above this is milliseconds, below it seconds
MAX_INSERT_ID_BYTES = 36
QUARANTINED_RAW_CHARS = 4096           # how much of a bad record the quarantine keeps
MAX_DEPTH = 500                        # profiles nested deeper are refused: Python reads them later

_ID_TYPES = "('VARCHAR', 'BIGINT', 'UBIGINT')"
_NUMBER_TYPES = "('BIGINT', 'UBIGINT', 'DOUBLE')"


def json_type_name(json_type: str) -> str:
    """SQL naming a ``json_type()`` result as people know JSON: string, number, boolean, null, object,
    array (never the engine's VARCHAR, UBIGINT...)."""
    return (f"CASE {json_type} WHEN 'VARCHAR' THEN 'string' WHEN 'BOOLEAN' THEN 'boolean' WHEN 'NULL' THEN "
            f"'null' WHEN 'OBJECT' THEN 'object' WHEN 'ARRAY' THEN 'array' ELSE 'number' END")


def _json_kind(col: str) -> str:
    return json_type_name(f"json_type({col})")


def typed(*cols: str, texts: tuple[str, ...] = (), numbers: tuple[str, ...] = ()) -> str:
    """Select-list items computing once what the reasons below read of a JSON value: its type
    (``<col>_t``) for every column, its text (``<col>_s``) and its number (``<col>_d``) where asked.
    Each is a parse of the value, so the reasons and the loader share them rather than repeat them."""
    items = [f"json_type({col}) AS {col}_t" for col in cols]
    items += [f"{col} ->> '$' AS {col}_s" for col in texts]
    items += [f"try_cast({col} AS DOUBLE) AS {col}_d" for col in numbers]
    return ", ".join(items)


def distinct_id_reason(col: str, label: str) -> str:
    """Missing, not a string (integers are accepted as Mixpanel does), or on the refused list.
    Needs ``typed(col, texts=(col,))``."""
    return f"""
        WHEN {col}_t IS NULL OR {col}_t = 'NULL' THEN 'missing {label}'
        WHEN {col}_t NOT IN {_ID_TYPES} THEN '{label} must be a string, got ' || {json_type_name(col + '_t')}
        WHEN list_contains($refused_ids, lower(trim({col}_s)))
            THEN 'refused {label} ' || to_json({col}_s)::VARCHAR || ' (Mixpanel rejects this value)'
    """


def time_ms_expr(col: str) -> str:
    """`time` as epoch milliseconds (seconds are scaled); NULL when not a finite number.
    Needs ``typed(col, numbers=(col,))``."""
    return (f"CASE WHEN {col}_t IN {_NUMBER_TYPES} AND isfinite({col}_d) THEN "
            f"{col}_d * CASE WHEN abs({col}_d) > {MS_THRESHOLD} THEN 1 ELSE 1000 END END")


def event_reason(ev: str, props: str, did: str, time_ms: str, tm: str, iid: str, max_bytes: int) -> str:
    """Why an event record is refused, in the order a person would fix it; NULL when valid.
    Needs ``typed(ev, did, tm, iid, texts=(ev, did, iid), numbers=(tm,))`` beside the columns.
    A record over ``max_bytes`` is refused for its size before anything else (its fields are not parsed)."""
    size = f"(coalesce(strlen({ev}), 0) + coalesce(strlen({props}), 0))"
    return f"""CASE
        WHEN {size} > {max_bytes} THEN 'record too large: ' || round({size} / 1048576, 1) || ' MiB (at most '
            || {max_bytes >> 20} || ' MiB)'
        WHEN {ev}_t IS NULL OR {ev}_t = 'NULL' THEN 'missing "event"'
        WHEN {ev}_t <> 'VARCHAR' THEN '"event" must be a string, got ' || {json_type_name(ev + '_t')}
        WHEN trim({ev}_s) = '' THEN 'empty event name'
        WHEN {props} IS NULL OR {props}::VARCHAR = 'null' THEN 'missing "properties"'
        WHEN NOT starts_with({props}::VARCHAR, '{{')   -- DuckDB's JSON text: an object starts with {{
            THEN '"properties" must be an object, got ' || {_json_kind(props)}
        {distinct_id_reason(did, 'distinct_id')}
        WHEN {tm}_t IS NULL OR {tm}_t = 'NULL' THEN 'missing time'
        WHEN {tm}_t NOT IN {_NUMBER_TYPES} THEN 'time must be a number, got ' || {json_type_name(tm + '_t')}
        WHEN {time_ms} IS NULL THEN 'time ' || ({tm})::VARCHAR || ' is out of range'
        WHEN {time_ms} > $now_ms + {MAX_FUTURE_MS}
            THEN 'time ' || ({tm})::VARCHAR || ' is more than 1 hour in the future'
        WHEN {time_ms} < {MIN_TIME_MS} THEN 'time ' || ({tm})::VARCHAR || ' is before 1971'
        WHEN {iid}_t IS NOT NULL AND {iid}_t <> 'NULL' AND (
                 {iid}_t <> 'VARCHAR'
              OR strlen({iid}_s) > {MAX_INSERT_ID_BYTES}          -- bytes, not characters
              OR NOT regexp_full_match({iid}_s, '[A-Za-z0-9-]+'))
            THEN 'bad $insert_id ' || left(({iid})::VARCHAR, 80)
              || ' (at most {MAX_INSERT_ID_BYTES} bytes of letters, digits and -)'
    END"""


def profile_reason(did: str, props: str, did_label: str = "$distinct_id", props_label: str = "$properties") -> str:
    """Needs ``typed(did, props, texts=(did,))`` beside the columns; the labels are the file's field names."""
    return f"""CASE
        {distinct_id_reason(did, did_label)}
        WHEN {props}_t IS NULL OR {props}_t = 'NULL' THEN 'missing "{props_label}"'
        WHEN {props}_t <> 'OBJECT' THEN '"{props_label}" must be an object, got ' || {json_type_name(props + '_t')}
    END"""


def openers(text: str) -> str:
    """SQL: how many `[` and `{` a JSON text holds, a cheap bound on its depth (see `json_depth`)."""
    return f"(strlen({text}) - strlen(replace(replace({text}, '[', ''), '{{', '')))"


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')


def json_depth(text: str) -> int:
    """How deeply a JSON text nests (0 for a scalar), counted without recursion."""
    depth = deepest = 0
    for bracket in re.findall(r"[\[\]{}]", _STRINGS.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parameters(now_ms: int) -> dict:
    return {"refused_ids": list(REFUSED_DISTINCT_IDS), "now_ms": now_ms}
