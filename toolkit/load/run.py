"""Loading Mixpanel exports into the store: each file all or nothing, bad rows to the quarantine.

For each file: skip it if its content was loaded before (manifest by content hash, computed while the
file is read; an unchanged path, size and mtime skips without hashing); otherwise read it with DuckDB.
An events file is staged first (its rows committed but invisible until published), then settled in
one transaction: refused rows move to the quarantine with their line and reason, older copies of
duplicate events are dropped (Mixpanel's key: event, distinct_id, time, $insert_id; the most recent
copy wins), identity links are recorded, the identity map refreshed and the manifest row written,
which publishes the file.
Profile snapshots and updates are applied in one transaction. Any failure or interrupt leaves the
store as it was before that file; the files before it stay loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import duckdb
from tqdm.auto import tqdm

from toolkit.errors import LoadError
from toolkit.load import derived, identity, profile_ops, readers, validation
from toolkit.load.sources import Source, content_hash, describe, discover, prefix_hash
from toolkit.store import Store, profile_facts

_REJECTS = "_load_rejects"
LOAD_MEMORY = "1GB"     # DuckDB's share while loading ($TOOLKIT_LOAD_MEMORY overrides)
SETTLE_SECONDS = 2.0    # a file changed more recently is waited for ($TOOLKIT_SETTLE_SECONDS overrides)
_PROFILE_BATCH_BYTES = 16 << 20   # JSON Lines text parsed per statement (see _stage_profile_records)
_KIND_ORDER = {"events": 0, "profiles": 1, "profile_updates": 2}   # identity first, then who it names


@dataclass
class FileResult:
    path: str
    kind: str
    status: str                 # loaded | skipped | refused | waiting (still being written)
    rows_read: int = 0
    rows_loaded: int = 0
    duplicates: int = 0
    quarantined: int = 0
    message: str = ""
    seconds: float = 0.0


@dataclass
class LoadSummary:
    """What a load did, one ``FileResult`` per file (loaded, skipped, refused or waiting); ``to_dict()``
    gives the totals the CLI prints."""
    files: list[FileResult] = field(default_factory=list)

    def total(self, name: str) -> int:
        return sum(getattr(f, name) for f in self.files if f.status == "loaded")

    @property
    def refused(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "refused"]

    def to_dict(self) -> dict:
        loaded = [f for f in self.files if f.status == "loaded"]
        return {
            "files_loaded": len(loaded),
            "files_skipped": sum(f.status == "skipped" for f in self.files),
            "files_refused": len(self.refused),
            "files_waiting": sum(f.status == "waiting" for f in self.files),
            "events": sum(f.rows_loaded for f in loaded if f.kind == "events"),
            "profiles": sum(f.rows_loaded for f in loaded if f.kind == "profiles"),
            "profile_updates": sum(f.rows_loaded for f in loaded if f.kind == "profile_updates"),
            "duplicates_dropped": self.total("duplicates"),
            "rows_quarantined": self.total("quarantined"),
            "files": [asdict(f) for f in self.files],
        }


def load(store: Store, paths: Iterable[str | os.PathLike], *, strict: bool = False,
         kind: str | None = None, now: datetime | None = None, progress: bool = False,
         on_file: Callable[[FileResult], None] | None = None) -> LoadSummary:
    """Load files and folders (only files not loaded before are read). Never raises for one bad file
    unless ``strict``: a refused file is reported in the summary and the others still load."""
    now = now or datetime.now(UTC)
    sources = []
    summary = LoadSummary()
    for path in discover(list(paths)):
        try:
            sources.append(describe(path, kind))
        except LoadError as exc:
            if strict:
                raise
            summary.files.append(FileResult(str(path), kind or "?", "refused", message=str(exc)))
    sources, unsettled = _settle(sources, float(os.environ.get("TOOLKIT_SETTLE_SECONDS", SETTLE_SECONDS)))
    summary.files += unsettled
    sources.sort(key=lambda s: _KIND_ORDER[s.kind])   # stable: paths stay sorted within a kind
    # Rows carry their file and line, so DuckDB need not keep insertion order; without it a large
    # load checkpoints much faster (measured: 3.5 s -> 0.1 s per million events).
    store.con.execute("SET preserve_insertion_order = false")
    # DuckDB would take up to 80% of RAM; a load spills to disk instead, so it stays flat as files grow.
    store.con.execute("SET memory_limit = ?", [os.environ.get("TOOLKIT_LOAD_MEMORY", LOAD_MEMORY)])
    try:
        _discard_unpublished(store)
        return _load_sources(store, sources, summary, strict, now, progress, on_file)
    finally:
        store.con.execute("RESET preserve_insertion_order")
        store.restore_memory_limit()


def _settle(sources: list[Source], seconds: float) -> tuple[list[Source], list[FileResult]]:
    """The sources whose files have settled, and a result for each that kept changing: a file changed
    in the last ``seconds`` (or dated in the future) is read only once its size and mtime stayed the
    same for ``seconds``, so a file still being written is read whole, never in part (the part and
    then the whole would both load). Waits at most three times ``seconds``, for all the files at once."""
    if seconds <= 0:
        return sources, []
    now_ns = time.time_ns()
    waiting = [s for s in sources if now_ns - s.mtime_ns < seconds * 1e9]
    ready = [s for s in sources if s not in waiting]
    for _ in range(3):
        if not waiting:
            break
        time.sleep(seconds)
        again = [_restat(s) for s in waiting]
        pairs = list(zip(waiting, again, strict=True))
        ready += [s for s, now in pairs if (s.size, s.mtime_ns) == (now.size, now.mtime_ns)]
        waiting = [now for s, now in pairs if (s.size, s.mtime_ns) != (now.size, now.mtime_ns)]
    return ready, [FileResult(str(s.path), s.kind, "waiting", message=(
        f"{s.path}: still being written (it kept changing for {3 * seconds:g} s); it loads on a later run"))
        for s in waiting]


def _restat(source: Source) -> Source:
    try:
        stat = source.path.stat()
    except OSError:
        return source   # read next, where the reason is reported
    return dataclasses.replace(source, size=stat.st_size, mtime_ns=stat.st_mtime_ns)


def _load_sources(store, sources, summary, strict, now, progress, on_file) -> LoadSummary:
    with tqdm(total=sum(s.size for s in sources), unit="B", unit_scale=True, desc="load",
              disable=not progress or None) as bar:
        for source in sources:
            bar.set_postfix_str(source.path.name)
            result = load_file(store, source, strict=strict, now=now)
            summary.files.append(result)
            bar.update(source.size)
            if on_file:
                on_file(result)
    return summary


def load_file(store: Store, source: Source, *, strict: bool = False, now: datetime) -> FileResult:
    started = time.perf_counter()
    result = FileResult(str(source.path), source.kind, "loaded")
    seen = store.con.execute(
        f"SELECT path FROM loads WHERE path = ? AND size = ? AND mtime_ns = ? AND {_same_kind(source)}",
        [str(source.path), source.size, source.mtime_ns]).fetchone()
    if seen:
        result.status, result.message = "skipped", f"already loaded (same content as {seen[0]})"
        return result
    try:
        _refuse_grown(store, source)
    except LoadError as exc:
        return _refused(source, exc, None, strict)
    # The file is hashed while DuckDB stages it: both read it (at 10M events, hashing first cost 2.6 s
    # with the file cached and 12 s without). A copy of a loaded file is caught before it publishes.
    hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="content-hash")
    digest = hashing.submit(content_hash, source.path)
    # Events try read_json first; if it refuses the file, the careful line-by-line reader retries.
    attempts = (False, True) if source.kind == "events" and source.format in ("jsonl", "json") else (True,)
    try:
        for careful in attempts:
            try:
                result = _load_once(store, source, digest, strict, now, careful)
                break
            # DuckDB may cut a record mid-character when quoting it in an error message: Python then
            # fails to decode the message itself. Either way read_json refused the file.
            except (duckdb.InvalidInputException, UnicodeDecodeError) as exc:
                if careful or _hash_failure(digest):
                    result = _refused(source, exc, digest, strict)
            except (LoadError, duckdb.Error, OSError, RecursionError) as exc:
                result = _refused(source, exc, digest, strict)
                break
    finally:
        hashing.shutdown(wait=False)   # an interrupted load does not wait for the hash
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _load_once(store: Store, source: Source, digest: Future[str], strict: bool, now: datetime,
               careful: bool) -> FileResult:
    """Load one file: stage its events (own transaction), then settle and publish it (one transaction).

    Events are staged apart because DuckDB rewrites a transaction's whole bulk insert at commit if the
    transaction also deleted any of the rows it inserted (measured: +2.5 s per million events), and
    settling deletes refused rows and older copies. Staged rows stay invisible (`events` shows
    published files only); any failure discards them, and a crash leaves them to `_discard_unpublished`.
    """
    result = FileResult(str(source.path), source.kind, "loaded")
    params = {"path": str(source.path), **validation.parameters(_ms(now))}
    with store.transaction() as con:
        _drop_scratch(con)
        params["file_id"] = con.execute("SELECT nextval('file_ids')").fetchone()[0]
        if source.compressed and (failed := digest.exception()):
            # Inflated and measured before DuckDB reads it: a gzip bomb that inflates to blank lines gives
            # DuckDB no point at which to stop. Costs one inflation (in Python) of each gzip file.
            raise failed
        if source.kind == "events":
            _stage_events(con, source, careful, params)
    try:
        copy_of = store.con.execute(f"SELECT path FROM loads WHERE content_hash = ? AND {_same_kind(source)}",
                                    [digest.result()]).fetchone()
        if copy_of:
            _discard_unpublished(store)
            result.status, result.message = "skipped", f"already loaded (same content as {copy_of[0]})"
            return result
        with store.transaction() as con:
            settle = {"events": _settle_events, "profiles": _load_profiles,
                      "profile_updates": _load_profile_updates}[source.kind]
            settle(con, source, params["file_id"], now, result, careful)
            if strict and result.quarantined:
                raise LoadError(str(source.path), _strict_message(con, params["file_id"], result.quarantined))
            linked = con.execute("SELECT count(*) FROM identity_links WHERE file_id = ?",
                                 [params["file_id"]]).fetchone()[0]
            derived.refresh(con, params["file_id"], changed=source.kind != "events" or linked > 0)
            _check_unchanged(source)   # the hash and the rows are of the same bytes
            if source.kind_given:   # what the content read as another kind left in the quarantine
                con.execute("DELETE FROM quarantine WHERE file_id IN (SELECT file_id FROM loads "
                            "WHERE content_hash = ? AND kind <> ?)", [digest.result(), source.kind])
            con.execute("INSERT INTO loads VALUES (?, ?, ?, ?, ?, ?, ?, ?::TIMESTAMP, ?, ?, ?, ?)", [
                params["file_id"], str(source.path), digest.result(), source.size, source.mtime_ns,
                source.kind, source.format, now.replace(tzinfo=None), result.rows_read, result.rows_loaded,
                result.duplicates, result.quarantined])
    except BaseException:
        if source.kind == "events":
            with contextlib.suppress(duckdb.Error):   # else the next load discards them
                _discard_unpublished(store)
        raise
    return result


def _check_unchanged(source: Source) -> None:
    try:
        stat = source.path.stat()
    except OSError as exc:
        raise LoadError(str(source.path), f"cannot read: {exc.strerror or exc}") from None
    if (stat.st_size, stat.st_mtime_ns) != (source.size, source.mtime_ns):
        raise LoadError(str(source.path), "changed while it was being read; nothing of it was kept, "
                                          "it loads on a later run")


def _discard_unpublished(store: Store) -> None:
    """Delete event rows staged by a load that never published (failed, interrupted or killed)."""
    with store.transaction() as con:
        con.execute("DELETE FROM event_rows WHERE file_id > (SELECT coalesce(max(file_id), 0) FROM loads)")


def _same_kind(source: Source) -> str:
    """SQL on `loads`: a load that makes loading ``source`` again pointless. Asked for a kind, only a
    load as that kind (detection may have been wrong); else any load of the content."""
    return f"kind = '{source.kind}'" if source.kind_given else "true"   # kind is one of sources.KINDS


def _refuse_grown(store: Store, source: Source) -> None:
    """A file loaded before under this path that has since grown at its end was loaded in part
    (it was being written): loading it whole would load that part twice."""
    earlier = store.con.execute(
        "SELECT size, content_hash, loaded_at FROM loads WHERE path = ? AND size < ? ORDER BY file_id DESC LIMIT 1",
        [str(source.path), source.size]).fetchone()
    if earlier and earlier[0] > 0 and prefix_hash(source.path, earlier[0]) == earlier[1]:
        raise LoadError(str(source.path), (
            f"grew by {source.size - earlier[0]} bytes since its first {earlier[0]} bytes were loaded "
            f"({earlier[2]:%Y-%m-%d %H:%M} UTC); loading it again would load those twice: put the new "
            "records in a file of their own"))


def _hash_failure(digest: Future[str] | None) -> BaseException | None:
    return digest.exception() if digest and digest.done() else None


def _refused(source: Source, exc: BaseException, digest: Future[str] | None, strict: bool) -> FileResult:
    """The file refused on its own, with the reason a person can act on (the hash thread's first: a
    gzip bomb, a cut-short or unreadable file explains why DuckDB failed)."""
    cause = _hash_failure(digest) or exc
    if isinstance(cause, LoadError):
        error = cause
    elif isinstance(cause, OSError):
        error = LoadError(str(source.path), f"cannot read: {cause.strerror or cause}")
    elif isinstance(cause, RecursionError):
        error = LoadError(str(source.path), "a record is nested too deeply to read")
    else:
        error = LoadError(str(source.path), f"cannot be read: {_first_line(cause)}")
    if strict:
        raise error from (None if error is exc else exc)
    return FileResult(str(source.path), source.kind, "refused", message=str(error))


def _drop_scratch(con) -> None:
    for table in (_REJECTS, f"{_REJECTS}_scan", f"{_REJECTS}_lines", "_records"):
        con.execute(f"DROP TABLE IF EXISTS temp.{table}")


# -- events ----------------------------------------------------------------------------------

def _stage_events(con, source: Source, careful: bool, params: dict) -> None:
    """Insert every record of the file; a refused one holds only its reason (``rejected``)."""
    if careful and source.format == "jsonl":
        _sql(con, readers.stage_lines(_REJECTS), params)
    for lines in _ranges(con, source, careful):
        _stage_event_range(con, source, careful, params, lines)


def _ranges(con, source: Source, careful: bool) -> list:
    """The careful reader parses staged JSON Lines a few megabytes at a time (`readers.line_ranges`)."""
    return con.execute(readers.line_ranges(_REJECTS)).fetchall() if careful and source.format == "jsonl" else [None]


def _stage_event_range(con, source: Source, careful: bool, params: dict, lines) -> None:
    _sql(con, f"""
        INSERT INTO event_rows (event, distinct_id, time, insert_id, properties, file_id, rejected,
                                device_id, user_id, link_source, link_target)
        SELECT CASE WHEN reason IS NULL THEN ev_s END,
               CASE WHEN reason IS NULL THEN did_s END,
               CASE WHEN reason IS NULL THEN make_timestamp(CAST(round(time_ms) AS BIGINT) * 1000) END,
               CASE WHEN reason IS NULL THEN iid_s END,
               CASE WHEN reason IS NULL THEN props END,
               $file_id, reason,
               CASE WHEN reason IS NULL AND json_type(dev) IN ('VARCHAR', 'BIGINT', 'UBIGINT') THEN dev ->> '$' END,
               CASE WHEN reason IS NULL AND json_type(uid) IN ('VARCHAR', 'BIGINT', 'UBIGINT') THEN uid ->> '$' END,
               -- an identity event's ids, so that settling does not read `properties` (store migration 5)
               CASE WHEN reason IS NULL THEN CASE ev_s WHEN '$identify' THEN links[1] ->> '$'
                                                       WHEN '$create_alias' THEN links[3] ->> '$'
                                                       WHEN '$merge' THEN links[4] ->> '$[1]' END END,
               CASE WHEN reason IS NULL THEN CASE ev_s WHEN '$identify' THEN links[2] ->> '$'
                                                       WHEN '$create_alias' THEN did_s
                                                       WHEN '$merge' THEN links[4] ->> '$[0]' END END
        FROM ({_checked_events(source, careful, numbered=False, lines=lines)})""", params)


def _checked_events(source: Source, careful: bool, numbered: bool, lines=None) -> str:
    """The file's records with ``time_ms`` and ``reason`` (NULL for a valid event)."""
    fields = readers.event_fields(source, careful, _REJECTS, numbered, lines)
    time_ms = validation.time_ms_expr("tm")
    reason = validation.event_reason("ev", "props", "did", "time_ms", "tm", "iid", readers.MAX_RECORD_BYTES)
    return f"""
        WITH src AS (SELECT *, {validation.typed("ev", "did", "tm", "iid", texts=("ev", "did", "iid"),
                                                 numbers=("tm",))} FROM ({fields})),
        timed AS (SELECT *, {time_ms} AS time_ms FROM src)
        SELECT *, coalesce(doc_error, {reason}) AS reason FROM timed"""


