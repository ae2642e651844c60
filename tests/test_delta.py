"""A small load into a big store pays for what it adds (issue 18): dedup looks only at the new file's
keys, the user-id facts are refreshed only for the profiles a load touched. Whatever the sequence of
files, the store must hold exactly what computing everything from scratch gives."""

import json
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import NOW, T0, event, rows, write_lines
from toolkit.loading import derived, events, identity, run
from toolkit.store import Store

ANONS = [str(uuid.UUID(int=i, version=4)) for i in range(1, 4)]
IDS = ["u1", "u2", "u3", *ANONS]
VALUES = ["os-1", "os-2", "u1", ANONS[0], "", 7]   # shared by several profiles; a distinct_id; not strings

plain = st.builds(lambda name, did, t, iid, mp, x: event(name, did, T0 + t, iid, x=x, **(
                      {"mp_processing_time_ms": mp} if mp is not None else {})),
                  st.sampled_from(["Page View", "Purchase"]), st.sampled_from(IDS), st.integers(0, 2),
                  st.sampled_from([None, "i1", "i2"]), st.sampled_from([None, 1, 2]), st.integers(0, 1))
linking = st.one_of(
    st.builds(lambda a, b, t: event("$identify", b, T0 + t, None, **{"$anon_id": a, "$identified_id": b}),
              st.sampled_from(IDS), st.sampled_from(IDS), st.integers(0, 3)),
    st.builds(lambda a, b, t: event("$merge", a, T0 + t, None, **{"$distinct_ids": [a, b]}),
              st.sampled_from(IDS), st.sampled_from(IDS), st.integers(0, 3)),
    st.builds(lambda a, b, t: event("$create_alias", b, T0 + t, None, alias=a),
              st.sampled_from(IDS), st.sampled_from(IDS), st.integers(0, 3)),
    st.builds(lambda d, u, t: event("Open", u, T0 + t, None, **{"$device_id": d, "$user_id": u}),
              st.sampled_from(["d1", "d2"]), st.sampled_from(IDS), st.integers(0, 3)))
events_file = st.tuples(st.just("events"), st.lists(st.one_of(plain, plain, linking), min_size=1, max_size=12))
snapshot = st.builds(lambda did, value: {"$distinct_id": did, "$properties": (
                         {"$onesignal_user_id": value} if value is not None else {"plan": "free"})},
                     st.sampled_from(IDS), st.sampled_from([*VALUES, None]))
profiles_file = st.tuples(st.just("profiles"), st.lists(snapshot, min_size=1, max_size=5))
update = st.one_of(
    st.builds(lambda did, value: {"$distinct_id": did, "$set": {"$onesignal_user_id": value}},
              st.sampled_from(IDS), st.sampled_from(VALUES)),
    st.builds(lambda did: {"$distinct_id": did, "$unset": ["$onesignal_user_id"]}, st.sampled_from(IDS)),
    st.builds(lambda did: {"$distinct_id": did, "$delete": None}, st.sampled_from(IDS)))
updates_file = st.tuples(st.just("updates"), st.lists(update, min_size=1, max_size=5))
FILES = st.lists(st.one_of(events_file, profiles_file, updates_file), min_size=1, max_size=5)

KEEP_ALL = "SELECT event, distinct_id, time, insert_id, properties::VARCHAR, file_id FROM events"


def write(folder: Path, files) -> list[Path]:
    paths = []
    for n, (kind, records) in enumerate(files):
        if kind == "profiles":
            path = folder / f"{n}-profiles.json"
            path.write_text(json.dumps({"results": records}))
        else:
            path = write_lines(folder / f"{n}-{kind}.jsonl", records)
        paths.append(path)
    return paths


def load_each(store: Store, paths: list[Path]) -> None:
    for path in paths:   # one load per file, as a sync does
        run.load(store, [path], now=NOW)


