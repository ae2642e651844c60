"""All text a person reads from the command: loads, the store, cohorts, matchability previews, MTU,
export runs, syncs and errors. Domain modules return data; the command renders it here (and prints the
data itself as JSON for --json). Some summaries of the store are computed here too, as dicts.

Light on purpose: the command imports it at start, so it imports neither pandas nor the cohort compiler
(a preview brings pandas with it; its text only uses what the preview holds)."""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING

from toolkit.errors import SyncBusy, ToolkitError
from toolkit.loading import LoadSummary
from toolkit.store import Store

if TYPE_CHECKING:
    from pathlib import Path

    from toolkit.export import ExportPreview
    from toolkit.matching import Preview
    from toolkit.mtu import MonthMTU
    from toolkit.schedule import SyncRun


def load_text(summary: LoadSummary, quarantine_command: str | None = None) -> str:
    """``quarantine_command``: how to list the refused rows (default ``toolkit quarantine``), e.g. with --db."""
    d = summary.to_dict()
    quarantine_command = quarantine_command or "toolkit quarantine"
    lines = [f"files: {d['files_loaded']} loaded, {d['files_skipped']} skipped (already loaded), "
             f"{d['files_refused']} refused"]
    rows = [("events", d["events"]), ("profiles", d["profiles"]), ("profile updates", d["profile_updates"]),
            ("duplicates dropped", d["duplicates_dropped"]), ("rows quarantined", d["rows_quarantined"])]
    if d["identity_mappings"]:     # a Data Pipelines folder's mp_identity_mappings_data
        rows.insert(3, ("identity mappings", d["identity_mappings"]))
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
    if r.get("tag_cap"):
        lines.append(tag_cap_text(r["tag_cap"], (r.get("tag_limit") or {}).get("tag_limit"), r["dry_run"]))
    if r.get("guard"):
        lines.append(f"  removal guard: {r['guard']}")
    if r.get("error"):
        lines.append(f"  {r['error']}")
    if r["status"] == "paused":
        lines.append(f"  the dynamic sync is paused: the scheduler skips it until you fix the cause and resume it "
                     f"(toolkit resume {shlex.quote(r['cohort'])})")
    return "\n".join(lines)


def runs_text(runs: list[dict]) -> str:
    if not runs:
        return "no export runs yet"
    return "\n".join(f"#{r['run_id']} {r['started_at']:%Y-%m-%d %H:%M:%S} {r['cohort']} {r['mode']}"
                     f"{' dry-run' if r['dry_run'] else ''} {r['status']}: " + (
                         _correction_text(r) if r["status"] == RECONCILED else
                         f"+{r['added'] or 0} -{r['removed'] or 0} ={r['unchanged'] or 0} absent "
                         f"{r['not_in_onesignal'] or 0} failed {r['failed'] or 0}{_over_cap(r)}"
                         f"{'  ' + r['error'] if r['error'] else ''}") for r in runs)


RECONCILED = "reconciled"       # reconcile.RECONCILED: the run record of a repair's correction of the snapshot


def _correction_text(r: dict) -> str:
    """A repair's correction (``reconcile.correct_snapshot``) sends nothing: its counts are the drift it wrote
    into the toolkit's record (tagged outside, lost the tag, deleted), not adds and removes."""
    return (f"toolkit reconcile --repair found {r['added'] or 0} tagged outside the toolkit, {r['removed'] or 0} "
            f"who lost the tag, {r['not_in_onesignal'] or 0} deleted from OneSignal; the record now says so, "
            "nothing sent (the next run sends the difference)")


