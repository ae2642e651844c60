"""Loading events: formats, validation and quarantine, dedup, manifest, atomicity."""

import json
import threading

import duckdb
import pandas as pd
import pytest

from helpers import NOW, T0, event, rows, write_lines
from toolkit.errors import LoadError
from toolkit.loading import derived, events, run
from toolkit.store import Store


def load(store, *paths, **kw):
    return run.load(store, [str(p) for p in paths], now=NOW, **kw)


def quarantine(store):
    return rows(store, "SELECT line, reason FROM quarantine ORDER BY file_id, line")


# -- formats -----------------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
def test_jsonl_plain_and_gzip(empty_store, tmp_path, compress):
    name = "e.jsonl.gz" if compress else "e.jsonl"
    path = write_lines(tmp_path / name, [event("A", "u1"), event("B", "u2", plan="pro")], compress=compress)
    summary = load(empty_store, path)
    assert summary.to_dict()["events"] == 2
    assert rows(empty_store, "SELECT event, distinct_id, properties->>'$.plan' FROM events ORDER BY event") == [
        ("A", "u1", None), ("B", "u2", "pro")]


def test_json_array(empty_store, tmp_path):
    path = tmp_path / "e.json"
    path.write_text(json.dumps([event("A"), event("B", "u2")]))
    assert load(empty_store, path).to_dict()["events"] == 2