def from_scratch_events(paths: list[Path], monkeypatch, new_store) -> list:
    """Every copy of every event kept (dedup off), then the dedup rule applied to all rows at once."""
    with monkeypatch.context() as m, tempfile.TemporaryDirectory() as tmp, \
            Store(new_store(Path(tmp) / "scratch.duckdb")) as store:
        m.setattr(events, "_drop_duplicates", lambda con, file_id: 0)
        load_each(store, paths)
        return sorted(rows(store, f"""
            SELECT * FROM ({KEEP_ALL}) WHERE insert_id IS NULL
            UNION ALL
            SELECT event, distinct_id, time, insert_id, properties::VARCHAR, file_id FROM events
            WHERE insert_id IS NOT NULL
            QUALIFY row_number() OVER (
                PARTITION BY event, distinct_id, time, insert_id
                ORDER BY file_id DESC, try_cast(properties ->> 'mp_processing_time_ms' AS DOUBLE) DESC NULLS LAST,
                         properties::VARCHAR DESC) = 1"""), key=repr)


def assert_as_from_scratch(store: Store) -> None:
    """The identity map and refusals as one Python pass over every link gives; the stored facts as
    computing them from every profile gives."""
    links = store.con.execute("SELECT rowid, kind, source, target, time_ms, file_id, coalesce(line, 0) "
                              "FROM identity_links").fetchall()
    expected = identity.resolve([(kind, source, target, (time_ms, file_id, line, kind, source, target, rowid))
                                 for rowid, kind, source, target, time_ms, file_id, line in links])
    mapped = rows(store, "SELECT distinct_id, canonical_id FROM identity_map")
    assert len(mapped) == len(dict(mapped)) and dict(mapped) == expected.canonical
    assert dict(rows(store, "SELECT rowid, refused FROM identity_links WHERE refused IS NOT NULL")) == {
        r.link.order[-1]: r.reason for r in expected.refused}
    assert derived.stored_facts(store.con, derived.DEFAULT_USER_ID_PROPERTY) == derived.FACTS_TABLE
    sql, params = derived.facts_sql()
    columns = "distinct_id, updated_at, empty, jt, v, problem, is_uuid, claimants, names, winner"
    assert sorted(rows(store, f"SELECT {columns} FROM {derived.FACTS_TABLE}"), key=repr) == sorted(
        rows(store, f"SELECT {columns} FROM ({sql})", params), key=repr)


@pytest.mark.slow   # 40 sequences of loads
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(FILES)
def test_loading_files_one_by_one_stores_what_computing_from_scratch_gives(monkeypatch, new_store, files):
    with tempfile.TemporaryDirectory() as tmp:
        paths = write(Path(tmp), files)
        with Store(new_store(Path(tmp) / "store.duckdb")) as store:
            for n, path in enumerate(paths):
                run.load(store, [path], now=NOW)
                assert_as_from_scratch(store)   # after every file, not only the last
                from_scratch = from_scratch_events(paths[: n + 1], monkeypatch, new_store)
                assert sorted(rows(store, KEEP_ALL), key=repr) == from_scratch


def test_profiles_sharing_a_value_are_refreshed_when_one_of_them_changes(tmp_path, new_store):
    """Three profiles claim os-1; one changes its id, one is deleted: every claimant's facts (count,
    names, winner) change, though only the two were touched by the loads."""
    with Store(new_store(tmp_path / "s.duckdb")) as store:
        (tmp_path / "p.json").write_text(json.dumps({"results": [
            {"$distinct_id": d, "$properties": {"$onesignal_user_id": "os-1"}} for d in ("a", "b", "c")]}))
        run.load(store, [tmp_path / "p.json"], now=NOW)
        facts = "SELECT distinct_id, claimants, names, winner FROM user_id_facts ORDER BY distinct_id"
        assert rows(store, facts) == [(d, 3, ["a", "b", "c"], "a") for d in "abc"]
        run.load(store, [write_lines(tmp_path / "u1.jsonl", [
            {"$distinct_id": "a", "$set": {"$onesignal_user_id": "os-2"}}])], now=NOW)
        assert rows(store, facts) == [("a", None, None, None), *((d, 2, ["b", "c"], "b") for d in "bc")]
        run.load(store, [write_lines(tmp_path / "u2.jsonl", [{"$distinct_id": "b", "$delete": None}])], now=NOW)
        assert rows(store, facts) == [("a", None, None, None), ("c", None, None, None)]
        assert_as_from_scratch(store)


