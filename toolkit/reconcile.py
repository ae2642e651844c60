"""Reconciliation: read a cohort's exported state back from OneSignal and compare it with the snapshot.

How OneSignal is read, within its limits: one CSV export of the app's subscriptions (a request, then
the file polled until OneSignal has written it, at about 2,000 records/s), which shows every user
with a subscription and its tags; then the View user API, at 1 request/s per app, only for the
snapshot's members the export did not show (deleted users, and users without a subscription). So a
cohort of a million reads back in one export, not eleven days of views. ``drift`` classifies (pure).

``correct_snapshot`` makes the snapshot say what OneSignal holds, so that the next export run sends
exactly the difference to the cohort's current exportable set (``sync.reconcile_cohort --repair``):
a member that lost the tag leaves the snapshot (the run tags it again if the cohort still wants it),
a deleted one is marked absent (looked for again after a day, as an export does), and a user tagged
outside the toolkit enters it under a placeholder member (the run clears the tag; a cohort member
among them is tagged again in the same run, removals going first).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import IO, cast

from toolkit import drift, snapshots
from toolkit.drift import EXTERNAL_ID, Drift, Member
from toolkit.errors import ExportError
from toolkit.export import ExportSettings, RunRecord, states
from toolkit.export.helpers import _naive, _run_async
from toolkit.onesignal import Credentials, OneSignalClient
from toolkit.store import Store, transaction

OUTSIDE = "(tagged outside the toolkit) "       # the placeholder member of a user tagged behind our back


@dataclass
class Reconciliation:
    """What OneSignal holds of a cohort's export against the snapshot, and the repair run if any."""
    cohort: str
    app_id: str
    tag_key: str
    checked_at: datetime
    snapshot: int                                   # members the snapshot holds as tagged
    in_sync: int
    tagged_outside: list[dict] = field(default_factory=list)   # {"alias_label", "alias_id"}
    lost_tag: list[dict] = field(default_factory=list)          # {"distinct_id", "onesignal_id", "id_type"}
    deleted: list[dict] = field(default_factory=list)
    views: int = 0                                  # View user calls made
    repair: RunRecord | None = None

    @property
    def drifted(self) -> bool:
        return bool(self.tagged_outside or self.lost_tag or self.deleted)

    def to_dict(self) -> dict:
        # Not asdict(self): it would deep-copy the repair run's plan, every step of it.
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "repair"}
        data["repair"] = None if self.repair is None else self.repair.to_dict()
        data["drifted"] = self.drifted
        return data


def tagged_members(con, cohort: str) -> list[Member]:
    """The snapshot's tagged members; a placeholder left by a repair that did not finish is no member (its
    user shows as tagged outside the toolkit until a run clears the tag)."""
    rows = con.execute("SELECT distinct_id, onesignal_id, id_type FROM export_members WHERE cohort = ? "
                       "AND status = 'tagged' AND NOT starts_with(distinct_id, ?)", [cohort, OUTSIDE]).fetchall()
    return [Member(*row) for row in rows]


def read_back(store: Store, settings: ExportSettings, credentials: Credentials,
              on_progress: Callable[[str, int, int | None], None] | None = None) -> Reconciliation:
    """Read the cohort's tag back from OneSignal and classify the drift (writes nothing).
    ``on_progress(stage, done, total)``: "export" with seconds waited, then "view" per user viewed."""
    if not (settings.app_id and settings.base_url):
        raise ExportError(f"cohort {settings.cohort!r} has no export to reconcile; export it first")
    members = tagged_members(store.reader(), settings.cohort)
    found, views = _run_async(_read(settings, credentials, members, on_progress))
    return Reconciliation(settings.cohort, settings.app_id, settings.tag_key, _naive(settings.now), len(members),
                          found.in_sync, [{"alias_label": label, "alias_id": alias_id}
                                          for label, alias_id in found.tagged_outside],
                          [asdict(m) for m in found.lost_tag], [asdict(m) for m in found.deleted], views)


async def _read(settings: ExportSettings, credentials: Credentials, members: list[Member],
                on_progress) -> tuple[Drift, int]:
    assert settings.base_url
    progress = on_progress or (lambda stage, done, total: None)
    async with OneSignalClient(credentials, settings.base_url, **settings.client_options) as client:
        url = await client.export_csv(("external_user_id",))
        content = await client.download_export(url, on_wait=lambda waited: progress("export", int(waited), None))
        seen = drift.users_from_rows(_rows(content), settings.tag_key, {m.onesignal_id for m in members})
        found = drift.classify(members, seen, tag_key=settings.tag_key)
        if not found.unseen:
            return found, 0
        views: dict[tuple[str, str], dict | None] = {}
        unseen = [(EXTERNAL_ID, m.onesignal_id) for m in found.unseen]

        def viewed(label: str, alias_id: str, view: dict | None) -> None:
            tags = None if view is None else ((view.get("properties") or {}).get("tags") or {})
            views[(label, alias_id)] = tags
            progress("view", len(views), len(unseen))

        await client.view_users(unseen, viewed)
        return drift.classify(members, seen, views, tag_key=settings.tag_key), len(unseen)


def _rows(content: bytes) -> Iterator[dict[str, str]]:
    """The export's rows as dicts, inflated as they are read (a gzip CSV; a plain one as it is)."""
    raw: IO[bytes] = io.BytesIO(content)
    if content[:2] == b"\x1f\x8b":
        raw = cast(IO[bytes], gzip.GzipFile(fileobj=raw))
    try:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline=""))
        header = next(reader, [])
        wanted = [(name, header.index(name)) for name in ("id", "tags", "external_user_id") if name in header]
        for row in reader:            # only the three columns read: a DictReader of all 18 took twice as long
            yield {name: row[index] for name, index in wanted if index < len(row)}
    except (OSError, EOFError) as exc:
        raise ExportError(f"OneSignal's CSV export could not be read: {exc}") from None


