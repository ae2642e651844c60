"""How often a run commits its record (toolkit/export/records.py): a dry run writes its record, with the rows of
what it would have done, in one commit; a sending run commits its start once and its end once. A cycle of
sixty runs pays every commit sixty times (a commit is a checkpoint's worth of work for DuckDB's WAL)."""

import copy
import re

import pytest
from test_export import app_with_users, creds, ext, fast, unlimited_emulator  # noqa: F401  (fixtures)

from helpers import NOW
from toolkit import Store, cohorts, export, sync

_WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE)\b.*?\b(?:INTO|FROM|UPDATE)?\s*(export_runs|export_results)\b",
                    re.IGNORECASE | re.DOTALL)


class _Counting:
    """A DuckDB connection (or cursor) that counts its commits writing run records and member results: each
    ``COMMIT`` of a transaction that wrote them, and each such write outside a transaction (its own commit)."""

    def __init__(self, con, commits: list[set[str]]):
        self._con, self._commits, self._open = con, commits, None

    def execute(self, sql, *args, **kwargs):
        head = sql.strip().split(None, 1)[0].upper() if sql.strip() else ""
        result = self._con.execute(sql, *args, **kwargs)
        written = _WRITE.match(sql)
        if head in ("BEGIN", "BEGIN TRANSACTION"):
            self._open = set()
        elif head == "COMMIT":
            if self._open:
                self._commits.append(self._open)
            self._open = None
        elif head == "ROLLBACK":
            self._open = None
        elif written:
            if self._open is not None:
                self._open.add(written.group(2).lower())
            else:
                self._commits.append({written.group(2).lower()})
        return result

    def cursor(self):
        return _Counting(self._con.cursor(), self._commits)

    def __getattr__(self, name):
        return getattr(self._con, name)


def _counted(store):
    commits: list[set[str]] = []
    view = copy.copy(store)
    view.con = _Counting(store.con, commits)
    return view, commits


def test_a_dry_run_writes_its_record_and_its_rows_in_one_commit(empty_file_store, unlimited_emulator,  # noqa: F811
                                                                app_with_users):  # noqa: F811
    export.register(empty_file_store, "Buyers", "dynamic", app_with_users.app_id, unlimited_emulator.url)
    view, commits = _counted(empty_file_store)
    record = export.run(view, fast(empty_file_store, dry_run=True), ext("u1", "u2", "u3"), creds(app_with_users))
    assert (record.status, record.added, record.dry_run) == ("ok", 3, True)
    assert commits == [{"export_runs", "export_results"}]
    row = empty_file_store.con.execute("SELECT status, added, ended_at IS NOT NULL FROM export_runs "
                                       "WHERE run_id = ?", [record.run_id]).fetchone()
    assert row == ("ok", 3, True)
    assert empty_file_store.con.execute("SELECT count(*) FROM export_results WHERE run_id = ? AND outcome = "
                                        "'dry_run'", [record.run_id]).fetchone()[0] == 3
    assert unlimited_emulator.requests() == []


def test_a_dry_run_the_guard_stops_is_one_commit_too(empty_file_store, unlimited_emulator,  # noqa: F811
                                                    app_with_users):  # noqa: F811
    export.register(empty_file_store, "Buyers", "dynamic", app_with_users.app_id, unlimited_emulator.url)
    export.run(empty_file_store, fast(empty_file_store), ext("u1", "u2", "u3", "u4"), creds(app_with_users))
    view, commits = _counted(empty_file_store)
    record = export.run(view, fast(empty_file_store, dry_run=True), ext("u1"), creds(app_with_users))
    assert record.status == "stopped" and record.error.startswith("would remove 3 of 4 users")
    assert commits == [{"export_runs", "export_results"}]


def test_a_sending_run_the_guard_stops_commits_its_end_with_its_unsent_rows(empty_file_store,  # noqa: F811
                                                                           unlimited_emulator,  # noqa: F811
                                                                           app_with_users):  # noqa: F811
    export.register(empty_file_store, "Buyers", "once", app_with_users.app_id, unlimited_emulator.url)
    export.run(empty_file_store, fast(empty_file_store), ext("u1", "u2", "u3", "u4"), creds(app_with_users))
    view, commits = _counted(empty_file_store)
    record = export.run(view, fast(empty_file_store), ext("u1"), creds(app_with_users))
    assert record.status == "stopped"
    assert commits == [{"export_runs"}, {"export_runs", "export_results"}], commits     # start; end and not_sent
    assert empty_file_store.con.execute("SELECT count(*) FROM export_results WHERE run_id = ? AND outcome = "
                                        "'not_sent'", [record.run_id]).fetchone()[0] == 3


@pytest.mark.parametrize("changed", [True, False])
def test_a_sending_run_commits_its_start_and_its_end_once_each(empty_file_store, unlimited_emulator,  # noqa: F811
                                                               app_with_users, changed):  # noqa: F811
    export.register(empty_file_store, "Buyers", "dynamic", app_with_users.app_id, unlimited_emulator.url)
    export.run(empty_file_store, fast(empty_file_store), ext("u1", "u2"), creds(app_with_users))
    view, commits = _counted(empty_file_store)
    record = export.run(view, fast(empty_file_store), ext("u1", "u3") if changed else ext("u1", "u2"),
                        creds(app_with_users))
    assert record.status == "ok" and (record.added, record.removed) == ((1, 1) if changed else (0, 0))
    assert [c for c in commits if "export_runs" in c] == [{"export_runs"}, {"export_runs"}], commits  # start, end
    status = empty_file_store.con.execute("SELECT status FROM export_runs WHERE run_id = ?",
                                          [record.run_id]).fetchone()[0]
    assert status == "ok"


def test_a_dry_run_cycle_commits_its_planned_runs_records_once(sample_store_copy):
    """A dry-run cycle's cohorts planned together are recorded in one commit (``export.rehearse``), each with
    its rows: sixty one-commit records took ~0.4 s of a 10M cycle."""
    with Store(sample_store_copy) as store:
        names = [c["name"] for c in cohorts.list_cohorts(store) if c["kind"] != "static"]
        for name in names:
            export.register(store, name, "dynamic", "00000000-0000-4000-8000-000000000001", "http://127.0.0.1:9",
                            now=NOW)
        view, commits = _counted(store)
        records = sync.run_due(view, now=NOW, dry_run=True, cohorts=names)
        assert len(names) > 2 and [r.status for r in records] == ["ok"] * len(names)
        assert [c for c in commits if "export_runs" in c] == [{"export_runs", "export_results"}], commits
        assert store.con.execute("SELECT count(DISTINCT run_id) FROM export_results WHERE outcome = 'dry_run'"
                                 ).fetchone()[0] == sum(1 for r in records if r.added + r.removed)
