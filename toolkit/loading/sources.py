"""Finding input files and telling what they hold, before anything is loaded.

A file is described by its format (jsonl, json, csv, parquet) and its kind (events, profiles,
profile_updates, identity_mappings), detected from its name and first record so that a landing folder can
hold all of them. A file in a Mixpanel Data Pipelines folder (`pipelines`) has that layout's kind and field
names (``layout="pipelines"``). Only the first few KiB are read here; DuckDB reads the rest.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import xxhash

from toolkit.errors import LoadError
from toolkit.loading import pipelines

KINDS = ("events", "profiles", "profile_updates", "identity_mappings")
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
    delimiter: str = ","   # CSV: told from the header line (DuckDB's sniffer gives up on a short row)
    kind_given: bool = False   # the kind was asked for (--kind), not detected
    layout: str = "export"     # export (Mixpanel's Export/Engage shapes) | pipelines (Data Pipelines' fields)

    @property
    def compressed(self) -> bool:
        return self.path.suffix == ".gz"


def discover(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand folders (recursively, skipping hidden entries) into data files, sorted for a stable order.
    A data file's name that leads nowhere (a broken link, a link loop) is kept, for `describe` to refuse
    with its reason rather than pass over in silence."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if (p.is_file() or p.is_symlink()) and _format_of(p)
                                and not any(part.startswith(".") for part in p.relative_to(path).parts)))
        elif path.is_file() or path.is_symlink():
            found.append(path)
        else:
            raise LoadError(str(path), "no such file or folder")
    return found


def describe(path: Path, kind: str | None = None) -> Source:
    """The file's format, kind, size and mtime; a LoadError naming the file and the reason when it
    cannot be read at all (a link loop, no permission, not gzip, binary or UTF-16/32 content)."""
    fmt = _format_of(path)
    if fmt is None:
        raise LoadError(str(path), "unknown file type; expected .jsonl, .ndjson, .json, .csv or .parquet "
                                   "(optionally .gz)")
    try:
        stat = path.stat()
    except OSError as exc:
        raise LoadError(str(path), f"cannot read: {_os_reason(exc)}") from None
    if not path.is_file():
        raise LoadError(str(path), "not a regular file")
    if path.suffix == ".gz" and stat.st_size == 0:
        raise LoadError(str(path), "cannot read: the file is empty, not gzip data")
    if kind is not None and kind not in KINDS:
        raise LoadError(str(path), f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    delimiter = ","
    if fmt != "parquet":
        head = _peek(path)
        _check_text(path, head)
        text = head.decode("utf-8", errors="replace")
        if fmt == "csv":
            delimiter = _delimiter(text)
    given = kind is not None
    layout = "export"
    table = pipelines.table_of(path)
    if table is not None or (fmt in ("json", "jsonl") and _pipelines_event(text)):
        layout = "pipelines"
        kind = kind or pipelines.KIND_OF_TABLE.get(table or pipelines.EVENTS)
        if fmt == "json" and not text.lstrip("\ufeff \t\r\n").startswith("["):
            fmt = "jsonl"   # Pipelines write newline-delimited JSON under a .json name
    elif kind == "identity_mappings":
        raise LoadError(str(path), "identity mappings are read from a Data Pipelines folder "
                                   f"(<project id>/{pipelines.IDENTITY}/)")
    if fmt != "parquet" and kind is None:
        kind = _detect_kind(fmt, text)
    return Source(path, fmt, kind or "events", stat.st_size, stat.st_mtime_ns, delimiter, given, layout)


def content_hash(path: Path) -> str:
    """What the manifest knows a file by. XXH3-128 rather than SHA-256: it tells accidental copies
    apart just as surely and runs at memory speed (SHA-256 cost 0.4 s per million events, 5x this).

    A gzip file is also inflated as it is hashed, to refuse a gzip bomb or a cut-short file (`_Inflater`);
    the inflated bytes are counted and dropped, so memory stays flat."""
    digest = xxhash.xxh3_128()
    inflate = _Inflater(path) if path.suffix == ".gz" else None
    buffer = bytearray(1 << 22)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while size := fh.readinto(buffer):
            digest.update(view[:size])
            if inflate:
                for start in range(0, size, 1 << 16):   # small steps: a bomb trips early
                    inflate.feed(view[start:min(size, start + (1 << 16))])
    if inflate:
        inflate.finish()
    return "xxh3-128:" + digest.hexdigest()


def prefix_hash(path: Path, size: int) -> str:
    """`content_hash` of the file's first ``size`` bytes (a file that grew: was its start loaded?)."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        while size > 0 and (chunk := fh.read(min(size, 1 << 22))):
            digest.update(chunk)
            size -= len(chunk)
    return "xxh3-128:" + digest.hexdigest()


MAX_EXPANSION = 200                 # a gzip file inflating to more than this many times its size...
MIN_BOMB_BYTES = 64 << 20           # ...and to more than this is refused as a gzip bomb


