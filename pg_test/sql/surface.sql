-- The SQL surface of pg_lakesync as psql shows it.
CREATE EXTENSION pg_lakesync;
SET TimeZone = 'UTC';

-- Functions, callable unqualified.
SELECT p.proname, pg_get_function_arguments(p.oid) AS arguments
FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_lakesync'
ORDER BY 1;

-- The catalog.
\d lakesync.synced_tables
\d lakesync.sync_runs

-- A first synced table: creates the schema, the table, the key; returns what it did.
SELECT target, source, mode, delta_version, rows_loaded, rows_skipped, message
FROM create_synced_table('lake.simple', '/tmp/lakesync-regress/delta/simple_table', ARRAY['id']);
\d lake.simple
SELECT * FROM lake.simple ORDER BY id;
SELECT target, source, mode, primary_key, options, owner, state, synced_version, rows, last_error
FROM lakesync.synced_tables;
SELECT run_id, target, from_version, to_version, rows_inserted, rows_deleted, rows_skipped,
       change_source, status, message
FROM lakesync.sync_runs ORDER BY run_id;

-- Nothing changed in Delta: nothing to do.
SELECT delta_version, rows_loaded, message FROM sync_now('lake.simple');

-- Column mapping with spaces in names; partitions of many types; time travel.
SELECT rows_loaded FROM create_synced_table('lake.mapped',
  'file:///tmp/lakesync-regress/delta/table_with_column_mapping');
SELECT * FROM lake.mapped ORDER BY 1, 2;
SELECT delta_version, rows_loaded FROM create_synced_table('lake.old', '/tmp/lakesync-regress/delta/simple_table',
  options => '{"version": 1}');
SELECT * FROM lake.old ORDER BY id;

-- VARIANT decoded to JSON.
SELECT rows_loaded FROM create_synced_table('lake.variants',
  '/tmp/lakesync-regress/delta/spark-variant-checkpoint');
SELECT id, v, array_of_variants, map_of_variants FROM lake.variants
ORDER BY id, v::text LIMIT 4;

-- Partition columns keep their types.
SELECT rows_loaded FROM create_synced_table('lake.parts',
  '/tmp/lakesync-regress/delta/delta-2.2.0-partitioned-types', ARRAY['c3']);
\d lake.parts
SELECT * FROM lake.parts ORDER BY c3;

-- Errors: SQLSTATE, message and hint.
SELECT create_synced_table('lake.x', '/tmp/lakesync-regress/delta/no_such_table');
\echo :LAST_ERROR_SQLSTATE
SELECT create_synced_table('lake.x', '/tmp/lakesync-regress');
\echo :LAST_ERROR_SQLSTATE
SELECT create_synced_table('lake.simple', '/tmp/lakesync-regress/delta/simple_table');
\echo :LAST_ERROR_SQLSTATE
SELECT create_synced_table('lake.x', '/tmp/lakesync-regress/delta/simple_table', ARRAY['nope']);
\echo :LAST_ERROR_SQLSTATE
SELECT create_synced_table('lake.x', '/tmp/lakesync-regress/delta/delta-0.2.0', ARRAY['value']);
\echo :LAST_ERROR_SQLSTATE
SELECT create_synced_table('lake.x', '/tmp/lakesync-regress/delta/simple_table', mode => 'sometimes');
\echo :LAST_ERROR_SQLSTATE
SELECT create_synced_table('lake.x', '/tmp/lakesync-regress/delta/simple_table', mode => 'continuous');
\echo :LAST_ERROR_SQLSTATE
SELECT create_synced_table('lake.x', '/tmp/lakesync-regress/delta/simple_table', options => '{"colums": 1}');
\echo :LAST_ERROR_SQLSTATE
SELECT create_synced_table('a.b.c', '/tmp/lakesync-regress/delta/simple_table');
\echo :LAST_ERROR_SQLSTATE
SELECT sync_now('lake.nothing');
\echo :LAST_ERROR_SQLSTATE
SELECT to_regclass('lake.x');

-- Forget a spec, keep the data; forget and drop.
SELECT drop_synced_table('lake.old');
SELECT count(*) FROM lake.old;
SELECT drop_synced_table('lake.mapped', drop_data => true);
SELECT to_regclass('lake.mapped');
SELECT target FROM lakesync.synced_tables ORDER BY 1;

-- Synced tables are read-only to applications: only their syncs write them.
INSERT INTO lake.simple (id) VALUES (1000);
\echo :LAST_ERROR_SQLSTATE
TRUNCATE lake.simple;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM lake.simple;

-- Credentials for object-store sources: each belongs to its role; secrets are never shown.
\d lakesync.credentials
SELECT create_credential('open_data', 's3', '{"skip_signature": true, "region": "eu-west-1", "scope": "s3://open-data/climate"}');
SELECT create_credential('warehouse', 's3', '{"access_key_id": "AKIDEXAMPLE", "secret_access_key": "not-shown-anywhere", "region": "us-east-1"}');
SELECT name, provider, owner, options, scope, use_environment, secrets_set FROM lakesync.credentials ORDER BY name;
SELECT create_credential('bad', 's3', '{"region": "us-east-1"}');
\echo :LAST_ERROR_SQLSTATE
SELECT create_credential('bad', 's3', '{"skip_signature": true, "metadata_endpoint": "http://169.254.169.254"}');
\echo :LAST_ERROR_SQLSTATE
SELECT alter_credential('warehouse', '{"secret_access_key": "rotated-not-shown", "region": null}');
SELECT name, options, secrets_set FROM lakesync.credentials WHERE name = 'warehouse';
SELECT drop_credential('warehouse');
SELECT drop_credential('warehouse', if_exists => true);
SELECT name FROM lakesync.credentials;
