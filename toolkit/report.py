"""Plain summaries of loads and of the store, as dicts (for --json and notebooks) and as text."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from toolkit.ingest import LoadSummary
from toolkit.store import Store

if TYPE_CHECKING:      # export pulls in matching and pandas: not for every command's start
    from toolkit.export import ExportPreview


def load_text(summary: LoadSummary, quarantine_command: str | None = None) -> str:
    """``quarantine_command``: how to list the refused rows (default ``toolkit quarantine``), e.g. with --db."""
    d = summary.to_dict()
    quarantine_command = quarantine_command or "toolkit quarantine"
    lines = [f"files: {d['files_loaded']} loaded, {d['files_skipped']} skipped (already loaded), "
             f"{d['files_refused']} refused"]
    rows = [("events", d["events"]), ("profiles", d["profiles"]), ("profile updates", d["profile_updates"]),
            ("duplicates dropped", d["duplicates_dropped"]), ("rows quarantined", d["rows_quarantined"])]
    lines += [f"  {name:<20}{value:>12,}" for name, value in rows]
    for f in summary.files:
        if f.status in ("refused", "waiting"):
            lines.append(f"  {f.status}: {f.message}")
        elif f.status == "loaded" and f.quarantined:
            lines.append(f"  {f.path}: {f.quarantined:,} row(s) quarantined "
                         f"({quarantine_command} --file {shlex.quote(str(f.path))})")
    return "\n".join(lines)


def status(store: Store) -> dict:
    con = store.reader()
    one = lambda sql: con.execute(sql).fetchone()[0]  # noqa: E731
    months = con.execute("""
        SELECT strftime(time, '%Y-%m') AS month, count(*) AS events, count(DISTINCT distinct_id) AS users
        FROM resolved_events GROUP BY 1 ORDER BY 1""").fetchall()
    return {
        "store": store.path,
        "events": one("SELECT count(*) FROM events"),
        "users": one("SELECT count(DISTINCT distinct_id) FROM resolved_events"),
        "profiles": one("SELECT count(*) FROM resolved_profiles"),
        "merged_ids": one("SELECT count(*) FROM identity_map"),
        "identity_links_refused": one("SELECT count(*) FROM identity_links WHERE refused IS NOT NULL"),
        "files_loaded": one("SELECT count(*) FROM loads"),
        "rows_quarantined": one("SELECT count(*) FROM quarantine"),
        "months": [{"month": m, "events": e, "users": u} for m, e, u in months],
    }


def status_text(s: dict) -> str:
    lines = [f"store {s['store']}",
             f"  {'events':<20}{s['events']:>12,}",
             f"  {'users (canonical)':<20}{s['users']:>12,}",
             f"  {'profiles':<20}{s['profiles']:>12,}",
             f"  {'merged ids':<20}{s['merged_ids']:>12,}   ({s['identity_links_refused']:,} identity links refused)",
             f"  {'files loaded':<20}{s['files_loaded']:>12,}",
             f"  {'rows quarantined':<20}{s['rows_quarantined']:>12,}"]
    if s["months"]:
        lines.append("  month        events     users")
        lines += [f"  {m['month']}  {m['events']:>9,} {m['users']:>9,}" for m in s["months"]]
    return "\n".join(lines)


def quarantine(store: Store, file_filter: str | None = None, limit: int = 50) -> list[dict]:
    rows = store.reader().execute("""
        SELECT path, line, reason, raw FROM quarantine
        WHERE $filter IS NULL OR contains(path, $filter)
        ORDER BY file_id, line LIMIT $limit""", {"filter": file_filter, "limit": limit}).fetchall()
    return [{"path": p, "line": line, "reason": r, "raw": raw} for p, line, r, raw in rows]


def quarantine_text(rows: list[dict]) -> str:
    if not rows:
        return "quarantine is empty"
    return "\n".join(f"{r['path']}:{r['line']}: {r['reason']}" for r in rows)


def run_text(run) -> str:
    r = run.to_dict() if hasattr(run, "to_dict") else run
    head = f"{r['cohort']}: {'dry run, ' if r['dry_run'] else ''}{r['mode']} export {r['status']}"
    counts = (f"  members {r['members']:,}, exportable {r['exportable']:,}: added {r['added']:,}, "
              f"removed {r['removed']:,}, unchanged {r['unchanged']:,}, not in OneSignal "
              f"{r['not_in_onesignal']:,}, failed {r['failed']:,}")
    lines = [head, counts]
    if r.get("guard"):
        lines.append(f"  removal guard: {r['guard']}")
    if r.get("error"):
        lines.append(f"  {r['error']}")
    return "\n".join(lines)


def runs_text(runs: list[dict]) -> str:
    if not runs:
        return "no export runs yet"
    return "\n".join(f"#{r['run_id']} {r['started_at']:%Y-%m-%d %H:%M:%S} {r['cohort']} {r['mode']}"
                     f"{' dry-run' if r['dry_run'] else ''} {r['status']}: +{r['added'] or 0} "
                     f"-{r['removed'] or 0} ={r['unchanged'] or 0} absent {r['not_in_onesignal'] or 0} "
                     f"failed {r['failed'] or 0}{'  ' + r['error'] if r['error'] else ''}" for r in runs)


def preview_text(preview: ExportPreview) -> str:
    """What an export would do now (``export.preview_export``), as the export panel and notebook show it."""
    lines = [f"{preview.cohort}: {preview.exportable:,} exportable of {preview.members:,} members",
             f"  add {preview.added:,}, remove {preview.removed:,}, no-op {preview.unchanged:,}",
             *_sample_lines(preview),
             f"  removal guard: {'passes' if preview.verdict.ok else 'STOPS the export'}: {preview.verdict.reason}"]
    return "\n".join(lines)


def dry_run_text(preview: ExportPreview) -> str:
    """``toolkit export --dry-run``: the shape of a run's report (``run_text``), then who would change."""
    return "\n".join([run_text(preview.to_dict()), *_sample_lines(preview)])


def _sample_lines(preview: ExportPreview) -> list[str]:
    lines = []
    for operation, count in (("add", preview.added), ("remove", preview.removed)):
        steps = preview.samples[operation]
        if steps:
            more = count - len(steps)
            lines.append(f"  {operation}: " + ", ".join(f"{s.distinct_id} ({s.target.id_type} {s.target.onesignal_id})"
                                                        for s in steps) + (f" and {more:,} more" if more else ""))
    return lines
