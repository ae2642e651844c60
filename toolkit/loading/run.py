"""A load: find and describe the files, wait for those still being written, then each file on its
own (manifest, stage, settle and publish); the algorithm is told in docs/design.md, "Loading a
file". Any failure or interrupt leaves the store as it was before that file; the files before it stay
loaded."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime

import duckdb

from toolkit import event_columns
from toolkit.errors import LoadError
from toolkit.loading import derived, events, mappings, pipelines, profiles, quarantine, validation
from toolkit.loading.execute import epoch_ms
from toolkit.loading.sources import Source, content_hash, describe, discover, prefix_hash
from toolkit.loading.summary import FileResult, LoadSummary
from toolkit.store import Store

LOAD_MEMORY = "1GB"     # DuckDB's share while loading ($TOOLKIT_LOAD_MEMORY overrides)
SETTLE_SECONDS = 2.0    # a file changed more recently is waited for ($TOOLKIT_SETTLE_SECONDS overrides)
# identity first, then who it names
_KIND_ORDER = {"events": 0, "identity_mappings": 1, "profiles": 2, "profile_updates": 3}


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
    # A load checkpoints its own changes without vacuuming: with any deleted rows in a table (a load's
    # duplicates), DuckDB's checkpoint merges and rewrites the table's row groups as soon as rows are
    # added, so each small delta rewrote every event, JSON and all (1M events: 1.3 s of CPU at close).
    store.con.execute("SET max_vacuum_tasks = 0")
    try:
        _discard_unpublished(store)
        _load_sources(store, sources, summary, strict, now, progress, on_file)
        _supersede_replaced_exports(store, sources, summary)
        with contextlib.suppress(duckdb.Error):   # another connection's transaction: the close checkpoints
            store.con.execute("CHECKPOINT")
        return summary
    finally:
        store.con.execute("RESET preserve_insertion_order")
        store.con.execute("RESET max_vacuum_tasks")
        store.restore_memory_limit()


def _settle(sources: list[Source], seconds: float) -> tuple[list[Source], list[FileResult]]:
    """The sources whose files have settled, and a result ("waiting") for each that kept changing: a
    file still being written is read whole, never in part (the part and then the whole would both load)."""
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
    with _progress_bar(sum(s.size for s in sources), progress) as bar:
        for source in sources:
            bar.set_postfix_str(source.path.name)
            result = load_file(store, source, strict=strict, now=now)
            summary.files.append(result)
            bar.update(source.size)
            if on_file:
                on_file(result)
    return summary


class _NoBar:
    def set_postfix_str(self, text: str) -> None: ...
    def update(self, n: int) -> None: ...


def _progress_bar(total: int, shown: bool):
    """tqdm's bar over ``total`` bytes (it hides itself where nothing shows it), or one that does
    nothing: tqdm is imported only for a bar, since importing it costs `import toolkit` ~50 ms (it
    brings asyncio), and a first bar, even disabled, ~6 ms more for its lock and monitor thread."""
    if not shown:
        return contextlib.nullcontext(_NoBar())
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc="load", disable=None)


def load_file(store: Store, source: Source, *, strict: bool = False, now: datetime) -> FileResult:
    started = time.perf_counter()
    result = FileResult(str(source.path), source.kind, "loaded")
    # Every earlier load of this path, newest first: one query tells both "loaded already" and "grown".
    earlier = store.con.execute(f"""SELECT size, mtime_ns, {_same_kind(source)}, content_hash, loaded_at FROM loads
                                    WHERE path = ? ORDER BY file_id DESC""", [str(source.path)]).fetchall()
    if any((size, mtime_ns, same) == (source.size, source.mtime_ns, True) for size, mtime_ns, same, *_ in earlier):
        result.status, result.message = "skipped", f"already loaded (same content as {source.path})"
        return result
    try:
        _refuse_grown(source, earlier)
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
    """Stage the file's events (own transaction), then settle and publish it (one transaction): DuckDB
    rewrites a transaction's whole bulk insert at commit if the transaction also deleted any of the rows
    it inserted (+2.5 s per million events), and settling deletes refused rows and older copies."""
    result = FileResult(str(source.path), source.kind, "loaded")
    params = {"path": str(source.path), **validation.parameters(epoch_ms(now))}
    quarantine.drop_scratch(store.con)
    params["file_id"] = store.con.execute("SELECT nextval('file_ids')").fetchone()[0]
    if source.compressed and (failed := digest.exception()):
        # Inflated and measured before DuckDB reads it: a gzip bomb that inflates to blank lines gives
        # DuckDB no point at which to stop. Costs one inflation (in Python) of each gzip file.
        raise failed
    if source.kind == "events":   # only events are staged in a transaction of their own
        with store.transaction() as con:
            events.stage(con, source, careful, params)
    try:
        copy_of = store.con.execute(f"SELECT path FROM loads WHERE content_hash = ? AND {_same_kind(source)}",
                                    [digest.result()]).fetchone()
        if copy_of:
            _discard_unpublished(store)
            result.status, result.message = "skipped", f"already loaded (same content as {copy_of[0]})"
            return result
        with store.transaction() as con:
            derived.track_changes(con)   # what settling touches, so only those facts are refreshed
            settle = {"events": events.settle, "profiles": profiles.apply_snapshots,
                      "profile_updates": profiles.apply_updates, "identity_mappings": mappings.apply}[source.kind]
            settle(con, source, params["file_id"], now, result, careful)
            event_columns.fill(con, params["file_id"])   # the typed columns cohorts filter on
            if strict and result.quarantined:
                raise LoadError(str(source.path), quarantine.strict_message(con, params["file_id"], result.quarantined))
            derived.refresh_facts(con, params["file_id"])
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


def _supersede_replaced_exports(store: Store, sources: list[Source], summary: LoadSummary) -> None:
    """A Data Pipelines table replaced on every export (people, identity mappings): the files in its folder
    now are the latest export, so what earlier files of that folder loaded goes (profiles they wrote and no
    current file wrote again, their identity links), once every current file has loaded. One transaction."""
    status = {f.path: f.status for f in summary.files}
    folders: dict[str, list[Source]] = {}
    for source in sources:
        if source.layout == "pipelines" and pipelines.table_of(source.path) in pipelines.REPLACED:
            folders.setdefault(str(pipelines.table_folder(source.path)), []).append(source)
    for folder, current in folders.items():
        if any(str(pipelines.table_folder(path)) == folder and state not in ("loaded", "skipped")
               for path, state in status.items()):
            continue   # the export is not all in (a file refused or still being written): keep the previous one
        stale = _superseded_file_ids(store, folder, current)
        if not stale:
            continue
        with store.transaction() as con:
            derived.track_changes(con)
            con.execute("CREATE OR REPLACE TEMP TABLE _stale AS SELECT unnest(?::INTEGER[]) AS file_id", [stale])
            derived.touch(con, "SELECT distinct_id FROM profiles WHERE file_id IN (SELECT file_id FROM _stale)")
            con.execute("DELETE FROM profiles WHERE file_id IN (SELECT file_id FROM _stale)")
            # their mappings, and the $onesignal_user_id aliases of profiles Mixpanel no longer has
            links = con.execute("DELETE FROM identity_links "
                                "WHERE file_id IN (SELECT file_id FROM _stale)").fetchone()[0]
            if links:
                derived.resolve_everything(con)
            con.execute("DROP TABLE _stale")
            derived.refresh_facts(con, con.execute("SELECT max(file_id) FROM loads").fetchone()[0])


def _superseded_file_ids(store: Store, folder: str, current: list[Source]) -> list[int]:
    """Loads of files in ``folder`` that are not among its ``current`` files (by path, size and mtime, or by
    content: a current file skipped as a copy of an earlier one keeps that one's rows) and whose rows remain."""
    rows = store.con.execute("""SELECT file_id, path, size, mtime_ns, content_hash FROM loads
                                WHERE starts_with(path, ?) AND kind IN ('profiles', 'identity_mappings')""",
                             [folder.rstrip("/") + "/"]).fetchall()
    now = {(str(s.path), s.size, s.mtime_ns) for s in current}
    kept_hashes = {sha for _, path, size, mtime, sha in rows if (path, size, mtime) in now}
    loaded = {(path, size, mtime) for _, path, size, mtime, _ in rows}
    kept_hashes |= {content_hash(s.path) for s in current if (str(s.path), s.size, s.mtime_ns) not in loaded}
    stale = [file_id for file_id, path, size, mtime, sha in rows
             if (path, size, mtime) not in now and sha not in kept_hashes]
    if not stale:
        return []
    left = store.con.execute("""SELECT DISTINCT file_id FROM (
                                    SELECT file_id FROM profiles UNION ALL SELECT file_id FROM identity_links)
                                WHERE file_id IN (SELECT unnest(?::INTEGER[]))""", [stale]).fetchall()
    return [file_id for file_id, in left]


def _check_unchanged(source: Source) -> None:
    try:
        stat = source.path.stat()
    except OSError as exc:
        raise LoadError(str(source.path), f"cannot read: {exc.strerror or exc}") from None
    if (stat.st_size, stat.st_mtime_ns) != (source.size, source.mtime_ns):
        raise LoadError(str(source.path), "changed while it was being read; nothing of it was kept, "
                                          "it loads on a later run")


def _discard_unpublished(store: Store) -> None:
    """Delete event rows staged by a load that never published (failed, interrupted or killed): one
    statement, so its own transaction."""
    store.con.execute("DELETE FROM event_rows WHERE file_id > (SELECT coalesce(max(file_id), 0) FROM loads)")


def _same_kind(source: Source) -> str:
    """SQL on `loads`: a load that makes loading ``source`` again pointless. Asked for a kind, only a
    load as that kind (detection may have been wrong); else any load of the content."""
    return f"kind = '{source.kind}'" if source.kind_given else "true"   # kind is one of sources.KINDS


def _refuse_grown(source: Source, earlier: list[tuple]) -> None:
    """A file loaded before under this path that has since grown at its end was loaded in part
    (it was being written): loading it whole would load that part twice. ``earlier``: the loads of
    this path, newest first (size, mtime_ns, same kind, content_hash, loaded_at)."""
    smaller = next((row for row in earlier if row[0] < source.size), None)
    if smaller is None:
        return
    size, _, _, sha, loaded_at = smaller
    if size > 0 and prefix_hash(source.path, size) == sha:
        raise LoadError(str(source.path), (
            f"grew by {source.size - size} bytes since its first {size} bytes were loaded "
            f"({loaded_at:%Y-%m-%d %H:%M} UTC); loading it again would load those twice: put the new "
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


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