def test_csv_flat_columns_become_properties(empty_store, tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("event,distinct_id,time,$insert_id,plan,amount\n"
                    f"Purchase,u1,{T0},abc-1,pro,9.5\nPurchase,u2,{T0},abc-2,free,1\n")
    load(empty_store, path)
    assert rows(empty_store, "SELECT distinct_id, insert_id, properties->>'$.plan', (properties->'$.amount')::DOUBLE "
                       "FROM events ORDER BY 1") == [("u1", "abc-1", "pro", 9.5), ("u2", "abc-2", "free", 1.0)]


def test_parquet_with_struct_properties(empty_store, tmp_path):
    path = tmp_path / "e.parquet"
    duckdb.sql(f"""COPY (SELECT 'Sign Up' AS event,
                   {{'time': {T0}, 'distinct_id': 'u1', 'plan': 'pro'}} AS properties)
                   TO '{path}' (FORMAT parquet)""")
    load(empty_store, path)
    assert (rows(empty_store, "SELECT event, distinct_id, properties->>'$.plan' FROM events")
            == [("Sign Up", "u1", "pro")])


def test_time_in_seconds_or_milliseconds(empty_store, tmp_path):
    path = write_lines(tmp_path / "e.jsonl", [event("s", time=T0), event("ms", time=T0 * 1000 + 250),
                                              event("frac", time=T0 + 0.5)])
    load(empty_store, path)
    got = dict(rows(empty_store, "SELECT event, epoch_ms(time) FROM events"))
    assert got == {"s": T0 * 1000, "ms": T0 * 1000 + 250, "frac": T0 * 1000 + 500}


def test_properties_stay_queryable_with_nesting_and_unicode(empty_store, tmp_path):
    path = write_lines(tmp_path / "e.jsonl", [event("Kauf", "ü-ß/\"'x", city="Zürich 🏔", tags=["a", "b"],
                                                    nested={"k": {"v": 1}}, big=123456789012345678901234567890)])
    load(empty_store, path)
    got = rows(empty_store, """SELECT distinct_id, properties->>'$.city', properties->>'$.tags[1]',
                                properties->>'$.nested.k.v', properties->>'$.big' FROM events""")
    assert got == [("ü-ß/\"'x", "Zürich 🏔", "b", "1", "123456789012345678901234567890")]


def test_empty_files_load_nothing(empty_store, tmp_path):
    for name in ("a.jsonl", "b.json", "c.jsonl.gz"):
        write_lines(tmp_path / name, [], compress=name.endswith(".gz"))
    (tmp_path / "b.json").write_text("[]")
    summary = load(empty_store, tmp_path)
    assert [f.status for f in summary.files] == ["loaded"] * 3
    assert rows(empty_store, "SELECT count(*) FROM events") == [(0,)]


def test_very_long_strings(empty_store, tmp_path):
    long = "x" * 3_000_000
    path = write_lines(tmp_path / "e.jsonl", [event("A", blob=long)])
    load(empty_store, path)
    assert rows(empty_store, "SELECT length(properties->>'$.blob') FROM events") == [(3_000_000,)]


# -- validation --------------------------------------------------------------------------------

BAD = [
    ("{not json", "malformed JSON"),
    ('"a string"', "not a JSON object (got string)"),
    ("[1, 2]", "not a JSON object (got array)"),
    ({"properties": {"time": T0, "distinct_id": "u"}}, 'missing "event"'),
    ({"event": "", "properties": {"time": T0, "distinct_id": "u"}}, "empty event name"),
    ({"event": 5, "properties": {"time": T0, "distinct_id": "u"}}, '"event" must be a string, got number'),
    ({"event": "A"}, 'missing "properties"'),
    ({"event": "A", "properties": [1]}, '"properties" must be an object, got array'),
    ({"event": "A", "properties": {"time": T0}}, "missing distinct_id"),
    ({"event": "A", "properties": {"time": T0, "distinct_id": None}}, "missing distinct_id"),
    ({"event": "A", "properties": {"time": T0, "distinct_id": {"a": 1}}}, "distinct_id must be a string, got object"),
    ({"event": "A", "properties": {"time": T0, "distinct_id": True}}, "distinct_id must be a string, got boolean"),
    ({"event": "A", "properties": {"distinct_id": "u"}}, "missing time"),
    ({"event": "A", "properties": {"time": "yesterday", "distinct_id": "u"}}, "time must be a number, got string"),
    ({"event": "A", "properties": {"time": 1000, "distinct_id": "u"}}, "before 1971"),
    ({"event": "A", "properties": {"time": 32503680000, "distinct_id": "u"}}, "in the future"),
    ("{\"event\": \"A\", \"properties\": {\"time\": 1e400, \"distinct_id\": \"u\"}}", "out of range"),
    ({"event": "A", "properties": {"time": T0, "distinct_id": "u", "$insert_id": "x" * 37}}, "bad $insert_id"),
    ({"event": "A", "properties": {"time": T0, "distinct_id": "u", "$insert_id": "a b"}}, "bad $insert_id"),
    ({"event": "A", "properties": {"time": T0, "distinct_id": "u", "$insert_id": 12}}, "bad $insert_id"),
]


@pytest.mark.parametrize("record,reason", BAD, ids=[r for _, r in BAD])
def test_each_bad_row_is_quarantined_with_its_line_and_reason(empty_store, tmp_path, record, reason):
    path = write_lines(tmp_path / "e.jsonl", [event("ok1"), record, event("ok2")])
    summary = load(empty_store, path)
    assert rows(empty_store, "SELECT event FROM events ORDER BY event") == [("ok1",), ("ok2",)]
    (line, got), = quarantine(empty_store)
    assert line == 2 and reason in got
    assert summary.files[0].quarantined == 1 and summary.files[0].rows_loaded == 2


@pytest.mark.parametrize("refused", ["null", "NULL", " undefined ", "0", "-1", "", "n/a", "<nil>",
                                     "00000000-0000-0000-0000-000000000000", "anonymous"])
def test_refused_distinct_ids(empty_store, tmp_path, refused):
    load(empty_store, write_lines(tmp_path / "e.jsonl", [event("A", refused)]))
    (_, reason), = quarantine(empty_store)
    assert "refused distinct_id" in reason


def test_time_limit_is_relative_to_now(empty_store, tmp_path):
    now_ms = int(NOW.timestamp() * 1000)
    path = write_lines(tmp_path / "e.jsonl", [event("in", time=now_ms + 3_599_000),
                                              event("out", time=now_ms + 3_601_000)])
    load(empty_store, path)
    assert rows(empty_store, "SELECT event FROM events") == [("in",)]


def test_line_numbers_count_blank_lines_and_bad_utf8(empty_store, tmp_path):
    path = tmp_path / "e.jsonl"
    good = json.dumps(event("ok")).encode()
    path.write_bytes(b"\n".join([good, b"", b'{"event": "A", "properties": {"x": "\xff\xfe"}}', b"   ",
                                 json.dumps(event("")).encode(), good]) + b"\n")
    load(empty_store, path)
    got = quarantine(empty_store)
    assert [line for line, _ in got] == [3, 5]
    assert "unreadable line" in got[0][1] and "empty event name" in got[1][1]
    assert rows(empty_store, "SELECT count(*) FROM events") == [(2,)]


def test_blank_lines_renumbered_on_the_fast_path(empty_store, tmp_path):
    path = write_lines(tmp_path / "e.jsonl", [event("ok"), "", "", event("A", "null")])
    load(empty_store, path)
    assert [line for line, _ in quarantine(empty_store)] == [4]


def test_strict_refuses_the_whole_file_and_changes_nothing(empty_store, tmp_path):
    good = write_lines(tmp_path / "a.jsonl", [event("A")])
    bad = write_lines(tmp_path / "b.jsonl", [event("B"), "{oops"])
    load(empty_store, good)
    before = rows(empty_store, "SELECT count(*) FROM events"), rows(empty_store, "SELECT count(*) FROM loads")
    with pytest.raises(LoadError, match=r"b.jsonl.*--strict.*line 2: malformed JSON"):
        load(empty_store, bad, strict=True)
    assert (rows(empty_store, "SELECT count(*) FROM events"), rows(empty_store, "SELECT count(*) FROM loads")) == before
    assert rows(empty_store, "SELECT count(*) FROM quarantine") == [(0,)]


def test_unparseable_array_is_refused_and_the_rest_still_loads(empty_store, tmp_path):
    (tmp_path / "a.json").write_text('[{"event": "A", "properties": {')
    write_lines(tmp_path / "b.jsonl", [event("B")])
    summary = load(empty_store, tmp_path)
    refused, loaded = summary.files
    assert refused.status == "refused" and "a.json" in refused.message
    assert loaded.status == "loaded" and rows(empty_store, "SELECT event FROM events") == [("B",)]


# -- dedup ---------------------------------------------------------------------------------------

def test_dedup_most_recent_copy_wins_within_and_across_files(empty_store, tmp_path):
    """Within a file the copy Mixpanel processed last wins, wherever it sits; a later file wins over
    an earlier one."""
    a = write_lines(tmp_path / "a.jsonl", [
        event("A", insert_id="k1", v=2, mp_processing_time_ms=T0 * 1000 + 9),
        event("A", insert_id="k1", v=1, mp_processing_time_ms=T0 * 1000 + 5),
        event("A", insert_id="k2", v=1)])
    b = write_lines(tmp_path / "b.jsonl", [event("A", insert_id="k1", v=3, mp_processing_time_ms=T0 * 1000)])
    first = load(empty_store, a)
    assert first.files[0].duplicates == 1 and first.files[0].rows_loaded == 2
    assert sorted(rows(empty_store, "SELECT insert_id, properties->>'$.v' FROM events")) == [("k1", "2"), ("k2", "1")]
    second = load(empty_store, b)
    assert second.files[0].duplicates == 1
    assert sorted(rows(empty_store, "SELECT insert_id, properties->>'$.v' FROM events")) == [("k1", "3"), ("k2", "1")]


def test_dedup_of_copies_alike_but_for_content_does_not_depend_on_their_order(tmp_path, new_store):
    copies = [event("A", insert_id="k", v=v) for v in (1, 2, 3)]
    kept = set()
    for name, order in (("one", copies), ("two", copies[::-1]), ("three", copies[1:] + copies[:1])):
        with Store(new_store(tmp_path / f"{name}.duckdb")) as store:
            load(store, write_lines(tmp_path / f"{name}.jsonl", order))
            kept.add(rows(store, "SELECT properties FROM events")[0][0])
    assert len(kept) == 1


def test_dedup_key_is_event_distinct_id_time_and_insert_id(empty_store, tmp_path):
    path = write_lines(tmp_path / "a.jsonl", [
        event("A", "u1", T0, "k"), event("B", "u1", T0, "k"), event("A", "u2", T0, "k"),
        event("A", "u1", T0 + 1, "k"), event("A", "u1", T0 * 1000, "k")])   # the last one: same time in ms
    summary = load(empty_store, path)
    assert summary.files[0].duplicates == 1 and rows(empty_store, "SELECT count(*) FROM events") == [(4,)]


def test_events_without_insert_id_are_never_deduplicated(empty_store, tmp_path):
    path = write_lines(tmp_path / "a.jsonl", [event("A"), event("A"), event("A")])
    assert load(empty_store, path).files[0].duplicates == 0
    assert rows(empty_store, "SELECT count(*) FROM events") == [(3,)]


# -- manifest ------------------------------------------------------------------------------------

def test_loading_twice_changes_nothing_even_under_another_name(empty_store, tmp_path):
    path = write_lines(tmp_path / "a.jsonl", [event("A", insert_id="k")])
    load(empty_store, path)
    snapshot = [rows(empty_store, f"SELECT * FROM {table} ORDER BY ALL") for table in ("event_rows", "loads")]
    (tmp_path / "copy.jsonl").write_bytes(path.read_bytes())
    again = load(empty_store, path, tmp_path / "copy.jsonl")
    assert [f.status for f in again.files] == ["skipped", "skipped"]
    assert f"same content as {path}" in again.files[1].message
    # The copy was staged while it was hashed; its staged rows are gone.
    assert [rows(empty_store, f"SELECT * FROM {table} ORDER BY ALL") for table in ("event_rows", "loads")] == snapshot


def test_a_copy_of_a_profiles_file_is_skipped(empty_store, tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"$distinct_id": "u1", "$properties": {"plan": "pro"}}]))
    load(empty_store, path)
    (tmp_path / "later.json").write_bytes(path.read_bytes())
    empty_store.con.execute("UPDATE profiles SET properties = '{\"plan\": \"edited\"}'")
    again = load(empty_store, tmp_path / "later.json")
    assert again.files[0].status == "skipped" and str(path) in again.files[0].message
    assert rows(empty_store, "SELECT properties->>'plan' FROM profiles") == [("edited",)]


