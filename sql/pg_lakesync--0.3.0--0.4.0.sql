-- pg_lakesync 0.3.0 -> 0.4.0: the rename trigger never moves a spec onto another spec's name or
-- onto a table its owner cannot write, and a dropped target's OID is forgotten.
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