def reconcile_text(found, shown: int = 10) -> str:
    """A reconciliation: the three kinds of drift with the first users of each, then the repair run."""
    r = found.to_dict() if hasattr(found, "to_dict") else found
    lines = [f"{r['cohort']}: OneSignal {'differs from' if r['drifted'] else 'matches'} the toolkit's record "
             f"(tag {r['tag_key']!r}, {r['snapshot']:,} member(s) recorded as tagged, {r['in_sync']:,} tagged "
             f"in OneSignal; {r['views']:,} user(s) viewed one by one)"]
    kinds = [("tagged outside the toolkit", [f"{u['alias_label']} {u['alias_id']!r}" for u in r["tagged_outside"]]),
             ("lost the tag", [f"{m['distinct_id']!r} ({m['id_type']} {m['onesignal_id']!r})" for m in r["lost_tag"]]),
             ("deleted from OneSignal", [f"{m['distinct_id']!r} ({m['id_type']} {m['onesignal_id']!r})"
                                         for m in r["deleted"]])]
    for title, users in kinds:
        if users:
            more = f", and {len(users) - shown:,} more (--json lists them all)" if len(users) > shown else ""
            lines.append(f"  {title}: {len(users):,}: {', '.join(users[:shown])}{more}")
    if r["repair"] is not None:
        lines.append("repair: " + run_text(r["repair"]))
        if r["repair"]["status"] == "stopped":
            lines.append(f"  nothing was sent or changed; toolkit reconcile {shlex.quote(r['cohort'])} --repair "
                         "--force passes the removal guard")
    elif r["drifted"]:
        lines.append(f"  toolkit reconcile {shlex.quote(r['cohort'])} --repair sends the difference")
    return "\n".join(lines)


def _over_cap(r: dict) -> str:
    return f" over tag cap {r['tag_cap']}" if r.get("tag_cap") else ""


# -- sync states and what each run did ---------------------------------------------------------------

SPARKS = "▁▂▃▄▅▆▇█"
SPARK_RUNS = 24          # runs the text sparkline shows (six hours of fifteen-minute runs)


def sparkline(rates: list[float | None]) -> str:
    """Match rates (0..1) as one character each, on a fixed scale (a flat line is a steady rate, not noise
    blown up); a run with no members is a dot."""
    return "".join("·" if r is None else SPARKS[min(int(r * len(SPARKS)), len(SPARKS) - 1)] for r in rates)


def match_rate_text(cohort: str, rates: list[float | None]) -> str:
    """The match rate over a cohort's recent runs, in words and as a sparkline (the panel's chart caption)."""
    last = next((r for r in reversed(rates) if r is not None), None)
    return (f"{cohort}: match rate (exportable / members) over its last {len(rates)} run(s), "
            f"{'-' if last is None else f'{last:.1%}'} at the last: {sparkline(rates)}")


def _when(moment) -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment is not None else "never"


def _count(value) -> str:
    return "-" if value is None else f"{value:,}"


def syncs_text(syncs: list[dict]) -> str:
    """``export.overview`` as a table: per export its state, last run and success, members, exportable, in
    segment, and the match rate now with its recent runs as a sparkline; then why each paused one is."""
    if not syncs:
        return "no exports yet"
    width = min(max(len(s["cohort"]) for s in syncs), 32)
    lines = [f"{'cohort':<{width}}  {'state':<8}  {'last run':<31}  {'last success':<16}  {'members':>9}  "
             f"{'exportable':>10}  {'in segment':>10}  match rate"]
    for s in syncs:
        last = (f"#{s['last_run_id']} {s['last_status']} {_when(s['last_run_at'])}" if s["last_run_id"] else "never")
        rates = [point["match_rate"] for point in s["series"]][-SPARK_RUNS:]
        rate = f"{s['match_rate']:.1%}" if s["match_rate"] is not None else "-"
        lines.append(f"{_clip(s['cohort'], width):<{width}}  {s['state']:<8}  {last:<31}  "
                     f"{_when(s['last_success_at']):<16}  {_count(s['members']):>9}  {_count(s['exportable']):>10}  "
                     f"{_count(s['in_segment']):>10}  {rate:>6} {sparkline(rates)}".rstrip())
    for s in syncs:
        if s.get("last_reconcile"):
            lines.append(f"{s['cohort']} last reconciled {last_reconcile_text(s['last_reconcile'])}")
    for s in syncs:
        if s["state"] == "paused":
            lines.append(f"{s['cohort']} is paused since {_when(s['paused_at'])}: {s['paused_reason']}; fix the "
                         f"cause, then resume it: toolkit resume {shlex.quote(s['cohort'])}")
        elif s["state"] == "guarded":
            lines.append(f"{s['cohort']} is stopped by the removal guard since {_when(s['guard_stopped_at'])} "
                         f"(run #{s['guard_stopped_run']} lists the changes not sent); confirm the removals: "
                         f"toolkit export {shlex.quote(s['cohort'])} --force, or resume it: "
                         f"toolkit resume {shlex.quote(s['cohort'])}")
    return "\n".join(lines)


