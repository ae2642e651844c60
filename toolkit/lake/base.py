"""What every lake engine does the same way: read the lake's sources (the engine's own reader), then
define the store's relations over them (``views``) and resolve identity.

Identity: when the lake holds Mixpanel's identity mappings they are used as they are (Mixpanel's
resolution wins: it is what Mixpanel counts users by); otherwise the links are extracted on the
engine (identity events and profiles' $onesignal_user_id are few next to the events) and resolved
in Python by the loader's own resolver (loading.identity), as a load resolves them.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from toolkit.lake import views
from toolkit.lake.layout import Lake
from toolkit.loading import identity
from toolkit.loading.derived import facts_sql
from toolkit.sql import Query

FACTS = "user_id_facts"
_EARLIEST = dt.datetime.min


class LakeEngine:
    """One engine's session over one lake: ``arrow(query)`` runs a compiled query (DuckDB's dialect)
    over the relations the store's views would give. Subclasses read the sources and run SQL."""

    name = "lake"

    def __init__(self, lake: Lake):
        self.lake = lake
        self.identity = "mappings" if lake.mappings else "links"
        self.refused_links = 0
        self._facts = False

    # -- what an engine provides ------------------------------------------------------------------
    def read_sources(self) -> None:
        """Define lake_events_src, lake_profiles_src (and lake_mappings_src when there are mappings)."""
        raise NotImplementedError

    def view(self, name: str, query: Query) -> None:
        raise NotImplementedError

    def table(self, name: str, table: pa.Table) -> None:
        raise NotImplementedError

    def materialize(self, name: str, query: Query) -> None:
        raise NotImplementedError

    def arrow(self, query: Query) -> pa.Table:
        raise NotImplementedError

    def keep_identity_map(self) -> None:
        """Called once ``identity_map`` is defined, before anything reads it (Spark caches it)."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the same for every engine ----------------------------------------------------------------
    def prepare(self) -> LakeEngine:
        self.read_sources()
        self.events(views.events(self.lake.deduplicated))
        if self.identity == "mappings":
            self.view("identity_map", views.mappings())
        else:
            self.table("identity_map", self.resolve(self.arrow(views.links())))
        self.keep_identity_map()
        self.view("resolved_events", views.resolved_events())
        # Kept (cached on Spark, a temp table on DuckDB): every query reads the profiles, and placing
        # them (identity, newest wins, the user-id value's type) took most of a cohort's time on Spark.
        self.materialize("resolved_profiles", views.resolved_profiles())
        return self

    def events(self, query: Query) -> None:
        """Define ``lake_events`` (deduplicated events): a view, read again by every query; an engine may
        keep it instead (DuckDB does for JSON, whose parsing is most of a query's time)."""
        self.view("lake_events", query)

    def resolve(self, links: pa.Table) -> pa.Table:
        """The identity map (distinct_id, canonical_id) of the extracted links, by loading.identity."""
        rows = links.to_pydict()
        ordered = [(kind, source, target, (late, time or _EARLIEST, kind, source, target))
                   for kind, source, target, time, late in zip(rows["kind"], rows["source"], rows["target"],
                                                               rows["time"], rows["late"], strict=True)]
        resolution = identity.resolve(ordered)
        self.refused_links = len(resolution.refused)
        return pa.table({"distinct_id": pa.array(list(resolution.canonical), pa.string()),
                         "canonical_id": pa.array(list(resolution.canonical.values()), pa.string())})

    def facts(self) -> str:
        """The table of the default user-id property's facts (`loading.derived.facts_sql`), made once."""
        if not self._facts:
            self.materialize(FACTS, facts_sql())
            self._facts = True
        return FACTS