def record(store: Store, found: Reconciliation) -> None:
    """Keep what a reconciliation found (counts by kind) and its repair run, for the sync overview."""
    repair = found.repair
    store.con.execute("INSERT INTO reconciliations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      [found.cohort, found.checked_at, found.snapshot, found.in_sync, len(found.tagged_outside),
                       len(found.lost_tag), len(found.deleted), found.views, repair.run_id if repair else None,
                       repair.status if repair else None])


RECONCILED = "reconciled"        # the status of the run record a correction writes


def correct_snapshot(store: Store, found: Reconciliation) -> list[tuple]:
    """Make the snapshot say what OneSignal holds (one transaction): see the module's docstring. Returns
    the rows it changed as they were, for ``restore_snapshot``.

    The correction is recorded as a run of its own (status ``reconciled``) whose results are exactly its
    writes (lost tag: a removal; deleted: an addition not in OneSignal; tagged outside: an addition), so
    that the snapshot stays what the runs' results replay to (``export.fates``: every member's fate in
    the repair run and the runs after it stays exact)."""
    cohort, now = found.cohort, found.checked_at
    with transaction(store.con) as con:
        before = con.execute("SELECT * FROM export_members WHERE cohort = ? AND distinct_id IN (SELECT unnest(?))",
                             [cohort, _touched(found)]).fetchall()
        snapshots.forget(con, cohort)
        for m in found.lost_tag:
            con.execute("DELETE FROM export_members WHERE cohort = ? AND distinct_id = ? AND onesignal_id = ?",
                        [cohort, m["distinct_id"], m["onesignal_id"]])
        for m in found.deleted:
            con.execute("UPDATE export_members SET status = 'absent', checked_at = ? WHERE cohort = ? "
                        "AND distinct_id = ? AND onesignal_id = ?", [now, cohort, m["distinct_id"], m["onesignal_id"]])
        for user in found.tagged_outside:
            con.execute("INSERT OR REPLACE INTO export_members VALUES (?, ?, ?, ?, 'tagged', ?)",
                        [cohort, OUTSIDE + user["alias_id"], user["alias_id"], user["alias_label"], now])
        _record_correction(con, found)
    return before


def _record_correction(con, found: Reconciliation) -> None:
    mode = con.execute("SELECT mode FROM exports WHERE cohort = ?", [found.cohort]).fetchone()
    run_id = con.execute("SELECT nextval('run_ids')").fetchone()[0]
    con.execute("INSERT INTO export_runs (run_id, cohort, mode, dry_run, started_at, ended_at, status, pid, added, "
                "removed, not_in_onesignal) VALUES (?, ?, ?, false, ?, ?, ?, ?, ?, ?, ?)",
                [run_id, found.cohort, mode[0] if mode else "once", found.checked_at, found.checked_at, RECONCILED,
                 os.getpid(), len(found.tagged_outside), len(found.lost_tag), len(found.deleted)])
    rows = ([(m["distinct_id"], m["onesignal_id"], m["id_type"], "remove", "ok") for m in found.lost_tag]
            + [(m["distinct_id"], m["onesignal_id"], m["id_type"], "add", "not_in_onesignal") for m in found.deleted]
            + [(OUTSIDE + u["alias_id"], u["alias_id"], u["alias_label"], "add", "ok") for u in found.tagged_outside])
    if rows:             # DuckDB refuses an executemany of nothing (a repair of a cohort in step)
        con.executemany("INSERT INTO export_results (run_id, distinct_id, onesignal_id, id_type, operation, "
                        "outcome, error) VALUES (?, ?, ?, ?, ?, ?, 'found by toolkit reconcile')",
                        [(run_id, *row) for row in rows])


def restore_snapshot(store: Store, found: Reconciliation, before: list[tuple]) -> None:
    """Undo ``correct_snapshot`` and its run record (a repair the removal guard stopped sent nothing: it
    changes nothing)."""
    with transaction(store.con) as con:
        snapshots.forget(con, found.cohort)
        con.execute("DELETE FROM export_members WHERE cohort = ? AND distinct_id IN (SELECT unnest(?))",
                    [found.cohort, _touched(found)])
        for row in before:
            con.execute("INSERT INTO export_members VALUES (?, ?, ?, ?, ?, ?)", list(row))
        correction = con.execute("SELECT max(run_id) FROM export_runs WHERE cohort = ? AND status = ?",
                                 [found.cohort, RECONCILED]).fetchone()[0]
        con.execute("DELETE FROM export_results WHERE run_id = ?", [correction])
        con.execute("DELETE FROM export_runs WHERE run_id = ?", [correction])
        if found.repair is not None:     # the stop that repair run made is undone with it
            states.end_guard_stop(con, found.cohort, found.repair.run_id)


def repair_refused(store: Store, found: Reconciliation, before: list[tuple]) -> None:
    """The repair's export raised: if no run of it started (a paused sync, a run already going, a cohort
    that could not be evaluated), nothing was sent, so the correction is undone. Either way the drift found
    is kept (not repaired), so the overview shows this reconciliation."""
    latest = store.con.execute("SELECT status FROM export_runs WHERE cohort = ? ORDER BY run_id DESC LIMIT 1",
                               [found.cohort]).fetchone()
    if latest is not None and latest[0] == RECONCILED:
        restore_snapshot(store, found, before)
    record(store, found)


def _touched(found: Reconciliation) -> list[str]:
    """The members ``correct_snapshot`` writes (placeholders included)."""
    return ([m["distinct_id"] for m in (*found.lost_tag, *found.deleted)]
            + [OUTSIDE + u["alias_id"] for u in found.tagged_outside])
