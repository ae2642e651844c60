"""One engine seam: where cohort evaluation, matchability and MTU run.

- ``duckdb`` over the store (the default: the behaviour of `matching.preview` and `mtu.report`);
- ``duckdb`` over a lake (``--lake PATH``): DuckDB views over the lake's files, read in place;
- ``spark`` over a lake (``--engine spark --lake PATH [--master URL | --remote sc://...]``).

The cohort compiler stays the one source of every query: over a lake, the engine defines the relations
the compiled SQL reads (toolkit/lake/), and Spark runs the same query transpiled (toolkit/dialects.py).
A cohort evaluated over a lake comes home (toolkit/lake/home.py): its members and their matchability are
written to the store, and the export runs from them as from a store evaluation.

    with engine.Evaluator(engine.choose("spark", lake="lake/", master="local[2]")) as ev:
        preview = ev.preview(store, "Pro plan in the US")
        months = ev.mtu(store)
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from toolkit import cohorts, matching, mtu
from toolkit.cohort_sql import compile_cohort
from toolkit.errors import UsageError
from toolkit.onesignal_ids import COHORT_LIMIT, USER_ID_PROPERTY
from toolkit.sql import to_utc_naive
from toolkit.store import Store

if TYPE_CHECKING:
    from toolkit.lake.base import LakeEngine

ENGINES = ("duckdb", "spark")


@dataclass(frozen=True)
class EngineChoice:
    """Which engine, over what: no ``lake`` means the store itself (DuckDB)."""
    engine: str = "duckdb"
    lake: str | None = None
    master: str | None = None       # Spark: local[N], spark://host:port, yarn...
    remote: str | None = None       # Spark Connect: sc://host:port

    @property
    def on_store(self) -> bool:
        return self.lake is None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


STORE = EngineChoice()


def choose(engine: str | None = None, lake: str | None = None, master: str | None = None,
           remote: str | None = None) -> EngineChoice:
    """The configuration checked: Spark needs a lake; a master or a remote only means something to Spark."""
    engine = engine or "duckdb"
    if engine not in ENGINES:
        raise UsageError(f'engine: expected one of {", ".join(ENGINES)}, got "{engine}"')
    if engine == "spark" and not lake:
        raise UsageError("the spark engine reads a lake: give its folder with --lake PATH "
                         "(toolkit lake export writes one from a store)")
    if (master or remote) and engine != "spark":
        raise UsageError("--master and --remote choose where Spark runs; add --engine spark")
    if master and remote:
        raise UsageError("give --master (a Spark cluster or local[N]) or --remote (Spark Connect), not both")
    return EngineChoice(engine, str(lake) if lake else None, master or None, remote or None)


# What a notebook falls back to for each choice not given as a parameter (`toolkit lab --lake ...` sets them).
ENV_ENGINE, ENV_LAKE, ENV_MASTER, ENV_REMOTE = "TOOLKIT_ENGINE", "TOOLKIT_LAKE", "TOOLKIT_SPARK_MASTER", \
    "TOOLKIT_SPARK_REMOTE"


def from_environment(engine: str | None = None, lake: str | None = None, master: str | None = None,
                     remote: str | None = None, environ: Mapping[str, str] | None = None) -> EngineChoice:
    """`choose` for the notebooks: each setting given, else its environment variable (blank counts as unset)."""
    env = os.environ if environ is None else environ
    return choose(engine or env.get(ENV_ENGINE) or None, lake or env.get(ENV_LAKE) or None,
                  master or env.get(ENV_MASTER) or None, remote or env.get(ENV_REMOTE) or None)


def environment(choice: EngineChoice) -> dict[str, str]:
    """The variables `from_environment` reads back as ``choice`` (only the ones set)."""
    values = {ENV_ENGINE: choice.engine if not choice.on_store else None, ENV_LAKE: choice.lake,
              ENV_MASTER: choice.master, ENV_REMOTE: choice.remote}
    return {name: value for name, value in values.items() if value}


def lake_cache(store: Store) -> Path | None:
    """Where DuckDB keeps a Data Pipelines folder's parsed events between sessions: beside the store's
    file (``<store>.lake-cache/``); None for a store in memory."""
    if store.path == ":memory:":
        return None
    path = Path(store.path)
    return path.with_name(path.name + ".lake-cache")


def open_lake(choice: EngineChoice, cache: Path | None = None) -> LakeEngine:
    """The chosen engine over the chosen lake, its relations defined (``cache``: `lake_cache`)."""
    from toolkit.lake import layout

    lake = layout.find(choice.lake or "")
    if choice.engine == "spark":
        from toolkit.lake.spark import SparkLake

        engine: LakeEngine = SparkLake(lake, master=choice.master, remote=choice.remote)
    else:
        from toolkit.lake.duck import DuckLake

        engine = DuckLake(lake, cache=cache)
    try:
        return engine.prepare()
    except BaseException:
        engine.close()
        raise


class Evaluator:
    """Evaluates cohorts and counts MTU on one engine; a lake engine is opened on first use and kept
    until ``close`` (a Spark session takes seconds to start: one per sync, not one per cohort)."""

    def __init__(self, choice: EngineChoice | None = None):
        self.choice = choice or STORE
        self._lake: LakeEngine | None = None

    @property
    def lake(self) -> LakeEngine:
        if self._lake is None:
            self._lake = open_lake(self.choice)
        return self._lake

    def _lake_for(self, store: Store) -> LakeEngine:
        """The lake engine, opened with its cache beside ``store`` when it was not open yet."""
        if self._lake is None:
            self._lake = open_lake(self.choice, lake_cache(store))
        return self._lake

    def preview(self, store: Store, name: str | cohorts.Cohort, *, now: dt.datetime | None = None,
                definitions=None, user_id_property: str = USER_ID_PROPERTY, id_type: str = "auto",
                limit: int = COHORT_LIMIT) -> matching.Preview:
        """`matching.preview` on this engine; over a lake, the result is also written home."""
        options: dict[str, Any] = {"user_id_property": user_id_property, "id_type": id_type, "limit": limit}
        if self.choice.on_store:
            return matching.preview(store, name, now=now, definitions=definitions, **options)
        return self._lake_preview(store, name, now or dt.datetime.now(dt.UTC), definitions, options)

    def _lake_preview(self, store: Store, name, now: dt.datetime, definitions, options: dict) -> matching.Preview:
        from toolkit.lake import home

        started = time.perf_counter()
        defs = cohorts.by_name(definitions)
        if isinstance(name, str) and name not in defs:
            name = cohorts.resolve_name(store, name)
        root = (defs.get(name) or cohorts.get(store, name)) if isinstance(name, str) else cohorts.normalize(name)

        def lookup(other: str):     # referenced cohorts: the definitions given, then the store
            return defs.get(other) or (cohorts.get(store, other) if cohorts.version_of(store, other) else None)

        # No typed event columns on a lake: filters read the JSON, as the compiler does without them.
        members = compile_cohort(root, now, lookup)
        lake = self._lake_for(store)
        prop = options["user_id_property"]
        facts = lake.facts() if prop == USER_ID_PROPERTY else None
        query = matching.classify_sql(members, user_id_property=prop, id_type=options["id_type"], facts=facts)
        table = matching.apply_limit(lake.arrow(query).select(matching.COLUMNS).cast(matching.SCHEMA),
                                     options["limit"])
        evaluated = time.perf_counter()
        from_store = isinstance(name, str) and name not in defs
        version = cohorts.version_of(store, root.name) if from_store else None
        summary = {"cohort": root.name, "version": version, "now": to_utc_naive(now).isoformat() + "Z",
                   "engine": self.choice.engine, "lake": self.choice.lake, **matching.summarize(table, **options)}
        preview = matching.Preview(summary, table, cohort=root.name, version=version, now=now,
                                   seconds={"evaluate": round(evaluated - started, 4)})
        if not store.read_only:
            home.write(store, preview, engine=self.choice.engine, lake=str(lake.lake))
        return preview

    def mtu(self, store: Store, month: str | None = None, rules: str = "seed") -> list[mtu.MonthMTU]:
        """`mtu.report` on this engine."""
        if self.choice.on_store:
            return mtu.report(store, month, rules)
        table = self._lake_for(store).arrow(mtu.query(month, rules))
        columns = [table.column(0).to_pylist()] + [table.column(i).cast(pa.int64()).to_pylist()   # sums: no
                                                   for i in range(1, table.num_columns)]          # decimals
        return mtu.from_rows(zip(*columns, strict=True), month, rules)

    def close(self) -> None:
        if self._lake is not None:
            self._lake.close()
            self._lake = None

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
