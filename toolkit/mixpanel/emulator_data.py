"""What the Mixpanel emulator serves: events kept one file per UTC day (so an export streams from disk and
adding events appends), profiles and cohorts with their member lists.

A data folder holds any of: events as ``*.jsonl`` / ``*.jsonl.gz`` (anywhere under ``events/``, or
``events.jsonl[.gz]``), ``profiles.json`` (Engage-shaped, a list, or JSON Lines of
``{"$distinct_id", "$properties"}``) and ``cohorts.json``
(``[{"id", "name", "description", "created", "is_visible", "members": [distinct ids]}]``).
"""

from __future__ import annotations

import gzip
import json
import tempfile
from collections.abc import Iterable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from toolkit.errors import EmulatorError


def event_day(record: Any) -> date | None:
    """The UTC day of a raw export record (``time`` in seconds, or milliseconds above 1e11)."""
    try:
        moment = float(record["properties"]["time"])
    except (KeyError, TypeError, ValueError):
        return None
    if moment > 1e11:
        moment /= 1000
    return datetime.fromtimestamp(moment, UTC).date()


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


class Data:
    """Events by day in a private folder (deleted by ``close``), profiles and cohorts in memory."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="mixpanel-emulator-")
        self.days: dict[date, Path] = {}
        self.event_count = 0
        self.profiles: dict[str, dict] = {}
        self.cohorts: list[dict] = []

    def close(self) -> None:
        self._dir.cleanup()

    @classmethod
    def from_folder(cls, folder: str | Path | None) -> Data:
        data = cls()
        if folder is None:
            return data
        folder = Path(folder)
        if not folder.is_dir():
            raise EmulatorError(f"{folder}: no such data folder")
        files = sorted(p for p in folder.rglob("*.jsonl*") if "profile" not in p.name and "cohort" not in p.name)
        for path in files:
            with _open_text(path) as handle:
                data.add_lines(handle, where=str(path))
        for name in ("profiles.json", "profiles.jsonl"):
            if (folder / name).exists():
                data.add_profiles(_read_records(folder / name))
        if (folder / "cohorts.json").exists():
            cohorts = _read_records(folder / "cohorts.json")
            for cohort in cohorts:
                data.add_cohort(cohort)
        return data

    # -- events -------------------------------------------------------------------------------
    def add_events(self, records: Iterable[dict]) -> int:
        """Add events (as Mixpanel would after late ingestion); returns how many."""
        return self.add_lines((json.dumps(r, ensure_ascii=False) for r in records), where="added events")

    def add_lines(self, lines: Iterable[str], where: str) -> int:
        handles: dict[date, Any] = {}
        added = 0
        try:
            for number, line in enumerate(lines, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    day = event_day(json.loads(line))
                except ValueError:
                    day = None
                if day is None:
                    raise EmulatorError(f"{where}, line {number}: not an event with properties.time")
                if day not in handles:
                    path = self.days.setdefault(day, Path(self._dir.name) / f"{day.isoformat()}.jsonl")
                    handles[day] = path.open("a", encoding="utf-8")
                handles[day].write(line + "\n")
                added += 1
        finally:
            for handle in handles.values():
                handle.close()
        self.event_count += added
        return added

    def day_files(self, first: date, last: date) -> list[tuple[Path, int]]:
        """The files of days ``first``..``last`` with their size now (later appends are not served)."""
        return [(path, path.stat().st_size) for day, path in sorted(self.days.items()) if first <= day <= last]

    # -- profiles and cohorts -------------------------------------------------------------------
    def add_profiles(self, records: Iterable[dict]) -> None:
        for record in records:
            self.profiles[str(record["$distinct_id"])] = dict(record.get("$properties") or {})

    def add_cohort(self, cohort: dict) -> dict:
        entry = {"id": int(cohort["id"]), "name": str(cohort["name"]),
                 "description": str(cohort.get("description", "")),
                 "created": str(cohort.get("created", "2026-01-01 00:00:00")),
                 "is_visible": int(bool(cohort.get("is_visible", True))),
                 "members": [str(m) for m in cohort.get("members", [])]}
        self.cohorts = [c for c in self.cohorts if c["id"] != entry["id"]] + [entry]
        return entry

    def cohort(self, cohort_id: int) -> dict | None:
        return next((c for c in self.cohorts if c["id"] == cohort_id), None)


def _read_records(path: Path) -> list[dict]:
    """Records from JSON: one list, one Engage page, or a sequence of them (Engage pages one after
    another, JSON Lines of records)."""
    with _open_text(path) as handle:
        text = handle.read()
    decoder, records, position = json.JSONDecoder(), [], 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            break
        try:
            value, position = decoder.raw_decode(text, position)
        except ValueError as exc:
            raise EmulatorError(f"{path}: not JSON ({exc})") from None
        if isinstance(value, dict) and isinstance(value.get("results"), list):
            value = value["results"]
        records.extend(value if isinstance(value, list) else [value])
    if not all(isinstance(r, dict) for r in records):
        raise EmulatorError(f"{path}: expected objects (profiles or cohorts)")
    return records
