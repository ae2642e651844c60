"""Mixpanel's identity mappings (a Data Pipelines folder's ``mp_identity_mappings_data``: ``distinct_id``,
``resolved_distinct_id``) as identity links of kind ``mapping``: applied before every other link, and
winning over our own resolution where both speak (`identity`, docs/design.md "Choices")."""

from __future__ import annotations

from datetime import datetime

from toolkit.loading import derived, quarantine, validation
from toolkit.loading.execute import epoch_ms, execute
from toolkit.loading.profiles import stage_records
from toolkit.loading.sources import Source
from toolkit.loading.summary import FileResult

MAPPING_TIME_MS = 0   # before every event's and profile's link: Mixpanel had resolved these already


def apply(con, source: Source, file_id: int, now: datetime, result: FileResult, careful: bool = True) -> None:
    """Record the file's mappings as links (a bad row is quarantined with its line) and resolve again the
    identity components they reach."""
    stage_records(con, source)
    params = {"path": str(source.path), "file_id": file_id, **validation.parameters(epoch_ms(now))}
    execute(con, f"""
        CREATE OR REPLACE TEMP TABLE _mappings AS
        WITH r0 AS (SELECT line, item, coalesce(raw, doc::VARCHAR) AS raw, doc_error, doc -> '$.distinct_id' AS did,
                           doc -> '$.resolved_distinct_id' AS rid FROM _records),
        r AS (SELECT *, {validation.typed("did", "rid", texts=("did", "rid"))} FROM r0)
        SELECT line, item, did_s AS distinct_id, rid_s AS resolved_id,
               left(raw, {validation.QUARANTINED_RAW_CHARS}) AS raw,
               coalesce(doc_error, CASE {validation.distinct_id_reason("did", "distinct_id")}
                                        {validation.distinct_id_reason("rid", "resolved_distinct_id")} END) AS reason
        FROM r""", params)
    quarantine.from_table(con, "_mappings", source, file_id)
    con.execute("""
        INSERT INTO identity_links (kind, source, target, time_ms, file_id, line)
        SELECT 'mapping', distinct_id, resolved_id, $t, $file_id, line FROM _mappings
        WHERE reason IS NULL AND distinct_id <> resolved_id""", {"t": MAPPING_TIME_MS, "file_id": file_id})
    result.rows_read, result.rows_loaded = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE reason IS NULL) FROM _mappings").fetchone()
    result.quarantined = quarantine.count(con, file_id)
    con.execute("DROP TABLE _mappings")
    derived.refresh_identity(con, file_id)
