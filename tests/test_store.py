"""The store: location, schema versions and migrations."""

import duckdb
import pytest

from helpers import NOW, SAMPLE
from toolkit import store as store_module
from toolkit.errors import StoreError
from toolkit.store import SCHEMA_VERSION, Store


def test_default_location_and_env_override(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TOOLKIT_DB", raising=False)
    with Store() as s:
        assert s.path == "toolkit.duckdb"
    assert (tmp_path / "toolkit.duckdb").exists()
    monkeypatch.setenv("TOOLKIT_DB", str(tmp_path / "elsewhere" / "x.duckdb"))
    with Store() as s:
        assert s.path.endswith("x.duckdb")
    assert (tmp_path / "elsewhere" / "x.duckdb").exists()


def test_new_store_is_at_the_current_version_with_every_table(tmp_path):
    with Store(tmp_path / "s.duckdb") as s:
        assert s.version() == SCHEMA_VERSION
        tables = {t for t, in s.con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"events", "profiles", "identity_links", "identity_map", "loads", "quarantine",
            "resolved_events", "resolved_profiles", "schema_version"} <= tables


def test_migrations_apply_once_and_in_order(tmp_path, monkeypatch):
    path = tmp_path / "s.duckdb"
    with Store(path):
        pass
    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS + ["CREATE TABLE extra (x INTEGER)"])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    for _ in range(2):
        with Store(path) as s:
            assert s.version() == SCHEMA_VERSION + 1
            assert s.con.execute("SELECT count(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION + 1


def test_failed_migration_leaves_the_previous_version(tmp_path, monkeypatch):
    path = tmp_path / "s.duckdb"
    with Store(path):
        pass
    monkeypatch.setattr(store_module, "MIGRATIONS",
                        store_module.MIGRATIONS + ["CREATE TABLE half (x INTEGER); SELECT * FROM nowhere"])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(duckdb.Error):
        Store(path)
    con = duckdb.connect(str(path))
    assert con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    assert not con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'half'").fetchone()[0]


def test_newer_store_is_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "s.duckdb"
    with Store(path) as s:
        s.con.execute("INSERT INTO schema_version VALUES (99, now()::TIMESTAMP)")
    with pytest.raises(StoreError, match="schema version 99, newer than this toolkit"):
        Store(path)


def test_unopenable_store_names_the_path(tmp_path):
    bad = tmp_path / "not-a-db.duckdb"
    bad.write_text("this is not a database")
    with pytest.raises(StoreError, match="not-a-db.duckdb"):
        Store(bad)


def test_read_only_store_sees_data_and_refuses_writes(tmp_path):
    path = tmp_path / "s.duckdb"
    with Store(path) as s:
        s.con.execute("INSERT INTO identity_map VALUES ('a', 'b')")
    with Store(path, read_only=True) as s:
        assert s.con.execute("SELECT * FROM identity_map").fetchall() == [("a", "b")]
        with pytest.raises(duckdb.Error):
            s.con.execute("DELETE FROM identity_map")


def test_migration_5_takes_out_what_later_steps_read_of_existing_rows(tmp_path, monkeypatch):
    path = tmp_path / "s.duckdb"
    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:4])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 4)
    with Store(path) as s:
        s.con.execute("""INSERT INTO event_rows (event, distinct_id, time, properties, file_id) VALUES
            ('$identify', 'u1', '2026-10-01',
             '{"$anon_id": "a1", "$identified_id": "u1", "mp_processing_time_ms": 5}', 1),
            ('$create_alias', 'u1', '2026-10-01', '{"alias": "x1"}', 1),
            ('$merge', 'u1', '2026-10-01', '{"$distinct_ids": ["u1", "u2"], "mp_processing_time_ms": "7"}', 1),
            ('Login', 'u1', '2026-10-01', '{}', 1)""")
        s.con.execute("""INSERT INTO profiles VALUES
            ('a', '{"$onesignal_user_id": "ext_a", "plan": "pro"}', '2026-10-01', 1, 1),
            ('b', '{}', '2026-10-01', 1, 2), ('c', '{ }', '2026-10-01', 1, 3),
            ('d', '{"$onesignal_user_id": 7}', '2026-10-01', 1, 4)""")
    monkeypatch.undo()
    with Store(path) as s:
        assert s.version() == SCHEMA_VERSION
        got = s.con.execute("SELECT distinct_id, onesignal_user_id_type, onesignal_user_id, empty "
                            "FROM resolved_profiles ORDER BY 1").fetchall()
        events = s.con.execute("SELECT event, link_source, link_target FROM event_rows ORDER BY event").fetchall()
    assert events == [("$create_alias", "x1", "u1"), ("$identify", "a1", "u1"), ("$merge", "u2", "u1"),
                      ("Login", None, None)]
    assert got == [("a", "VARCHAR", "ext_a", False), ("b", None, None, True), ("c", None, None, True),
                   ("d", "UBIGINT", "7", False)]


