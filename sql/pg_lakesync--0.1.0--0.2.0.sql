-- pg_lakesync 0.1.0 -> 0.2.0: TRIGGERED mode (incremental sync from the Change Data Feed).
\echo Use "ALTER EXTENSION pg_lakesync UPDATE TO '0.2.0'" to load this file. \quit

-- The Delta table id a synced version belongs to: a new id at the same path is a new table.
ALTER TABLE lakesync.synced_tables ADD COLUMN delta_table_id text;

-- The sync functions report inserted/updated/deleted rows and where the changes came from;
-- sync_now gains a dry run.
DROP FUNCTION create_synced_table(text, text, text[], text, jsonb);
DROP FUNCTION sync_now(text);

CREATE FUNCTION "create_synced_table"(
	"target" TEXT, /* & str */
	"source" TEXT, /* & str */
	"primary_key" TEXT[] DEFAULT NULL, /* :: std :: option :: Option < Vec < String > > */
	"mode" TEXT DEFAULT 'snapshot', /* & str */
	"options" jsonb DEFAULT '{}' /* JsonB */
) RETURNS TABLE (
	"target" TEXT,  /* String */
	"source" TEXT,  /* String */
	"mode" TEXT,  /* String */
	"delta_version" bigint,  /* i64 */
	"rows_loaded" bigint,  /* i64 */
	"rows_skipped" bigint,  /* i64 */
	"duration" interval,  /* Interval */
	"message" TEXT,  /* String */
	"from_version" bigint,  /* Option < i64 > */
	"rows_inserted" bigint,  /* i64 */
	"rows_updated" bigint,  /* i64 */
	"rows_deleted" bigint,  /* i64 */
	"change_source" TEXT  /* String */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'create_synced_table_wrapper';

CREATE FUNCTION "sync_now"(
	"target" TEXT, /* & str */
	"dry_run" bool DEFAULT false /* bool */
) RETURNS TABLE (
	"target" TEXT,  /* String */
	"source" TEXT,  /* String */
	"mode" TEXT,  /* String */
	"delta_version" bigint,  /* i64 */
	"rows_loaded" bigint,  /* i64 */
	"rows_skipped" bigint,  /* i64 */
	"duration" interval,  /* Interval */
	"message" TEXT,  /* String */
	"from_version" bigint,  /* Option < i64 > */
	"rows_inserted" bigint,  /* i64 */
	"rows_updated" bigint,  /* i64 */
	"rows_deleted" bigint,  /* i64 */
	"change_source" TEXT  /* String */
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'sync_now_wrapper';

CREATE FUNCTION "full_refresh"(
	"target" TEXT /* & str */
) RETURNS TABLE (
	"target" TEXT,  /* String */
	"source" TEXT,  /* String */
	"mode" TEXT,  /* String */
	"delta_version" bigint,  /* i64 */
	"rows_loaded" bigint,  /* i64 */
	"rows_skipped" bigint,  /* i64 */
	"duration" interval,  /* Interval */
	"message" TEXT,  /* String */
	"from_version" bigint,  /* Option < i64 > */
	"rows_inserted" bigint,  /* i64 */
	"rows_updated" bigint,  /* i64 */
	"rows_deleted" bigint,  /* i64 */
	"change_source" TEXT  /* String */
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'full_refresh_wrapper';