def test_holders_of_a_value_no_one_can_claim_are_left_alone(tmp_path, new_store):
    """A blank id, or a number, is no one's to claim: a touched profile holding one does not make every
    other holder's facts be computed again (at 1M profiles, 5,000 shared a blank id and cost a second
    pass over the profiles). Their stored rows stay as they were (same rowid); a claimable value's
    holders are refreshed."""
    with Store(new_store(tmp_path / "s.duckdb")) as store:
        (tmp_path / "p.json").write_text(json.dumps({"results": [
            *({"$distinct_id": f"blank{n}", "$properties": {"$onesignal_user_id": "  "}} for n in range(4)),
            *({"$distinct_id": f"number{n}", "$properties": {"$onesignal_user_id": 7}} for n in range(2)),
            {"$distinct_id": "string7", "$properties": {"$onesignal_user_id": "7"}},
            *({"$distinct_id": f"os{n}", "$properties": {"$onesignal_user_id": "os-1"}} for n in range(2))]}))
        run.load(store, [tmp_path / "p.json"], now=NOW)
        stored = "SELECT distinct_id, rowid FROM user_id_facts ORDER BY distinct_id"
        before = dict(rows(store, stored))
        run.load(store, [write_lines(tmp_path / "u.jsonl", [
            {"$distinct_id": "blank0", "$set": {"plan": "pro"}},
            {"$distinct_id": "number0", "$set": {"plan": "pro"}},
            {"$distinct_id": "os0", "$set": {"plan": "pro"}}])], now=NOW)
        assert_as_from_scratch(store)
        after = dict(rows(store, stored))
        rewritten = sorted(d for d in after if after[d] != before[d])
        assert rewritten == ["blank0", "number0", "os0", "os1"]


def test_a_late_merge_moves_a_profile_and_its_value(tmp_path, new_store):
    """A $merge arriving after the profiles joins two profiled ids: the canonical id's row changes and
    the moved profile's row goes, whose value another profile shares."""
    with Store(new_store(tmp_path / "s.duckdb")) as store:
        (tmp_path / "p.json").write_text(json.dumps({"results": [
            {"$distinct_id": "x", "$properties": {"$onesignal_user_id": "os-1"}},
            {"$distinct_id": "y", "$properties": {"$onesignal_user_id": "os-1"}},
            {"$distinct_id": "z", "$properties": {"$onesignal_user_id": "os-9"}}]}))
        run.load(store, [tmp_path / "p.json"], now=NOW)
        facts = "SELECT distinct_id, v, claimants FROM user_id_facts ORDER BY ALL"
        assert rows(store, facts) == [("x", "os-1", 2), ("y", "os-1", 2), ("z", "os-9", None)]
        run.load(store, [write_lines(tmp_path / "e.jsonl", [
            event("$merge", "z", T0, None, **{"$distinct_ids": ["z", "y"]})])], now=NOW)
        assert rows(store, facts) == [("x", "os-1", None), ("z", "os-9", None)]   # z's own profile wins
        assert_as_from_scratch(store)


def test_a_delta_linking_two_long_components_resolves_both_whole(tmp_path, new_store):
    """The components a delta reaches are found a step at a time: a link joining the ends of two chains
    (and one next to a refused link) must bring every id of both, however far, into the resolution."""
    merge = lambda a, b, t: event("$merge", b, T0 + t, None, **{"$distinct_ids": [b, a]})   # noqa: E731
    chain_a = [merge(f"a{i}", f"a{i + 1}", i) for i in range(1, 6)]        # a1 - a2 - ... - a6
    chain_b = [merge(f"b{i}", f"b{i + 1}", i) for i in range(1, 4)]        # b1 - ... - b4
    refused = [event("$identify", "a1", T0 + 9, None, **{"$anon_id": "not-a-uuid", "$identified_id": "a1"})]
    with Store(new_store(tmp_path / "s.duckdb")) as store:
        run.load(store, [write_lines(tmp_path / "1.jsonl", chain_a + chain_b + refused)], now=NOW)
        assert_as_from_scratch(store)
        run.load(store, [write_lines(tmp_path / "2.jsonl", [merge("a1", "b1", 20)])], now=NOW)
        assert_as_from_scratch(store)
        canonical = dict(rows(store, "SELECT distinct_id, canonical_id FROM identity_map"))
        assert {canonical.get(i, i) for i in [f"a{n}" for n in range(1, 7)] + [f"b{n}" for n in range(1, 5)]} == {
            canonical.get("b1", "b1")}
        assert rows(store, "SELECT count(*) FROM identity_links WHERE refused IS NOT NULL") == [(1,)]