def test_migration_17_keeps_every_profile_and_its_required_columns_without_the_primary_key(tmp_path, monkeypatch):
    path = tmp_path / "s.duckdb"
    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:16])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 16)
    row = f"SELECT ?, ?::JSON, TIMESTAMP '2026-10-01', 1, ?, {store_module.profile_facts('$2::JSON')}"
    with Store(path) as s:
        for line, (did, props) in enumerate([("a", '{"$onesignal_user_id": "ext_a"}'), ("b", "{}")]):
            s.con.execute(f"INSERT INTO profiles {row}", [did, props, line])
    monkeypatch.undo()
    with Store(path) as s:
        assert s.version() == SCHEMA_VERSION
        assert s.con.execute("SELECT distinct_id, onesignal_user_id, empty, line FROM profiles ORDER BY 1"
                             ).fetchall() == [("a", "ext_a", False, 0), ("b", None, True, 1)]
        assert s.con.execute("SELECT distinct_id, onesignal_user_id FROM resolved_profiles ORDER BY 1"
                             ).fetchall() == [("a", "ext_a"), ("b", None)]
        assert not s.con.execute("SELECT count(*) FROM duckdb_constraints() WHERE table_name = 'profiles' "
                                 "AND constraint_type = 'PRIMARY KEY'").fetchone()[0]
        with pytest.raises(duckdb.ConstraintException):
            s.con.execute(f"INSERT INTO profiles {row}", [None, "{}", 2])


def test_migration_21_keeps_every_row_and_stores_the_looked_up_ids_uncompressed(tmp_path, monkeypatch):
    """The sample loaded under version 20, then opened: the three tables keep their rows, their id columns
    are stored uncompressed, and the next load computes every profile's facts again (the mark is gone)."""
    from toolkit import load
    from toolkit.loading import derived

    path = tmp_path / "s.duckdb"
    tables = {"identity_map": ["distinct_id", "canonical_id"], "profiles": ["distinct_id", "onesignal_user_id"],
              "user_id_facts": ["distinct_id", "v"]}

    def rows(s):
        return {table: sorted(s.con.execute(f"SELECT * FROM {table}").fetchall(), key=repr) for table in tables}

    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:20])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 20)
    with Store(path) as s:
        load(s, [SAMPLE / "events.jsonl", SAMPLE / "profiles.json"], now=NOW)
        before = rows(s)
    monkeypatch.undo()
    with Store(path) as s:
        assert s.version() == SCHEMA_VERSION
        assert rows(s) == before and all(before.values())
        s.con.execute("CHECKPOINT")
        for table, columns in tables.items():
            stored = dict(s.con.execute(f"""SELECT column_name, list(DISTINCT compression)
                                            FROM pragma_storage_info('{table}')
                                            WHERE segment_type = 'VARCHAR' GROUP BY ALL""").fetchall())
            assert {column: stored[column] for column in columns} == {column: ["Uncompressed"] for column in columns}
        assert derived.stored_facts(s.con, derived.DEFAULT_USER_ID_PROPERTY) is None
        load(s, [SAMPLE / "profile_updates.jsonl"], now=NOW)
        assert derived.stored_facts(s.con, derived.DEFAULT_USER_ID_PROPERTY) == derived.FACTS_TABLE


