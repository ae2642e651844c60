"""The DuckDB store: one file holds every piece of state, behind a versioned schema.

Where the file lives: an explicit path, else $TOOLKIT_DB, else ``toolkit.duckdb`` in the working
directory; ``":memory:"`` for tests. Migrations run on open, each in its own transaction (a new store's
all in one: 50 ms instead of 70), so a store is always at one schema version. Secrets are never written here.

Sharing the file: DuckDB lets one process open it read-write, or any number of processes read-only,
never both at once. So nobody keeps it open longer than one action (``using`` opens it for a block),
and opening a store another process holds waits for it, saying once who holds it (process id and
command), for up to $TOOLKIT_STORE_WAIT seconds (default 60), then fails with a StoreError that says
what to do.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb

from toolkit.errors import StoreError
from toolkit.onesignal_ids import USER_ID_PROPERTY
from toolkit.sql import json_pointer, md5_key

DEFAULT_DB = "toolkit.duckdb"
ENV_WAIT = "TOOLKIT_STORE_WAIT"
DEFAULT_WAIT = 60.0      # seconds to wait for another process to let go of the store

# Each entry is one schema version; append, never edit a released one.
MIGRATIONS: list[str] = [
    # 1: events, profiles, identity, load manifest, quarantine.
    """
    CREATE TABLE loads (
        file_id      INTEGER PRIMARY KEY,
        path         VARCHAR NOT NULL,
        sha256       VARCHAR NOT NULL,
        size         BIGINT NOT NULL,
        mtime_ns     BIGINT NOT NULL,
        kind         VARCHAR NOT NULL,      -- events | profiles | profile_updates
        format       VARCHAR NOT NULL,      -- jsonl | json | csv | parquet
        loaded_at    TIMESTAMP NOT NULL,
        rows_read    BIGINT NOT NULL,
        rows_loaded  BIGINT NOT NULL,
        duplicates   BIGINT NOT NULL,       -- older copies of events this file replaced
        quarantined  BIGINT NOT NULL
    );
    CREATE SEQUENCE file_ids START 1;

    -- A committed row always has event, distinct_id and time. `rejected` is only ever set inside a
    -- load's transaction: rejected rows are moved to the quarantine before commit, so the file is
    -- read once (for a rejected row, `event` holds the raw record).
    CREATE TABLE events (
        event        VARCHAR,
        distinct_id  VARCHAR,
        time         TIMESTAMP,             -- UTC
        insert_id    VARCHAR,
        device_id    VARCHAR,               -- $device_id and $user_id: Simplified ID Merge reads them
        user_id      VARCHAR,
        properties   JSON USING COMPRESSION zstd,   -- long JSON text: zstd writes ~2x faster, 3x smaller
        file_id      INTEGER NOT NULL,
        line         BIGINT NOT NULL,       -- record number within the file
        rejected     VARCHAR
    );

    CREATE TABLE profiles (
        distinct_id  VARCHAR PRIMARY KEY,
        properties   JSON NOT NULL,
        updated_at   TIMESTAMP NOT NULL,
        file_id      INTEGER NOT NULL,
        line         BIGINT NOT NULL
    );

    -- Every identity signal seen, in load order; the map below is derived from it.
    CREATE TABLE identity_links (
        kind         VARCHAR NOT NULL,      -- identify | alias | merge | simplified | onesignal
        source       VARCHAR NOT NULL,
        target       VARCHAR NOT NULL,
        time_ms      BIGINT NOT NULL,
        file_id      INTEGER NOT NULL,
        line         BIGINT NOT NULL,
        refused      VARCHAR                -- why resolution refused it, else NULL
    );
    CREATE TABLE identity_map (
        distinct_id  VARCHAR PRIMARY KEY,
        canonical_id VARCHAR NOT NULL
    );

    CREATE TABLE quarantine (
        file_id      INTEGER NOT NULL,
        path         VARCHAR NOT NULL,
        line         BIGINT NOT NULL,
        reason       VARCHAR NOT NULL,
        raw          VARCHAR
    );

    -- What downstream queries read: identity resolved, the id as sent kept beside it.
    CREATE VIEW resolved_events AS
        SELECT e.event, coalesce(m.canonical_id, e.distinct_id) AS distinct_id,
               e.distinct_id AS sent_distinct_id, e.time, e.insert_id, e.properties
        FROM events e LEFT JOIN identity_map m ON m.distinct_id = e.distinct_id;

    -- One profile per canonical user; if a later merge joined two profiled ids, the newest wins.
    CREATE VIEW resolved_profiles AS
        SELECT coalesce(m.canonical_id, p.distinct_id) AS distinct_id,
               arg_max(p.properties, p.updated_at) AS properties,
               max(p.updated_at) AS updated_at
        FROM profiles p LEFT JOIN identity_map m ON m.distinct_id = p.distinct_id
        GROUP BY ALL;
    """,
    # 2: export state. The API key is never stored: only who is connected, and what was sent.
    """
    CREATE TABLE connections (
        app_id       VARCHAR PRIMARY KEY,
        base_url     VARCHAR NOT NULL,
        status       VARCHAR NOT NULL,      -- connected | failed
        detail       VARCHAR NOT NULL,
        checked_at   TIMESTAMP NOT NULL
    );
    -- One export per cohort: a new export (one-time or dynamic) overwrites the previous one.
    CREATE TABLE exports (
        cohort           VARCHAR PRIMARY KEY,
        mode             VARCHAR NOT NULL,  -- once | dynamic
        app_id           VARCHAR NOT NULL,
        base_url         VARCHAR NOT NULL,
        tag_key          VARCHAR NOT NULL,
        segment_name     VARCHAR NOT NULL,
        segment_id       VARCHAR,
        user_id_property VARCHAR NOT NULL,
        id_type          VARCHAR NOT NULL,
        created_at       TIMESTAMP NOT NULL,
        next_due_at      TIMESTAMP,          -- dynamic syncs only; NULL once stopped
        stopped_at       TIMESTAMP
    );
    -- The snapshot of the last successful export: who carries the cohort's tag, or was looked for
    -- and is not in OneSignal (status absent, looked for again after a while).
    CREATE TABLE export_members (
        cohort       VARCHAR NOT NULL,
        distinct_id  VARCHAR NOT NULL,
        onesignal_id VARCHAR NOT NULL,
        id_type      VARCHAR NOT NULL,
        status       VARCHAR NOT NULL,      -- tagged | absent
        checked_at   TIMESTAMP NOT NULL,
        PRIMARY KEY (cohort, distinct_id)
    );
    CREATE SEQUENCE run_ids START 1;
    CREATE TABLE export_runs (
        run_id           INTEGER PRIMARY KEY,
        cohort           VARCHAR NOT NULL,
        mode             VARCHAR NOT NULL,
        dry_run          BOOLEAN NOT NULL,
        started_at       TIMESTAMP NOT NULL,
        ended_at         TIMESTAMP,
        status           VARCHAR NOT NULL,  -- running | ok | partial | failed | stopped | interrupted
        pid              INTEGER NOT NULL,
        members          BIGINT,
        exportable       BIGINT,
        added            BIGINT,
        removed          BIGINT,
        unchanged        BIGINT,
        not_in_onesignal BIGINT,
        failed           BIGINT,
        error            VARCHAR
    );
    -- The exported-users report: one row per user a run sent (or tried to send).
    CREATE TABLE export_results (
        run_id       INTEGER NOT NULL,
        distinct_id  VARCHAR NOT NULL,
        onesignal_id VARCHAR NOT NULL,
        operation    VARCHAR NOT NULL,      -- add | remove
        outcome      VARCHAR NOT NULL,      -- ok | not_in_onesignal | failed
        error        VARCHAR
    );
    -- Subscription (Player) IDs resolved to OneSignal users: lookups are rate-limited, so keep them.
    CREATE TABLE subscription_users (
        app_id          VARCHAR NOT NULL,
        subscription_id VARCHAR NOT NULL,
        onesignal_id    VARCHAR,            -- NULL: no such subscription
        checked_at      TIMESTAMP NOT NULL,
        PRIMARY KEY (app_id, subscription_id)
    );
    """,
    # 3: cohort definitions, versioned; resolved_profiles breaks ties between rows of one load.
    """
    CREATE TABLE IF NOT EXISTS cohorts (
        name        VARCHAR NOT NULL,
        version     INTEGER NOT NULL,      -- bumped only when the definition's meaning changes
        definition  JSON NOT NULL,         -- canonical form (cohort_model.to_dict)
        created_at  TIMESTAMP NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE OR REPLACE VIEW resolved_profiles AS
        SELECT coalesce(m.canonical_id, p.distinct_id) AS distinct_id,
               arg_max(p.properties, (p.updated_at, p.file_id, p.line)) AS properties,
               max(p.updated_at) AS updated_at
        FROM profiles p LEFT JOIN identity_map m ON m.distinct_id = p.distinct_id
        GROUP BY ALL;
    """,
    # 4: an events file loads in two transactions (see toolkit/loading/run.py): its rows are staged, then
    # settled and published by the file's row in `loads`. `events` shows published files only, so no
    # reader ever sees a staged file. Rows no longer carry their line: the fast reader cannot number
    # them without running on one thread, and only refused rows need one (the quarantine keeps it).
    # `rejected` marks staged rows that settling moves to the quarantine.
    """
    ALTER TABLE events RENAME TO event_rows;
    ALTER TABLE event_rows DROP COLUMN line;
    ALTER TABLE identity_links ALTER COLUMN line DROP NOT NULL;   -- NULL for links read from events
    ALTER TABLE loads RENAME COLUMN sha256 TO content_hash;       -- "xxh3-128:<hex>" from now on
    CREATE VIEW events AS
        SELECT event, distinct_id, time, insert_id, device_id, user_id, properties, file_id
        FROM event_rows
        WHERE file_id <= (SELECT coalesce(max(file_id), 0) FROM loads);
    -- Only users that a merge gave several profiles are grouped (grouping every profile with its JSON
    -- took half of a profile condition's time). The newest profile wins; profiles of one Engage page
    -- share file and line, so the profile's own id settles the tie (arg_max alone picked either).
    CREATE OR REPLACE VIEW resolved_profiles AS
        WITH placed AS (
            SELECT coalesce(m.canonical_id, p.distinct_id) AS distinct_id, p.properties, p.updated_at,
                   p.file_id, p.line, p.distinct_id AS profile_id, m.canonical_id IS NOT NULL AS moved
            FROM profiles p LEFT JOIN identity_map m ON m.distinct_id = p.distinct_id),
        contested AS (SELECT DISTINCT distinct_id FROM placed WHERE moved)
        SELECT distinct_id, properties, updated_at FROM placed
        WHERE distinct_id NOT IN (SELECT distinct_id FROM contested)
        UNION ALL
        SELECT distinct_id, arg_max(properties, (updated_at, file_id, line, profile_id)), max(updated_at)
        FROM placed
        WHERE distinct_id IN (SELECT distinct_id FROM contested)
        GROUP BY distinct_id;
    """,
    # 5: what later steps read of a row's JSON, kept beside it at load so that they parse none.
    # Events: an identity event's ids (settling read them from `properties`, and reading any rows of
    # it decompresses the whole column). Profiles: the default user-id property's JSON type and text,
    # and whether the profile has no properties at all.
    """
    ALTER TABLE event_rows ADD COLUMN link_source VARCHAR;
    ALTER TABLE event_rows ADD COLUMN link_target VARCHAR;
    UPDATE event_rows SET link_source = CASE event WHEN '$identify' THEN properties ->> '$."$anon_id"'
                                                   WHEN '$create_alias' THEN properties ->> '$.alias'
                                                   WHEN '$merge' THEN properties ->> '$."$distinct_ids"[1]' END,
                          link_target = CASE event WHEN '$identify' THEN properties ->> '$."$identified_id"'
                                                   WHEN '$create_alias' THEN distinct_id
                                                   WHEN '$merge' THEN properties ->> '$."$distinct_ids"[0]' END
    WHERE rejected IS NULL AND event IN ('$identify', '$create_alias', '$merge');
    -- Rebuilt whole by every load, and a primary key made that 13 s at 500k ids instead of 0.3 s;
    -- ids are unique by construction (loading.derived.refresh_identity writes a dict).
    CREATE TABLE identity_map_unkeyed AS SELECT * FROM identity_map;
    DROP TABLE identity_map;
    ALTER TABLE identity_map_unkeyed RENAME TO identity_map;
    ALTER TABLE identity_map ALTER COLUMN canonical_id SET NOT NULL;
    ALTER TABLE profiles ADD COLUMN onesignal_user_id_type VARCHAR;
    ALTER TABLE profiles ADD COLUMN onesignal_user_id VARCHAR;
    ALTER TABLE profiles ADD COLUMN empty BOOLEAN;
    UPDATE profiles SET onesignal_user_id_type = json_type(properties, '$."$onesignal_user_id"'),
                        onesignal_user_id = json_extract_string(properties, '$."$onesignal_user_id"'),
                        empty = len(json_keys(properties)) = 0;
    CREATE OR REPLACE VIEW resolved_profiles AS
        WITH placed AS (
            SELECT coalesce(m.canonical_id, p.distinct_id) AS distinct_id, p.properties, p.updated_at,
                   p.onesignal_user_id_type, p.onesignal_user_id, p.empty,
                   p.file_id, p.line, p.distinct_id AS profile_id, m.canonical_id IS NOT NULL AS moved
            FROM profiles p LEFT JOIN identity_map m ON m.distinct_id = p.distinct_id),
        contested AS (SELECT DISTINCT distinct_id FROM placed WHERE moved)
        SELECT distinct_id, properties, updated_at, onesignal_user_id_type, onesignal_user_id, empty FROM placed
        WHERE distinct_id NOT IN (SELECT distinct_id FROM contested)
        UNION ALL
        SELECT distinct_id, arg_max(properties, (updated_at, file_id, line, profile_id)), max(updated_at),
               arg_max(onesignal_user_id_type, (updated_at, file_id, line, profile_id)),
               arg_max(onesignal_user_id, (updated_at, file_id, line, profile_id)),
               arg_max(empty, (updated_at, file_id, line, profile_id))
        FROM placed
        WHERE distinct_id IN (SELECT distinct_id FROM contested)
        GROUP BY distinct_id;
    """,
    # 6: the user-id facts a load stores for previews (toolkit/loading/derived.py: each load refills it and
    # stamps its comment with the load's file_id). Loads used to create it themselves; that table is
    # replaced, and previews compute the facts until the next load refills it.
    """
    CREATE OR REPLACE TABLE user_id_facts (
        distinct_id  VARCHAR,      -- a resolved profile
        updated_at   TIMESTAMP,
        empty        BOOLEAN,      -- the profile has no properties
        jt           VARCHAR,      -- the user-id value's json_type
        v            VARCHAR,      -- and its text
        problem      VARCHAR,      -- missing | not_string | blank | too_long | NULL
        is_uuid      BOOLEAN,
        claimants    BIGINT,       -- for a value several profiles hold: how many,
        names        VARCHAR[],    -- who (sorted),
        winner       VARCHAR       -- and who keeps it
    );
    """,
    # 7: OneSignal's plan limits the export respects (issue 15). The data-tag cap per app (a person's
    # setting, or what OneSignal's 400 said); the tags the toolkit knows a user carries beyond its own
    # (OneSignal's view of the user, read when the cap refused it); members the cap refused, kept apart
    # from the snapshot (they carry no tag) so that they are not sent again until the cap or their
    # tags change; and each run's count of them.
    """
    CREATE TABLE app_limits (
        app_id       VARCHAR PRIMARY KEY,
        tag_limit    INTEGER NOT NULL,      -- data tags a user may carry in this app
        source       VARCHAR NOT NULL,      -- set (by a person) | onesignal (from its answer)
        updated_at   TIMESTAMP NOT NULL
    );
    CREATE TABLE known_user_tags (
        app_id       VARCHAR NOT NULL,
        onesignal_id VARCHAR NOT NULL,      -- the id exports address the user by
        tag_keys     VARCHAR[] NOT NULL,
        checked_at   TIMESTAMP NOT NULL,
        PRIMARY KEY (app_id, onesignal_id)
    );
    CREATE TABLE export_tag_caps (
        cohort       VARCHAR NOT NULL,
        distinct_id  VARCHAR NOT NULL,
        onesignal_id VARCHAR NOT NULL,
        id_type      VARCHAR NOT NULL,
        tag_limit    INTEGER NOT NULL,      -- the cap it was refused under
        other_tags   INTEGER NOT NULL,      -- the other tags the toolkit knew it to carry then
        checked_at   TIMESTAMP NOT NULL,
        PRIMARY KEY (cohort, distinct_id)
    );
    ALTER TABLE export_runs ADD COLUMN tag_cap BIGINT;
    """,
    # 8: the fingerprint of each cohort's snapshot (toolkit/snapshots.py), so that planning an unchanged
    # cohort compares two numbers instead of every member. Forgotten by every write to export_members,
    # in its transaction; kept again when a run ends. A store without one diffs once, then keeps it.
    """
    CREATE TABLE export_snapshots (
        cohort       VARCHAR PRIMARY KEY,
        members      BIGINT NOT NULL,      -- rows of export_members
        fingerprint  HUGEINT NOT NULL,     -- the sum of hash(distinct_id, onesignal_id, id_type) over them
        absent_since TIMESTAMP             -- the oldest absent row's checked_at (NULL: none absent)
    );
    """,
    # 9: each event's dedup key (`event`, `distinct_id`, `time`, `$insert_id`) as one 64-bit number, so a
    # load finds the earlier copies of its keys by scanning one number column, not four of text
    # (toolkit/loading/events.py: DEDUP_KEY; MD5, so the numbers never change with DuckDB's version).
    f"""
    ALTER TABLE event_rows ADD COLUMN dedup_key UBIGINT;
    UPDATE event_rows SET dedup_key = {md5_key("concat_ws(chr(0), event, distinct_id, epoch_us(time), insert_id)")}
    WHERE insert_id IS NOT NULL AND rejected IS NULL;
    """,
    # 10: event properties that cohorts filter on, kept typed beside the JSON (toolkit/event_columns.py):
    # the registry of (property, event) pairs, and the event views passing every column of event_rows
    # through (with `*`, bound at each query), so the typed columns event_columns adds reach the compiler.
    """
    CREATE TABLE event_columns (
        property     VARCHAR NOT NULL,      -- the event property's name (a top-level JSON key)
        event        VARCHAR NOT NULL,      -- rows of this event hold it in the columns
        id           INTEGER NOT NULL,      -- event_rows columns ep<id>_type, _text, _number, _list
        PRIMARY KEY (property, event)
    );
    CREATE OR REPLACE VIEW events AS
        SELECT * EXCLUDE (rejected, link_source, link_target, dedup_key)
        FROM event_rows
        WHERE file_id <= (SELECT coalesce(max(file_id), 0) FROM loads);
    CREATE OR REPLACE VIEW resolved_events AS
        SELECT e.event, coalesce(m.canonical_id, e.distinct_id) AS distinct_id,
               e.distinct_id AS sent_distinct_id, e.time, e.insert_id, e.properties,
               e.* EXCLUDE (event, distinct_id, time, insert_id, properties, device_id, user_id, file_id)
        FROM events e LEFT JOIN identity_map m ON m.distinct_id = e.distinct_id;
    """,
    # 11: alerts for unattended syncs (toolkit/alerts/). Where alerts go, once per store (the webhook URL
    # and the SMTP password are secrets: they live in a 0600 file, never here); one row per incident, a
    # (cohort, kind) condition from its opening to its resolution; and each message's delivery per channel.
    """
    CREATE TABLE alert_settings (
        id              INTEGER PRIMARY KEY,   -- always 1
        webhook_host    VARCHAR,               -- scheme://host of the webhook, shown; NULL: no webhook
        smtp_host       VARCHAR,               -- NULL: no email
        smtp_port       INTEGER,
        smtp_user       VARCHAR,
        starttls        BOOLEAN NOT NULL,
        mail_from       VARCHAR,
        mail_to         VARCHAR[],
        timeout_seconds DOUBLE NOT NULL,       -- per attempt, per channel
        shrink_share    DOUBLE NOT NULL,       -- a drop of members or exportable users above this alerts
        updated_at      TIMESTAMP NOT NULL
    );
    CREATE SEQUENCE incident_ids START 1;
    CREATE TABLE alert_incidents (
        incident_id  INTEGER PRIMARY KEY,
        cohort       VARCHAR NOT NULL,
        kind         VARCHAR NOT NULL,         -- failed | partial | paused | guard | tag_cap | stale | shrinking
        cause        VARCHAR NOT NULL,
        advice       VARCHAR NOT NULL,
        run_id       INTEGER,                  -- the run that showed it (stale: none)
        opened_at    TIMESTAMP NOT NULL,
        resolved_at  TIMESTAMP,
        resolution   VARCHAR
    );
    CREATE TABLE alert_deliveries (
        incident_id  INTEGER NOT NULL,
        message      VARCHAR NOT NULL,         -- opened | resolved
        channel      VARCHAR NOT NULL,         -- webhook | email
        attempted_at TIMESTAMP NOT NULL,
        ok           BOOLEAN NOT NULL,
        error        VARCHAR
    );
    """,
    # 12: sync states and what each run did to each member (toolkit/export/states.py, fates.py). A dynamic
    # sync OneSignal refused (400/401/403/404 on a whole request) is paused on its row until a person
    # resumes it. Each result keeps its id type, so the snapshot a run started from can be replayed from
    # the results (a run's no-ops are never written); older rows get it from the snapshot where it knows.
    """
    ALTER TABLE exports ADD COLUMN paused_at TIMESTAMP;
    ALTER TABLE exports ADD COLUMN paused_reason VARCHAR;
    ALTER TABLE export_results ADD COLUMN id_type VARCHAR;
    UPDATE export_results r SET id_type = m.id_type FROM export_runs x, export_members m
    WHERE x.run_id = r.run_id AND m.cohort = x.cohort AND m.distinct_id = r.distinct_id
      AND m.onesignal_id = r.onesignal_id;
    """,
    # 13: a cohort evaluated on another engine (Spark or DuckDB over a lake: toolkit/lake/home.py) comes
    # home: its members and their matchability, as the last evaluation of that cohort there.
    """
    CREATE TABLE lake_evaluations (
        cohort           VARCHAR PRIMARY KEY,
        version          INTEGER,
        as_of            TIMESTAMP NOT NULL,
        engine           VARCHAR NOT NULL,      -- duckdb | spark
        lake             VARCHAR NOT NULL,      -- the lake folder
        user_id_property VARCHAR NOT NULL,
        id_type          VARCHAR NOT NULL,
        members          BIGINT NOT NULL,
        evaluated_at     TIMESTAMP NOT NULL
    );
    CREATE TABLE lake_members (
        cohort       VARCHAR NOT NULL,
        distinct_id  VARCHAR NOT NULL,
        onesignal_id VARCHAR,
        id_type      VARCHAR,
        exportable   BOOLEAN NOT NULL,
        reason       VARCHAR,
        detail       VARCHAR
    );
    """,
    # 14: each identity link's ids as 64-bit numbers (MD5, as dedup_key), so that finding the links a
    # delta reaches scans two number columns instead of two of text (toolkit/loading/derived.py, _reach);
    # a link inserted without them is numbered by the next resolution that reads them.
    f"""
    ALTER TABLE identity_links ADD COLUMN source_key UBIGINT;
    ALTER TABLE identity_links ADD COLUMN target_key UBIGINT;
    UPDATE identity_links SET source_key = {md5_key("source")}, target_key = {md5_key("target")};
    """,
    # 15: a dynamic sync the removal guard stopped stays stopped until a person confirms the removals (a
    # forced run) or resumes it (toolkit/export/states.py); later cycles record a short run, no member rows.
    """
    ALTER TABLE exports ADD COLUMN guard_stopped_at TIMESTAMP;
    ALTER TABLE exports ADD COLUMN guard_stopped_run BIGINT;
    """,
    # 16: each `toolkit reconcile`: the drift it found by kind (counts) and its repair run, if any
    # (toolkit/reconcile.py), so that `toolkit runs` and the export panel show each sync's last one.
    """
    CREATE TABLE reconciliations (
        cohort         VARCHAR NOT NULL,
        checked_at     TIMESTAMP NOT NULL,
        snapshot       BIGINT NOT NULL,      -- members recorded as tagged
        in_sync        BIGINT NOT NULL,
        tagged_outside BIGINT NOT NULL,
        lost_tag       BIGINT NOT NULL,
        deleted        BIGINT NOT NULL,
        views          BIGINT NOT NULL,
        repair_run_id  BIGINT,               -- the repair's export run (--repair), else NULL
        repair_status  VARCHAR
    );
    """,
    # 17: profiles without a primary key, as identity_map since 5: ids are unique by construction (a load
    # deletes then inserts, one row per id: toolkit/loading/profiles.py) and nothing looks one id up. Its
    # index cost every profile load at 1M profiles: 1,944 updates deleted and inserted in 140-200 ms of
    # CPU instead of 50-70, and the checkpoint wrote the index again (30-40 ms instead of 15-20).
    """
    CREATE TABLE profiles_unkeyed AS SELECT * FROM profiles;
    DROP TABLE profiles;
    ALTER TABLE profiles_unkeyed RENAME TO profiles;
    ALTER TABLE profiles ALTER COLUMN distinct_id SET NOT NULL;
    ALTER TABLE profiles ALTER COLUMN properties SET NOT NULL;
    ALTER TABLE profiles ALTER COLUMN updated_at SET NOT NULL;
    ALTER TABLE profiles ALTER COLUMN file_id SET NOT NULL;
    ALTER TABLE profiles ALTER COLUMN line SET NOT NULL;
    """,
    # 18: the last sync cycle's pass kept (toolkit/kept_pass.py): its members' cohort masks, what it was
    # (the query's digest at its now), and the users each load since may have changed (a load writes
    # them only while a pass is kept: toolkit/loading/derived.py), so the next cycle evaluates only those
    # and the users whose events crossed a window's edge.
    """
    CREATE SEQUENCE member_change_ids START 1;
    CREATE TABLE member_changes (
        seq         BIGINT NOT NULL,       -- one per load step (file), member_change_ids
        distinct_id VARCHAR                -- an id as sent or canonical; NULL: every user
    );
    CREATE TABLE kept_pass (
        distinct_id VARCHAR NOT NULL,      -- canonical, a member of at least one of the pass's cohorts
        k0 UBIGINT, k1 UBIGINT, k2 UBIGINT, k3 UBIGINT   -- the masks (cohort_batch.MASK_BITS each)
    );
    CREATE TABLE kept_pass_state (
        digest      VARCHAR NOT NULL,      -- of the pass's query (text and values) at its now
        now         TIMESTAMP NOT NULL,
        seq         BIGINT NOT NULL,       -- the member changes it includes
        masks       INTEGER NOT NULL       -- mask columns in use
    );
    """,
    # 19: a snapshot in step: the moment (and user-id property, id type) as of which the snapshot holds
    # exactly the members wanted (a run that applied its whole plan), so the next cycle, brought up from a
    # pass kept at that moment, diffs only the users changed since (toolkit/export/cycle_plans.py).
    # Written by `snapshots.keep` and `snapshots.in_step`; any write of the snapshot drops the row.
    """
    ALTER TABLE export_snapshots ADD COLUMN in_step_with VARCHAR;
    """,
    # 20: the kept pass's users classified (toolkit/kept_pass.py, `classified`): matching.COLUMNS and the
    # masks, as of the moment, user-id property and id type of `kept_matched_state.mark` (a step mark), so
    # the next cycle classifies only the users it evaluates again.
    """
    CREATE TABLE kept_matched (
        distinct_id VARCHAR NOT NULL, onesignal_id VARCHAR, id_type VARCHAR, exportable BOOLEAN, reason VARCHAR,
        detail VARCHAR,
        k0 UBIGINT, k1 UBIGINT, k2 UBIGINT, k3 UBIGINT
    );
    CREATE TABLE kept_matched_state (mark VARCHAR NOT NULL);
    """,
    # 21: the id columns a load looks a few ids up in kept uncompressed (identity_map's two, profiles'
    # distinct_id and onesignal_user_id, the facts' distinct_id and v). DuckDB's default for text,
    # DICT_FSST, decodes a whole segment's dictionary to read any row of it, and the ids a delta touches
    # lie in every segment: a 10k-event delta into 10M events / 1M profiles spent 59-86 ms on each of
    # five such lookups, 27-54 ms uncompressed (toolkit/loading/derived.py). The tables are copied with
    # their rows; the facts' generation mark is not carried, so the next load computes every profile's
    # facts again (as after migration 6) and previews compute them until then.
    """
    CREATE TABLE identity_map_21 (
        distinct_id  VARCHAR USING COMPRESSION uncompressed,
        canonical_id VARCHAR NOT NULL USING COMPRESSION uncompressed
    );
    INSERT INTO identity_map_21 SELECT distinct_id, canonical_id FROM identity_map;
    DROP TABLE identity_map;
    ALTER TABLE identity_map_21 RENAME TO identity_map;
    CREATE TABLE profiles_21 (
        distinct_id            VARCHAR NOT NULL USING COMPRESSION uncompressed,
        properties             JSON NOT NULL,
        updated_at             TIMESTAMP NOT NULL,
        file_id                INTEGER NOT NULL,
        line                   BIGINT NOT NULL,
        onesignal_user_id_type VARCHAR,
        onesignal_user_id      VARCHAR USING COMPRESSION uncompressed,
        empty                  BOOLEAN
    );
    INSERT INTO profiles_21 SELECT distinct_id, properties, updated_at, file_id, line, onesignal_user_id_type,
                                   onesignal_user_id, empty FROM profiles;
    DROP TABLE profiles;
    ALTER TABLE profiles_21 RENAME TO profiles;
    CREATE TABLE user_id_facts_21 (
        distinct_id VARCHAR USING COMPRESSION uncompressed, updated_at TIMESTAMP, empty BOOLEAN, jt VARCHAR,
        v VARCHAR USING COMPRESSION uncompressed, problem VARCHAR, is_uuid BOOLEAN, claimants BIGINT,
        names VARCHAR[], winner VARCHAR
    );
    INSERT INTO user_id_facts_21 SELECT distinct_id, updated_at, empty, jt, v, problem, is_uuid, claimants, names,
                                        winner FROM user_id_facts;
    DROP TABLE user_id_facts;
    ALTER TABLE user_id_facts_21 RENAME TO user_id_facts;
    """,
    # 22: each published events file's first and last event time. Copies of an event share its time, so
    # a new file's dedup reads only the files whose times overlap its own (toolkit/loading/events.py).
    """
    CREATE TABLE event_file_times (
        file_id INTEGER NOT NULL, first_time TIMESTAMP NOT NULL, last_time TIMESTAMP NOT NULL
    );
    INSERT INTO event_file_times
    SELECT file_id, min(time), max(time) FROM event_rows
    WHERE file_id <= (SELECT coalesce(max(file_id), 0) FROM loads) AND time IS NOT NULL
    GROUP BY file_id;
    """,
]


def profile_facts(properties: str) -> str:
    """Select items for the profile columns derived from a JSON ``properties`` expression (migration 5),
    for every statement that writes profiles. Only a tiny document can be empty, so only those are parsed."""
    value = f"({properties}) -> '{json_pointer(USER_ID_PROPERTY)}'"
    return (f"json_type({value}) AS onesignal_user_id_type, json_extract_string({value}, '$') AS onesignal_user_id, "
            f"CASE WHEN strlen(({properties})::VARCHAR) < 16 THEN len(json_keys({properties})) = 0 "
            "ELSE false END AS empty")


SCHEMA_VERSION = len(MIGRATIONS)


def default_path() -> str:
    return os.environ.get("TOOLKIT_DB") or DEFAULT_DB


class Store:
    """An open store. ``con`` is the DuckDB connection; use ``transaction()`` for atomic writes.

    ``wait``: seconds to wait while another process holds the file (default $TOOLKIT_STORE_WAIT, else
    60); ``on_wait`` is told once per holder that we are waiting (default: a line on stderr)."""

    def __init__(self, path: str | os.PathLike | None = None, *, read_only: bool = False,
                 memory_limit: str | None = None, wait: float | None = None,
                 on_wait: Callable[[str], None] | None = None):
        self.path = str(path) if path is not None else default_path()
        self.read_only = read_only
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.memory_limit = memory_limit
        config = {"memory_limit": memory_limit} if memory_limit else {}
        wait = wait_seconds() if wait is None else wait
        if read_only and self.path != ":memory:" and not Path(self.path).exists():
            # A reader of a store not made yet: make it (empty, current schema) rather than fail.
            Store(self.path, memory_limit=memory_limit, wait=wait, on_wait=on_wait).close()
        self.con = self._open(config, wait, on_wait)
        if read_only and self._opened_at < SCHEMA_VERSION:
            # An older store: upgrade it in a short write, then read as asked.
            self.con.close()
            Store(self.path, memory_limit=memory_limit, wait=wait, on_wait=on_wait).close()
            self.con = self._open(config, wait, on_wait)

    def _open(self, config: dict, wait: float, on_wait) -> duckdb.DuckDBPyConnection:
        con = _connect(self.path, self.read_only, config, wait, on_wait)
        self.con = con
        try:
            # ours (tqdm) shows progress, DuckDB's would interleave
            con.execute("SET TimeZone = 'UTC'; SET enable_progress_bar = false")
            self._opened_at = self._check_version()     # the version found on opening (before migrating)
            if not self.read_only:
                self._migrate(self._opened_at)
        except BaseException:
            con.close()     # a half-opened store must not keep the file from others
            raise
        return con

    # -- schema -----------------------------------------------------------------------------
    def version(self) -> int:
        # One query, on every open: reading the table and taking its absence for a new store costs a
        # third of asking information_schema first (~0.5 ms against ~1.5 ms; a store opens ~1,000 times in
        # the tests). A new store has no transaction open, so the refused query aborts none.
        try:
            return self.con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
        except duckdb.CatalogException:
            return 0

    def _check_version(self) -> int:
        current = self.version()
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} has schema version {current}, newer than this toolkit "
                f"understands ({SCHEMA_VERSION}); upgrade the toolkit"
            )
        return current

    def _migrate(self, current: int) -> None:
        if current == 0:   # a new store: every migration in one transaction (their tables are empty)
            with self.transaction():
                self.con.execute("CREATE TABLE IF NOT EXISTS schema_version "
                                 "(version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL)")
                for version in range(1, SCHEMA_VERSION + 1):
                    self._apply(version)
            return
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                self._apply(version)

    def _apply(self, version: int) -> None:
        self.con.execute(MIGRATIONS[version - 1])
        self.con.execute("INSERT INTO schema_version VALUES (?, now()::TIMESTAMP)", [version])

    # -- transactions -------------------------------------------------------------------------
    def transaction(self, con: duckdb.DuckDBPyConnection | None = None):
        """All or nothing on ``con`` (default: the store's connection): commit on success, roll back on
        any exception (Ctrl-C included)."""
        return transaction(con or self.con)

    def restore_memory_limit(self) -> None:
        """Back to the limit the store was opened with (DuckDB's default if none)."""
        if self.memory_limit:
            self.con.execute("SET memory_limit = ?", [self.memory_limit])
        else:
            self.con.execute("RESET memory_limit")

    def reader(self) -> duckdb.DuckDBPyConnection:
        """A second connection to the same database (its own snapshot), for concurrent reads."""
        return self.con.cursor()

    # -- lifecycle ----------------------------------------------------------------------------
    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.path!r}, schema v{self.version()})"


def connection(store: Store) -> duckdb.DuckDBPyConnection:
    """The connection of ``store``, which must be a Store: public functions take one, never a bare
    DuckDB connection (with one, a save that should be all or nothing could not open the Store's
    transaction)."""
    if not isinstance(store, Store):
        raise TypeError(f"expected a toolkit Store, got {type(store).__name__}: pass the Store itself "
                        "(e.g. the one `toolkit.open_store(path)` or `store.using(path)` gives), not its connection")
    return store.con


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def open_store(path: str | os.PathLike | None = None, **kwargs) -> Store:
    """The store at ``path`` (None: $TOOLKIT_DB, else the default file), opened: ``Store(path, **kwargs)``."""
    return Store(path, **kwargs)


@contextmanager
def using(store: Store | str | os.PathLike | None, *, read_only: bool = False, **kwargs) -> Iterator[Store]:
    """The store for one action: an open ``Store`` as it is (its owner closes it), else the path (None:
    the default) opened for this block and closed after it, so other processes get their turn."""
    if isinstance(store, Store):
        yield store
        return
    with Store(store, read_only=read_only, **kwargs) as opened:
        yield opened


def wait_seconds() -> float:
    """How long to wait for a busy store: $TOOLKIT_STORE_WAIT seconds, else 60."""
    text = os.environ.get(ENV_WAIT, "").strip()
    if not text:
        return DEFAULT_WAIT
    try:
        seconds = float(text)
        if seconds < 0:
            raise ValueError
    except ValueError:
        raise StoreError(f"${ENV_WAIT} must be a number of seconds (0 or more), not {text!r}") from None
    return seconds


# -- waiting for a store another process holds ------------------------------------------------------

@dataclass(frozen=True)
class Holder:
    """The process DuckDB says holds the file's lock."""
    pid: int | None
    command: str

    @property
    def is_kernel(self) -> bool:
        return "ipykernel" in self.command

    def __str__(self) -> str:
        if self.pid is None:
            return "another process"
        kind = "a Jupyter notebook kernel, " if self.is_kernel else ""
        return f"process {self.pid} ({kind}{self.command})"


_LOCK = re.compile(r"Could not set lock on file")
_HELD_BY = re.compile(r"held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")


def lock_holder(message: str) -> Holder | None:
    """The holder named in DuckDB's lock error (None: not a lock error); its command line from /proc."""
    if not _LOCK.search(message):
        return None
    found = _HELD_BY.search(message)
    if not found:
        return Holder(None, "")
    pid = int(found["pid"])
    return Holder(pid, _command_line(pid) or found["exe"])


def _command_line(pid: int, width: int = 160) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    text = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    return text if len(text) <= width else text[: width - 1] + "…"


def _say_waiting(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _connect(path: str, read_only: bool, config: dict, wait: float,
             on_wait: Callable[[str], None] | None) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, waiting while another process holds the file; never DuckDB's text on a busy store."""
    on_wait = on_wait or _say_waiting
    deadline = time.monotonic() + wait
    told: Holder | None = None
    pause = 0.05
    while True:
        try:
            return duckdb.connect(path, read_only=read_only, config=config)
        except duckdb.ConnectionException as exc:
            if "different configuration" in str(exc):
                # This process has the file open already, the other way (read-only vs read-write).
                if read_only:       # reading through the write connection it holds takes nobody's turn
                    return duckdb.connect(path, config=config)
                raise StoreError(f"store {path} is already open in this process with other settings (read-only, "
                                 "or another memory limit); close that Store first") from None
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        except duckdb.Error as exc:
            holder = lock_holder(str(exc))
            if holder is None:
                raise StoreError(f"cannot open store {path}: {exc}") from exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StoreError(_busy_text(path, holder, wait)) from None
        if holder != told:
            told = holder
            on_wait(f"store {path} is in use by {holder}; waiting up to {wait:g}s for it to let go "
                    f"(${ENV_WAIT} sets how long)")
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, 0.5)


def _busy_text(path: str, holder: Holder, wait: float) -> str:
    if holder.is_kernel:
        what = "finish what that notebook is doing, or shut its kernel down (Kernel > Shut Down Kernel)"
    else:
        what = "wait for it to finish (or stop it)"
    return (f"store {path} is in use by {holder}" + (f" and stayed busy for {wait:g}s" if wait else "")
            + f": {what}, then try again. ${ENV_WAIT} sets how many seconds to wait (now {wait:g}). "
            "Only one process at a time can write a store.")
