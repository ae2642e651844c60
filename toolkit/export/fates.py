"""What a run did to each member, as Mixpanel's per-sync CSV shows it: add, remove or no-op, with how it ended
(ok, not in OneSignal, over the tag cap, failed, not sent, dry run), the reason, and the OneSignal id.

How it is kept, exact and cheap. A run writes a row of ``export_results`` for every member it had to do
something about: each add and remove it sent (as the answer arrives), each change it did not send
(``record_unsent``: a guard, a failure or a pause stopped it first, or a dry run), and each member the
app's tag cap held back. It never writes its no-ops: a dynamic sync of a million unchanged members would
write a million rows every fifteen minutes. They are derived when asked: the snapshot a run planned
against is exactly what the earlier runs' results made it (only the result writer writes
``export_members``, in the transaction that records each result; within a run removals go before
additions), so replaying the effective results of the cohort's earlier runs gives the snapshot at the
run's start, and its members the run has no row for were its no-ops. The replay is checked against the
run's own count of no-ops (``export_runs.unchanged``): a run cut short, or members written outside the
runs, make the listing say it is not exact instead of guessing.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from toolkit.errors import ExportError
from toolkit.export.lock import DEAD_RUN
from toolkit.export.states import STILL_STOPPED
from toolkit.export.wanted import RECHECK_ABSENT
from toolkit.planning import ADD, NOOP, Step, Target

NOT_SENT, DRY_RUN = "not_sent", "dry_run"
# onesignal_id: the id the export addresses the user by (its id_type: external_id or subscription_id);
# onesignal_user_id: for a subscription (Player) ID, the OneSignal user it belongs to, when resolved.
COLUMNS = ("run_id", "cohort", "distinct_id", "onesignal_id", "id_type", "onesignal_user_id", "operation", "outcome",
           "reason")
NOT_IN_ONESIGNAL = "not in OneSignal (the export never creates users); looked for again after a day"
HELD = ("held back: OneSignal refused this user for the app's data-tag cap; tried again once the cap is raised, "
        "its other tags drop, or a day has passed")
_ROWS = pa.schema([("run_id", pa.int64()), ("distinct_id", pa.string()), ("onesignal_id", pa.string()),
                   ("id_type", pa.string()), ("operation", pa.string()), ("outcome", pa.string()),
                   ("reason", pa.string())])


def record_unsent(con, runs: Sequence[tuple[int, Sequence[Step], Mapping[str, Target], str | None, str]]) -> None:
    """Rows for what runs did not send, per run (run_id, its plan's changes, the members the tag cap held
    back, outcome, reason): its ``changes`` without a result yet, as ``outcome`` (NOT_SENT, DRY_RUN; None:
    all were sent), and its held members. One statement for all the runs."""
    columns: dict[str, list] = {name: [] for name in _ROWS.names}
    for run_id, changes, held, outcome, reason in runs:
        unsent = list(changes) if outcome else []
        n = len(unsent) + len(held)
        columns["run_id"] += [run_id] * n
        columns["distinct_id"] += [s.distinct_id for s in unsent] + list(held)
        columns["onesignal_id"] += [s.target.onesignal_id for s in unsent] + [t.onesignal_id for t in held.values()]
        columns["id_type"] += [s.target.id_type for s in unsent] + [t.id_type for t in held.values()]
        columns["operation"] += [s.operation for s in unsent] + [ADD] * len(held)
        columns["outcome"] += [outcome] * len(unsent) + ["tag_cap"] * len(held)
        columns["reason"] += [reason] * len(unsent) + [HELD] * len(held)
    if not columns["run_id"]:
        return
    con.register("unsent_rows", pa.table(columns, schema=_ROWS))
    try:
        con.execute("""
            INSERT INTO export_results (run_id, distinct_id, onesignal_id, id_type, operation, outcome, error)
            SELECT u.run_id, u.distinct_id, u.onesignal_id, u.id_type, u.operation, u.outcome, u.reason
            FROM unsent_rows u
            WHERE NOT EXISTS (SELECT 1 FROM export_results r WHERE r.run_id = u.run_id
                              AND r.distinct_id = u.distinct_id AND r.operation = u.operation)""")
    finally:
        con.unregister("unsent_rows")


@dataclass(frozen=True)
class MemberFates:
    """One run's members: ``table`` (COLUMNS, sorted by distinct_id), the run's record, and ``note`` when
    the listing is not the run's whole story (what is missing, and why)."""
    run: dict
    table: pa.Table
    note: str | None = None

    def counts(self) -> dict[tuple[str, str], int]:
        """(operation, outcome) -> members."""
        found: dict[tuple[str, str], int] = {}
        for op, outcome in zip(self.table["operation"].to_pylist(), self.table["outcome"].to_pylist(), strict=True):
            found[(op, outcome)] = found.get((op, outcome), 0) + 1
        return found

    def write_csv(self, out: IO[str] | IO[bytes]) -> int:
        """The table as CSV, UTF-8 (a header line, then a member a line; text quoted, a blank for none);
        returns the rows written. Arrow writes it: a million members in well under a second."""
        buffer = io.BytesIO()
        pa_csv.write_csv(self.table.select(list(COLUMNS)), buffer, pa_csv.WriteOptions(quoting_style="needed"))
        data = buffer.getvalue()
        if isinstance(out, io.TextIOBase):
            out.write(data.decode("utf-8"))
        else:
            out.write(data)      # type: ignore[arg-type]
        return self.table.num_rows