def test_migration_22_records_each_loaded_events_files_times_and_later_copies_are_still_found(tmp_path,
                                                                                             monkeypatch):
    """The sample's events loaded under version 21, then opened: each events file has its first and last
    event time, and a file loaded after it still replaces a copy of one of those events."""
    import json

    from toolkit import load
    from toolkit.loading import events

    path = tmp_path / "s.duckdb"
    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:21])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", 21)
    monkeypatch.setattr(events, "_record_times", lambda con, file_id: None)   # as loads did before 22
    monkeypatch.setattr(events, "overlapping_files", lambda con, file_id: (None, None))   # the first file
    with Store(path) as s:
        load(s, [SAMPLE / "events.jsonl", SAMPLE / "profiles.json"], now=NOW)
    monkeypatch.undo()
    with Store(path) as s:
        assert s.con.execute("SELECT count(*) FROM events").fetchone()[0] == 4430
        times = s.con.execute("SELECT file_id, min(time), max(time) FROM events GROUP BY ALL").fetchall()
        assert s.con.execute("SELECT * FROM event_file_times").fetchall() == times and len(times) == 1
        copied = json.loads((SAMPLE / "events.jsonl").read_text().splitlines()[-1])
        assert copied["properties"]["$insert_id"]
        copied["properties"]["x"] = 1
        (tmp_path / "copy.jsonl").write_text(json.dumps(copied) + "\n")
        assert load(s, [tmp_path / "copy.jsonl"], now=NOW).files[0].duplicates == 1


def test_public_functions_take_the_store_not_its_connection(empty_store):
    """One store type: what takes a store refuses a bare DuckDB connection by name, rather than working
    with it in part (a cohort save through one was not all or nothing)."""
    from toolkit import cohorts, matching, mtu
    from toolkit.store import connection

    assert connection(empty_store) is empty_store.con
    calls = {"cohorts.list_cohorts": lambda s: cohorts.list_cohorts(s),
             "cohorts.evaluate": lambda s: cohorts.evaluate(s, "anyone"),
             "matching.match": lambda s: matching.match(s, ["bob"]),
             "matching.preview": lambda s: matching.preview(s, "anyone"),
             "mtu.report": lambda s: mtu.report(s)}
    for name, call in calls.items():
        with pytest.raises(TypeError, match="expected a toolkit Store, got DuckDBPyConnection"):
            call(empty_store.con)
            pytest.fail(name)


def test_the_stored_numbers_of_texts_are_md5_number_lower_whatever_the_text():
    """Dedup keys and identity link keys written by one DuckDB version are read by the next: `md5_key`
    must be md5_number_lower (MD5's, the same in every version) exactly, for any text."""
    from toolkit.sql import md5_key

    con = duckdb.connect()
    con.execute("""CREATE TABLE t AS SELECT * FROM (VALUES (''), ('a'), ('é'), ('👍'), (chr(0)),
                       ('a' || chr(0) || 'b'), (repeat('x', 100000)), ('"/'''), (NULL)) v(s)
                   UNION ALL SELECT concat_ws(chr(0), 'e' || i, 'user_' || i, i * 1000003, uuid())
                   FROM range(20000) r(i)""")
    differ, = con.execute(f"""SELECT count(*) FROM t
                              WHERE {md5_key("s")} IS DISTINCT FROM md5_number_lower(s)""").fetchone()
    assert differ == 0
    abc = md5_key("'abc'")
    assert con.execute(f"SELECT typeof({abc}), {abc}").fetchone() == ("UBIGINT", 8250560606382298838)
