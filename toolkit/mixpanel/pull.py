"""``toolkit pull``: a project's events (Raw Event Export) and profiles (Engage) into the landing folder, for
the ordinary loader.

Events come in day ranges, one export each (up to three in flight), streamed to disk as they arrive (gzip
bytes as sent: never the whole answer in memory) into a hidden ``.part`` file, renamed to
``<from>_<to>.<run>.jsonl.gz`` once whole: the loader skips hidden files, so a kill leaves nothing
half-written for it. What was pulled is remembered per project in ``<landing>/.mixpanel-pull.json`` (no secret
in it): the days pulled through, the run in progress (its chunks and which are done: a killed pull resumes it)
and the start times of recent requests (each API's hourly budget holds across processes). Each pull asks again
for the last ``lookback_days`` days (late events); a new file for a range supersedes the older files inside
it, which are deleted (the store keeps what it loaded from them; dedup absorbs the repeats). Profiles are
every Engage page as JSON Lines of ``{$distinct_id, $properties}``, a snapshot that replaces the previous one.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from toolkit.errors import PullError
from toolkit.mixpanel.budget import EXPORT, QUERY, Budget, format_wait
from toolkit.mixpanel.client import ExportResult, MixpanelClient, ServiceAccount

STATE_FILE = ".mixpanel-pull.json"
LOCK_FILE = ".mixpanel-pull.lock"
LOOKBACK_DAYS = 3           # late events: Mixpanel accepts events days after they happened
# A first pull of a long range widens its older chunks to need at most this many exports: each costs one of
# the 60 an hour and a third of a second of the 3/second (32 exports of 100k events took 11 s, curl's one 1 s),
# and a kill loses at most one chunk's bytes.
MAX_EXPORTS = 8
# Exports in flight at once (Mixpanel allows 100): one stream is bound by the server's pace, and the 3/second
# budget costs a third of a second per export; three at a time overlap both.
CONCURRENT_EXPORTS = 3


@dataclass
class Chunk:
    first: date
    last: date
    file: str | None = None
    bytes: int = 0

    @property
    def key(self) -> str:
        return f"{self.first.isoformat()}_{self.last.isoformat()}"


@dataclass
class PullResult:
    project_id: str
    folder: str
    run: str
    resumed: bool = False
    chunks: list[Chunk] = field(default_factory=list)
    skipped: int = 0                     # chunks done by the killed run this one resumed
    pulled_through: str | None = None
    profiles: int | None = None
    profiles_file: str | None = None

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.chunks)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["bytes"] = self.bytes
        data["chunks"] = [{"from": c.first.isoformat(), "to": c.last.isoformat(), "file": c.file,
                           "bytes": c.bytes} for c in self.chunks]
        return data


def project_folder(landing: str | Path, project_id: str) -> Path:
    return Path(landing) / f"mixpanel-{project_id}"


def plan(first: date, last: date, *, chunk_days: int | None = None, recent_from: date | None = None) -> list[Chunk]:
    """Day ranges covering ``first``..``last``: single days from ``recent_from`` on (the days re-pulled each
    time, so each re-pull supersedes exactly its own files), wider ones before it so a long first pull needs
    at most MAX_EXPORTS exports (or ``chunk_days`` each)."""
    if first > last:
        return []
    recent_from = max(first, recent_from or last + timedelta(days=1))
    old_days = (min(last + timedelta(days=1), recent_from) - first).days
    width = chunk_days or max(1, math.ceil(old_days / MAX_EXPORTS))
    chunks = []
    day = first
    while day < recent_from and day <= last:
        end = min(day + timedelta(days=width - 1), recent_from - timedelta(days=1), last)
        chunks.append(Chunk(day, end))
        day = end + timedelta(days=1)
    while day <= last:
        chunks.append(Chunk(day, day))
        day += timedelta(days=1)
    return chunks


def pull(landing: str | Path, account: ServiceAccount, *, from_date: date | None = None, to_date: date | None = None,
         lookback_days: int = LOOKBACK_DAYS, chunk_days: int | None = None, profiles: bool = False,
         base_url: str | None = None, client: MixpanelClient | None = None, today: date | None = None,
         progress: bool = False, on_chunk: Callable[[Chunk], None] | None = None,
         **client_options: Any) -> PullResult:
    """Pull the project's new events (and with ``profiles``, its profiles) into ``landing``. The first pull
    needs ``from_date``; later ones start ``lookback_days`` before the last day pulled. ``to_date``
    defaults to today (UTC). A run a kill interrupted is finished first, as it was planned (unless none of
    it was pulled and dates are given)."""
    if lookback_days < 0 or (chunk_days is not None and chunk_days < 1):
        raise PullError("--lookback must be 0 or more days and --chunk-days at least 1")
    landing = Path(landing)
    folder = project_folder(landing, account.project_id)
    (folder / "events").mkdir(parents=True, exist_ok=True)
    with _locked(landing):
        states = _read_state(landing)
        state = states.setdefault(account.project_id, {})
        history = state.get("requests", {})
        own_client = client is None
        if client is None:
            budgets = {"export": Budget("Export", EXPORT, history=history.get("export", ())),
                       "query": Budget("Query", QUERY, history=history.get("query", ()))}
            client = MixpanelClient(account, base_url, budgets=budgets, **client_options)
        try:
            result = _pull_events(landing, folder, states, state, client, from_date, to_date, lookback_days,
                                  chunk_days, today or datetime.now(UTC).date(), progress, on_chunk)
            if profiles:
                result.profiles, result.profiles_file = _pull_profiles(folder, result.run, client)
        finally:
            state["requests"] = {name: budget.history() for name, budget in client.budgets.items()}
            _write_state(landing, states)
            if own_client:
                client.close()
    return result


def _pull_events(landing: Path, folder: Path, states: dict, state: dict, client: MixpanelClient,
                 from_date: date | None, to_date: date | None, lookback_days: int, chunk_days: int | None,
                 today: date, progress: bool, on_chunk: Callable[[Chunk], None] | None) -> PullResult:
    run = state.get("run")
    if run is not None and not run["done"] and (from_date or to_date):
        run = None               # nothing of it was pulled (a refused secret...): plan as now asked
    resumed = run is not None
    if run is None:
        through = date.fromisoformat(state["pulled_through"]) if state.get("pulled_through") else None
        if from_date is None and through is None:
            raise PullError(f"the first pull of project {client.account.project_id} into {landing} needs a start "
                            "date (--from YYYY-MM-DD)")
        last = to_date or today
        recent = through - timedelta(days=lookback_days - 1) if through else None
        first = from_date or recent
        assert first is not None
        if to_date and from_date and to_date < from_date:
            raise PullError(f"--to {to_date} is before --from {from_date}")
        chunks = plan(first, last, chunk_days=chunk_days, recent_from=max(recent or first, last - timedelta(
            days=max(lookback_days, 1) - 1)))
        run = state["run"] = {"id": datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ"), "last": last.isoformat(),
                              "chunks": [[c.first.isoformat(), c.last.isoformat()] for c in chunks], "done": []}
        _write_state(landing, states)
    for stale in (folder / "events").glob(".*.part"):       # left by killed runs given up since
        if run["id"] not in stale.name:
            stale.unlink(missing_ok=True)
    result = PullResult(client.account.project_id, str(folder), run["id"], resumed=resumed)
    chunks = [Chunk(date.fromisoformat(a), date.fromisoformat(b)) for a, b in run["chunks"]]
    todo = [c for c in chunks if c.key not in run["done"]]
    result.skipped = len(chunks) - len(todo)
    bar = _bar(progress, len(chunks), result.skipped)
    if bar is not None:
        for budget in client.budgets.values():
            budget.on_wait = lambda seconds, text: bar.set_postfix_str(
                f"waiting {format_wait(seconds)} ({text.split(': ', 1)[-1].split(' (')[0]})", refresh=True)
    pool = ThreadPoolExecutor(max_workers=CONCURRENT_EXPORTS, thread_name_prefix="mixpanel-export")
    try:
        exports = {pool.submit(_export_chunk, folder / "events", run["id"], chunk, client, bar): chunk
                   for chunk in todo}
        for done in as_completed(exports):     # recorded as each is whole: a kill loses only those in flight
            chunk = exports[done]
            _supersede(folder / "events", chunk, done.result(), state)
            run["done"].append(chunk.key)
            _write_state(landing, states)
            result.chunks.append(chunk)
            if on_chunk is not None:
                on_chunk(chunk)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)   # a failure: the exports not started never start
        if bar is not None:
            bar.close()
    result.chunks.sort(key=lambda c: c.first)
    previous = state.get("pulled_through")
    state["pulled_through"] = max(filter(None, [previous, run["last"]]))
    result.pulled_through = state["pulled_through"]
    del state["run"]
    return result


def _export_chunk(events_dir: Path, run_id: str, chunk: Chunk, client: MixpanelClient, bar) -> str:
    """One range (in a worker thread): exported (with retries) into a hidden part file, renamed whole; its name."""
    part = events_dir / f".{chunk.key}.{run_id}.part"
    renamed = sorted(events_dir.glob(f"{chunk.key}.{run_id}.jsonl*"))
    if renamed:       # whole (a rename), but a kill came before the state said so: keep it
        name = renamed[0].name
        chunk.file, chunk.bytes = str(renamed[0]), renamed[0].stat().st_size
    else:
        def attempt() -> ExportResult:
            with part.open("wb") as sink:            # each attempt starts the file afresh
                exported = client.export_to(sink, chunk.first, chunk.last, on_bytes=lambda size: bar and
                                            bar.set_postfix(MB=f"{size / 1e6:.1f}", refresh=False))
                sink.flush()
                os.fsync(sink.fileno())
            return exported

        try:
            exported = client.retrying(attempt)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        name = f"{chunk.key}.{run_id}.jsonl" + (".gz" if exported.gzip else "")
        os.replace(part, events_dir / name)
        chunk.file, chunk.bytes = str(events_dir / name), exported.bytes
    if bar is not None:
        bar.update(1)
    return name


def _supersede(events_dir: Path, chunk: Chunk, name: str, state: dict) -> None:
    """The range's new file replaces the older files of ranges inside it (the chunks of one run never overlap)."""
    files: dict[str, str] = state.setdefault("files", {})
    for key, old in list(files.items()):        # older files of ranges inside this one: superseded
        first, last = (date.fromisoformat(d) for d in key.split("_"))
        if chunk.first <= first and last <= chunk.last and old != name:
            (events_dir / old).unlink(missing_ok=True)
            del files[key]
    files[chunk.key] = name


