"""The lake: Mixpanel data as files that DuckDB and Spark both read in place, so cohorts, matchability
and MTU can run where the data lives (issue 17; docs/design.md, "The lake").

Two layouts are read (``layout.find``):

- a Parquet lake, which ``toolkit lake export`` writes from a store (``writer``):
  ``events/date=YYYY-MM-DD/*.parquet`` (event, distinct_id, time, insert_id, device_id, user_id,
  properties as JSON text), ``profiles/*.parquet`` (distinct_id, properties, updated_at, sequence) and
  ``identity_mappings/*.parquet`` (distinct_id, resolved_distinct_id: Mixpanel Data Pipelines' names);
- a Mixpanel Data Pipelines JSON folder, read as it is: ``<project_id>/mp_master_event/YYYY/MM/DD/*.json[.gz]``,
  ``mp_people_data`` and ``mp_identity_mappings_data``.

Over either, an engine (``duck``: DuckDB; ``spark``: Spark) defines the relations the cohort compiler,
matching and MTU read in the store, under the same names and columns (``views``): ``resolved_events``,
``resolved_profiles``, ``identity_map``, ``user_id_facts``. ``home`` writes a lake evaluation's members
back to the store.
"""

from toolkit.lake.layout import Lake, find

__all__ = ["Lake", "find"]