def _settle_events(con, source: Source, file_id: int, now: datetime, result: FileResult,
                   careful: bool) -> None:
    params = {"path": str(source.path), "file_id": file_id, **validation.parameters(_ms(now))}
    if con.execute("SELECT count(*) FROM event_rows WHERE file_id = ? AND rejected IS NOT NULL",
                   [file_id]).fetchone()[0]:
        _quarantine_events(con, source, careful, params)
    rejects = _rejected_line_rows(con)
    if rejects:
        con.execute(f"INSERT INTO quarantine SELECT ?, ?, record, reason, raw FROM ({rejects})",
                    [file_id, str(source.path)])
    result.quarantined = _quarantined_count(con, file_id)
    kept, = con.execute("SELECT count(*) FROM event_rows WHERE file_id = ? AND rejected IS NULL",
                        [file_id]).fetchone()
    result.rows_read = kept + result.quarantined
    result.duplicates = _drop_duplicates(con, file_id)
    result.rows_loaded = kept - result.duplicates
    _record_event_links(con, file_id)
    refresh_identity(con, file_id)


def _quarantine_events(con, source: Source, careful: bool, params: dict) -> None:
    """Quarantine the file's refused records with their line numbers, read again (only files with a
    refused record pay for numbering), and delete their staged rows."""
    reconstructed = ("'{\"event\":' || coalesce(ev::VARCHAR, 'null') || ',\"properties\":' "
                     "|| coalesce(props::VARCHAR, 'null') || '}'")
    if source.format == "csv":   # this read records the short rows again
        _drop_scratch(con)
    for lines in _ranges(con, source, careful):
        _sql(con, f"""
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
    con.execute(readers.stage_lines(_REJECTS), {"path": str(source.path)})
    con.execute(f"""
        UPDATE quarantine SET line = m.line
        FROM (SELECT line, row_number() OVER (ORDER BY line) AS record FROM (
                  SELECT {readers.line_of('ordinality', _REJECTS)} AS line
                  FROM {_REJECTS}_lines WHERE raw IS NOT NULL AND trim(raw, {readers.JSON_BLANKS}) <> ''
                  UNION ALL SELECT line FROM {_REJECTS})) m
        WHERE quarantine.file_id = ? AND quarantine.line = m.record""", [file_id])
    con.execute(f"DROP TABLE IF EXISTS {_REJECTS}")


def _renumber_csv_rows(con, file_id: int) -> None:
    """CSV records are numbered as read (the header is line 1); rows refused for their number of
    fields were not read, so the lines after them move down."""
    con.execute(f"""UPDATE quarantine SET line = {readers.line_of('line', _REJECTS)}
                    WHERE file_id = ? AND line IS NOT NULL""", [file_id])


def _rejected_line_rows(con) -> str | None:
    exists = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND temporary",
                         [_REJECTS]).fetchone()[0]
    if not exists:
        return None
    return readers.rejected_lines(_REJECTS)


def _drop_duplicates(con, file_id: int) -> int:
    """Delete every copy but the most recent of events sharing the dedup key: the copy from the latest
    file, within a file the one Mixpanel processed last (`mp_processing_time_ms`); copies alike in
    both are told apart by their properties, so the outcome never depends on the reader's row order.

    Taking the processing time and a content hash out at staging spared this step its read of
    `properties` (3.5 s at 10M events) but cost staging more (measured: +10 s at 10M)."""
    key = "hash(event, distinct_id, time, insert_id)"   # collisions only widen the candidates
    deleted = con.execute(f"""
        DELETE FROM event_rows WHERE rowid IN (
            WITH new AS (SELECT {key} AS k FROM event_rows WHERE file_id = $file_id AND insert_id IS NOT NULL),
            shared AS (   -- keys this file holds twice, or that an earlier file holds too
                SELECT k FROM new GROUP BY k HAVING count(*) > 1
                UNION
                SELECT {key} FROM event_rows
                WHERE file_id < $file_id AND insert_id IS NOT NULL AND {key} IN (SELECT k FROM new)),
            copies AS MATERIALIZED (   -- found without reading properties, which only they need
                SELECT rowid AS r FROM event_rows WHERE insert_id IS NOT NULL AND {key} IN (SELECT k FROM shared))
            SELECT rowid FROM event_rows WHERE rowid IN (SELECT r FROM copies)
            QUALIFY row_number() OVER (
                PARTITION BY event, distinct_id, time, insert_id
                ORDER BY file_id DESC, try_cast(properties ->> 'mp_processing_time_ms' AS DOUBLE) DESC NULLS LAST,
                         properties::VARCHAR DESC) > 1)""",
                          {"file_id": file_id}).fetchone()[0]
    return deleted


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


# -- identity --------------------------------------------------------------------------------

def refresh_identity(con, file_id: int) -> None:
    """Bring the identity map up to date with the links file ``file_id`` added.

    A link's fate depends on the earlier links of its connected component (every link, refused or
    not, joins its two ids), and on nothing else. So only the components this file's links reach are
    resolved again, with all their links in order, whatever their times: a 10k-event load into a
    store of 10M events and 1M profiles no longer rebuilds the whole map."""
    scope = _take_reached_components(con, file_id)
    if scope is None:
        return
    _find_star_links(con, scope)
    # Links in one file at one moment go by their line when they have one (profile updates), else by
    # their content: event rows carry no line, and the order must not depend on how they were read.
    rows = con.execute(f"""
        SELECT rowid, kind, source, target, time_ms, file_id, coalesce(line, 0) FROM identity_links
        WHERE {scope} AND rowid NOT IN (SELECT rid FROM _star_links)
        ORDER BY time_ms, file_id, coalesce(line, 0), kind, source, target, rowid""").fetchall()
    links = [(kind, source, target, (time_ms, file_id, line, kind, source, target, rowid))
             for rowid, kind, source, target, time_ms, file_id, line in rows]
    resolution = identity.resolve(links, ordered=True)   # DuckDB sorted them as Python would
    con.execute("INSERT INTO identity_map SELECT source, target FROM _star_links")
    for table in ("_star_links", "_reached"):
        con.execute(f"DROP TABLE {table}")
    _write_resolution(con, resolution)


def _take_reached_components(con, file_id: int) -> str | None:
    """Take the components file ``file_id``'s links reach out of the map and their links' refusals
    (temp table ``_reached`` holds their ids); return the SQL condition on `identity_links` that
    selects their links, or None when the file added no link. The first links take everything."""
    new, earlier = con.execute("SELECT count(*) FILTER (WHERE file_id = ?), count(*) FILTER (WHERE file_id < ?) "
                               "FROM identity_links", [file_id, file_id]).fetchone()
    if not new:
        return None
    con.execute("CREATE OR REPLACE TEMP TABLE _reached (id VARCHAR)")
    if earlier:
        con.execute("""
            INSERT INTO _reached
            WITH RECURSIVE edges AS (SELECT source AS a, target AS b FROM identity_links
                                     UNION ALL SELECT target, source FROM identity_links),
            reached(id) AS (SELECT source FROM identity_links WHERE file_id = $f
                            UNION SELECT target FROM identity_links WHERE file_id = $f
                            UNION SELECT e.b FROM edges e JOIN reached r ON e.a = r.id)
            SELECT id FROM reached""", {"f": file_id})
        scope = "source IN (SELECT id FROM _reached)"   # then its target is reached too
        con.execute("DELETE FROM identity_map WHERE distinct_id IN (SELECT id FROM _reached)")
    else:
        scope = "true"
        con.execute("DELETE FROM identity_map")
    # Through rowid: filtering the UPDATE itself on `source` took 1.4 s at 900k links, this 0.1 s.
    con.execute(f"UPDATE identity_links SET refused = NULL WHERE rowid IN "
                f"(SELECT rowid FROM identity_links WHERE refused IS NOT NULL AND {scope})")
    return scope


def _find_star_links(con, scope: str) -> None:
    """Fill temp table ``_star_links`` (rid, source, target) with the links of ``scope`` that SQL can map.

    Most components are stars: fewer than 500 links into one centre that is never a source, from
    sources no other link names (a user's $identify from an anonymous id, its devices' $user_id, its
    $onesignal_user_id). Each such link meets a source cluster of one, so only its kind's own check
    can refuse it, whatever its place in the order, and the centre stays canonical. A link its own
    check refuses is left to `identity.resolve`, for its reason (at 10M events: 460k of 500k links
    are mapped here; loading 1M profiles after them, the refresh took 8.0 s before stars, 4.2 s)."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _star_links AS
        WITH links AS (SELECT rowid AS rid, * FROM identity_links WHERE {scope}),
        named AS (SELECT id, count(*) AS n FROM (SELECT source AS id FROM links UNION ALL SELECT target FROM links)
                  GROUP BY id),
        centres AS (SELECT l.target FROM links l JOIN named s ON s.id = l.source
                    WHERE l.target NOT IN (SELECT source FROM links)
                    GROUP BY l.target HAVING bool_and(s.n = 1) AND count(*) < $cap)
        SELECT rid, source, target FROM links
        WHERE target IN (SELECT target FROM centres) AND source <> '' AND target <> ''
          AND kind IN {tuple(sorted(identity.KINDS))}
          AND (kind <> 'identify' OR regexp_full_match(source, $uuid4))""",
                {"uuid4": identity.UUID4_PATTERN, "cap": identity.MAX_CLUSTER})


def _write_resolution(con, resolution: identity.Resolution) -> None:
    """Add a resolution's mappings to the map (their ids' rows are gone) and mark its refused links."""
    if resolution.canonical:
        frame = _frame({"distinct_id": list(resolution.canonical),  # noqa: F841  (DuckDB reads it by name)
                              "canonical_id": list(resolution.canonical.values())})
        con.execute("INSERT INTO identity_map SELECT distinct_id, canonical_id FROM frame")
    if resolution.refused:
        refused = _frame({"rid": [r.link.order[-1] for r in resolution.refused],  # noqa: F841  (DuckDB reads it by name)
                                "reason": [r.reason for r in resolution.refused]})
        con.execute("UPDATE identity_links SET refused = r.reason FROM refused r "
                    "WHERE identity_links.rowid = r.rid")


# -- profiles --------------------------------------------------------------------------------

def _stage_profile_records(con, source: Source) -> None:
    """Fill the temp table ``_records`` (line, raw, doc_error, paged, item, doc) of a profile or update
    file, one row per profile or update: Engage pages are unnested. A few megabytes of JSON are parsed
    at a time (see `readers.line_ranges`): 2,048 Engage pages of 450 KB at once would need gigabytes."""
    if source.format not in ("jsonl", "json"):
        raise LoadError(str(source.path), f"{source.kind} must be JSON or JSON Lines, not {source.format}")
    con.execute("""CREATE OR REPLACE TEMP TABLE _records (line BIGINT, raw VARCHAR, doc_error VARCHAR,
                                                          paged BOOLEAN, item BIGINT, doc JSON)""")
    ranges = [None]
    if source.format == "jsonl":
        con.execute(readers.stage_lines(_REJECTS), {"path": str(source.path)})
        ranges = con.execute(readers.line_ranges(_REJECTS, _PROFILE_BATCH_BYTES)).fetchall()
    for lines in ranges:
        _sql(con, f"INSERT INTO _records {readers.profile_items(source, _REJECTS, lines)}",
             {"path": str(source.path)})


def _load_profiles(con, source: Source, file_id: int, now: datetime, result: FileResult,
                   careful: bool = True) -> None:
    _stage_profile_records(con, source)
    params = {"path": str(source.path), "file_id": file_id, **validation.parameters(_ms(now))}
    reason = validation.profile_reason("did", "props")
    _sql(con, f"""
        CREATE OR REPLACE TEMP TABLE _profiles AS
        WITH r00 AS (SELECT *, json_extract(doc, ['$."$distinct_id"', '$."$properties"']) AS k FROM _records),
        r0 AS (SELECT line, item, paged, raw, doc_error, k[1] AS did, k[2] AS props, doc FROM r00),
        r AS (SELECT *, {validation.typed("did", "props", texts=("did",))} FROM r0),
        v AS (SELECT *, coalesce(doc_error, {reason}) AS reason FROM r)
        SELECT line, item, reason || CASE WHEN paged THEN ' (results[' || (item - 1) || '])' ELSE '' END AS reason,
               CASE WHEN reason IS NOT NULL
                    THEN left(CASE WHEN paged THEN doc::VARCHAR ELSE coalesce(raw, doc::VARCHAR) END,
                              {validation.QUARANTINED_RAW_CHARS}) END AS raw,
               did_s AS distinct_id, props,
               CASE WHEN reason IS NULL THEN props -> '$."$onesignal_user_id"' END AS onesignal_id
        FROM v""", params)
    _refuse_deep_profiles(con)
    _quarantine_from(con, "_profiles", source, file_id)
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
    counts = con.execute("SELECT count(*), count(*) FILTER (WHERE reason IS NULL) FROM _profiles").fetchone()
    result.rows_read, result.rows_loaded = counts
    result.quarantined = _quarantined_count(con, file_id)
    # Seed rule: a profile carrying $onesignal_user_id aliases that value to the profile.
    con.execute("""
        INSERT INTO identity_links (kind, source, target, time_ms, file_id, line)
        SELECT 'onesignal', value, distinct_id, $now_ms, $file_id, line
        FROM (SELECT *, onesignal_id ->> '$' AS value FROM _profiles
              WHERE reason IS NULL AND json_type(onesignal_id) = 'VARCHAR')
        WHERE trim(value) <> '' AND value <> distinct_id""",
                {"now_ms": _ms(now), "file_id": file_id})
    refresh_identity(con, file_id)


def _refuse_deep_profiles(con) -> None:
    """Refuse profiles nested deeper than `validation.MAX_DEPTH`: matching and updates read profiles in
    Python, whose reader fails on deep nesting. Only profiles with that many brackets are looked at."""
    candidates = con.execute(f"""SELECT line, item, props::VARCHAR FROM _profiles
                                 WHERE reason IS NULL AND strlen(props::VARCHAR) > $d * 2
                                   AND {validation.openers('props::VARCHAR')} > $d""",
                             {"d": validation.MAX_DEPTH}).fetchall()
    deep = [(line, item) for line, item, text in candidates if validation.json_depth(text) > validation.MAX_DEPTH]
    if deep:
        frame = _frame(deep, columns=["line", "item"])  # noqa: F841  (DuckDB reads it by name)
        con.execute(f"""UPDATE _profiles SET reason = 'nested more than {validation.MAX_DEPTH} levels deep',
                                             raw = left(props::VARCHAR, {validation.QUARANTINED_RAW_CHARS})
                        FROM frame f WHERE _profiles.line = f.line AND _profiles.item = f.item""")


def _load_profile_updates(con, source: Source, file_id: int, now: datetime, result: FileResult,
                          careful: bool = True) -> None:
    _stage_profile_records(con, source)
    params = {"path": str(source.path), "file_id": file_id, "ops": list(profile_ops.OPS),
              **validation.parameters(_ms(now))}
    id_reason = validation.distinct_id_reason("did", "$distinct_id")
    time_ms = validation.time_ms_expr("tm")
    _sql(con, f"""
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
        FROM v LEFT JOIN identity_map m ON m.distinct_id = v.did_s AND v.reason IS NULL""", params)
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
    _quarantine_from(con, "_updates", source, file_id, extra=bad)
    _write_profile_states(con, states, file_id, now)
    if links:
        frame = _frame(links, columns=["source", "target", "time_ms", "line"])  # noqa: F841  (DuckDB reads it by name)
        con.execute("INSERT INTO identity_links (kind, source, target, time_ms, file_id, line) "
                    "SELECT 'onesignal', source, target, time_ms, ?, line FROM frame", [file_id])
        refresh_identity(con, file_id)
    result.rows_read = con.execute("SELECT count(*) FROM _updates").fetchone()[0]
    result.rows_loaded = applied
    result.quarantined = _quarantined_count(con, file_id)


def _write_profile_states(con, states: dict[str, tuple[dict | None, int]], file_id: int,
                          now: datetime) -> None:
    deleted = [target for target, (props, _) in states.items() if props is None]
    kept = {target: v for target, v in states.items() if v[0] is not None}
    if deleted:
        gone = _frame({"distinct_id": deleted})  # noqa: F841  (DuckDB reads it by name)
        con.execute("DELETE FROM profiles WHERE distinct_id IN (SELECT distinct_id FROM gone)")
    if kept:
        frame = _frame({  # noqa: F841  (DuckDB reads it by name)
            "distinct_id": list(kept),
            "properties": [json.dumps(props, ensure_ascii=False) for props, _ in kept.values()],
            "line": [line for _, line in kept.values()],
        })
        con.execute("INSERT OR REPLACE INTO profiles SELECT distinct_id, properties::JSON, ?::TIMESTAMP, ?, line, "
                    f"{profile_facts('properties::JSON')} "
                    "FROM frame", [now.replace(tzinfo=None), file_id])


def _quarantine_from(con, table: str, source: Source, file_id: int,
                     extra: Sequence[tuple[int, str, str]] = ()) -> None:
    path = str(source.path)
    con.execute(f"INSERT INTO quarantine SELECT ?, ?, line, reason, raw FROM {table} WHERE reason IS NOT NULL",
                [file_id, path])
    rejects = _rejected_line_rows(con)
    if rejects:
        con.execute(f"INSERT INTO quarantine SELECT ?, ?, record, reason, raw FROM ({rejects})", [file_id, path])
    if extra:
        frame = _frame(list(extra), columns=["line", "reason", "raw"])  # noqa: F841  (DuckDB reads it by name)
        con.execute("INSERT INTO quarantine SELECT ?, ?, line, reason, raw FROM frame", [file_id, path])


def _quarantined_count(con, file_id: int) -> int:
    return con.execute("SELECT count(*) FROM quarantine WHERE file_id = ?", [file_id]).fetchone()[0]


def _strict_message(con, file_id: int, count: int) -> str:
    rows = con.execute("SELECT line, reason FROM quarantine WHERE file_id = ? ORDER BY line LIMIT 5",
                       [file_id]).fetchall()
    listed = "; ".join(f"line {line}: {reason}" for line, reason in rows)
    return f"refused under --strict: {count} bad row(s), nothing loaded from this file ({listed})"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _frame(data, columns=None):
    """A DataFrame for DuckDB to read by its variable's name. pandas loads only when a load needs one,
    so ``import toolkit`` stays light."""
    import pandas as pd

    return pd.DataFrame(data, columns=columns)


def _sql(con, sql: str, params: dict):
    """Execute with only the named parameters the statement uses (DuckDB refuses extra ones)."""
    return con.execute(sql, {k: v for k, v in params.items() if re.search(rf"\${k}\b", sql)})


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
