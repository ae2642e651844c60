"""Finding input files and telling what they hold, before anything is loaded.

A file is described by its format (jsonl, json, csv, parquet) and its kind (events, profiles,
profile_updates), detected from its name and first record so that a landing folder can hold all
three. Only the first few KiB are read here; DuckDB reads the rest.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import xxhash

from toolkit.errors import LoadError

KINDS = ("events", "profiles", "profile_updates")
PROFILE_OPS = ("$set", "$set_once", "$add", "$union", "$append", "$remove", "$unset", "$delete")
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_PEEK_BYTES = 1 << 16
# Keys in the head of a document too large to parse from its first bytes (a big Engage page).
_LEADING_KEYS = re.compile(r'[{,]\s*"(results|\$properties|\$set|\$set_once|\$add|\$union|\$append|'
                           r'\$remove|\$unset|\$delete|event)"\s*:')


@dataclass(frozen=True)
class Source:
    path: Path
    format: str        # jsonl | json (array or document) | csv | parquet
    kind: str          # events | profiles | profile_updates
    size: int
    mtime_ns: int

    @property
    def compressed(self) -> bool:
        return self.path.suffix == ".gz"


def discover(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand folders (recursively, skipping hidden entries) into data files, sorted for a stable order."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and _format_of(p)
                                and not any(part.startswith(".") for part in p.relative_to(path).parts)))
        elif path.is_file():
            found.append(path)
        else:
            raise LoadError(str(path), "no such file or folder")
    return found


def describe(path: Path, kind: str | None = None) -> Source:
    fmt = _format_of(path)
    if fmt is None:
        raise LoadError(str(path), "unknown file type; expected .jsonl, .ndjson, .json, .csv or .parquet "
                                   "(optionally .gz)")
    stat = path.stat()
    if kind is None:
        kind = _detect_kind(path, fmt)
    elif kind not in KINDS:
        raise LoadError(str(path), f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    return Source(path, fmt, kind, stat.st_size, stat.st_mtime_ns)


def content_hash(path: Path) -> str:
    """What the manifest knows a file by. XXH3-128 rather than SHA-256: it tells accidental copies
    apart just as surely and runs at memory speed (SHA-256 cost 0.4 s per million events, 5x this)."""
    digest = xxhash.xxh3_128()
    buffer = bytearray(1 << 22)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while size := fh.readinto(buffer):
            digest.update(view[:size])
    return "xxh3-128:" + digest.hexdigest()


def _format_of(path: Path) -> str | None:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return SUFFIXES.get(suffixes[-1].lower()) if suffixes else None


def _peek(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(_PEEK_BYTES)
    except (OSError, EOFError) as exc:
        raise LoadError(str(path), f"cannot read: {exc}") from exc
    return head.decode("utf-8", errors="replace")


def _detect_kind(path: Path, fmt: str) -> str:
    """By the first record's keys; CSV and Parquet files hold events."""
    if fmt in ("csv", "parquet"):
        return "events"
    head = _peek(path).lstrip("\ufeff \t\r\n")
    record = _first_record(head)
    keys = set(record) if isinstance(record, dict) else set(_LEADING_KEYS.findall(head[:4096]))
    if keys & {"results", "$properties"}:
        return "profiles"
    if keys & set(PROFILE_OPS):
        return "profile_updates"
    return "events"   # including empty files and a malformed first line, which validation reports


def _first_record(head: str) -> object:
    """The first record of a JSON Lines file or of a JSON array; None when it cannot be told."""
    text = head[1:].lstrip() if head.startswith("[") else head
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
        return value
    except ValueError:
        return None
