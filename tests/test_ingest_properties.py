"""Property-based tests: random and hostile files never crash a load, and every line is accounted for."""

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import NOW, T0, emptied
from toolkit import load
from toolkit.loading.validation import REFUSED_DISTINCT_IDS
from toolkit.store import Store

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
hostile_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@st.composite
def valid_events(draw):
    props = draw(st.dictionaries(st.text(max_size=10).filter(lambda k: not k.startswith("$") and k not in
                                                             ("time", "distinct_id")), json_values, max_size=4))
    props.update({
        "time": draw(st.integers(T0 - 10**7, T0 + 10**6)),   # NOW is T0 + ~3.5e6 s
        "distinct_id": draw(hostile_text.filter(lambda s: s.strip().lower() not in
                                                 REFUSED_DISTINCT_IDS)),
    })
    if draw(st.booleans()):
        props["$insert_id"] = draw(st.text(alphabet="abcdef0123456789-", min_size=1, max_size=36))
    return {"event": draw(hostile_text.filter(lambda s: s.strip())), "properties": props}


@st.composite
def hostile_lines(draw):
    kind = draw(st.sampled_from(["valid", "json", "text", "mutated"]))
    if kind == "valid":
        return json.dumps(draw(valid_events()), ensure_ascii=draw(st.booleans()))
    if kind == "json":
        return json.dumps(draw(json_values))
    if kind == "text":
        return draw(hostile_text).replace("\n", " ").replace("\r", " ")
    record = draw(valid_events())
    field = draw(st.sampled_from(["event", "properties", "distinct_id", "time", "$insert_id"]))
    target = record if field in ("event", "properties") else record["properties"]
    target[field] = draw(json_values)
    return json.dumps(record)


@pytest.fixture(scope="module")
def scratch(new_store, tmp_path_factory):
    """One store for the module's examples, emptied before each (opening one per example costs more than
    the load it checks)."""
    with Store(new_store(tmp_path_factory.mktemp("scratch") / "s.duckdb")) as store:
        yield store


def _load_lines(store, lines):
    emptied(store)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        summary = load(store, [path], now=NOW)
        events = store.con.execute("SELECT count(*) FROM events").fetchone()[0]
        bad = [line for line, in store.con.execute("SELECT line FROM quarantine ORDER BY line").fetchall()]
        return summary.files[0], events, bad


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_lines(), max_size=12))
@example(lines=["\x0c"])              # read_json skips a line of \f: it was neither loaded nor quarantined
@example(lines=["{bad", "\x0b\x0c"])  # the careful reader (for the bad line) skips it too
def test_every_line_is_loaded_or_quarantined(scratch, lines):
    result, events, bad = _load_lines(scratch, lines)
    if "\x00" in "".join(lines):       # a zero byte near the start: binary, refused whole (as git decides)
        assert result.status == "refused" and "binary content" in result.message
        assert events == 0 and bad == []
        return
    nonblank = [i + 1 for i, line in enumerate(lines) if line.strip(" \t\r\n\v\f")]   # readers.LINE_BLANKS
    assert result.status == "loaded"
    assert result.rows_read == len(nonblank)
    assert set(bad) <= set(nonblank) and len(bad) == len(set(bad)) == result.quarantined
    assert result.rows_loaded + result.quarantined <= len(nonblank)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(valid_events(), min_size=1, max_size=10))
def test_valid_events_all_load(scratch, records):
    lines = [json.dumps(r) for r in records]
    result, events, bad = _load_lines(scratch, lines)
    keys = {(r["event"], r["properties"]["distinct_id"], r["properties"]["time"], r["properties"]["$insert_id"])
            for r in records if "$insert_id" in r["properties"]}
    without = sum("$insert_id" not in r["properties"] for r in records)
    assert bad == [] and events == len(keys) + without
