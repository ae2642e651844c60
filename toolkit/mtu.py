"""Monthly Tracked Users (MTU): who Mixpanel bills for, per calendar month (UTC), and why.

An MTU is a canonical user (identity resolved; anonymous ids count too) with at least one
*qualifying* event in the month. Events Mixpanel never counts (identity bookkeeping, messaging and
Mailchimp events, see ``MIXPANEL_EXEMPT``) are *exempt*. Profile updates and warehouse mirror
updates are not events in the store, so they can never count.

OneSignal message events are matched by event name, both Mixpanel's ``$``-names and OneSignal's
display names, from ``toolkit.onesignal_events``. Two rule sets, because Mixpanel's OneSignal page
contradicts itself:

- ``seed`` (default, the page's prose): delivery events are exempt (sent, received, bounced, failed,
  spam, suppressed, unsubscribed, undelivered); engagement events count (``$campaign_open``,
  ``$app_open``, "Message Opened", "App Opened from Push").
- ``strict`` (the page's list: ``$app_open``, ``$campaign_delivery``, ``$campaign_received``,
  ``$campaign_open``): ``seed`` plus that list and the display names that mean the same ("App Opened
  from Push", "Message Opened", ...). Engagement becomes exempt too, so no OneSignal event counts.

Guardrail: when counted users average more than 1,000 events in a month, MTU = ceil(events / 1,000).
"Events" here means *qualifying* events: an exempt event never moves the bill. (Mixpanel's legacy
billing page also counts warehouse mirror updates toward the guardrail; the store never holds them.)

All counting is one SQL query over ``resolved_events`` (one scan, names bound as parameters).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

import pandas as pd

from toolkit import onesignal_events as osev
from toolkit.errors import UsageError
from toolkit.sql import Query
from toolkit.store import Store, connection

RULE_SETS = ("seed", "strict")
GUARDRAIL_EVENTS_PER_USER = 1_000

# Mixpanel's non-qualifying events, under both rule sets (docs.mixpanel.com, "MTU billing").
# Only raw event names: Mixpanel's UI labels ("Message Bounced", "Experiment Started", ...) are not
# what an export holds, and exempting them would drop a product's own events of that name.
MIXPANEL_EXEMPT: frozenset[str] = frozenset({
    "$identify", "$create_alias", "$merge", "$opt_in", "$mp_session_record",
    "$campaign_delivery", "$campaign_received", "$campaign_bounced", "$campaign_marked_spam",
    "$message_suppressed", "$unsubscribe", "$journey_entered", "$experiment_started",
    "Mailchimp Campaign - Open", "Mailchimp Campaign - Click", "Mailchimp Campaign - Sent",
    "Mailchimp Campaign - Unsubscribed", "Mailchimp Campaign - Bounce",
})

# The OneSignal page's list, widened to the display names OneSignal sends for the same events.
_STRICT_ONESIGNAL = osev.STRICT_EXEMPT | {e.name for e in osev.EVENTS if e.equivalent in osev.STRICT_EXEMPT}


def exempt_names(rules: str = "seed") -> frozenset[str]:
    """Every event name that does not make a user count, under a rule set (exact, case-sensitive)."""
    if rules == "seed":
        return MIXPANEL_EXEMPT | osev.DELIVERY
    if rules == "strict":
        return MIXPANEL_EXEMPT | osev.DELIVERY | _STRICT_ONESIGNAL
    raise UsageError(f"unknown MTU rule set \"{rules}\"; choose one of {', '.join(RULE_SETS)}")


def classify(event: str, rules: str = "seed") -> str:
    """"exempt" or "qualifying": what one event does to its user's MTU status."""
    return "exempt" if event in exempt_names(rules) else "qualifying"