def test_folder_load_reads_only_new_files(empty_store, tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    write_lines(landing / "1.jsonl", [event("A")])
    assert load(empty_store, landing).to_dict()["files_loaded"] == 1
    write_lines(landing / "2.jsonl", [event("B")])
    (landing / ".hidden.jsonl").write_text("{broken")
    (landing / "notes.txt").write_text("ignored")
    second = load(empty_store, landing)
    assert [(f.path.endswith("1.jsonl"), f.status) for f in second.files] == [(True, "skipped"), (False, "loaded")]
    assert rows(empty_store, "SELECT count(*) FROM events") == [(2,)]


def test_missing_path_and_unknown_type_are_named(empty_store, tmp_path):
    with pytest.raises(LoadError, match="nope.jsonl: no such file"):
        load(empty_store, tmp_path / "nope.jsonl")
    (tmp_path / "x.xml").write_text("<a/>")
    summary = load(empty_store, tmp_path / "x.xml")
    assert summary.files[0].status == "refused" and "x.xml: unknown file type" in summary.files[0].message


# -- atomicity -----------------------------------------------------------------------------------

def test_interrupt_mid_load_rolls_back_that_file_only(empty_file_store, tmp_path, monkeypatch):
    a = write_lines(tmp_path / "a.jsonl", [event("A")])
    b = write_lines(tmp_path / "b.jsonl", [event("B"), event("$identify", "u9", **{
        "$identified_id": "u9", "$anon_id": "2f1b3c4d-1234-4abc-8def-0123456789ab"})])
    load(empty_file_store, a)
    real = derived.refresh_identity

    def interrupted(con, file_id):
        real(con, file_id)
        raise KeyboardInterrupt   # after b's rows and links are written, before commit

    monkeypatch.setattr(derived, "refresh_identity", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load(empty_file_store, b)
    assert rows(empty_file_store, "SELECT event FROM events") == [("A",)]
    assert rows(empty_file_store, "SELECT count(*) FROM event_rows") == [(1,)]    # b's staged rows are gone too
    assert rows(empty_file_store, "SELECT count(*) FROM identity_links") == [(0,)]
    assert rows(empty_file_store, "SELECT count(*) FROM loads") == [(1,)]
    monkeypatch.setattr(derived, "refresh_identity", real)
    assert load(empty_file_store, b).files[0].status == "loaded"     # and the next run converges
    assert rows(empty_file_store, "SELECT count(*) FROM identity_map") == [(1,)]


@pytest.mark.slow
def test_concurrent_reader_never_sees_half_a_load(empty_file_store, tmp_path):
    n = 200_000
    path = write_lines(tmp_path / "big.jsonl", (event("A", f"u{i % 1000}", T0 + i, f"k{i}") for i in range(n)))
    seen, stop = set(), threading.Event()
    reader = empty_file_store.reader()

    def poll():
        while not stop.is_set():
            seen.add(reader.execute("SELECT count(*) FROM events").fetchone()[0])

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        load(empty_file_store, path)
    finally:
        stop.set()
        thread.join()
    seen.add(reader.execute("SELECT count(*) FROM events").fetchone()[0])
    assert seen <= {0, n} and n in seen
    # Every key column came from its own record.
    assert rows(empty_file_store, """SELECT count(*) FROM events WHERE distinct_id <> properties->>'$.distinct_id'
                               OR insert_id <> properties->>'$."$insert_id"'
                               OR epoch(time) <> (properties->'$.time')::BIGINT""") == [(0,)]


def test_committed_events_never_carry_rejected_rows(empty_store, tmp_path):
    load(empty_store, write_lines(tmp_path / "a.jsonl", [event("A"), "{bad", event("B", "null")]))
    assert rows(empty_store, "SELECT count(*) FROM event_rows WHERE rejected IS NOT NULL OR event IS NULL "
                       "OR distinct_id IS NULL OR time IS NULL") == [(0,)]


def test_summary_counts(empty_store, tmp_path):
    write_lines(tmp_path / "a.jsonl", [event("A", insert_id="k"), event("A", insert_id="k"), "{bad"])
    d = load(empty_store, tmp_path).to_dict()
    assert (d["events"], d["duplicates_dropped"], d["rows_quarantined"], d["files_loaded"]) == (1, 1, 1, 1)
    assert isinstance(pd.DataFrame(d["files"]), pd.DataFrame)


# -- the sample ----------------------------------------------------------------------------------

def test_sample_broken_rows_are_quarantined_row_by_row(empty_store):
    from helpers import SAMPLE, expected_reasons

    summary = load(empty_store, SAMPLE / "broken")
    expected = expected_reasons(SAMPLE / "broken" / "expected.tsv")
    got = dict(quarantine(empty_store))
    assert sorted(got) == sorted(expected)
    for line, phrase in expected.items():
        assert phrase in got[line], (line, got[line], phrase)
    assert summary.to_dict()["events"] == 3


def test_sample_loads_with_every_kind(empty_store):
    from helpers import SAMPLE

    d = load(empty_store, SAMPLE).to_dict()
    assert d["files_refused"] == 0
    assert d["events"] > 4000 and d["profiles"] > 300 and d["profile_updates"] > 500
    assert d["duplicates_dropped"] == 70 and d["rows_quarantined"] >= 23


def test_rows_staged_by_a_dead_load_never_become_visible(empty_file_store, tmp_path, monkeypatch):
    """A load killed between staging and publishing leaves rows behind; the next load of any kind
    (which publishes a newer file) must discard them first, not show them."""
    events_file = write_lines(tmp_path / "e.jsonl", [event("A"), event("B")])
    profiles_file = tmp_path / "p.json"
    profiles_file.write_text(json.dumps([{"$distinct_id": "u1", "$properties": {"plan": "pro"}}]))

    def killed(*args):
        raise SystemExit("killed")

    monkeypatch.setattr(events, "settle", killed)
    monkeypatch.setattr(run, "_discard_unpublished", lambda store: None)   # as if the process died
    with pytest.raises(SystemExit):
        load(empty_file_store, events_file)
    monkeypatch.undo()
    assert rows(empty_file_store, "SELECT count(*) FROM event_rows") == [(2,)]
    assert rows(empty_file_store, "SELECT count(*) FROM events") == [(0,)]
    assert load(empty_file_store, profiles_file).files[0].status == "loaded"
    assert rows(empty_file_store, "SELECT count(*) FROM event_rows") == [(0,)]
    assert rows(empty_file_store, "SELECT count(*) FROM events") == [(0,)]


@pytest.mark.slow
def test_killed_load_leaves_whole_files_only(tmp_path):
    """SIGKILL at every point of a load where a transaction is written or committed (the load announces
    them): after recovery each file is either fully in or fully out."""
    from helpers import kill_load_at, load_points

    first = write_lines(tmp_path / "1.jsonl", [event("A", f"u{i}", T0 + i, f"a{i}") for i in range(1000)])
    second = write_lines(tmp_path / "2.jsonl", (event("B", f"u{i}", T0 + i, f"b{i}") for i in range(3_000)))

    def store_with_first(name):
        db = tmp_path / f"{name}.duckdb"
        with Store(db) as store:
            load(store, first)
        return db

    points = load_points(store_with_first("points"), [second])
    assert len(points) >= 4, points            # staged, then settled and published: each written, committed
    outcomes = set()
    for n, point in enumerate(points):
        db = store_with_first(f"kill-{n}")
        kill_load_at(db, [second], point)
        with Store(db) as store:
            counts = dict(rows(store, "SELECT event, count(*) FROM events GROUP BY 1"))
            loaded = rows(store, "SELECT count(*) FROM loads")[0][0]
            assert counts.get("A") == 1000
            assert counts.get("B", 0) in (0, 3_000) and loaded == 1 + (counts.get("B", 0) > 0), point
            outcomes.add(counts.get("B", 0))
            load(store, second)                       # the next run converges
            assert rows(store, "SELECT count(*) FROM events WHERE event = 'B'") == [(3_000,)]
            assert rows(store, "SELECT count(*) FROM event_rows") == [(4_000,)]   # no orphaned staged rows
    assert 0 in outcomes                               # at least one kill landed mid-load
    assert 3_000 in outcomes                           # and one after the file published


def test_non_ascii_insert_id_is_quarantined_not_the_file(empty_store, tmp_path):
    path = write_lines(tmp_path / "e.jsonl", [event("A", insert_id="\u0080"), event("B", insert_id="é" * 20),
                                              event("C", insert_id="ok-1")])
    summary = load(empty_store, path)
    assert summary.files[0].status == "loaded" and rows(empty_store, "SELECT event FROM events") == [("C",)]
    assert [line for line, _ in quarantine(empty_store)] == [1, 2]


# -- the tables a load derives -------------------------------------------------------------------

def test_the_user_id_facts_table_is_made_by_the_store_and_refilled_by_each_load(empty_file_store, tmp_path):
    """The facts table is a store migration's, there before any load and never replaced by one: a load
    refills it (same table) and stamps it; its rows are what computing the facts gives."""
    def table_oid():
        return rows(empty_file_store, "SELECT table_oid FROM duckdb_tables() WHERE table_name = 'user_id_facts'")

    columns = rows(empty_file_store, "SELECT column_name FROM duckdb_columns() WHERE table_name = 'user_id_facts'")
    assert [c for c, in columns] == ["distinct_id", "updated_at", "empty", "jt", "v", "problem", "is_uuid",
                                     "claimants", "names", "winner"]
    assert derived.stored_facts(empty_file_store.con, derived.DEFAULT_USER_ID_PROPERTY) is None   # no load yet
    made = table_oid()
    profiles = tmp_path / "p.json"
    profiles.write_text(json.dumps([{"$distinct_id": "u1", "$properties": {"$onesignal_user_id": "os-1"}},
                                    {"$distinct_id": "u2", "$properties": {"$onesignal_user_id": "os-1"}}]))
    load(empty_file_store, profiles)
    assert table_oid() == made
    assert derived.stored_facts(empty_file_store.con, derived.DEFAULT_USER_ID_PROPERTY) == derived.FACTS_TABLE
    sql, params = derived.facts_sql()
    assert rows(empty_file_store, "SELECT * FROM user_id_facts ORDER BY distinct_id") == \
        empty_file_store.con.execute(f"SELECT * FROM ({sql}) ORDER BY distinct_id", params).fetchall()
    assert rows(empty_file_store, "SELECT distinct_id, claimants, winner FROM user_id_facts ORDER BY 1") == [
        ("u1", 2, "u1"), ("u2", 2, "u1")]