def last_reconcile_text(last: dict | None) -> str | None:
    """A sync's last reconciliation in a line: when, the drift found by kind, repaired or not (None: never)."""
    if last is None:
        return None
    kinds = [(last["tagged_outside"], "tagged outside"), (last["lost_tag"], "lost the tag"),
             (last["deleted"], "deleted")]
    found = ", ".join(f"{n:,} {what}" for n, what in kinds if n)
    if last["repair_run_id"] is None:
        repaired = "not repaired" if found else ""
    elif last["repair_status"] in ("ok", "partial"):
        repaired = f"repaired (run #{last['repair_run_id']} {last['repair_status']})"
    else:
        repaired = f"not repaired: run #{last['repair_run_id']} {last['repair_status']}"
    drift = f"drift: {found}" if found else "no drift"
    return f"{_when(last['checked_at'])}, {drift}" + (f"; {repaired}" if repaired else "")


def member_fates_text(fates, written_to: str) -> str:
    """What ``toolkit runs --members`` wrote: the run, counts per operation and outcome, and what it cannot show."""
    run = fates.run
    counts = ", ".join(f"{op} {outcome} {n:,}" for (op, outcome), n in sorted(fates.counts().items()))
    where = "stdout" if written_to == "-" else written_to
    lines = [f"run #{run['run_id']} of {run['cohort']} ({'dry run, ' if run['dry_run'] else ''}{run['mode']}, "
             f"{run['status']}) at {_when(run['started_at'])}: {fates.table.num_rows:,} member(s) written to {where}"
             + (f": {counts}" if counts else "")]
    if fates.note:
        lines.append(f"  note: {fates.note}")
    return "\n".join(lines)


def paused_text(cohort: str) -> str:
    return (f"paused the dynamic sync of {cohort}: the scheduler skips it until you resume it "
            f"(toolkit resume {shlex.quote(cohort)})")


def resumed_text(ended: dict) -> str:
    why = (f"paused since {_when(ended['paused_at'])}: {ended['paused_reason']}" if ended.get("paused_at")
           else f"stopped by the removal guard since {_when(ended['guard_stopped_at'])}, run "
                f"#{ended['guard_stopped_run']}; its next run plans and guards afresh")
    return f"resumed the dynamic sync of {ended['cohort']} ({why}); the next scheduled run runs it"


def resumed_all_text(resumed: list[dict]) -> str:
    """``toolkit resume --all``: each sync resumed, with the pause it ended."""
    lines = [f"resumed {len(resumed)} dynamic sync(s); the next scheduled run runs them:"]
    lines += [f"  {r['cohort']} (paused since {_when(r['paused_at'])}: {r['paused_reason']})" for r in resumed]
    return "\n".join(lines)


# -- cohorts and matchability ------------------------------------------------------------------------

def cohorts_saved_text(versions: dict[str, int]) -> str:
    return "\n".join(f"{name}: v{v}" for name, v in versions.items())


def cohorts_text(found: list[dict]) -> str:
    return "\n".join(f"{c['name']} (v{c['version']})" for c in found) or "no cohorts yet: toolkit cohorts load FILE"


