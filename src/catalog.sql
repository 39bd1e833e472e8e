-- The extension-owned catalog: one row per synced table, one row per sync run.
CREATE SCHEMA lakesync;
COMMENT ON SCHEMA lakesync IS 'pg_lakesync catalog: synced table specs and sync history';

CREATE TABLE lakesync.synced_tables (
    target             text PRIMARY KEY,
    source             text NOT NULL,
    mode               text NOT NULL CHECK (mode IN ('snapshot', 'triggered', 'continuous')),
    primary_key        text[],
    options            jsonb NOT NULL DEFAULT '{}',
    owner              name NOT NULL DEFAULT current_user,
    state              text NOT NULL DEFAULT 'new'
                       CHECK (state IN ('new', 'synced', 'failed', 'needs_full_refresh')),
    synced_version     bigint,
    last_sync_started  timestamptz,
    last_sync_finished timestamptz,
    rows               bigint,
    last_error         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    delta_table_id     text,
    synced_columns     text[],
    target_relid       oid,
    paused             boolean NOT NULL DEFAULT false,
    consecutive_failures integer NOT NULL DEFAULT 0
);
COMMENT ON TABLE lakesync.synced_tables IS 'One row per synced table: its spec and its sync state';
COMMENT ON COLUMN lakesync.synced_tables.synced_columns IS
    'The target columns the syncs write; any other column belongs to the user and is left alone';

CREATE TABLE lakesync.sync_runs (
    run_id        bigserial PRIMARY KEY,
    target        text NOT NULL,
    owner         name NOT NULL DEFAULT current_user,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz DEFAULT clock_timestamp(),  -- NULL while 'running'
    from_version  bigint,
    to_version    bigint,
    rows_inserted bigint NOT NULL DEFAULT 0,
    rows_updated  bigint NOT NULL DEFAULT 0,
    rows_deleted  bigint NOT NULL DEFAULT 0,
    rows_skipped  bigint NOT NULL DEFAULT 0,
    change_source text,
    status        text NOT NULL CHECK (status IN ('succeeded', 'failed', 'running')),
    message       text,
    pid           integer,
    credential    text                                     -- the credential the run read with
);
CREATE INDEX sync_runs_target_idx ON lakesync.sync_runs (target, run_id);
-- The background worker's runs in flight, which it marks failed when their worker is gone.
CREATE INDEX sync_runs_running_idx ON lakesync.sync_runs (run_id) WHERE status = 'running';
COMMENT ON TABLE lakesync.sync_runs IS 'History of every sync run, successful or failed';

-- Owner-based row security, as pg_cron does: every role sees only its own specs and runs;
-- superusers see all.
ALTER TABLE lakesync.synced_tables ENABLE ROW LEVEL SECURITY;
ALTER TABLE lakesync.sync_runs ENABLE ROW LEVEL SECURITY;
CREATE POLICY synced_tables_owner ON lakesync.synced_tables
    USING (owner = current_user) WITH CHECK (owner = current_user);
CREATE POLICY sync_runs_owner ON lakesync.sync_runs
    USING (owner = current_user) WITH CHECK (owner = current_user);
-- PUBLIC reads (its own rows); only the extension's functions write, as the catalog's owner,
-- after checking that the caller owns the spec (src/catalog.rs).
GRANT USAGE ON SCHEMA lakesync TO PUBLIC;
GRANT SELECT ON lakesync.synced_tables TO PUBLIC;
GRANT SELECT ON lakesync.sync_runs TO PUBLIC;

-- Credentials for object-store sources (src/credentials.rs). Nobody but the catalog's owner
-- may read this table: the functions check that a role acts on its own credentials, and
-- lakesync.credentials shows them without their secrets.
CREATE TABLE lakesync.stored_credentials (
    owner           name NOT NULL,
    name            text NOT NULL,
    provider        text NOT NULL CHECK (provider IN ('s3', 'azure', 'gcs')),
    options         jsonb NOT NULL DEFAULT '{}',   -- shown: region, endpoint, account, ...
    secrets         jsonb NOT NULL DEFAULT '{}',   -- never shown: keys, tokens
    scope           text,                          -- a URL prefix the credential covers
    use_environment boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, name)
);
REVOKE ALL ON lakesync.stored_credentials FROM PUBLIC;
COMMENT ON TABLE lakesync.stored_credentials IS
    'Object-store credentials, secrets included; read them through lakesync.credentials';
CREATE VIEW lakesync.credentials WITH (security_barrier) AS
    SELECT c.name, c.provider, c.owner, c.options, c.scope, c.use_environment,
           ARRAY(SELECT pg_catalog.jsonb_object_keys(c.secrets) ORDER BY 1) AS secrets_set,
           c.created_at, c.updated_at
      FROM lakesync.stored_credentials c
     WHERE c.owner OPERATOR(pg_catalog.=) CURRENT_USER
        OR (SELECT r.rolsuper FROM pg_catalog.pg_roles r
             WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER);
COMMENT ON VIEW lakesync.credentials IS
    'Your credentials (a superuser: all) without their secrets: secrets_set names the secret options given';
GRANT SELECT ON lakesync.credentials TO PUBLIC;

-- A synced table's spec follows its table: ALTER TABLE … RENAME / SET SCHEMA and ALTER SCHEMA …
-- RENAME rename the spec too. The spec is keyed by name (OIDs change in a dump and restore);
-- target_relid, refreshed by every sync and cleared when its table is dropped, says which table
-- a rename moved. Only a spec whose old name no longer resolves is renamed, never onto a name
-- another spec holds (the ALTER goes on; that spec keeps its name), and only onto a table its
-- owner may write.
CREATE FUNCTION lakesync.follow_renamed_tables() RETURNS event_trigger
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
CREATE EVENT TRIGGER lakesync_follow_renamed_tables ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER SCHEMA')
    EXECUTE FUNCTION lakesync.follow_renamed_tables();

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

-- pg_dump keeps the specs and history (the synced data itself is dumped as an ordinary table).
SELECT pg_catalog.pg_extension_config_dump('lakesync.synced_tables', '');
SELECT pg_catalog.pg_extension_config_dump('lakesync.sync_runs', '');
SELECT pg_catalog.pg_extension_config_dump('lakesync.sync_runs_run_id_seq', '');
-- Credentials are not dumped: a dump never holds secrets. Specs name their credentials (or
-- scopes find them); create them again after a restore.
