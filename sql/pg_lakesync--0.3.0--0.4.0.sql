-- pg_lakesync 0.3.0 -> 0.4.0: the background worker (schedules, continuous mode, pause/resume,
-- alter_synced_table, lakesync.status); the rename trigger never moves a spec onto another
-- spec's name or onto a table its owner cannot write, and a dropped target's OID is forgotten.
\echo Use "ALTER EXTENSION pg_lakesync UPDATE TO '0.4.0'" to load this file. \quit

-- A synced table's spec follows its table: ALTER TABLE … RENAME / SET SCHEMA and ALTER SCHEMA …
-- RENAME rename the spec too. The spec is keyed by name (OIDs change in a dump and restore);
-- target_relid, refreshed by every sync and cleared when its table is dropped, says which table
-- a rename moved. Only a spec whose old name no longer resolves is renamed, never onto a name
-- another spec holds (the ALTER goes on; that spec keeps its name), and only onto a table its
-- owner may write.
CREATE OR REPLACE FUNCTION lakesync.follow_renamed_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE lakesync.synced_tables s
       SET target = pg_catalog.format('%I.%I', n.nspname, c.relname)
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
     WHERE c.oid OPERATOR(pg_catalog.=) s.target_relid
       AND pg_catalog.to_regclass(s.target) IS NULL
       AND EXISTS (SELECT FROM pg_catalog.pg_event_trigger_ddl_commands() d
                    WHERE (d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
                           AND d.objid OPERATOR(pg_catalog.=) c.oid)
                       OR (d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_namespace'::pg_catalog.regclass
                           AND d.objid OPERATOR(pg_catalog.=) c.relnamespace))
       AND NOT EXISTS (SELECT FROM lakesync.synced_tables o
                        WHERE o.target OPERATOR(pg_catalog.=)
                              pg_catalog.format('%I.%I', n.nspname, c.relname))
       AND EXISTS (SELECT FROM pg_catalog.pg_roles r
                    WHERE r.rolname OPERATOR(pg_catalog.=) s.owner
                      AND pg_catalog.has_table_privilege(r.oid, c.oid, 'INSERT'));
END
$$;
-- A dropped target's OID is forgotten, so that a table that later gets the same OID is never
-- taken for it.
CREATE FUNCTION lakesync.forget_dropped_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_catalog.to_regclass('lakesync.synced_tables') IS NULL THEN
        RETURN;  -- the extension itself is being dropped
    END IF;
    UPDATE lakesync.synced_tables s SET target_relid = NULL
      FROM pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
       AND d.objsubid OPERATOR(pg_catalog.=) 0
       AND s.target_relid OPERATOR(pg_catalog.=) d.objid;
END
$$;
CREATE EVENT TRIGGER lakesync_forget_dropped_tables ON sql_drop
    EXECUTE FUNCTION lakesync.forget_dropped_tables();


-- The background worker.
ALTER TABLE lakesync.synced_tables ADD COLUMN paused boolean NOT NULL DEFAULT false;
ALTER TABLE lakesync.synced_tables ADD COLUMN consecutive_failures integer NOT NULL DEFAULT 0;

-- The background worker's view of a spec: when it syncs the table next by itself — after the
-- schedule's interval from the last sync's start; a failed table with a schedule or in
-- continuous mode after a backoff (1 s, doubling with each consecutive failure, at most
-- max_retry, and never later than its schedule would). NULL when it never does by itself: paused, needing a full refresh, on demand only,
-- or a healthy continuous table (synced as each new Delta version appears).
CREATE FUNCTION lakesync.next_sync(s lakesync.synced_tables, max_retry interval)
RETURNS timestamptz LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN s.paused OR s.state = 'needs_full_refresh' THEN NULL
        WHEN s.mode <> 'continuous' AND NOT s.options ? 'schedule' THEN NULL
        WHEN s.state = 'failed' THEN s.last_sync_finished + LEAST(max_retry,
            (s.options ->> 'schedule')::interval,
            make_interval(secs => power(2, LEAST(GREATEST(s.consecutive_failures, 1) - 1, 30))))
        WHEN s.mode = 'continuous' THEN NULL
        ELSE COALESCE(s.last_sync_started, s.created_at) + (s.options ->> 'schedule')::interval
    END
$$;

-- One row per synced table, as an operator or an application wants to see it. Row security
-- of lakesync.synced_tables applies to whoever reads it (security_invoker).
CREATE VIEW lakesync.status WITH (security_invoker = true) AS
SELECT s.target,
       s.mode,
       CASE
           WHEN s.paused THEN 'paused'
           WHEN s.state = 'needs_full_refresh' THEN 'needs_full_refresh'
           WHEN s.state = 'new' THEN 'provisioning_initial_snapshot'
           WHEN s.state = 'failed' AND s.synced_version IS NULL THEN 'offline_failed'
           WHEN s.state = 'failed' THEN 'online_pipeline_failed'
           WHEN s.mode = 'continuous' THEN 'online_continuous_update'
           ELSE 'online'
       END AS state,
       s.synced_version,
       s.last_sync_finished AS last_sync,
       lakesync.next_sync(s, COALESCE(pg_catalog.current_setting('lakesync.max_retry_interval', true),
                                      '5min')::interval)
           AS next_sync,
       s.consecutive_failures,
       s.last_error,
       CASE WHEN EXISTS (SELECT FROM pg_catalog.pg_stat_activity a
                          WHERE a.backend_type = 'pg_lakesync scheduler'
                            AND a.datname = pg_catalog.current_database())
            THEN 'running'
            WHEN pg_catalog.pg_is_in_recovery()
            THEN 'not running: a hot standby (its synced tables arrive by replication)'
            ELSE 'not running: add pg_lakesync to shared_preload_libraries and restart the server'
       END AS worker
  FROM lakesync.synced_tables s;
COMMENT ON VIEW lakesync.status IS 'Each synced table''s state, as the background worker sees it';
GRANT SELECT ON lakesync.status TO PUBLIC;

CREATE FUNCTION "alter_synced_table"(
	"target" TEXT, /* & str */
	"mode" TEXT DEFAULT NULL, /* Option < & str > */
	"options" jsonb DEFAULT NULL /* Option < JsonB > */
) RETURNS bool /* bool */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'alter_synced_table_wrapper';

CREATE FUNCTION "pause_sync"(
	"target" TEXT /* & str */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pause_sync_wrapper';

CREATE FUNCTION "resume_sync"(
	"target" TEXT /* & str */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'resume_sync_wrapper';