def preview_text(preview: Preview, rows: int = 20, more: str = "") -> str:
    """A matchability preview's summary and its first ``rows`` members; ``more`` says how to see the rest."""
    s, rows = preview.summary, max(rows, 0)
    version = f" (v{s['version']})" if s.get("version") else ""
    lines = [f"cohort {s['cohort']}{version} as of {s['now']}",
             f"  {s['members']:,} members, {s['exportable']:,} exportable ({s['match_rate']:.1%}) "
             f"by {s['user_id_property']} as {s['id_type']}",
             "  exportable: " + ", ".join(f"{v:,} {k}" for k, v in s["id_types"].items())]
    lines += [f"  {reason}: {count:,}" for reason, count in s["reasons"].items() if count]
    if s.get("lake"):
        lines.append("  " + engine_text(s.get("engine") or "duckdb", s["lake"]))
    total = s["members"]
    if total:
        lines.append("")
        shown = preview.first_rows(rows)
        width = min(max((len(str(r["distinct_id"])) for r in shown), default=0), 40)
        for r in shown:
            status = "exportable" if r["exportable"] else r["reason"]
            kind, detail = r["id_type"], r["detail"]
            target = f"{kind} {_clip(json.dumps(r['onesignal_id'], ensure_ascii=False))}" if kind else ""
            line = f"  {_clip(r['distinct_id'], 40):<{width}}  {status:<15} {target}".rstrip()
            lines.append(line + (f"  — {detail}" if detail else ""))
        if total > rows:
            lines.append(f"  ... {total - rows:,} more not shown" + (f" ({more})" if more else ""))
    return "\n".join(lines)


def engine_text(engine: str = "duckdb", lake: str | None = None, master: str | None = None,
                remote: str | None = None) -> str:
    """Where cohorts and MTU are evaluated (`toolkit.engine.EngineChoice`), as the panels and notebooks say it."""
    if not lake:
        return "evaluated on DuckDB over the store"
    if engine == "spark":
        from toolkit.spark_session import DEFAULT_MASTER

        where = f"Spark Connect at {remote}" if remote else f"Spark (master {master or DEFAULT_MASTER})"
    else:
        where = "DuckDB"
    return f"evaluated on {where} over the lake {lake}"


def _clip(text, width: int = 48) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= width else text[: width - 1] + "…"


# -- MTU ---------------------------------------------------------------------------------------------

_RULES_TEXT = {"seed": "OneSignal delivery events exempt, engagement events count",
               "strict": "the OneSignal page's list: delivery, opens and app opens from push all exempt"}


def lake_text(written) -> str:
    """What `toolkit lake export` wrote."""
    return (f"wrote the lake {written.path}: {written.events:,} events over {written.days:,} days, "
            f"{written.profiles:,} profiles, {written.identity_mappings:,} identity mappings")


def cohort_sql_text(cohort: str, dialect: str, now: str, sql: str) -> str:
    """A cohort's query for another engine, with a header (SQL comments) saying what it reads."""
    header = [f"-- cohort \"{cohort}\" as of {now}, {dialect} SQL; its members, one distinct_id per row",
              "-- reads resolved_events (event, distinct_id, time in UTC, properties as JSON text),",
              "--       resolved_profiles (distinct_id, properties as JSON text) and identity_map",
              "--       (distinct_id, canonical_id): each with identity resolved to the canonical id"]
    if dialect == "duckdb":
        header[1:] = ["-- as the toolkit runs it on its store"]
    elif dialect != "spark":      # Spark's text is held equal to DuckDB's answers by the tests; these are not run
        header.append(f"-- {dialect}: translated but never run by the toolkit's tests; check the JSON type tests "
                      "and list casts on your data first")
    return "\n".join(header) + "\n" + sql.rstrip() + ";"