@dataclass(frozen=True)
class MonthMTU:
    """One calendar month (UTC) of the MTU count, with the breakdown a billing owner asks for."""

    month: str                   # "YYYY-MM"
    rules: str
    mtu: int                     # billed: users_counted, or the guardrail's figure
    users_counted: int           # canonical users with >= 1 qualifying event
    qualifying_events: int
    exempt_events: int
    exempt_only_users: int       # seen only through exempt events: not counted
    engagement_only_users: int   # counted only because of OneSignal engagement events
    guardrail_applied: bool
    events_per_user: float       # qualifying events per counted user
    mtu_without_onesignal: int   # what-if: OneSignal events ignored entirely (same guardrail)

    def to_dict(self) -> dict:
        return asdict(self)


# One scan, two aggregation levels: per (month, user), then per month. The bound `names` table holds
# every name the rules know: exempt TRUE (never counts) or FALSE (a OneSignal event that counts). A
# name not listed is a product event: it counts, and would still count without OneSignal. So per user
# `count(exempt)` counts listed events, and events - listed are those left if OneSignal were ignored.
# (A join plus these plain counts measured ~1.2x a bare count(DISTINCT); list_contains() ~2x.)
_QUERY = """
WITH names AS (SELECT unnest($names) AS name, unnest($exempt) AS exempt),
users AS (
    SELECT date_trunc('month', time) AS month, distinct_id,
           count(*) AS n_events, count(*) FILTER (exempt) AS n_exempt, count(exempt) AS n_listed
    FROM resolved_events LEFT JOIN names ON name = event
    WHERE $start IS NULL OR (time >= $start AND time < $end)
    GROUP BY ALL
)
SELECT strftime(month, '%Y-%m'),
       count(*) FILTER (n_events > n_exempt),                           -- users counted
       sum(n_events - n_exempt),                                        -- qualifying events
       sum(n_exempt),                                                   -- exempt events
       count(*) FILTER (n_events = n_exempt),                           -- exempt-only users
       count(*) FILTER (n_events > n_exempt AND n_events = n_listed),   -- counted through OneSignal alone
       count(*) FILTER (n_events > n_listed),                           -- counted without OneSignal
       sum(n_events - n_listed)                                         -- their qualifying events
FROM users GROUP BY month ORDER BY month
"""


def _guardrail(users: int, events: int) -> tuple[int, bool]:
    if users and events > GUARDRAIL_EVENTS_PER_USER * users:
        return math.ceil(events / GUARDRAIL_EVENTS_PER_USER), True
    return users, False


def _month_bounds(month: str | None) -> tuple[datetime | None, datetime | None]:
    if month is None:
        return None, None
    try:
        if not re.fullmatch(r"\d{4}-\d{2}", month):
            raise ValueError
        start = datetime.strptime(month, "%Y-%m")     # naive UTC, like the store's TIMESTAMP column
    except (TypeError, ValueError):
        raise UsageError(f"month must be a calendar month as YYYY-MM, not \"{month}\"") from None
    end = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start, end


def query(month: str | None = None, rules: str = "seed") -> Query:
    """The counting query (DuckDB SQL, values bound): what `report` runs, and toolkit/dialects.py
    translates for another engine; its rows go to `from_rows`."""
    exempt = exempt_names(rules)
    names = sorted(exempt | osev.NAMES)
    start, end = _month_bounds(month)
    return Query(_QUERY, {"names": names, "exempt": [n in exempt for n in names], "start": start, "end": end})


def from_rows(rows: Iterable[Sequence], month: str | None = None, rules: str = "seed") -> list[MonthMTU]:
    """The report from the rows of `query` (whichever engine ran it)."""
    result = []
    for m, users, qualifying, exempt_events, exempt_only, engagement_only, users_wo, events_wo in rows:
        mtu, applied = _guardrail(users, int(qualifying))
        result.append(MonthMTU(
            month=m, rules=rules, mtu=mtu, users_counted=users, qualifying_events=int(qualifying),
            exempt_events=int(exempt_events), exempt_only_users=exempt_only,
            engagement_only_users=engagement_only, guardrail_applied=applied,
            events_per_user=round(qualifying / users, 2) if users else 0.0,
            mtu_without_onesignal=_guardrail(users_wo, int(events_wo))[0]))
    if month is not None and not result:
        result.append(MonthMTU(month, rules, 0, 0, 0, 0, 0, 0, False, 0.0, 0))
    return result


