-- pg_lakesync 0.4.0 -> 0.5.0: cron schedules; lakesync.status shows the latest Delta version,
-- versions behind, lag and a running sync's progress (from the worker's board in shared
-- memory) and the triggered states; the background worker's runs are 'running' in
-- lakesync.sync_runs while they run, and marked failed when their worker died.
\echo Use "ALTER EXTENSION pg_lakesync UPDATE TO '0.5.0'" to load this file. \quit

ALTER TABLE lakesync.sync_runs DROP CONSTRAINT sync_runs_status_check;
ALTER TABLE lakesync.sync_runs ADD CONSTRAINT sync_runs_status_check
    CHECK (status IN ('succeeded', 'failed', 'running'));
ALTER TABLE lakesync.sync_runs ADD COLUMN pid integer;
ALTER TABLE lakesync.sync_runs ALTER COLUMN finished_at DROP NOT NULL;
-- The background worker's runs in flight, which it marks failed when their worker is gone.
CREATE INDEX sync_runs_running_idx ON lakesync.sync_runs (run_id) WHERE status = 'running';

DROP VIEW lakesync.status;
DROP FUNCTION lakesync.next_sync(lakesync.synced_tables, interval);

-- The C functions behind them (declared here, in the catalog's schema, rather than by pgrx).
CREATE FUNCTION lakesync.cron_next(schedule text, after timestamptz) RETURNS timestamptz
    IMMUTABLE STRICT PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'lakesync_cron_next_wrapper';
COMMENT ON FUNCTION lakesync.cron_next(text, timestamptz) IS
    'The first time after `after` that a 5-field cron schedule fires, in UTC; NULL when it is not cron';
CREATE FUNCTION lakesync.board() RETURNS TABLE (relid oid, latest_version bigint,
        pending_version bigint, pending_since timestamptz, sync_pid integer, rows_done bigint,
        rows_expected bigint)
    STABLE PARALLEL SAFE LANGUAGE c AS 'MODULE_PATHNAME', 'lakesync_board_wrapper';
COMMENT ON FUNCTION lakesync.board() IS
    'The background worker''s live board: latest Delta versions seen and running syncs'' progress';

-- When a schedule next fires after `after`: a cron expression's next time (in UTC), or `after`
-- plus the interval.
CREATE FUNCTION lakesync.schedule_after(schedule text, after timestamptz)
RETURNS timestamptz LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT COALESCE(lakesync.cron_next(schedule, after), after + schedule::interval)
$$;

-- The background worker's view of a spec: when it syncs the table next by itself — when its
-- schedule next fires after the last sync's start; a failed table with a schedule or in
-- continuous mode after a backoff (1 s, doubling with each consecutive failure, at most
-- max_retry, and never later than its schedule would). NULL when it never does by itself:
-- paused, needing a full refresh, on demand only, or a healthy continuous table (synced as
-- each new Delta version appears).
CREATE FUNCTION lakesync.next_sync(s lakesync.synced_tables, max_retry interval)
RETURNS timestamptz LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN s.paused OR s.state = 'needs_full_refresh' THEN NULL
        WHEN s.mode <> 'continuous' AND NOT s.options ? 'schedule' THEN NULL
        WHEN s.state = 'failed' THEN LEAST(
            s.last_sync_finished + LEAST(max_retry, make_interval(secs => power(2,
                LEAST(GREATEST(s.consecutive_failures, 1) - 1, 30)))),
            lakesync.schedule_after(s.options ->> 'schedule', s.last_sync_finished))
        WHEN s.mode = 'continuous' THEN NULL
        ELSE lakesync.schedule_after(s.options ->> 'schedule',
                                     COALESCE(s.last_sync_started, s.created_at))
    END
$$;

-- One row per synced table, as an operator or an application wants to see it. Row security
-- of lakesync.synced_tables applies to whoever reads it (security_invoker). The latest version,
-- the lag and a running sync's progress come from the worker's board (shared memory, keyed
-- by the table's OID; NULL without the preload, and for a table the worker does not watch: a
-- paused one).
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
           WHEN b.sync_pid IS NOT NULL THEN 'online_triggered_update'
           WHEN b.latest_version <= s.synced_version THEN 'online_no_pending_update'
           ELSE 'online'
       END AS state,
       s.synced_version,
       b.latest_version,
       CASE WHEN b.latest_version IS NOT NULL
            THEN GREATEST(b.latest_version - COALESCE(s.synced_version, -1), 0)
       END AS versions_behind,
       CASE
           WHEN b.latest_version IS NULL THEN NULL
           WHEN b.latest_version <= COALESCE(s.synced_version, -1) THEN 0
           WHEN b.pending_version = COALESCE(s.synced_version, -1) + 1
                AND b.pending_since IS NOT NULL
           THEN GREATEST(pg_catalog.date_part('epoch', pg_catalog.now() - b.pending_since), 0)
       END AS lag_seconds,
       s.last_sync_finished AS last_sync,
       lakesync.next_sync(s, COALESCE(pg_catalog.current_setting('lakesync.max_retry_interval', true),
                                      '5min')::interval)
           AS next_sync,
       b.rows_done AS sync_rows_done,
       b.rows_expected AS sync_rows_expected,
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
  FROM lakesync.synced_tables s
  -- The target's OID by name, without to_regclass's permission checks (it raises for a
  -- schema the reader may not use, which would fail the whole view).
  LEFT JOIN lakesync.board() b ON NOT s.paused AND b.relid = (
      SELECT c.oid FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
       WHERE n.nspname = (pg_catalog.parse_ident(s.target))[1]
         AND c.relname = (pg_catalog.parse_ident(s.target))[2]);
COMMENT ON VIEW lakesync.status IS 'Each synced table''s state, as the background worker sees it';
GRANT SELECT ON lakesync.status TO PUBLIC;
-- Everyone may call them (the view needs them; the board shows each role its own tables).
GRANT EXECUTE ON FUNCTION lakesync.cron_next(text, timestamptz), lakesync.board(),
    lakesync.schedule_after(text, timestamptz),
    lakesync.next_sync(lakesync.synced_tables, interval) TO PUBLIC;