class _Inflater:
    """Counts a gzip file's inflated bytes (members one after another) without keeping them."""

    def __init__(self, path: Path):
        self.path, self.read, self.inflated = path, 0, 0
        self._z, self._fed = zlib.decompressobj(wbits=31), False

    def feed(self, data) -> None:
        self.read += len(data)
        data = bytes(data)
        while data:
            self._fed = True
            try:
                out = self._z.decompress(data, 1 << 22)
            except zlib.error as exc:
                raise LoadError(str(self.path), f"cannot read: not valid gzip data ({exc})") from None
            self.inflated += len(out)
            if self.inflated > max(MIN_BOMB_BYTES, MAX_EXPANSION * self.read):
                raise LoadError(str(self.path), f"inflates to over {self.inflated >> 20} MiB from "
                                    f"{_size(self.read)} read so far (over {MAX_EXPANSION} times): "
                                    "refused as a likely gzip bomb")
            if self._z.unconsumed_tail:
                data = self._z.unconsumed_tail
            elif self._z.eof:   # another gzip member may follow
                data, self._z, self._fed = self._z.unused_data, zlib.decompressobj(wbits=31), False
            else:
                data = b""

    def finish(self) -> None:
        if self._fed and not self._z.eof:
            raise LoadError(str(self.path), "cannot read: the compressed file is cut short")


def _size(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.0f} KiB"


def _format_of(path: Path) -> str | None:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return SUFFIXES.get(suffixes[-1].lower()) if suffixes else None


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if exc.errno == errno.ENOENT:
        return "broken symbolic link (its target does not exist)"
    return exc.strerror or str(exc)


def _peek(path: Path) -> bytes:
    """The first bytes of the file's content (decompressed); also proves the file can be opened."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            return fh.read(_PEEK_BYTES)
    except gzip.BadGzipFile:
        raise LoadError(str(path), "cannot read: not gzip data (the name ends in .gz)") from None
    except OSError as exc:
        raise LoadError(str(path), f"cannot read: {_os_reason(exc)}") from None
    except EOFError:
        raise LoadError(str(path), "cannot read: the compressed file is cut short") from None


# Byte-order marks of encodings other than UTF-8 (UTF-32 first: its LE mark starts like UTF-16's).
_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
         (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def _check_text(path: Path, head: bytes) -> None:
    """Refuse a file that is not UTF-8 text as a whole: its lines would all be quarantined as noise.
    A stray bad byte in one line is left to the loader, which quarantines that line."""
    for bom, name in _BOMS:
        if head.startswith(bom):
            raise LoadError(str(path), f"encoded as {name}; save it as UTF-8")
    if b"\x00" in head:
        where = head.index(b"\x00")
        encoding = " (it looks like UTF-16 text; save it as UTF-8)" if head.count(0) > len(head) // 4 else ""
        raise LoadError(str(path), f"binary content (a zero byte at byte {where}), not text{encoding}")


def _detect_kind(fmt: str, head: str) -> str:
    """By the keys of the first record that is a JSON object (a blank, malformed or non-object line
    before it does not decide); CSV files hold events."""
    if fmt == "csv":
        return "events"
    head = head.lstrip("\ufeff \t\r\n")
    keys: set = set()
    for record in _first_records(head):
        if isinstance(record, dict) and record:
            keys = set(record)
            break
    else:
        keys = set(_LEADING_KEYS.findall(head[:4096]))
    if {"event", "properties"} <= keys:
        return "events"   # whatever else the record holds
    if keys & {"results", "$properties"}:
        return "profiles"
    if keys & set(PROFILE_OPS):
        return "profile_updates"
    return "events"   # including empty files and malformed records, which validation reports


def _pipelines_event(head: str) -> bool:
    """The first JSON object record has Pipelines' event fields (``event_name`` and ``properties``)."""
    for record in _first_records(head.lstrip("\ufeff \t\r\n")):
        if isinstance(record, dict) and record:
            return {pipelines.EVENT_NAME, "properties"} <= set(record) and "event" not in record
    return False


def _delimiter(head: str) -> str:
    """The CSV delimiter: whichever of , ; tab | the header line holds most of (outside quotes)."""
    header = re.sub(r'"[^"]*"', "", head.lstrip("\ufeff").split("\n", 1)[0])
    counts = {d: header.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _first_records(head: str, count: int = 20) -> list:
    """The first records of a JSON Lines file or of a JSON array that parse (a JSON Lines line that
    does not is passed over); none when they cannot be told."""
    if head.startswith("["):
        try:
            return [json.JSONDecoder().raw_decode(head[1:].lstrip())[0]]
        except (ValueError, RecursionError):   # nested too deep for Python: the loader judges it
            return []
    found = []
    for line in head.splitlines()[:count]:
        try:
            found.append(json.loads(line))
        except (ValueError, RecursionError):
            continue
    return found
