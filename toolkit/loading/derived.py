"""The tables a load derives from what it loaded, each refreshed in the load's own transaction:
the identity map (canonical id of every merged id) and the user-id facts (what matching needs of every
profile, read by a preview, so that loading needs neither the cohort compiler nor matching's Arrow
and pandas code). The OneSignal id rules the facts apply are in toolkit/onesignal_ids.py.
"""

from __future__ import annotations

import contextlib

from toolkit.loading import identity
from toolkit.loading.execute import registered
from toolkit.onesignal_ids import BLANKS, MAX_ID_LENGTH, UUID
from toolkit.onesignal_ids import USER_ID_PROPERTY as DEFAULT_USER_ID_PROPERTY
from toolkit.sql import Query, json_pointer, md5_key, quote_ident

# -- the identity map ------------------------------------------------------------------------------

def resolve_everything(con) -> None:
    """Resolve the whole identity map again from every link (after links were taken away: a superseded
    export of Mixpanel's identity mappings)."""
    refresh_identity(con, None)


def refresh_identity(con, file_id: int | None) -> None:
    """Bring the identity map up to date with the links file ``file_id`` added.

    A link's fate depends on the earlier links of its connected component (every link, refused or
    not, joins its two ids), and on nothing else. So only the components this file's links reach are
    resolved again, with all their links in order, whatever their times: a 10k-event load into a
    store of 10M events and 1M profiles no longer rebuilds the whole map."""
    links = _take_reached_components(con, file_id)
    if links is None:
        return
    _find_star_links(con, links)
    # Links in one file at one moment go by their line when they have one (profile updates), else by
    # their content: event rows carry no line, and the order must not depend on how they were read.
    rows = con.execute(f"""
        SELECT rid, kind, source, target, time_ms, file_id, coalesce(line, 0) FROM {links}
        WHERE rid NOT IN (SELECT rid FROM _star_links)
        ORDER BY time_ms, file_id, coalesce(line, 0), kind, source, target, rid""").fetchall()
    links_found = [(kind, source, target, (time_ms, file_id, line, kind, source, target, rowid))
                   for rowid, kind, source, target, time_ms, file_id, line in rows]
    resolution = identity.resolve(links_found, ordered=True)   # DuckDB sorted them as Python would
    touch(con, "SELECT NULL" if links == _ALL_LINKS else "SELECT id FROM _reached")   # NULL: every id
    # The resolution's mappings, registered once: for the map and for the entries kept for the facts.
    mapped = (registered(con, "_mapped", distinct_id=list(resolution.canonical),
                         canonical_id=list(resolution.canonical.values()))
              if resolution.canonical else contextlib.nullcontext())
    with mapped:
        if links != _ALL_LINKS:
            _keep_remapped(con, bool(resolution.canonical))
        con.execute("INSERT INTO identity_map SELECT source, target FROM _star_links" + (
            " UNION ALL SELECT distinct_id, canonical_id FROM _mapped" if resolution.canonical else ""))
    for table in ("_star_links", "_reached", "_reached_links"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    _mark_refused(con, resolution)


REMAPPED, REMAPPED_IDS = "_remapped", "_remapped_ids"


def _keep_remapped(con, mapped: bool) -> None:
    """Keep (temp tables, for this file's facts refresh) the re-resolved ids and the map entries just
    written for them: they are every entry of those ids, and of every id mapped to one of them (an id
    and its canonical id are in one component), so the refresh need not read the map for them."""
    con.execute(f"CREATE TEMP TABLE IF NOT EXISTS {REMAPPED_IDS} (id VARCHAR)")
    con.execute(f"CREATE TEMP TABLE IF NOT EXISTS {REMAPPED} (distinct_id VARCHAR, canonical_id VARCHAR)")
    con.execute(f"DELETE FROM {REMAPPED} WHERE distinct_id IN (SELECT id FROM _reached)")
    con.execute(f"INSERT INTO {REMAPPED_IDS} SELECT id FROM _reached")
    con.execute(f"INSERT INTO {REMAPPED} SELECT source, target FROM _star_links" + (
        " UNION ALL SELECT distinct_id, canonical_id FROM _mapped" if mapped else ""))


def _drop_remapped(con) -> None:
    for table in (REMAPPED, REMAPPED_IDS):
        con.execute(f"DROP TABLE IF EXISTS {table}")


_ALL_LINKS = "(SELECT rowid AS rid, * FROM identity_links)"


def _take_reached_components(con, file_id: int | None) -> str | None:
    """Take the components file ``file_id``'s links reach out of the map and their links' refusals
    (temp table ``_reached`` holds their ids); return the relation (SQL) of their links, with each
    link's ``rid`` (its rowid), or None when the file added no link. The first links take everything."""
    if file_id is None:   # every component (`resolve_everything`)
        new, earlier = 1, 0
    else:
        new, earlier = con.execute("SELECT count(*) FILTER (WHERE file_id = ?), count(*) FILTER (WHERE file_id < ?) "
                                   "FROM identity_links", [file_id, file_id]).fetchone()
    if not new:
        return None
    # the file's links numbered (store migration 14 numbered the older ones), so later deltas find them
    con.execute(f"""UPDATE identity_links SET source_key = {LINK_KEY.format("source")},
                                              target_key = {LINK_KEY.format("target")}
                    WHERE {"source_key IS NULL" if file_id is None else "file_id = $f"}""",
                {} if file_id is None else {"f": file_id})
    con.execute("CREATE OR REPLACE TEMP TABLE _reached (id VARCHAR)")
    if earlier and file_id is not None:
        _reach(con, file_id)
        links = "_reached_links"
        con.execute("DELETE FROM identity_map WHERE distinct_id IN (SELECT id FROM _reached)")
    else:
        links = _ALL_LINKS
        con.execute("DELETE FROM identity_map")
    # Through rowid: filtering the UPDATE itself on `source` took 1.4 s at 900k links, this 0.1 s.
    con.execute(f"UPDATE identity_links SET refused = NULL WHERE rowid IN "
                f"(SELECT rid FROM {links} WHERE refused IS NOT NULL)")
    return links


def _reach(con, file_id: int) -> None:
    """Fill ``_reached`` with every id connected to file ``file_id``'s links, and ``_reached_links``
    (rid and the columns of `identity_links`) with every link naming one of them, one step at a time:
    each step reads the links naming an id the step before added. Every reached id is read in one
    step, so the steps' links are all the components' links, and no later query reads the whole table
    again. (A recursive query joined every link in both directions at every step: at 900k links,
    0.39 s of CPU; then reading the components' links took three more passes.)

    A step finds its links by the ids' numbers (``source_key``, ``target_key``: store migration 14),
    then reads those few rows whole and checks the ids themselves (two numbers can be equal): at 900k
    links, 15 ms of CPU a step instead of 90 ms for the two text columns. The file's own links are
    taken first, by their file, and the steps read only the others: the file's rows are the load's
    own, numbered far above the stored ones, and with them among a step's row numbers DuckDB could not
    filter the numbers exactly and read every link whole (the first step at 10M events: 87 ms)."""
    con.execute("CREATE OR REPLACE TEMP TABLE _reached_links AS SELECT rowid AS rid, * FROM identity_links "
                "WHERE file_id = $f", {"f": file_id})
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _frontier AS
                   SELECT id, {LINK_KEY.format("id")} AS k FROM (
                       SELECT source AS id FROM _reached_links UNION SELECT target FROM _reached_links)""")
    con.execute("INSERT INTO _reached SELECT id FROM _frontier")
    while True:
        # The file's links name only ids of the first frontier: a later step can find none of them.
        con.execute("""
            CREATE OR REPLACE TEMP TABLE _step AS
            SELECT rowid AS rid, * FROM identity_links
            WHERE rowid IN (SELECT rowid FROM identity_links
                            WHERE file_id <> $f
                              AND (source_key IN (SELECT k FROM _frontier) OR target_key IN (SELECT k FROM _frontier)))
              AND (source IN (SELECT id FROM _frontier) OR target IN (SELECT id FROM _frontier))""", {"f": file_id})
        con.execute("INSERT INTO _reached_links SELECT * FROM _step WHERE rid NOT IN (SELECT rid FROM _reached_links)")
        added, = con.execute(f"""
            CREATE OR REPLACE TEMP TABLE _frontier AS
            SELECT id, {LINK_KEY.format("id")} AS k FROM (
                SELECT DISTINCT unnest([source, target]) AS id FROM _step EXCEPT SELECT id FROM _reached)""").fetchone()
        if not added:   # CREATE TABLE AS answers its number of rows
            break
        con.execute("INSERT INTO _reached SELECT id FROM _frontier")
    for table in ("_frontier", "_step"):
        con.execute(f"DROP TABLE {table}")


# An identity link's id as a number (store migration 14): MD5, the same in every DuckDB version.
LINK_KEY = md5_key("{}")


def _find_star_links(con, links: str) -> None:
    """Fill temp table ``_star_links`` (rid, source, target) with the ``links`` (a relation with rid)
    that SQL can map.

    Most components are stars: fewer than 500 links into one centre that is never a source, from
    sources no other link names (a user's $identify from an anonymous id, its devices' $user_id, its
    $onesignal_user_id). Each such link meets a source cluster of one, so only its kind's own check
    can refuse it, whatever its place in the order, and the centre stays canonical. A link its own
    check refuses is left to `identity.resolve`, for its reason (at 10M events: 460k of 500k links
    are mapped here; loading 1M profiles after them, the refresh took 8.0 s before stars, 4.2 s)."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _star_links AS
        WITH links AS (SELECT * FROM {links}),
        named AS (SELECT id, count(*) AS n FROM (SELECT source AS id FROM links UNION ALL SELECT target FROM links)
                  GROUP BY id),
        centres AS (SELECT l.target FROM links l JOIN named s ON s.id = l.source
                    WHERE l.target NOT IN (SELECT source FROM links)
                    GROUP BY l.target HAVING bool_and(s.n = 1) AND count(*) < $cap)
        SELECT rid, source, target FROM links
        WHERE target IN (SELECT target FROM centres) AND source <> '' AND target <> ''
          AND kind IN {tuple(sorted(identity.KINDS))}
          AND (kind <> 'identify' OR regexp_full_match(source, $uuid4))""",
                {"uuid4": identity.UUID4_PATTERN, "cap": identity.MAX_CLUSTER})


def _mark_refused(con, resolution: identity.Resolution) -> None:
    """Mark a resolution's refused links."""
    if resolution.refused:
        with registered(con, "_refused", rid=[r.link.order[-1] for r in resolution.refused],
                        reason=[r.reason for r in resolution.refused]):
            con.execute("UPDATE identity_links SET refused = r.reason FROM _refused r "
                        "WHERE identity_links.rowid = r.rid")


# -- the user-id facts -----------------------------------------------------------------------------

FACTS_TABLE = "user_id_facts"   # store migration 6; refresh_facts: the default property's facts, as of a load


def facts_sql(user_id_property: str = DEFAULT_USER_ID_PROPERTY, scope: str | None = None) -> Query:
    """What matching needs of every resolved profile, whatever the cohort and id type: distinct_id,
    updated_at, empty, the value's JSON type (jt) and text (v), ``problem`` (missing, not_string,
    blank, too_long or NULL), is_uuid, and for a value held by several profiles its claimants, their
    sorted names and the winner (matching._rank is the same rule in Python). Pure.

    Claimants are counted by value alone: a value's id type follows from its text (auto), or is the
    same for all, and subscription_id only refuses the non-UUIDs, whose claimants are all non-UUIDs.
    Only values held by several profiles are ranked: a sorted list per value costs more than the rest.
    ``scope``: a table of the profile rows of the resolved profiles to compute (``SCOPE_COLUMNS`` of
    `profiles` and ``canonical``, their canonical id; the default property only); it must hold every
    holder of their values (`refresh_facts`)."""
    params = {"f_uuid": UUID, "f_blanks": BLANKS, "f_max": MAX_ID_LENGTH}
    q = quote_ident
    did = q("distinct_id")
    # The default property is kept beside each profile (store migration 5): no profile JSON is parsed.
    values = f"""SELECT {did}, {q("updated_at")} AS updated_at, {q("empty")} AS empty,
                        {q("onesignal_user_id_type")} AS jt, {q("onesignal_user_id")} AS v
                 FROM {q("resolved_profiles") if scope is None else _scoped_profiles(scope)}"""
    if user_id_property != DEFAULT_USER_ID_PROPERTY:
        assert scope is None, "facts are stored for the default property only"
        params["f_path"] = json_pointer(user_id_property)
        values = f"""SELECT {did}, updated_at, empty, json_type(x) AS jt, json_extract_string(x, '$') AS v
            FROM (SELECT {did}, {q("updated_at")} AS updated_at, {q("empty")} AS empty,
                         json_extract({q("properties")}, $f_path) AS x FROM {q("resolved_profiles")})"""
    sql = f"""
WITH {q("f_checked")} AS MATERIALIZED (
    SELECT *,
        CASE WHEN jt IS NULL OR jt = 'NULL' THEN 'missing'
             WHEN jt <> 'VARCHAR' THEN 'not_string'
             WHEN ltrim(v, $f_blanks) = '' THEN 'blank'
             WHEN length(v) > $f_max THEN 'too_long'
        END AS problem,
        -- the regular expression only for values of a UUID's length: most ids are not
        jt = 'VARCHAR' AND strlen(v) = 36 AND regexp_full_match(v, $f_uuid) AS is_uuid
    FROM ({values})
),
{q("f_shared")} AS (
    SELECT v, count(*) AS claimants FROM {q("f_checked")} WHERE problem IS NULL GROUP BY v HAVING count(*) > 1
),
{q("f_groups")} AS (
    SELECT c.v, any_value(s.claimants) AS claimants, list(c.{did} ORDER BY c.{did}) AS names,
           list(c.{did} ORDER BY (c.{did} = coalesce(a.{q("canonical_id")}, c.v)) DESC,
                                 c.updated_at DESC NULLS LAST, c.{did})[1] AS winner
    FROM {q("f_checked")} c JOIN {q("f_shared")} s ON s.v = c.v
    LEFT JOIN {q("identity_map")} a ON a.{did} = c.v
    WHERE c.problem IS NULL
    GROUP BY c.v
)
SELECT c.{did}, c.updated_at, c.empty, c.jt, c.v, c.problem, c.is_uuid, g.claimants, g.names, g.winner
FROM {q("f_checked")} c LEFT JOIN {q("f_groups")} g ON g.v = c.v AND c.problem IS NULL"""
    return Query(sql, params)


def _profile_rows_under(ids: str) -> str:
    """SQL: the rows of `profiles` (with ``canonical``, their canonical id) whose canonical id is one of
    ``ids`` (SQL selecting one column). Found through the ids and their map entries, and only those
    entries are joined: joining every profile to the map is a store-wide pass."""
    q, did = quote_ident, quote_ident("distinct_id")
    return f"""(
        WITH {q("u_ids")} AS (SELECT * FROM ({ids})),
        {q("u_names")} AS (SELECT * FROM {q("u_ids")} UNION SELECT {did} FROM {q("identity_map")}
                         WHERE canonical_id IN (SELECT * FROM {q("u_ids")})),
        {q("u_map")} AS (SELECT * FROM {q("identity_map")} WHERE {did} IN (SELECT * FROM {q("u_names")}))
        SELECT p.*, coalesce(m.canonical_id, p.{did}) AS canonical
        FROM {q("profiles")} p LEFT JOIN {q("u_map")} m ON m.{did} = p.{did}
        WHERE p.{did} IN (SELECT * FROM {q("u_names")})
          AND coalesce(m.canonical_id, p.{did}) IN (SELECT * FROM {q("u_ids")}))"""


def _scoped_profiles(scope: str) -> str:
    """`resolved_profiles` (store migration 5) from the profile rows in table ``scope`` (with their
    ``canonical`` id). A canonical id with one profile row gets it whole; arg_max over one row is that row."""
    q, did = quote_ident, quote_ident("distinct_id")
    key = "(p.updated_at, p.file_id, p.line, p.distinct_id)"
    return f"""(
        SELECT p.canonical AS {did}, max(p.updated_at) AS updated_at,
               arg_max(p.empty, {key}) AS empty, arg_max(p.onesignal_user_id_type, {key}) AS onesignal_user_id_type,
               arg_max(p.onesignal_user_id, {key}) AS onesignal_user_id
        FROM {q(scope)} p
        GROUP BY 1)"""


# What `_scoped_profiles` reads of a profile row (never `properties`: its JSON is the costly column).
SCOPE_COLUMNS = "distinct_id, updated_at, file_id, line, empty, onesignal_user_id_type, onesignal_user_id"


def track_changes(con) -> None:
    """Start recording (temp table ``_touched_ids``, for this file's settle) the ids whose resolved
    profile or user-id value this load may change, so `refresh_facts` refreshes only their facts."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {TOUCHED} (id VARCHAR)")
    # and the re-resolved ids with their entries (`_keep_remapped`): none yet
    con.execute(f"CREATE OR REPLACE TEMP TABLE {REMAPPED_IDS} (id VARCHAR)")
    con.execute(f"CREATE OR REPLACE TEMP TABLE {REMAPPED} (distinct_id VARCHAR, canonical_id VARCHAR)")


def touch(con, ids_sql: str) -> None:
    """Record the ids ``ids_sql`` selects (one column; a NULL id means every profile) as touched."""
    con.execute(f"CREATE TEMP TABLE IF NOT EXISTS {TOUCHED} (id VARCHAR)")
    con.execute(f"INSERT INTO {TOUCHED} {ids_sql}")


TOUCHED = "_touched_ids"


def refresh_facts(con, generation: int) -> None:
    """Bring `user_id_facts` (the default user-id property's facts) up to load ``generation``, in the
    load's own transaction before its manifest row, so a preview reads the facts instead of computing
    them from every profile (1M profiles: 0.5 s instead of 1 s).

    Only the facts a load can change are computed again. A resolved profile's facts depend on its own
    row, and through its value on every profile holding the same value and on the value's place in the
    identity map. A row of `resolved_profiles` changes only under an id of a re-resolved identity
    component (old and new canonical ids are both in it) or under the canonical id of a profile this
    load wrote or deleted: those are the touched ids. So the facts of the touched ids, and of every
    profile holding a value that a touched id held before or holds now (or that is itself touched), are
    deleted and computed again, with all the holders of those values. Facts not current (no load stored
    them, or a load before this code) and a first identity resolution rebuild the whole table.
    The touched ids are those recorded since `track_changes`."""
    touched_all, touched = _touched_everything(con, generation)
    if touched_all or stored_facts(con, DEFAULT_USER_ID_PROPERTY) is None:
        sql, params = facts_sql()
        con.execute(f"DELETE FROM {FACTS_TABLE}")   # the table is store migration 6's
        con.execute(f"INSERT INTO {FACTS_TABLE} BY NAME SELECT * FROM ({sql})", params)
        touch(con, "SELECT NULL")        # every profile's facts were computed again
    elif touched:
        _refresh_touched_facts(con)
    _log_member_changes(con, generation)
    con.execute(f"DROP TABLE IF EXISTS {TOUCHED}")
    _drop_remapped(con)
    con.execute(f"COMMENT ON TABLE {FACTS_TABLE} IS 'generation {int(generation)}'")


def _touched_everything(con, generation: int) -> tuple[bool, int]:
    """Add the profiles file ``generation`` wrote to the touched ids (`_refresh_touched_facts` adds their
    canonical ids); whether they include every id, and how many there are."""
    con.execute(f"INSERT INTO {TOUCHED} SELECT distinct_id FROM profiles WHERE file_id = {int(generation)}")
    every, count = con.execute(f"SELECT count(*) FILTER (WHERE id IS NULL), count(*) FROM {TOUCHED}").fetchone()
    return bool(every), count


MAX_MEMBER_CHANGES = 1_000_000


def _log_member_changes(con, generation: int) -> None:
    """While a sync cycle's pass is kept (store migration 18, toolkit/kept_pass.py), record the users this
    load step may have moved in or out of a cohort, or whose matching facts it changed, so the next cycle
    evaluates and diffs only them: the touched ids (a resolved profile changed; a re-resolved identity
    component, old and new canonical ids both; the other holders of a touched id value; NULL: every id)
    and the ids of the events file ``generation`` published (dropped duplicates were copies of them). Ids
    as they came; the cycle adds their canonical ids. Not kept: nothing is written. Once the log outgrows
    ``MAX_MEMBER_CHANGES`` (cycles stopped, loads went on), the kept pass is let go: the next cycle
    evaluates the whole pass, cheaper than that many users one by one, and the log stops growing."""
    kept, logged = con.execute("SELECT (SELECT count(*) FROM kept_pass_state), (SELECT count(*) FROM member_changes)"
                               ).fetchone()
    if not kept:
        return
    if logged > MAX_MEMBER_CHANGES:
        for table in ("kept_pass", "kept_pass_state", "member_changes", "kept_matched", "kept_matched_state"):
            con.execute(f"DELETE FROM {table}")
        return
    seq, = con.execute("SELECT nextval('member_change_ids')").fetchone()
    con.execute(f"""INSERT INTO member_changes SELECT DISTINCT $seq, id FROM (
                        SELECT id FROM {TOUCHED}
                        UNION ALL SELECT distinct_id FROM event_rows WHERE file_id = $g)""",
                {"seq": seq, "g": int(generation)})


def _refresh_touched_facts(con) -> None:
    """Replace the facts of the touched ids and of every holder of an affected value (`refresh_facts`).

    Each 1M-row text column read costs ~50 ms at 1M profiles, so each table is read once where it can
    be: the map once for the touched ids' entries and those of the ids under them, the profiles once
    for the rows under them and once for the holders of their values, the facts once for the values
    they held (their rows then go by rowid). Holders outside the touched ids cost their own reads,
    only when there are some."""
    t = f"SELECT id FROM {TOUCHED}"
    # A delta's touched ids are its re-resolved components: their entries were just written (kept;
    # `track_changes` made the table, empty until an identity refresh keeps some).
    kept = not con.execute(f"SELECT count(*) FROM {TOUCHED} WHERE id NOT IN (SELECT id FROM {REMAPPED_IDS})"
                           ).fetchone()[0]
    entries = REMAPPED if kept else "identity_map"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _tmap AS
        SELECT distinct_id, canonical_id FROM {entries} WHERE distinct_id IN ({t}) OR canonical_id IN ({t})""")
    # The touched ids' canonical ids are touched too. A delta's re-resolved components hold theirs; a
    # canonical id added here needs its own entry and those of the ids under it.
    added = con.execute(f"""INSERT INTO {TOUCHED} SELECT DISTINCT canonical_id FROM _tmap
                            WHERE distinct_id IN ({t}) AND canonical_id NOT IN ({t})""").fetchone()[0]
    if added:
        con.execute(f"""INSERT INTO _tmap SELECT distinct_id, canonical_id FROM {entries}
                        WHERE (distinct_id IN ({t}) OR canonical_id IN ({t}))
                          AND distinct_id NOT IN (SELECT distinct_id FROM _tmap)""")
    # The touched ids and every id mapped to one (SQL, used twice)
    names = f"{t} UNION SELECT distinct_id FROM _tmap WHERE canonical_id IN ({t})"
    # The profile rows under the touched ids (their canonical id is one), with that id.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _scope AS
        SELECT {", ".join(f"p.{c}" for c in SCOPE_COLUMNS.split(", "))},
               coalesce(m.canonical_id, p.distinct_id) AS canonical
        FROM profiles p LEFT JOIN _tmap m ON m.distinct_id = p.distinct_id
        WHERE p.distinct_id IN ({names}) AND coalesce(m.canonical_id, p.distinct_id) IN ({t})""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _old_facts AS
        SELECT rowid AS r, v, problem FROM {FACTS_TABLE} WHERE distinct_id IN ({t})""")
    # Values a touched profile held (stored facts) or holds (its profile rows), and the touched ids
    # themselves: an id's entry in the identity map decides the winner of that value. Only values
    # several profiles can claim (strings without a problem, as `facts_sql` checks them): the facts of
    # a profile whose value has a problem depend on its own rows alone (thousands share a blank value).
    touched_values = f"""
        SELECT DISTINCT v FROM (
            SELECT v FROM _old_facts WHERE problem IS NULL
            UNION ALL {t}
            UNION ALL SELECT onesignal_user_id FROM _scope WHERE onesignal_user_id_type = 'VARCHAR')
        WHERE ltrim(v, $blanks) <> '' AND length(v) <= $max"""
    # Every resolved profile to compute again: the touched ones, and every holder of a touched value
    # (a profile's resolved value is one of its profile rows' values). Every stored row holding a
    # touched value is among them: its profile was touched, or it still holds that value.
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _holders AS
        WITH touched_values AS ({touched_values}), names AS ({names})
        SELECT distinct_id, distinct_id IN (SELECT id FROM names) AS known
        FROM profiles WHERE onesignal_user_id IN (SELECT v FROM touched_values)
                        AND onesignal_user_id_type = 'VARCHAR'""", {"blanks": BLANKS, "max": MAX_ID_LENGTH})
    if con.execute("SELECT count(*) FROM _holders WHERE NOT known").fetchone()[0]:   # their entries too
        con.execute("""INSERT INTO _tmap SELECT distinct_id, canonical_id FROM identity_map
                       WHERE distinct_id IN (SELECT distinct_id FROM _holders WHERE NOT known)""")
    extra, = con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _extra AS
        SELECT DISTINCT coalesce(m.canonical_id, h.distinct_id) AS distinct_id
        FROM _holders h LEFT JOIN _tmap m ON m.distinct_id = h.distinct_id
        EXCEPT {t}""").fetchone()
    con.execute(f"DELETE FROM {FACTS_TABLE} WHERE rowid IN (SELECT r FROM _old_facts)")
    if extra:   # CREATE TABLE AS answers its number of rows
        con.execute(f"""INSERT INTO _scope SELECT {SCOPE_COLUMNS}, canonical
                        FROM {_profile_rows_under("SELECT distinct_id FROM _extra")}""")
        con.execute(f"DELETE FROM {FACTS_TABLE} WHERE distinct_id IN (SELECT distinct_id FROM _extra)")
    sql, params = facts_sql(DEFAULT_USER_ID_PROPERTY, "_scope")
    con.execute(f"INSERT INTO {FACTS_TABLE} BY NAME SELECT * FROM ({sql})", params)
    con.execute(f"INSERT INTO {TOUCHED} SELECT distinct_id FROM _extra")   # their facts changed too
    for table in ("_tmap", "_scope", "_old_facts", "_holders", "_extra"):
        con.execute(f"DROP TABLE {table}")


def stored_facts(con, user_id_property: str) -> str | None:
    """The stored facts table if it holds this property as of the newest load, else None."""
    if user_id_property != DEFAULT_USER_ID_PROPERTY:
        return None
    current = con.execute(f"""
        SELECT (SELECT comment FROM duckdb_tables() WHERE schema_name = 'main' AND table_name = '{FACTS_TABLE}')
               = 'generation ' || coalesce((SELECT max(file_id) FROM loads), 0)""").fetchall()[0][0]
    return FACTS_TABLE if current else None