def mtu_text(months: list[MonthMTU], rules: str = "seed") -> str:
    """``mtu.report``'s months as a table, and where the guardrail applied."""
    lines = [f"MTU by month (rules: {rules} - {_RULES_TEXT[rules]})"]
    if not months:
        return lines[0] + "\n  no events in the store"
    header = ("month", "MTU", "qualifying ev", "exempt ev", "exempt-only users", "engagement-only users",
              "MTU w/o OneSignal")
    lines.append("  " + "  ".join(f"{h:>{max(len(h), 7)}}" for h in header))
    for r in months:
        cells = (r.month, r.mtu, r.qualifying_events, r.exempt_events, r.exempt_only_users,
                 r.engagement_only_users, r.mtu_without_onesignal)
        lines.append("  " + "  ".join(
            f"{c:>{max(len(h), 7)}}" if isinstance(c, str) else f"{c:>{max(len(h), 7)},}"
            for h, c in zip(header, cells, strict=True)))
    for r in months:
        if r.guardrail_applied:
            lines.append(f"  guardrail applied in {r.month}: {r.users_counted:,} users averaged "
                         f"{r.events_per_user:,.0f} qualifying events, so MTU = events / 1,000")
    return "\n".join(lines)


# -- OneSignal, exports and syncs ----------------------------------------------------------------------

def connect_text(status: dict) -> str:
    return (("Connected" if status["connected"] else "Not connected: " + status["detail"])
            + (f" (key saved to {status['saved_to']})" if status.get("saved_to") else "")
            + (f"; exports allow {status['tag_limit']:,} data tags per user in this app"
               if status.get("tag_limit") is not None else ""))


def stopped_text(cohort: str) -> str:
    return f"stopped the dynamic sync of {cohort}"


def sync_run(run: SyncRun) -> dict:
    return {"status": run.status, "ok": run.ok, "notebook": str(run.notebook),
            "record": str(run.record) if run.record else None, "error": run.error,
            "alerts_not_delivered": list(run.alerts_not_delivered)}


def sync_run_text(run: SyncRun) -> str:
    return (("sync ok" if run.ok else run.error) + f"\nexecuted notebook: {run.notebook}"
            + (f"\nrun record: {run.record}" if run.record else "")
            + "".join(f"\nalert not delivered: {p}" for p in run.alerts_not_delivered if run.ok))


def schedule_text(runs: list[SyncRun]) -> str:
    failed = [r for r in runs if not r.ok]
    undelivered = sum(len(r.alerts_not_delivered) for r in runs)
    return (f"stopped after {len(runs)} run(s), {len(failed)} not ok"
            + "".join(f"\n  {r.started:%Y-%m-%d %H:%M:%S} {r.status}: {r.error}" for r in failed)
            + (f"\n  {undelivered} alert(s) not delivered (see the log above and `toolkit alerts list`)"
               if undelivered else ""))


# -- alerts ------------------------------------------------------------------------------------------

def alert_settings_text(shown: dict) -> str:
    lines = [f"webhook: {shown['webhook'] or 'none'}" + (" (its URL is kept in the secrets file)" if shown["webhook"]
                                                          else "")]
    if shown["smtp"]:
        login = f", as {shown['smtp_user']}" + ("" if shown["smtp_password_set"] else " (no password set)") \
            if shown["smtp_user"] else ""
        lines.append(f"email: {shown['smtp']}{' with STARTTLS' if shown['starttls'] else ''}{login}, "
                     f"from {shown['from']} to {', '.join(shown['to'])}")
    else:
        lines.append("email: none")
    lines.append(f"timeout {shown['timeout_seconds']:g} s per attempt; shrinking alerts above a "
                 f"{shown['shrink_share']:.0%} drop; secrets file {shown['secrets_file']}")
    return "\n".join(lines)


def alert_test_text(sent) -> str:
    return "\n".join(f"{d.channel}: " + ("delivered" if d.ok else f"NOT delivered: {d.error}") for d in sent)


def incidents_text(found: list[dict]) -> str:
    if not found:
        return "no incidents"
    lines = []
    for i in found:
        state = f"resolved {i['resolved_at']:%Y-%m-%d %H:%M} ({i['resolution']})" if i["resolved_at"] else "OPEN"
        lines.append(f"#{i['incident_id']} {i['opened_at']:%Y-%m-%d %H:%M} {i['cohort']} {i['kind']}: {state}")
        lines.append(f"  {i['cause']}")
        last: dict = {}
        for d in i["deliveries"] or []:
            last[(d["message"], d["channel"])] = d
        for (message, channel), d in sorted(last.items()):
            outcome = "delivered" if d["ok"] else f"not delivered: {d['error']}"
            lines.append(f"  {message} alert by {channel}: {outcome}")
    return "\n".join(lines)


