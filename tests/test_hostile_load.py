"""Hostile input for loading: files built to break the loader, each against a real DuckDB store file.

Every case asserts the same four things: the bad file (or line) is named with a reason a person can
act on, the good files and rows still load (nothing lost), nothing is half-written, and loading again
converges (the next run changes nothing or finishes the job).
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import NOW, T0, event, rows, write_lines
from toolkit import load
from toolkit.loading.readers import MAX_RECORD_BYTES
from toolkit.store import Store


def good_file(folder: Path, name="good.jsonl", n=3, prefix="g") -> Path:
    return write_lines(folder / name, [event(distinct_id=f"{prefix}{i}", insert_id=f"{prefix}{i}") for i in range(n)])


def by_name(summary) -> dict[str, object]:
    return {Path(f.path).name: f for f in summary.files}


def event_count(store) -> int:
    return rows(store, "SELECT count(*) FROM events")[0][0]


def assert_converges(store, folder: Path) -> None:
    """A second load of the same folder loads nothing new and changes nothing."""
    before = (event_count(store), rows(store, "SELECT count(*) FROM quarantine")[0][0],
              rows(store, "SELECT count(*) FROM profiles")[0][0])
    again = load(store, [folder], now=NOW)
    assert all(f.status in ("skipped", "refused") for f in again.files), again.to_dict()
    assert (event_count(store), rows(store, "SELECT count(*) FROM quarantine")[0][0],
            rows(store, "SELECT count(*) FROM profiles")[0][0]) == before


def big_event(distinct_id: str, mib: float) -> str:
    return json.dumps(event(distinct_id=distinct_id, blob="x" * int(mib * (1 << 20))))


# -- files the toolkit cannot read are refused on their own (issue 13.3) ----------------------------

def test_first_record_nested_ten_thousand_deep_is_quarantined_and_the_folder_loads(empty_file_store, tmp_path):
    good_file(tmp_path)
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 10_000 + "]" * 10_000 + "\n" + json.dumps(event(distinct_id="d1")) + "\n")
    summary = load(empty_file_store, [tmp_path], now=NOW)
    files = by_name(summary)
    assert files["good.jsonl"].rows_loaded == 3
    assert files["deep.jsonl"].rows_loaded == 1
    assert rows(empty_file_store, "SELECT path, line, reason FROM quarantine") == [
        (str(deep), 1, "not a JSON object (got array)")]
    assert_converges(empty_file_store, tmp_path)


def test_a_poison_file_in_the_landing_folder_does_not_stop_the_scheduled_sync(tmp_path):
    from toolkit import sync

    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "0-poison.jsonl").write_text("{" * 10_000 + "\n")
    (landing / "1-binary.jsonl").write_bytes(b"\x00\xff" * 1000)
    good_file(landing)
    for _ in range(2):   # every cycle, not just the first
        result = sync.run_scheduled(tmp_path / "store.duckdb", landing=landing, now=NOW)
        assert {Path(f.path).name: f.status for f in result.load.files}["1-binary.jsonl"] == "refused"
        assert result.mtu is not None
    with Store(tmp_path / "store.duckdb") as store:
        assert event_count(store) == 3
        assert rows(store, "SELECT regexp_extract(path, '[^/]+$'), line, reason FROM quarantine") == [
            ("0-poison.jsonl", 1, "malformed JSON")]


def test_deep_profile_and_deep_update_are_quarantined_not_the_load(empty_file_store, tmp_path):
    deep_value = "[" * 10_000 + "]" * 10_000
    (tmp_path / "a_profiles.jsonl").write_text(
        '{"$distinct_id": "p1", "$properties": {"x": ' + deep_value + '}}\n'
        '{"$distinct_id": "p2", "$properties": {"plan": "pro"}}\n')
    (tmp_path / "b_updates.jsonl").write_text(
        '{"$distinct_id": "p2", "$set": {"y": ' + deep_value + '}}\n'
        '{"$distinct_id": "p2", "$set": {"plan": "free"}}\n'
        '{"$distinct_id": "p1", "$set": {"plan": "free"}}\n')
    summary = load(empty_file_store, [tmp_path], now=NOW)
    assert not summary.refused
    quarantined = rows(empty_file_store,
                       "SELECT regexp_extract(path, '[^/]+$'), line, reason FROM quarantine ORDER BY 1")
    assert quarantined == [("a_profiles.jsonl", 1, "nested more than 500 levels deep"),
                           ("b_updates.jsonl", 1, "$set value nested too deeply (at most 500 levels)")]
    assert rows(empty_file_store, "SELECT distinct_id, properties->>'$.plan' FROM profiles ORDER BY 1") == [
        ("p1", "free"), ("p2", "free")]
    assert_converges(empty_file_store, tmp_path)


@pytest.mark.parametrize("name, content, reason", [
    ("binary.jsonl", bytes(range(256)) * 64, "binary content (a zero byte at byte 0), not text"),
    ("utf16.jsonl", (json.dumps(event()) + "\n").encode("utf-16"), "encoded as UTF-16; save it as UTF-8"),
    ("utf16-nobom.csv", "event,distinct_id,time\ne,u1,1790000000\n".encode("utf-16-le"),
     "binary content (a zero byte at byte 1), not text (it looks like UTF-16 text; save it as UTF-8)"),
    ("cut.jsonl.gz", gzip.compress((json.dumps(event()) + "\n").encode() * 2000)[:400],
     "cannot read: the compressed file is cut short"),
    ("plain.jsonl.gz", (json.dumps(event()) + "\n").encode(), "cannot read: not gzip data (the name ends in .gz)"),
    ("empty.jsonl.gz", b"", "cannot read: the file is empty, not gzip data"),
    ("garbage.parquet", b"PAR1 not really", "cannot be read: "),
])
def test_unreadable_file_is_refused_on_its_own_with_its_reason(empty_file_store, tmp_path, name, content, reason):
    good_file(tmp_path)
    (tmp_path / name).write_bytes(content)
    summary = load(empty_file_store, [tmp_path], now=NOW)
    files = by_name(summary)
    assert files[name].status == "refused"
    assert files[name].message.startswith(f"{tmp_path / name}: {reason}")
    assert files["good.jsonl"].rows_loaded == 3 and event_count(empty_file_store) == 3
    assert rows(empty_file_store, "SELECT count(*) FROM quarantine") == [(0,)]
    assert_converges(empty_file_store, tmp_path)


def test_malformed_json_costs_only_its_lines_and_an_unparseable_array_only_its_file(empty_file_store, tmp_path):
    good_file(tmp_path)
    (tmp_path / "lines.jsonl").write_text("\n".join([
        json.dumps(event(distinct_id="a")), '{"event": "x", "properties": {', "", "[1]", "\x1f",
        json.dumps(event(distinct_id="b"))]) + "\n")
    (tmp_path / "array.json").write_text('[{"event": "x", "properties": {"distinct_id": "c", ')
    files = by_name(load(empty_file_store, [tmp_path], now=NOW))
    assert files["lines.jsonl"].rows_loaded == 2
    assert files["array.json"].status == "refused" and files["array.json"].message.startswith(
        f"{tmp_path / 'array.json'}: cannot be read: ")
    assert rows(empty_file_store, "SELECT line, reason FROM quarantine ORDER BY line") == [
        (2, "malformed JSON"), (4, "not a JSON object (got array)"), (5, "malformed JSON")]
    assert event_count(empty_file_store) == 5
    assert_converges(empty_file_store, tmp_path)


def test_a_wrongly_encoded_line_is_quarantined_and_the_rest_of_the_file_loads(empty_file_store, tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(event(name="Caf\u00e9"), ensure_ascii=False).encode("latin-1") + b"\n"
                     + json.dumps(event(distinct_id="u2")).encode() + b"\n")
    summary = load(empty_file_store, [path], now=NOW)
    assert summary.files[0].rows_loaded == 1
    (line, reason), = rows(empty_file_store, "SELECT line, reason FROM quarantine")
    assert line == 1 and "not utf-8" in reason
    assert_converges(empty_file_store, tmp_path)


def test_symlink_loop_and_broken_link_are_refused_by_name(empty_file_store, tmp_path):
    good_file(tmp_path)
    os.symlink(tmp_path / "b.jsonl", tmp_path / "a.jsonl")
    os.symlink(tmp_path / "a.jsonl", tmp_path / "b.jsonl")
    os.symlink(tmp_path / "gone.jsonl", tmp_path / "c.jsonl")
    (tmp_path / "sub").mkdir()
    os.symlink(tmp_path, tmp_path / "sub" / "up")   # a folder loop is not followed
    files = by_name(load(empty_file_store, [tmp_path], now=NOW))
    assert files["a.jsonl"].message == f"{tmp_path / 'a.jsonl'}: cannot read: symbolic link loop"
    assert files["b.jsonl"].status == "refused"
    assert files["c.jsonl"].message == (f"{tmp_path / 'c.jsonl'}: cannot read: "
                                        "broken symbolic link (its target does not exist)")
    assert files["good.jsonl"].rows_loaded == 3 and len(files) == 4
    assert_converges(empty_file_store, tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_permissions_are_refused_by_name(empty_file_store, tmp_path):
    good_file(tmp_path)
    locked = good_file(tmp_path, "locked.jsonl", prefix="l")
    locked.chmod(0)
    files = by_name(load(empty_file_store, [tmp_path], now=NOW))
    assert files["locked.jsonl"].message == f"{locked}: cannot read: Permission denied"
    assert files["good.jsonl"].rows_loaded == 3


def test_empty_files_load_nothing_and_are_not_errors(empty_file_store, tmp_path):
    for name in ("e.jsonl", "e.json", "e.csv"):
        (tmp_path / name).write_text("")
    good_file(tmp_path)
    summary = load(empty_file_store, [tmp_path], now=NOW)
    assert not summary.refused and event_count(empty_file_store) == 3
    assert_converges(empty_file_store, tmp_path)


@pytest.mark.slow
def test_gzip_bomb_is_refused_early_without_inflating_it_all(empty_file_store, tmp_path):
    bomb = tmp_path / "bomb.jsonl.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as fh:
        for _ in range(160):                     # 160 MiB of blank lines in about 160 KiB
            fh.write(b"\n" * (1 << 20))
    good_file(tmp_path)
    files = by_name(load(empty_file_store, [tmp_path], now=NOW))
    assert files["bomb.jsonl.gz"].status == "refused"
    message = files["bomb.jsonl.gz"].message
    assert message.startswith(f"{bomb}: inflates to over 64 MiB") and "gzip bomb" in message
    assert files["good.jsonl"].rows_loaded == 3
    assert_converges(empty_file_store, tmp_path)


def test_a_well_compressed_export_is_not_taken_for_a_bomb(empty_file_store, tmp_path):
    path = write_lines(tmp_path / "events.jsonl.gz",
                       [event(distinct_id=f"u{i % 50}", insert_id=f"i{i}") for i in range(20_000)], compress=True)
    summary = load(empty_file_store, [path], now=NOW)
    assert summary.files[0].status == "loaded" and event_count(empty_file_store) == 20_000


# -- record size (issue 13.8) --------------------------------------------------------------------------

# 55 and 70 MiB records (large generated data, ~1 s of CPU and ~6 s of writing each) run in the whole suite
@pytest.mark.parametrize("mib", [16.5, 20, pytest.param(55, marks=pytest.mark.slow),
                                 pytest.param(70, marks=pytest.mark.slow)])
def test_an_oversize_record_is_quarantined_with_its_line_and_size_and_the_rest_loads(empty_file_store, tmp_path, mib):
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join([json.dumps(event(distinct_id="a")), "", big_event("big", mib),
                               json.dumps(event(distinct_id="b"))]) + "\n")
    summary = load(empty_file_store, [path], now=NOW)
    assert summary.files[0].status == "loaded", summary.files[0].message
    assert rows(empty_file_store, "SELECT distinct_id FROM events ORDER BY 1") == [("a",), ("b",)]
    (line, reason, raw), = rows(empty_file_store, "SELECT line, reason, raw FROM quarantine")
    assert (line, reason) == (3, f"record too large: {mib:.1f} MiB (at most 16 MiB)")
    assert raw.startswith('{"event"') and len(raw) <= 4096
    assert_converges(empty_file_store, tmp_path)


@pytest.mark.slow
@pytest.mark.all_cores
def test_records_just_under_the_limit_load_within_the_default_memory(empty_file_store, tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text("".join(big_event(f"u{i}", 15.9) + "\n" for i in range(3)))
    assert os.path.getsize(path) // 3 < MAX_RECORD_BYTES
    summary = load(empty_file_store, [path], now=NOW)
    assert summary.files[0].rows_loaded == 3, summary.files[0].message


@pytest.mark.all_cores
def test_the_tests_of_a_load_within_its_memory_run_duckdb_on_every_core(empty_file_store):
    """DuckDB holds buffers per thread: the tests marked all_cores run with a user's threads, not the
    xdist worker's share that the other tests take (conftest: _databases_without_fsync)."""
    default = subprocess.run([sys.executable, "-c", "import duckdb; print(duckdb.connect().execute("
                              "\"SELECT current_setting('threads')\").fetchone()[0])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert rows(empty_file_store, "SELECT current_setting('threads')") == [(int(default),)]


@pytest.mark.all_cores
@pytest.mark.slow
def test_a_malformed_line_among_large_records_costs_only_that_line(empty_file_store, tmp_path, monkeypatch):
    """The careful reader (used when read_json refuses the file) parses a few megabytes at a time:
    parsing all lines at once ran out of memory on files of 1 MiB records."""
    monkeypatch.setenv("TOOLKIT_LOAD_MEMORY", "600MB")
    path = tmp_path / "events.jsonl"
    path.write_text("{not json\n" + "".join(big_event(f"u{i}", 1) + "\n" for i in range(100)))
    summary = load(empty_file_store, [path], now=NOW)
    assert summary.files[0].status == "loaded", summary.files[0].message
    assert event_count(empty_file_store) == 100
    assert rows(empty_file_store, "SELECT line, reason FROM quarantine") == [(1, "malformed JSON")]


# -- ragged CSV (issue 13.9) ----------------------------------------------------------------------------

@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_ragged_csv_rows_are_quarantined_one_by_one_and_the_good_rows_load(empty_file_store, tmp_path, delimiter):
    lines = [["event", "distinct_id", "time", "plan"],
             ["Signup", "short1", str(T0)],                       # 2: short, first of all (the sniffer's sample)
             ["Signup", "a", str(T0), "pro"],
             ["Signup", "null", str(T0), "pro"],                  # 4: refused distinct_id, after a short row
             ["Signup", "b", str(T0), "pro", "extra"],            # 5: long
             ["Signup", "c"],                                     # 6: two short
             ["Signup", "d", str(T0), "free"]]
    path = tmp_path / "events.csv"
    path.write_text("".join(delimiter.join(cells) + "\n" for cells in lines))
    summary = load(empty_file_store, [path], now=NOW)
    assert summary.files[0].status == "loaded", summary.files[0].message
    assert rows(empty_file_store, "SELECT distinct_id, properties->>'$.plan' FROM events ORDER BY 1") == [
        ("a", "pro"), ("d", "free")]
    assert rows(empty_file_store, "SELECT line, reason FROM quarantine ORDER BY line") == [
        (2, "row has 3 fields, the header has 4"),
        (4, 'refused distinct_id "null" (Mixpanel rejects this value)'),
        (5, "row has 5 fields, the header has 4"),
        (6, "row has 2 fields, the header has 4")]
    assert rows(empty_file_store, "SELECT raw FROM quarantine WHERE line = 6") == [(delimiter.join(["Signup", "c"]),)]
    assert_converges(empty_file_store, tmp_path)


# -- kind and what makes a load "the same"; files still being written (issue 13.10) ---------------------

def profiles_text(first_line: str) -> str:
    return first_line + "\n" + "".join(
        json.dumps({"$distinct_id": f"p{i}", "$properties": {"plan": "pro"}}) + "\n" for i in range(3))


@pytest.mark.parametrize("first_line", ["", "{not json", "[1, 2]", "{}"])
def test_kind_is_told_by_the_first_record_that_is_an_object(empty_file_store, tmp_path, first_line):
    path = tmp_path / "people.jsonl"
    path.write_text(profiles_text(first_line))
    summary = load(empty_file_store, [path], now=NOW)
    assert summary.files[0].kind == "profiles"
    assert rows(empty_file_store, "SELECT count(*) FROM profiles") == [(3,)]


def test_an_event_with_profile_keys_is_still_an_event(empty_file_store, tmp_path):
    path = write_lines(tmp_path / "events.jsonl", [{**event(distinct_id="a"), "$set": {"x": 1}}])
    assert load(empty_file_store, [path], now=NOW).files[0].kind == "events"


def test_kind_given_after_a_wrong_detection_loads_the_file_as_that_kind(empty_file_store, tmp_path):
    path = tmp_path / "people.jsonl"   # detected as events: its records name no profile key
    path.write_text("".join(json.dumps({"$distinct_id": f"p{i}", "plan": "pro"}) + "\n" for i in range(2)))
    first = load(empty_file_store, [path], now=NOW).files[0]
    assert (first.kind, first.rows_loaded, first.quarantined) == ("events", 0, 2)
    assert load(empty_file_store, [path], now=NOW).files[0].status == "skipped"        # the same load
    again = load(empty_file_store, [path], kind="profile_updates", now=NOW).files[0]   # not the same load
    assert (again.status, again.kind, again.rows_loaded) == ("loaded", "profile_updates", 0)
    assert rows(empty_file_store, "SELECT DISTINCT reason FROM quarantine") == [
        ("no operation (expected one of $set, $set_once, $add, $union, $append, $remove, $unset, $delete)",)]
    # a copy under another name is the same load too, as is loading it without --kind
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(path.read_bytes())
    assert load(empty_file_store, [copy], kind="profile_updates", now=NOW).files[0].status == "skipped"
    assert load(empty_file_store, [path], now=NOW).files[0].status == "skipped"


def test_a_file_changed_while_it_is_read_is_not_kept_and_loads_whole_next_time(empty_file_store, tmp_path, monkeypatch):
    from toolkit.loading import events

    path = good_file(tmp_path, n=3)
    stage = events.stage

    def stage_then_append(con, source, careful, params):
        stage(con, source, careful, params)
        with open(path, "a") as fh:   # the writer adds a record after DuckDB read the file
            fh.write(json.dumps(event(distinct_id="late", insert_id="late")) + "\n")

    monkeypatch.setattr(events, "stage", stage_then_append)
    result = load(empty_file_store, [path], now=NOW).files[0]
    assert result.status == "refused"
    assert result.message == f"{path}: changed while it was being read; nothing of it was kept, it loads on a later run"
    assert rows(empty_file_store, "SELECT count(*) FROM event_rows") == [(0,)]
    assert rows(empty_file_store, "SELECT count(*) FROM loads") == [(0,)]
    monkeypatch.undo()
    assert load(empty_file_store, [path], now=NOW).files[0].rows_loaded == 4
    assert event_count(empty_file_store) == 4
    assert_converges(empty_file_store, tmp_path)


def test_a_file_that_keeps_changing_waits_for_a_later_run(empty_file_store, tmp_path, monkeypatch):
    from toolkit import report
    from toolkit.loading import run

    monkeypatch.setenv("TOOLKIT_SETTLE_SECONDS", "0.1")
    path = good_file(tmp_path)
    sleep = run.time.sleep

    def writer_busy_meanwhile(seconds):   # the writer adds a record while the loader waits
        with open(path, "a") as fh:
            fh.write(json.dumps(event(distinct_id="more")) + "\n")
        sleep(seconds)

    monkeypatch.setattr(run.time, "sleep", writer_busy_meanwhile)
    summary = load(empty_file_store, [path], now=NOW)
    result = summary.files[0]
    assert result.status == "waiting" and summary.to_dict()["files_waiting"] == 1
    assert result.message == f"{path}: still being written (it kept changing for 0.3 s); it loads on a later run"
    assert f"  waiting: {result.message}" in report.load_text(summary).splitlines()
    assert rows(empty_file_store, "SELECT count(*) FROM loads") == [(0,)]
    monkeypatch.setattr(run.time, "sleep", sleep)   # the writer is done
    assert load(empty_file_store, [path], now=NOW).files[0].rows_loaded == 6


def test_a_file_dated_in_the_future_loads_once_it_stays_unchanged(empty_file_store, tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_SETTLE_SECONDS", "0.1")
    path = good_file(tmp_path)
    future = NOW.timestamp() + 10 ** 9   # a writer's clock far ahead: "changed just now" for ever
    os.utime(path, (future, future))
    assert load(empty_file_store, [path], now=NOW).files[0].rows_loaded == 3


def test_a_file_loaded_in_part_is_never_loaded_twice(empty_file_store, tmp_path):
    path = good_file(tmp_path, n=2)
    assert load(empty_file_store, [path], now=NOW).files[0].rows_loaded == 2   # the writer paused here
    loaded = path.stat().st_size
    with open(path, "a") as fh:
        fh.write(json.dumps(event(distinct_id="late")) + "\n")
    result = load(empty_file_store, [path], now=NOW).files[0]
    assert result.status == "refused"
    assert result.message == (f"{path}: grew by {path.stat().st_size - loaded} bytes since its first {loaded} bytes "
                              "were loaded (2026-11-01 00:00 UTC); loading it again would load those twice: "
                              "put the new records in a file of their own")
    assert event_count(empty_file_store) == 2


# -- cohort definition files (issue 13.7) ---------------------------------------------------------------

ALIAS_BOMB = """a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
cohorts: [{name: bomb, static_ids: [*h, *h, *h, *h, *h, *h, *h, *h, *h]}]
"""


def test_yaml_alias_bomb_is_refused_at_once_naming_the_file(tmp_path):
    from toolkit.cohorts import CohortError, load_definitions

    path = tmp_path / "cohorts.yaml"
    path.write_text(ALIAS_BOMB)
    assert path.stat().st_size < 1024
    with pytest.raises(CohortError, match=r"cohorts\.yaml: line 6: expands to over 100,000 values \(YAML aliases"):
        load_definitions(path)


def test_yaml_alias_inside_itself_and_deep_nesting_are_refused(tmp_path):
    from toolkit.cohorts import CohortError, load_definitions

    loop = tmp_path / "loop.yaml"
    loop.write_text("cohorts: &c [{name: x, static_ids: *c}]\n")
    with pytest.raises(CohortError, match=r"loop\.yaml: line 1: a YAML alias refers to itself"):
        load_definitions(loop)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 10_000 + "]" * 10_000)
    with pytest.raises(CohortError, match=r"deep\.json: nested too deeply to be a cohort definition"):
        load_definitions(deep)


def test_a_few_yaml_aliases_still_read(tmp_path):
    from toolkit.cohorts import load_definitions

    path = tmp_path / "cohorts.yaml"
    path.write_text("ids: &ids [u1, u2]\ncohorts:\n  - {name: a, static_ids: *ids}\n  - {name: b, static_ids: *ids}\n")
    assert [c.static_ids for c in load_definitions(path)] == [("u1", "u2"), ("u1", "u2")]


def test_an_oversize_definitions_file_is_refused_unread(tmp_path):
    from toolkit.cohorts import CohortError, load_definitions

    path = tmp_path / "cohorts.json"
    path.write_text(json.dumps({"cohorts": [{"name": "n", "static_ids": [f"u{i}" for i in range(200_000)]}]}))
    with pytest.raises(CohortError, match=rf"cohorts\.json: {path.stat().st_size} bytes is too large for a "
                                          r"definitions file \(at most 1 MiB\)"):
        load_definitions(path)


@pytest.mark.parametrize("where", ["../outside.csv", "{outside}", "link.csv", "sub/../../outside.csv"])
def test_static_csv_is_confined_to_the_definitions_folder(tmp_path, where):
    from toolkit.cohorts import CohortError, load_definitions

    folder = tmp_path / "defs"
    folder.mkdir()
    outside = tmp_path / "outside.csv"
    outside.write_text("distinct_id\nsecret\n")
    os.symlink(outside, folder / "link.csv")
    target = where.format(outside=outside)
    path = folder / "cohorts.json"
    path.write_text(json.dumps({"cohorts": [{"name": "Beta", "static_csv": target}]}))
    with pytest.raises(CohortError) as caught:
        load_definitions(path)
    assert str(caught.value) == (f'{path}: cohort "Beta": static_csv: {folder / target} is outside the folder '
                                 f"of the definitions ({folder}); put the CSV beside the definitions file")
    # the same CSV beside the definitions, or in a folder allowed by name, reads
    assert load_definitions(path, csv_folders=[tmp_path])[0].static_ids == ("secret",)
    (folder / "inside.csv").write_text("distinct_id\nu1\n")
    path.write_text(json.dumps({"cohorts": [{"name": "Beta", "static_csv": "inside.csv"}]}))
    assert load_definitions(path)[0].static_ids == ("u1",)


# -- kill -9 at a random point of a load ----------------------------------------------------------------

def store_state(store) -> tuple:
    """Everything a load leaves, in an order that does not depend on how it was read."""
    return (rows(store, "SELECT event, distinct_id, time, insert_id, properties::VARCHAR FROM events ORDER BY ALL"),
            rows(store, "SELECT regexp_extract(path, '[^/]+$'), line, reason FROM quarantine ORDER BY ALL"),
            rows(store, "SELECT distinct_id, properties::VARCHAR FROM profiles ORDER BY ALL"),
            rows(store, "SELECT regexp_extract(path, '[^/]+$'), kind, rows_loaded, quarantined "
                        "FROM loads ORDER BY ALL"),
            rows(store, "SELECT count(*) FROM event_rows"))


@pytest.mark.slow
def test_kill_9_at_random_points_of_a_hostile_load_then_the_next_load_converges(tmp_path):
    """kill -9 at points drawn from those the load announces (each transaction written, then committed;
    tests/load_until.py), then the next load converges to what one uninterrupted load leaves."""
    import random

    from helpers import kill_load_at, load_points

    data = tmp_path / "landing"
    data.mkdir()
    lines = [json.dumps(event(distinct_id=f"u{i % 5000}", insert_id=f"e{i}", time=T0 + i)) for i in range(150_000)]
    lines[10], lines[70_000] = "{cut", '"a string"'          # the careful reader, with its quarantine
    (data / "events.jsonl").write_text("\n".join(lines) + "\n")
    (data / "rows.csv").write_text("event,distinct_id,time\n" + "".join(
        f"Signup,c{i},{T0}\n" if i != 500 else "Signup,short\n" for i in range(20_000)))
    (data / "people.jsonl").write_text("".join(json.dumps({"$distinct_id": f"u{i}", "$properties": {"n": i}}) + "\n"
                                               for i in range(5000)))
    (data / "poison.jsonl").write_text("[" * 10_000 + "]" * 10_000 + "\n")
    points = load_points(tmp_path / "reference.duckdb", [data], NOW)     # one uninterrupted load
    with Store(tmp_path / "reference.duckdb") as reference:
        expected = store_state(reference)
    for n, point in enumerate(random.Random(13).sample(points, 3)):
        db = tmp_path / f"killed-{n}.duckdb"
        kill_load_at(db, [data], point, NOW)
        with Store(db) as store:
            published = {p for p, in rows(store, "SELECT regexp_extract(path, '[^/]+$') FROM loads")}
            # what is visible is whole files only
            assert {p for p, *_ in store_state(store)[1]} <= published
            load(store, [data], now=NOW)
            assert store_state(store) == expected, f"after a kill at {point}"