def _pull_profiles(folder: Path, run_id: str, client: MixpanelClient) -> tuple[int, str]:
    """Every Engage page, appended as it comes, into one JSON Lines snapshot; the older snapshots go."""
    target = folder / "profiles"
    target.mkdir(exist_ok=True)
    part = target / f".profiles.{run_id}.part"
    count = 0
    try:
        with part.open("w", encoding="utf-8") as sink:
            for page in client.engage():
                for record in page:
                    sink.write(json.dumps({"$distinct_id": record["$distinct_id"],
                                           "$properties": record.get("$properties") or {}}, ensure_ascii=False))
                    sink.write("\n")
                count += len(page)
            sink.flush()
            os.fsync(sink.fileno())
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    final = target / f"profiles.{run_id}.jsonl"
    os.replace(part, final)
    for old in target.glob("profiles.*.jsonl"):
        if old != final:
            old.unlink()
    return count, str(final)


def _bar(progress: bool, total: int, done: int):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="chunk", desc="pull events")


# -- the state file -------------------------------------------------------------------------------

@contextmanager
def _locked(landing: Path) -> Iterator[None]:
    landing.mkdir(parents=True, exist_ok=True)
    with (landing / LOCK_FILE).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PullError(f"another pull into {landing} is running; this one did nothing") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_state(landing: Path) -> dict:
    path = landing / STATE_FILE
    if not path.exists():
        return {}
    try:
        states = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PullError(f"{path}: the pull state is unreadable ({exc}); delete it to pull from --from again "
                        "(files already pulled are skipped by the loader)") from None
    if not isinstance(states, dict):
        raise PullError(f"{path}: the pull state is not a JSON object; delete it and pull again with --from")
    return states


def _write_state(landing: Path, states: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=landing, prefix=".mixpanel-pull-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(states, handle, indent=1)
        os.replace(tmp, landing / STATE_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