def report(store: Store, month: str | None = None, rules: str = "seed") -> list[MonthMTU]:
    """MTU and its breakdown for every month of the store (or only ``month``, "YYYY-MM"), oldest first.
    A requested month without events yields one row of zeros."""
    sql, params = query(month, rules)
    return from_rows(connection(store).execute(sql, params).fetchall(), month, rules)


def monthly(store: Store, month: str | None = None, rules: str = "seed") -> dict[str, int]:
    """Just the billed MTU per month: {"YYYY-MM": mtu}."""
    return {r.month: r.mtu for r in report(store, month, rules)}


def counted_users(store: Store, month: str, rules: str = "seed") -> list[str]:
    """The canonical ids counted in one month, sorted: to audit a count user by user."""
    start, end = _month_bounds(month)
    rows = connection(store).execute("""
        SELECT DISTINCT distinct_id FROM resolved_events
        WHERE time >= $start AND time < $end AND NOT list_contains($exempt, event)
        ORDER BY 1""", {"exempt": sorted(exempt_names(rules)), "start": start, "end": end}).fetchall()
    return [r[0] for r in rows]


def report_frame(store: Store, month: str | None = None, rules: str = "seed") -> pd.DataFrame:
    """The report as a DataFrame indexed by month (for notebooks)."""
    return frame(report(store, month, rules))


def frame(months: list[MonthMTU]) -> pd.DataFrame:
    """Report rows (from any engine) as the DataFrame indexed by month."""
    columns = list(MonthMTU.__dataclass_fields__)
    return pd.DataFrame([r.to_dict() for r in months], columns=columns).set_index("month")


def chart(frame: pd.DataFrame):
    """Bars per month: MTU vs users seen only through exempt events, and a line for the MTU without
    OneSignal. Uses matplotlib when installed (returns the Axes); otherwise prints a text chart."""
    try:
        import matplotlib.pyplot as plt  # optional: not a dependency of the toolkit
    except ImportError:
        print(chart_text(frame))
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    frame[["mtu", "exempt_only_users"]].rename(
        columns={"mtu": "MTU (counted)", "exempt_only_users": "exempt-only users (not counted)"}
    ).plot.bar(ax=ax, rot=0, legend=False,
               title=f"MTU per month (rules: {frame['rules'].iloc[0] if len(frame) else '-'})")
    ax.plot(range(len(frame)), frame["mtu_without_onesignal"], color="black", marker="o",
            label="MTU without OneSignal events")
    ax.set_xlabel("month (UTC)")
    ax.set_ylabel("users")
    handles, labels = ax.get_legend_handles_labels()
    bars_first = sorted(range(len(handles)), key=lambda i: labels[i] == "MTU without OneSignal events")
    fig.legend([handles[i] for i in bars_first], [labels[i] for i in bars_first],   # below the axes:
               loc="outside lower center", ncols=3, frameon=False)                   # never over the line
    return ax


def chart_text(frame: pd.DataFrame, width: int = 50) -> str:
    """The chart in plain text, for environments without matplotlib."""
    top = max([1, *frame["mtu"], *frame["exempt_only_users"], *frame["mtu_without_onesignal"]])
    bar = lambda n: "#" * round(width * n / top)  # noqa: E731
    lines = []
    for month, r in frame.iterrows():
        lines += [f"{month}  MTU (counted)         {bar(r['mtu']):<{width}} {r['mtu']:,}",
                  f"{'':7}  exempt-only users     {bar(r['exempt_only_users']):<{width}} {r['exempt_only_users']:,}",
                  f"{'':7}  MTU without OneSignal {bar(r['mtu_without_onesignal']):<{width}} "
                  f"{r['mtu_without_onesignal']:,}"]
    return "\n".join(lines)