def test_dedup_keeps_the_new_files_copy_and_ranks_only_its_own(tmp_path, new_store):
    with Store(new_store(tmp_path / "s.duckdb")) as store:
        old = event("Purchase", "u1", T0, "i1", mp_processing_time_ms=9, x=0)
        run.load(store, [write_lines(tmp_path / "1.jsonl", [old, event("Purchase", "u1", T0, "i2", x=0)])], now=NOW)
        new = [event("Purchase", "u1", T0, "i1", mp_processing_time_ms=1, x=1),
               event("Purchase", "u1", T0, "i1", mp_processing_time_ms=2, x=2),
               event("Purchase", "u1", T0, "i1", x=3)]
        result = run.load(store, [write_lines(tmp_path / "2.jsonl", new)], now=NOW).files[0]
        assert result.duplicates == 3   # the old copy and two of its own
        assert rows(store, "SELECT insert_id, properties ->> 'x', file_id FROM events ORDER BY ALL") == [
            ("i1", "2", 2), ("i2", "0", 1)]


def test_events_whose_dedup_numbers_are_equal_but_keys_differ_are_never_copies(tmp_path, new_store, monkeypatch):
    """Copies are found by the key's number, then checked on the key itself: with every number equal
    (as if MD5 collided everywhere), a sequence of files keeps exactly what the real numbers keep."""
    files = [[event("A", "u1", T0, "k", v=1, mp_processing_time_ms=9), event("A", "u1", T0, "k", v=2),
              event("B", "u1", T0, "k"), event("A", "u2", T0, "k"), event("A", "u1", T0 + 1, "k")],
             [event("A", "u1", T0, "k", v=3), event("A", "u1", T0 + 1, "k2"), event("B", "u1", T0, "k", v=4),
              event("B", "u1", T0, "k", v=5), event("C", "u3", T0, None)],
             [event("A", "u2", T0, "k", v=6), event("A", "u9", T0, "k")]]

    def kept(name: str) -> tuple:
        with Store(new_store(tmp_path / f"{name}.duckdb")) as store:
            duplicates = [run.load(store, [write_lines(tmp_path / f"{name}-{n}.jsonl", records)],
                                   now=NOW).files[0].duplicates for n, records in enumerate(files)]
            return duplicates, rows(store, "SELECT event, distinct_id, time, insert_id, properties ->> 'v' "
                                           "FROM events ORDER BY ALL")

    real = kept("real")
    assert real[0] == [1, 3, 1] and len(real[1]) == 7
    monkeypatch.setattr(events, "DEDUP_KEY", "42::UBIGINT")
    assert kept("colliding") == real


