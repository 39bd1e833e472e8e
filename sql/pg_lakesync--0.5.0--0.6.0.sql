-- pg_lakesync 0.5.0 -> 0.6.0: sources on object stores (S3, Azure, GCS) with credentials owned
-- by their role; the security model: lakesync_user may create and sync, synced tables are
-- read-only to applications, using the server's cloud identity needs
-- lakesync_use_server_credentials.
\echo Use "ALTER EXTENSION pg_lakesync UPDATE TO '0.6.0'" to load this file. \quit

ALTER TABLE lakesync.sync_runs ADD COLUMN credential text;

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

-- Credentials are not dumped: a dump never holds secrets.

-- The credential functions (as pgrx declares them).
CREATE FUNCTION @extschema@."create_credential"(
	"name" TEXT, /* & str */
	"provider" TEXT, /* & str */
	"options" jsonb DEFAULT '{}' /* JsonB */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'create_credential_wrapper';

CREATE FUNCTION @extschema@."alter_credential"(
	"name" TEXT, /* & str */
	"options" jsonb /* JsonB */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'alter_credential_wrapper';

CREATE FUNCTION @extschema@."drop_credential"(
	"name" TEXT, /* & str */
	"if_exists" bool DEFAULT false /* bool */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'drop_credential_wrapper';

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

-- Roles that own synced tables keep using them: they become lakesync_user's members.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT DISTINCT s.owner FROM lakesync.synced_tables s
               JOIN pg_catalog.pg_roles o ON o.rolname OPERATOR(pg_catalog.=) s.owner
              WHERE NOT o.rolsuper
    LOOP
        EXECUTE pg_catalog.format('GRANT lakesync_user TO %I', r.owner);
    END LOOP;
END
$$;

-- Synced tables made before 0.6.0 become read-only, as new ones are (option "read_only": false
-- through alter_synced_table allows writes again).
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT c.oid::pg_catalog.regclass AS rel FROM lakesync.synced_tables s
               JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(s.target)
              -- the spec's own table, not one that took its name since
              WHERE s.target_relid OPERATOR(pg_catalog.=) c.oid
                AND NOT EXISTS (SELECT FROM pg_catalog.pg_trigger t
                                 WHERE t.tgrelid OPERATOR(pg_catalog.=) c.oid
                                   AND t.tgname OPERATOR(pg_catalog.=) 'lakesync_read_only')
    LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER lakesync_read_only BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION lakesync.refuse_writes()', r.rel);
    END LOOP;
END
$$;