def alert_check_text(outcome: dict) -> str:
    lines = [f"{len(outcome['opened'])} incident(s) opened, {len(outcome['resolved'])} resolved, "
             f"{outcome['open']} open; {outcome['sent']} message(s) sent"]
    lines += [f"  opened: {o['cohort']} {o['kind']}: {o['cause']}" for o in outcome["opened"]]
    lines += [f"  resolved: {r['cohort']} {r['kind']}" for r in outcome["resolved"]]
    lines += [f"  not delivered: {p}" for p in outcome["not_delivered"]]
    return "\n".join(lines)


def generated_text(out: Path, counts: dict) -> str:
    return f"wrote {out}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items() if isinstance(v, int))


# -- errors --------------------------------------------------------------------------------------------

def error(exc: ToolkitError) -> dict:
    """An error as the command's JSON answer: only a busy sync answers so (it did nothing, by design)."""
    return {"status": "busy" if isinstance(exc, SyncBusy) else "failed", "ok": False, "error": str(exc)}


def error_text(exc: ToolkitError) -> str:
    return f"sync skipped: {exc}" if isinstance(exc, SyncBusy) else f"error: {exc}"


def export_preview_text(preview: ExportPreview) -> str:
    """What an export would do now (``export.preview_export``), as the export panel and notebook show it."""
    lines = [f"{preview.cohort}: {preview.exportable:,} exportable of {preview.members:,} members",
             f"  add {preview.added:,}, remove {preview.removed:,}, no-op {preview.unchanged:,}",
             *_sample_lines(preview),
             f"  data tags per user: at most {preview.tag_limit['tag_limit']:,} in this app "
             f"({TAG_LIMIT_SOURCES.get(preview.tag_limit['source'], preview.tag_limit['source'])})",
             *([tag_cap_text(preview.over_tag_limit, preview.tag_limit["tag_limit"], True)]
               if preview.over_tag_limit else []),
             f"  removal guard: {'passes' if preview.verdict.ok else 'STOPS the export'}: {preview.verdict.reason}",
             *sync_stop_lines(preview.cohort, preview.sync_stop)]
    return "\n".join(lines)


def dry_run_text(preview: ExportPreview) -> str:
    """``toolkit export --dry-run``: the shape of a run's report (``run_text``), whether the sync is paused
    or stopped by the removal guard, then who would change."""
    shown = preview.to_dict()
    if preview.sync_stop is not None:       # sync_stop_lines say it once, plainly (not run_text's lines for it)
        shown.update(error=None, status="refused (paused)" if shown["status"] == "paused" else shown["status"])
    return "\n".join([run_text(shown), *sync_stop_lines(preview.cohort, preview.sync_stop), *_sample_lines(preview)])


def preview_verdict_text(preview: ExportPreview) -> str:
    """The export panel's one-line word on a preview: what would happen, and the guard's or the sync's stop."""
    stop = preview.sync_stop
    if stop is not None and stop["state"] == "paused":
        verdict = "the sync is PAUSED: the scheduler skips it until you resume it"
    elif stop is not None and not stop["forced"]:
        verdict = "the sync is STOPPED by the removal guard: tick Force to confirm the removals, or resume it"
    else:
        verdict = "guard passes" if preview.verdict.ok else "guard STOPS it (tick Force to override)"
    return f"Preview: add {preview.added:,}, remove {preview.removed:,}, no-op {preview.unchanged:,}; {verdict}"