def latest_run(con, cohort: str) -> int | None:
    """The cohort's last run (dry runs too): the one ``toolkit runs NAME --members`` lists."""
    row = con.execute("SELECT max(run_id) FROM export_runs WHERE cohort = ?", [cohort]).fetchone()
    return row[0] if row else None


def member_fates(con, run_id: int) -> MemberFates:
    """Every member's fate in run ``run_id``: its rows, and its no-ops replayed (see the module's doc)."""
    cursor = con.execute("SELECT * FROM export_runs WHERE run_id = ?", [run_id])
    found = cursor.fetchall()
    if not found:
        raise ExportError(f"no export run #{run_id} (toolkit runs lists them)")
    run = dict(zip([d[0] for d in cursor.description], found[0], strict=True))
    params = {"run": run_id, "cohort": run["cohort"], "since": run["started_at"] - RECHECK_ABSENT,
              "absent": NOT_IN_ONESIGNAL}
    table = con.sql(f"""
        WITH effective AS (      -- the results that wrote the snapshot, in the cohort's earlier runs
            SELECT r.run_id, r.distinct_id, r.onesignal_id, r.id_type, r.operation, r.outcome, x.started_at
            FROM export_results r JOIN export_runs x USING (run_id)
            WHERE x.cohort = $cohort AND r.run_id < $run AND r.outcome IN ('ok', 'not_in_onesignal')),
        ordered AS (SELECT *, run_id * 2 + (operation = '{ADD}')::INTEGER AS k FROM effective),
        latest AS (              -- each member's last write (within a run a removal went before an addition)
            SELECT distinct_id, max(k) AS k, arg_max(onesignal_id, k) AS onesignal_id, arg_max(id_type, k) AS id_type,
                   arg_max(outcome, k) AS outcome, arg_max(started_at, k) AS started_at
            FROM ordered GROUP BY distinct_id),
        snapshot AS (            -- as the plan read it (an odd k: an addition): the tagged, and the absent
            SELECT * FROM latest  -- looked for within a day
            WHERE k % 2 = 1 AND (outcome = 'ok' OR started_at > $since)),
        own AS (SELECT * FROM export_results WHERE run_id = $run),
        listed AS (
            SELECT distinct_id, onesignal_id, id_type, operation, outcome,
                   CASE WHEN outcome = 'not_in_onesignal' THEN coalesce(error, $absent) ELSE error END AS reason
            FROM own
            UNION ALL
            SELECT s.distinct_id, s.onesignal_id, s.id_type, '{NOOP}', s.outcome,
                   CASE WHEN s.outcome = 'ok' THEN NULL ELSE $absent END
            FROM snapshot s ANTI JOIN own USING (distinct_id))
        SELECT $run AS run_id, $cohort AS cohort, l.distinct_id, l.onesignal_id, l.id_type,
               u.onesignal_id AS onesignal_user_id, l.operation, l.outcome, l.reason
        FROM listed l LEFT JOIN subscription_users u    -- a Player ID's OneSignal user, as the run resolved it
          ON l.id_type = 'subscription_id' AND u.subscription_id = l.onesignal_id
         AND u.app_id = (SELECT app_id FROM exports WHERE cohort = $cohort)
        ORDER BY l.distinct_id, CASE l.operation WHEN 'remove' THEN 0 WHEN 'add' THEN 1 ELSE 2 END""",
                    params=params).to_arrow_table()
    return MemberFates(run, table, _note(run, table))


def _note(run: dict, table: pa.Table) -> str | None:
    """What the listing cannot show of this run, if anything."""
    if run["unchanged"] is None:        # a run that failed before it could plan
        return f"the run {run['status']} before it planned anything: {run['error']}"
    if run["status"] == "stopped" and (run["error"] or "").startswith(STILL_STOPPED):
        return ("the sync was still stopped by the removal guard: this run sent nothing and wrote no member rows; "
                "the run that stopped it lists every change not sent")
    if run["status"] == "running" or (run["status"] == "interrupted" and run["error"] == DEAD_RUN):
        return "the run's process died before it ended: members it had not reached yet are not listed"
    noops = pc.sum(pc.equal(table["operation"], NOOP)).as_py() or 0
    if noops != run["unchanged"]:
        return (f"not exact: the run counted {run['unchanged']:,} unchanged member(s), the snapshot replayed "
                f"from earlier runs gives {noops:,} (members written outside export runs, or results deleted)")
    return None