def test_a_files_dedup_reads_only_the_files_whose_event_times_overlap_its_own(tmp_path, new_store):
    """Copies share their time, so a file's earlier copies lie in the files whose first-to-last event
    times overlap its own: only the range of those files' ids is scanned. Days loaded in order, a delta of
    the last day with a late event of the day before reads those two days' files; a file older than every
    day reads none; a backfill over every day reads from the first on. Copies are replaced wherever they are."""
    day = 86_400
    days = [[event("Open", f"u{d}", T0 + d * day + s, f"d{d}-{s}") for s in (0, 3600)] for d in range(3)]

    def load(store, name, records) -> tuple[int, int]:
        path = write_lines(tmp_path / f"{name}.jsonl", records)
        duplicates = run.load(store, [path], now=NOW).files[0].duplicates
        file_id, = store.con.execute("SELECT file_id FROM loads WHERE path = ?", [str(path)]).fetchone()
        return file_id, duplicates

    with Store(new_store(tmp_path / "s.duckdb")) as store:
        ids = [load(store, f"day{d}", records)[0] for d, records in enumerate(days)]
        delta, copies = load(store, "delta", [event("Open", "u1", T0 + day + 3600, "d1-3600", again=1),
                                              event("Open", "u2", T0 + 2 * day + 60, "new")])
        assert (events.overlapping_files(store.con, delta), copies) == ((ids[1], ids[2]), 1)
        old, copies = load(store, "old", [event("Open", "u0", T0 - day, "d0-0")])   # a new time: no copy
        assert (events.overlapping_files(store.con, old), copies) == ((None, None), 0)
        backfill, copies = load(store, "backfill", [event("Open", "u0", T0, "d0-0", again=2),
                                                    event("Open", "u2", T0 + 2 * day + 60, "new", again=2)])
        assert (events.overlapping_files(store.con, backfill), copies) == ((ids[0], delta), 2)
        assert rows(store, "SELECT insert_id, file_id, properties ->> 'again' FROM events ORDER BY ALL") == [
            ("d0-0", old, None), ("d0-0", backfill, "2"), ("d0-3600", ids[0], None), ("d1-0", ids[1], None),
            ("d1-3600", delta, "1"), ("d2-0", ids[2], None), ("d2-3600", ids[2], None), ("new", backfill, "2")]


def test_the_dedup_key_staged_is_the_one_the_migration_computes_for_older_rows(tmp_path, new_store):
    """Store migration 9 numbers the rows loaded before it; a load numbers its own at staging. The two
    must agree, or a new copy would never find an old one (times in seconds, milliseconds, fractions)."""
    from toolkit.store import MIGRATIONS

    migration = next(m for m in MIGRATIONS if "dedup_key" in m)
    records = [event("Purchase", "u1", T0, "i1"), event("Purchase", "ü 2", T0 * 1000 + 7, "i1"),
               event("Open", "u1", T0 + 0.1234, "i-3"), event("Open", "u1", T0, None)]
    with Store(new_store(tmp_path / "s.duckdb")) as store:
        run.load(store, [write_lines(tmp_path / "e.jsonl", records)], now=NOW)
        staged = rows(store, "SELECT insert_id, time, dedup_key FROM event_rows ORDER BY ALL")
        assert sum(key is not None for *_, key in staged) == 3
        store.con.execute("UPDATE event_rows SET dedup_key = NULL")
        store.con.execute(migration.split(";")[1])   # the UPDATE that numbers older rows
        assert rows(store, "SELECT insert_id, time, dedup_key FROM event_rows ORDER BY ALL") == staged
        again = [event("Purchase", "u1", T0, "i1", x=1), event("Open", "u1", T0 + 0.1234, "i-3", x=1)]
        assert run.load(store, [write_lines(tmp_path / "f.jsonl", again)], now=NOW).files[0].duplicates == 2


def test_links_are_numbered_as_the_migration_numbers_older_ones_and_found_by_their_numbers(tmp_path, new_store):
    """Store migration 14 numbers the links loaded before it; a load numbers its own. The numbers must
    agree, or a delta would not reach a component through an older link (its ids found by number)."""
    from toolkit.store import MIGRATIONS

    migration = next(m for m in MIGRATIONS if "source_key" in m)
    merge = lambda a, b, t: event("$merge", b, T0 + t, None, **{"$distinct_ids": [b, a]})   # noqa: E731
    with Store(new_store(tmp_path / "s.duckdb")) as store:
        run.load(store, [write_lines(tmp_path / "1.jsonl", [merge("a1", "a2", 1), merge("ü 3", "a2", 2)])], now=NOW)
        numbered = "SELECT source, target, source_key, target_key FROM identity_links ORDER BY ALL"
        staged = rows(store, numbered)
        assert all(key is not None for *_, key in staged) and len({k for *_, k in staged}) == 1   # a2 twice
        store.con.execute("UPDATE identity_links SET source_key = NULL, target_key = NULL")
        store.con.execute(migration.split(";")[2])   # the UPDATE that numbers older links
        assert rows(store, numbered) == staged
        run.load(store, [write_lines(tmp_path / "2.jsonl", [merge("a1", "b1", 3)])], now=NOW)
        assert_as_from_scratch(store)
        canonical = dict(rows(store, "SELECT distinct_id, canonical_id FROM identity_map"))
        assert len({canonical.get(i, i) for i in ("a1", "a2", "ü 3", "b1")}) == 1