def sync_stop_lines(cohort: str, stop) -> list[str]:
    """A preview's word on the registered dynamic sync's pause or guard stop (``ExportPreview.sync_stop``):
    that it is held back, since when and why, what a run now would do, and the way out."""
    if stop is None:
        return []
    name = shlex.quote(cohort)
    if stop["state"] == "paused":
        return [f"  the dynamic sync is PAUSED since {_when(stop['since'])} UTC: {stop['reason']}",
                f"  the scheduler skips it (and refuses a run of it) until you fix the cause and resume it: "
                f"toolkit resume {name}"]
    since = (f"  the dynamic sync is STOPPED by the removal guard since {_when(stop['since'])} UTC "
             f"(run #{stop['run_id']} lists the changes it did not send)")
    if stop["forced"]:
        return [since, "  this forced export confirms the removals: it sends the changes above and ends the stop"]
    return [since, f"  its runs send nothing until a person acts: confirm the removals: toolkit export {name} --force, "
                   f"or resume it: toolkit resume {name} (its next run plans and guards afresh)"]


def _sample_lines(preview: ExportPreview) -> list[str]:
    lines = []
    for operation, count in (("add", preview.added), ("remove", preview.removed)):
        steps = preview.samples[operation]
        if steps:
            more = count - len(steps)
            lines.append(f"  {operation}: " + ", ".join(f"{s.distinct_id} ({s.target.id_type} {s.target.onesignal_id})"
                                                        for s in steps) + (f" and {more:,} more" if more else ""))
    return lines


# -- OneSignal's plan limits ---------------------------------------------------------------------------

TAG_LIMIT_SOURCES = {"default": "a paid plan's; set the app's own with toolkit connect --tag-limit N",
                     "set": "as set with toolkit connect --tag-limit", "onesignal": "as OneSignal said",
                     "this run": "for this run"}


def tag_cap_text(count: int, limit: int | None, would: bool) -> str:
    """Members the app's data-tag cap keeps out of the segment, and what to do about it."""
    cap = f"the app's limit of {limit:,} data tags per user" if limit else "the app's limit of data tags per user"
    return (f"  {count:,} member(s) {'would go' if would else 'went'} over {cap}: not in the segment and "
            "not sent again until the cap is raised (toolkit connect --tag-limit N, once the OneSignal plan "
            "allows more) or they carry fewer tags")


# -- toolkit pull (Mixpanel) -------------------------------------------------------------------------

def pull_text(result: dict) -> str:
    """What a pull fetched (``PullResult.to_dict()``), one line per day range."""
    lines = [f"Mixpanel project {result['project_id']}: {_size(result['bytes'])} in {len(result['chunks'])} "
             f"export(s) into {result['folder']}" + (" (a killed pull resumed)" if result["resumed"] else "")]
    if result["skipped"]:
        lines.append(f"  {result['skipped']} range(s) already pulled by the interrupted run")
    for chunk in result["chunks"]:
        days = chunk["from"] if chunk["from"] == chunk["to"] else f"{chunk['from']}..{chunk['to']}"
        lines.append(f"  {days:<24}{_size(chunk['bytes']):>10}")
    if result["pulled_through"]:
        lines.append(f"  pulled through {result['pulled_through']} (the next pull asks again for the last days)")
    if result["profiles"] is not None:
        lines.append(f"  profiles: {result['profiles']:,} into {result['profiles_file']}")
    return "\n".join(lines)


def _size(count: int) -> str:
    return f"{count / 1e6:,.1f} MB" if count >= 100_000 else f"{count / 1e3:,.1f} kB"


def mixpanel_cohorts_text(cohorts: list[dict]) -> str:
    if not cohorts:
        return "no cohorts saved in this Mixpanel project"
    lines = [f"{'id':>10}  {'members':>9}  name"]
    lines += [f"{c.get('id', ''):>10}  {c.get('count', 0):>9,}  {c.get('name', '')}" for c in cohorts]
    return "\n".join(lines)


def mixpanel_cohort_refreshed_text(refreshed: dict) -> str:
    version = f", version {refreshed['version']}" if refreshed["version"] else ""
    return (f"Mixpanel cohort {refreshed['cohort_id']} as \"{refreshed['name']}\": {refreshed['members']:,} members "
            f"({refreshed['status']}{version})")
