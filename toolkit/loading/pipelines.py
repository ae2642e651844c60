"""Mixpanel Data Pipelines (JSON) folders: where each table's files lie and how their fields map to the
Raw Event Export's, for the loader (`sources`, `readers`) and for anything that reads the folders in
place. Pure: paths and names only, no I/O.

Layout (Mixpanel's docs, "Data Pipelines" overview and "Json Pipelines"):

    <root>/<project_id>/mp_master_event/<YYYY>/<MM>/<DD>/[<HH>/]<files>   events, daily or hourly
    <root>/<project_id>/mp_people_data/<files>                           profiles, replaced on every export
    <root>/<project_id>/mp_identity_mappings_data/<files>                distinct_id -> resolved_distinct_id

Events carry ``event_name, time, distinct_id, device_id, user_id, insert_id, properties``; a run adds
new files (late events included) rather than rewrite a day. Profiles carry ``distinct_id, properties``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

EVENTS = "mp_master_event"
PEOPLE = "mp_people_data"
IDENTITY = "mp_identity_mappings_data"
TABLES = (EVENTS, PEOPLE, IDENTITY)
KIND_OF_TABLE = {EVENTS: "events", PEOPLE: "profiles", IDENTITY: "identity_mappings"}
# Tables a new export replaces whole: the files present now are the export; earlier ones are superseded.
REPLACED = (PEOPLE, IDENTITY)

EVENT_NAME = "event_name"
# Pipelines' top-level event column -> the property the Raw Event Export carries it as.
EVENT_FIELDS = {"distinct_id": "distinct_id", "time": "time", "insert_id": "$insert_id",
                "device_id": "$device_id", "user_id": "$user_id"}
EVENT_COLUMNS = (EVENT_NAME, *EVENT_FIELDS, "properties")
PROFILE_COLUMNS = ("distinct_id", "properties")
IDENTITY_COLUMNS = ("distinct_id", "resolved_distinct_id")


def _parts(path: Any) -> list[str]:
    """A path's or URL's parts split on "/" (``s3://bucket/...`` too: a lake reads the folders in place)."""
    return str(path).split("/")


def table_of(path: Any) -> str | None:
    """The Pipelines table a file lies in (the last of `TABLES` among its folders), else None."""
    folder = table_folder(path)
    return folder.rsplit("/", 1)[-1] if folder is not None else None


def table_folder(path: Any) -> str | None:
    """The table's folder (``<root>/<project_id>/<table>``) a file lies in, else None."""
    parts = _parts(path)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in TABLES:
            return "/".join(parts[:i + 1])
    return None


def project_of(path: Any) -> str | None:
    """The project id: the name of the folder above the table's."""
    folder = table_folder(path)
    parts = _parts(folder) if folder is not None else []
    return parts[-2] if len(parts) >= 2 and parts[-2] else None


def event_day(path: Any) -> date | None:
    """The UTC day of an events file from its ``YYYY/MM/DD`` folders (None when they are not a date)."""
    folder = table_folder(path)
    if folder is None or not folder.endswith("/" + EVENTS) and folder != EVENTS:
        return None
    below = _parts(path)[len(_parts(folder)):-1]
    try:
        return date(int(below[0]), int(below[1]), int(below[2]))
    except (IndexError, ValueError):
        return None


def day_folder(root: Any, project_id: str, day: date) -> str:
    """Where a daily pipeline writes ``day``'s event files."""
    return f"{str(root).rstrip('/')}/{project_id}/{EVENTS}/{day:%Y}/{day:%m}/{day:%d}"


def table_path(root: Any, project_id: str, table: str) -> str:
    """A table's folder under a bucket's root."""
    return f"{str(root).rstrip('/')}/{project_id}/{table}"


def events_glob(root: Any, project_id: str = "*") -> str:
    """A glob over every events file of a project (daily and hourly folders; DuckDB and Spark read ``**``)."""
    return f"{table_path(root, project_id, EVENTS)}/**/*.json*"


def to_export_event(record: dict[str, Any]) -> dict[str, Any]:
    """A Pipelines event as the Raw Event Export gives it: ``{event, properties}``, the top-level fields put
    back into the properties under Mixpanel's names (a top-level value wins; a missing one leaves the
    property as it was). ``time`` as a timestamp text becomes epoch seconds. The loader does the same in
    SQL (`readers`); this is its statement in Python, for tests and readers of the folders."""
    properties = dict(record.get("properties") or {})
    for column, name in EVENT_FIELDS.items():
        value = record.get(column)
        if value is None:
            continue
        properties[name] = epoch_seconds(value) if column == "time" and isinstance(value, str) else value
    return {"event": record.get(EVENT_NAME), "properties": properties}


def from_export_event(record: dict[str, Any]) -> dict[str, Any]:
    """An Export event as a Pipelines row (the properties keep every key, as Pipelines exports them)."""
    properties = record.get("properties") or {}
    row: dict[str, Any] = {EVENT_NAME: record.get("event")}
    for column, name in EVENT_FIELDS.items():
        row[column] = properties.get(name)
    row["properties"] = properties
    return row


def epoch_seconds(text: str) -> float | str:
    """A timestamp text (``2026-10-01T12:00:00Z``, ``2026-10-01 12:00:00.5 UTC``) as epoch seconds; text
    that is not one comes back as it was (the loader then refuses the event, naming the field)."""
    cleaned = text.strip().removesuffix(" UTC").replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(cleaned)
    except ValueError:
        return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = moment.timestamp()
    return int(seconds) if seconds.is_integer() else seconds