@pytest.mark.slow   # a full row group of profiles (~3 s)
def test_a_profile_update_leaves_the_stored_profiles_as_they_were_written(tmp_path):
    """An update replaces its profile's row by deleting it and adding the new one: updating it in place
    makes DuckDB's next checkpoint rewrite the whole row group it sits in, JSON and all (a few
    thousand updates spread over 1M profiles: 3.6 s of CPU when the load's process closed the store)."""
    (tmp_path / "p.json").write_text(json.dumps({"results": [
        {"$distinct_id": f"u{n}", "$properties": {"plan": "free", "n": n}} for n in range(125_000)]}))
    blocks = ("SELECT segment_id, block_id, block_offset FROM pragma_storage_info('profiles') "
              "WHERE column_name = 'properties' AND row_group_id = 0 ORDER BY ALL")
    with Store(tmp_path / "s.duckdb") as store:
        run.load(store, [tmp_path / "p.json"], now=NOW)
        store.con.execute("CHECKPOINT")
        before = rows(store, blocks)
        (target,), = rows(store, "SELECT distinct_id FROM profiles WHERE rowid = 7")   # in row group 0
        run.load(store, [write_lines(tmp_path / "u.jsonl", [{"$distinct_id": target, "$set": {"plan": "pro"}}])],
                 now=NOW)
        store.con.execute("CHECKPOINT")
        assert rows(store, blocks) == before
        assert rows(store, f"SELECT properties ->> 'plan', n FROM (SELECT properties, properties ->> 'n' AS n "
                           f"FROM profiles WHERE distinct_id = '{target}')") == [("pro", target[1:])]


@pytest.mark.slow   # two row groups of events (~5 s)
def test_a_delta_into_a_store_with_deleted_rows_leaves_the_stored_events_as_they_were(tmp_path):
    """The first file's duplicates were deleted; a delta must not rewrite the stored events (at 1M events,
    DuckDB's vacuum at the close of each small delta merged and rewrote every row group: 1.3 s of CPU).
    At this size the vacuum does not trigger: `test_a_load_checkpoints_its_own_changes` checks the cause."""
    first = [event("Page View", f"u{n % 997}", T0 + n, f"i{n}", x=n) for n in range(120_000)]
    first += [event("Page View", f"u{n % 997}", T0 + n, f"i{n}", x=-n) for n in range(0, 120_000, 12)]   # copies
    blocks = ("SELECT segment_id, block_id, block_offset FROM pragma_storage_info('event_rows') "
              "WHERE column_name = 'properties' AND row_group_id = 0 ORDER BY ALL")
    path = tmp_path / "s.duckdb"
    with Store(path) as store:
        assert run.load(store, [write_lines(tmp_path / "1.jsonl", first)], now=NOW).files[0].duplicates == 10_000
        before = rows(store, blocks)
    with Store(path) as store:
        run.load(store, [write_lines(tmp_path / "2.jsonl", [event("Purchase", "u2", T0, "new", x=1)])], now=NOW)
    with Store(path) as store:
        assert rows(store, blocks) == before
        assert rows(store, "SELECT count(*) FROM events") == [(120_001,)]


def test_a_load_checkpoints_its_own_changes(tmp_path):
    """A load ends with its changes in the store file, checkpointed with vacuuming off; the close has
    nothing left to checkpoint (where DuckDB would vacuum)."""
    path = tmp_path / "s.duckdb"
    with Store(path) as store:
        run.load(store, [write_lines(tmp_path / "1.jsonl", [event("Purchase", "u1", T0, "i1")])], now=NOW)
        wal = path.with_name(path.name + ".wal")
        assert not wal.exists() or wal.stat().st_size == 0
        assert rows(store, "SELECT current_setting('max_vacuum_tasks')") == [(100,)]   # reset after the load
