-- Who may do what (README, "Security model"): the roles, who may call which function, and the
-- trigger that keeps synced tables read-only. Last, after every function it grants.

-- Roles belong to the cluster, not to one database: made by the first CREATE EXTENSION, kept
-- by DROP EXTENSION (they may be granted in other databases).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'lakesync_user') THEN
        CREATE ROLE lakesync_user NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                    WHERE rolname OPERATOR(pg_catalog.=) 'lakesync_use_server_credentials') THEN
        CREATE ROLE lakesync_use_server_credentials NOLOGIN;
    END IF;
END
$$;

-- Creating, syncing and changing synced tables and credentials: lakesync_user's members (and
-- superusers). Each function acts only on the caller's own specs and credentials.
REVOKE EXECUTE ON FUNCTION
    @extschema@.create_synced_table(text, text, text[], text, jsonb),
    @extschema@.sync_now(text, boolean),
    @extschema@.full_refresh(text),
    @extschema@.drop_synced_table(text, boolean),
    @extschema@.pause_sync(text),
    @extschema@.resume_sync(text),
    @extschema@.alter_synced_table(text, text, jsonb),
    @extschema@.create_credential(text, text, jsonb),
    @extschema@.alter_credential(text, jsonb),
    @extschema@.drop_credential(text, boolean)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    @extschema@.create_synced_table(text, text, text[], text, jsonb),
    @extschema@.sync_now(text, boolean),
    @extschema@.full_refresh(text),
    @extschema@.drop_synced_table(text, boolean),
    @extschema@.pause_sync(text),
    @extschema@.resume_sync(text),
    @extschema@.alter_synced_table(text, text, jsonb),
    @extschema@.create_credential(text, text, jsonb),
    @extschema@.alter_credential(text, jsonb),
    @extschema@.drop_credential(text, boolean)
    TO lakesync_user;

-- Synced tables are read-only: only a sync of the table, in the backend running it, may write.
CREATE FUNCTION lakesync.sync_is_writing(relid oid) RETURNS boolean
    VOLATILE STRICT PARALLEL RESTRICTED LANGUAGE c AS 'MODULE_PATHNAME', 'lakesync_sync_is_writing_wrapper';
COMMENT ON FUNCTION lakesync.sync_is_writing(oid) IS
    'Whether a sync of this table is writing it in this backend now';
CREATE FUNCTION lakesync.refuse_writes() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF lakesync.sync_is_writing(TG_RELID) THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'cannot % synced table %: it is read-only',
            CASE TG_OP WHEN 'INSERT' THEN 'insert into' WHEN 'DELETE' THEN 'delete from'
                       ELSE pg_catalog.lower(TG_OP) END,
            pg_catalog.format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME)
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Only its syncs write it, from its Delta table; keep application data in a table of your own. Its owner can allow writes with option "read_only": false (alter_synced_table).';
END
$$;
COMMENT ON FUNCTION lakesync.refuse_writes() IS
    'Trigger of read-only synced tables: refuses writes other than their syncs''';
GRANT EXECUTE ON FUNCTION lakesync.sync_is_writing(oid), lakesync.refuse_writes() TO PUBLIC;
