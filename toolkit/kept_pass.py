"""The last sync cycle's pass kept in the store, and brought up to date by evaluating again only the users
whose membership can have changed since (store migration 18).

A cohort's answer for a user depends on that user's own events, profile and identity, and on ``now``
(nothing of other users: ``in_cohort`` is inlined, a static list is resolved through the identity map).
So between the kept pass and this one a user's answer can change only if
- a load since changed the user's events, profile or identity: each load step writes those users to
  ``member_changes`` while a pass is kept (toolkit/loading/derived.py), or
- one of the user's events crossed the edge of a window: the compiled query compares event times with
  bounds relative to now (now itself, now - N days) and with nothing else relative to now. Compiled at
  the kept pass's now and at this one, the parameters that differ are exactly those bounds, and an event
  outside [old bound, new bound] compares alike in both.
Those users are evaluated again over the same query reading their rows only; the others keep their masks.
Anything else (the cohorts, their order or definitions changed: another query; a load that re-resolved
every identity; more cohorts than the kept masks hold) evaluates the whole pass again.
At 10M events the whole pass of sixty cohorts takes 3.7-4.1 s; brought up to date fifteen minutes later
(2,600 users at the windows' edges), 0.5-0.6 s, most of it finding those users and rewriting the kept rows.
The pass's users classified by the default user-id property are kept beside it (``classified``, store
migration 20), and brought up to date by classifying again the same users.
Tests hold every kept answer and classification equal to the whole pass's (tests/test_kept_pass.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable

from toolkit.sql import Query, to_utc_naive
from toolkit.store import transaction

MASKS = 4                                # the mask columns kept_pass has (k0..k3)
LOGGED, USERS, SENT = "_kp_logged", "_kp_users", "_kp_sent"   # temp tables: the ids a load or a window's
                                                               # edge names; with their canonical ids; every
                                                               # id resolving to one of those
EVENTS, PROFILES = "_kp_events", "_kp_profiles"   # temp views: the resolved relations of those users only

Select = Callable[..., Query]            # (now, events=, profiles=) -> the pass's query: distinct_id, k0...


def refresh(con, select: Select, now: dt.datetime, table: str, masks: list[str]) -> int | None:
    """Fill the temp ``table`` (distinct_id and the ``masks`` columns) with the pass at ``now``, from the
    kept pass where it can be brought up to date, then keep this one. The number of users evaluated again,
    or None if the whole pass was."""
    now = to_utc_naive(now)
    current = select(now)
    state = con.execute("SELECT digest, now, seq, masks FROM kept_pass_state").fetchone()
    slices = _slices(select(state[1]), current, state[0]) if state and state[3] == len(masks) else None
    listed, temp = ", ".join(masks), table.split(".")[1]
    with transaction(con):
        seq, everyone = con.execute("SELECT max(seq), count(*) FILTER (WHERE distinct_id IS NULL) "
                                    "FROM member_changes").fetchone()
        seq = seq or (state[2] if state else 0)
        if state and slices is not None and not everyone:
            _changed_users(con, state[2], slices)
            kept: int | None = con.execute(f"SELECT count(*) FROM {USERS}").fetchone()[0]
            con.execute(f"DELETE FROM kept_pass WHERE distinct_id IN (SELECT id FROM {USERS})")
            sql, params = select(now, events=EVENTS, profiles=PROFILES)
            con.execute(f"INSERT INTO kept_pass (distinct_id, {listed}) SELECT * FROM ({sql})", params)
        else:
            kept = None
            con.execute(f"CREATE OR REPLACE TEMP TABLE {temp} AS {current.sql}", current.params)
            con.execute("DELETE FROM kept_pass")
            con.execute(f"INSERT INTO kept_pass (distinct_id, {listed}) SELECT * FROM {table}")
        con.execute("DELETE FROM kept_pass_state")
        con.execute("INSERT INTO kept_pass_state VALUES (?, ?, ?, ?)", [_digest(current), now, seq, len(masks)])
        con.execute("DELETE FROM member_changes WHERE seq <= ?", [seq])
    if kept is not None:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {temp} AS SELECT distinct_id, {listed} FROM kept_pass")
        for view in (EVENTS, PROFILES):
            con.execute(f"DROP VIEW {view}")
        for scratch in (SENT, LOGGED):     # USERS stays: the cycle's plans diff those users alone (drop)
            con.execute(f"DROP TABLE {scratch}")
    return kept


MATCHED = "kept_matched"                 # the kept pass's users classified (store migration 20)


def classified(con, classify: Callable[[str], Query], members: str, key: str, moment: dt.datetime,
               previous: dt.datetime | None) -> str:
    """The table of the pass's users classified and kept (``MATCHED``): ``classify(relation)`` is the
    classification of a relation of the pass's rows (``members``) by ``key`` (its user-id property and id
    type). Kept as of the pass's ``moment``, brought up to date from the one kept as of ``previous`` (the
    moment this pass was brought up from; None: evaluated whole) by classifying again only the users
    evaluated again (``USERS``). Their classification alone can have changed: it reads a user's own
    matching facts, and a load logs every user whose facts it changed (the other holders of an id value
    too), for the default user-id property; the caller keeps none for another. At 10M events, classifying
    the 1.13M members of sixty cohorts took ~0.3 s; the users evaluated again fifteen minutes on, ~3k."""
    state = con.execute("SELECT mark FROM kept_matched_state").fetchone()
    with transaction(con):
        if previous is not None and state is not None and state[0] == f"{to_utc_naive(previous)} {key}":
            con.execute(f"DELETE FROM {MATCHED} WHERE distinct_id IN (SELECT id FROM {USERS})")
            sql, params = classify(f"SELECT * FROM {members} WHERE distinct_id IN (SELECT id FROM {USERS})")
        else:
            con.execute(f"DELETE FROM {MATCHED}")
            sql, params = classify(f"SELECT * FROM {members}")
        con.execute(f"INSERT INTO {MATCHED} BY NAME {sql}", params)
        con.execute("DELETE FROM kept_matched_state")
        con.execute("INSERT INTO kept_matched_state VALUES (?)", [f"{to_utc_naive(moment)} {key}"])
    return MATCHED


def since(con) -> dt.datetime | None:
    """The moment of the kept pass (what a brought-up-to-date pass was brought up from, read before it)."""
    found = con.execute("SELECT now FROM kept_pass_state").fetchone()
    return found[0] if found else None


def drop(con) -> None:
    """Free the users the last pass evaluated again (``USERS``)."""
    con.execute(f"DROP TABLE IF EXISTS {USERS}")


def _slices(kept: Query, current: Query, digest: str) -> list[tuple[dt.datetime, dt.datetime]] | None:
    """The time slices between the kept pass's query and this one: for each bound that moved, the
    events between its two values. None if the queries differ otherwise (or the kept one is not this)."""
    if _digest(kept) != digest or kept.sql != current.sql or kept.params.keys() != current.params.keys():
        return None
    slices = []
    for name, old in kept.params.items():
        new = current.params[name]
        if old == new:
            continue
        if not (isinstance(old, dt.datetime) and isinstance(new, dt.datetime)):
            return None
        slices.append((min(old, new), max(old, new)))
    return slices


def _changed_users(con, since: int, slices: list[tuple[dt.datetime, dt.datetime]]) -> None:
    """``LOGGED``: the ids loads logged since ``since`` and those with an event in a slice; ``USERS``:
    those and their canonical ids, the users to evaluate again (an id no longer canonical loses its kept
    row); ``SENT``: every id resolving to one of them, with it; the ``EVENTS`` and ``PROFILES`` views of
    their rows alone."""
    crossed = " OR ".join(f"time BETWEEN $a{i} AND $b{i}" for i in range(len(slices)))
    bounds = {k: v for i, (a, b) in enumerate(slices) for k, v in ((f"a{i}", a), (f"b{i}", b))}
    # The ids first (a few thousand), then their canonical ids: one statement planned the map's look-up
    # over the whole events' scan (175 ms at 10M events instead of ~40). Unpublished rows may add ids: harmless.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {LOGGED} AS
        SELECT distinct_id AS id FROM member_changes WHERE seq > $since
        {f"UNION SELECT distinct_id FROM event_rows WHERE {crossed}" if slices else ""}""", {"since": since, **bounds})
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {USERS} AS
        SELECT id FROM {LOGGED}
        UNION SELECT canonical_id FROM identity_map WHERE distinct_id IN (SELECT id FROM {LOGGED})""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {SENT} AS
        SELECT distinct_id AS sent, canonical_id AS canonical FROM identity_map
        WHERE canonical_id IN (SELECT id FROM {USERS})
        UNION ALL
        SELECT id, id FROM {USERS} u WHERE NOT EXISTS (SELECT 1 FROM identity_map m WHERE m.distinct_id = u.id)""")
    # As resolved_events resolves them (store migration 10), through these ids' entries alone: joining the
    # whole identity map cost a hash table of 870k ids at 10M events, for a few thousand users' rows.
    con.execute(f"""CREATE OR REPLACE TEMP VIEW {EVENTS} AS
                    SELECT e.event, s.canonical AS distinct_id, e.distinct_id AS sent_distinct_id,
                           e.* EXCLUDE (event, distinct_id)
                    FROM events e JOIN {SENT} s ON s.sent = e.distinct_id""")
    # As the resolved_profiles view resolves them (store migration 5: the newest profile of a canonical id
    # wins; ties go by file, line, then the profile's own id), from these users' rows of `profiles` only:
    # the view resolves every profile before a filter can reach it (0.3 s at 1M profiles).
    con.execute(f"""CREATE OR REPLACE TEMP VIEW {PROFILES} AS
                    SELECT s.canonical AS distinct_id,
                           arg_max(p.properties, (p.updated_at, p.file_id, p.line, p.distinct_id)) AS properties,
                           max(p.updated_at) AS updated_at
                    FROM {SENT} s JOIN profiles p ON p.distinct_id = s.sent
                    GROUP BY s.canonical""")


def _digest(query: Query) -> str:
    text = json.dumps([query.sql, sorted(query.params.items())], default=str)
    return hashlib.sha256(text.encode()).hexdigest()
