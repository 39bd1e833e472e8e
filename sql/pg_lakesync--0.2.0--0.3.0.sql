-- pg_lakesync 0.2.0 -> 0.3.0: the catalog is written only through the extension's functions;
-- columns a user adds to a synced table are theirs; a spec follows its table when renamed.
\echo Use "ALTER EXTENSION pg_lakesync UPDATE TO '0.3.0'" to load this file. \quit

-- PUBLIC could write specs and runs directly (point someone's table at another source, forge a
-- run); it keeps SELECT, which row security limits to its own rows.
REVOKE INSERT, UPDATE, DELETE ON lakesync.synced_tables FROM PUBLIC;
REVOKE INSERT ON lakesync.sync_runs FROM PUBLIC;
REVOKE USAGE ON SEQUENCE lakesync.sync_runs_run_id_seq FROM PUBLIC;

-- The target columns the syncs write: for existing specs, the target's columns now (0.2.0
-- could not sync a table with columns of its own), so a column a user adds after the upgrade
-- is never mistaken for one dropped in Delta.
ALTER TABLE lakesync.synced_tables ADD COLUMN synced_columns text[];
UPDATE lakesync.synced_tables s
   SET synced_columns = (SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum)
                           FROM pg_catalog.pg_attribute a
                          WHERE a.attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(s.target)
                            AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
                            AND a.attgenerated OPERATOR(pg_catalog.=) '');
COMMENT ON COLUMN lakesync.synced_tables.synced_columns IS
    'The target columns the syncs write; any other column belongs to the user and is left alone';

-- The table each spec's target names now, followed through renames by an event trigger.
ALTER TABLE lakesync.synced_tables ADD COLUMN target_relid oid;
UPDATE lakesync.synced_tables SET target_relid = pg_catalog.to_regclass(target)::oid;

-- A synced table's spec follows its table: ALTER TABLE … RENAME / SET SCHEMA and ALTER SCHEMA …
-- RENAME rename the spec too. The spec is keyed by name (OIDs change in a dump and restore);
-- target_relid, refreshed by every sync, says which table a rename moved. Only a spec whose old
-- name no longer resolves is renamed, so a stale OID (after a restore) never moves one.
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
                    WHERE d.objid OPERATOR(pg_catalog.=) c.oid
                       OR d.objid OPERATOR(pg_catalog.=) c.relnamespace);
END
$$;
CREATE EVENT TRIGGER lakesync_follow_renamed_tables ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER SCHEMA')
    EXECUTE FUNCTION lakesync.follow_renamed_tables();
