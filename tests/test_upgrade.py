"""ALTER EXTENSION pg_lakesync UPDATE from every released version gives exactly a fresh install,
and keeps the specs."""
import glob
import os
import shutil
import subprocess

import psycopg
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What a user can see of the extension: functions, catalog columns, policies, grants.
SURFACE = """
SELECT 'function', p.proname || '(' || pg_get_function_arguments(p.oid) || ') -> '
       || pg_get_function_result(p.oid) || ' ' || p.provolatile::text || p.proisstrict::text
       || ' ' || p.prosecdef || ' ' || coalesce(p.proconfig::text, '') || ' ' || md5(p.prosrc)
FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_lakesync'
UNION ALL
SELECT 'column', c.relname || '.' || a.attnum || '.' || a.attname || ' '
       || format_type(a.atttypid, a.atttypmod)
       || ' ' || a.attnotnull || ' ' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '')
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'lakesync'
LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
WHERE a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint', conrelid::regclass || ' ' || pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'lakesync'::regnamespace
UNION ALL
SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'lakesync'
UNION ALL
SELECT 'view', viewname || ' ' || md5(definition) FROM pg_views WHERE schemaname = 'lakesync'
UNION ALL
SELECT 'policy', tablename || ' ' || policyname || ' ' || coalesce(qual, '') || ' '
       || coalesce(with_check, '') FROM pg_policies WHERE schemaname = 'lakesync'
UNION ALL
SELECT 'grant', table_name || ' ' || grantee || ' ' || privilege_type
FROM information_schema.role_table_grants WHERE table_schema = 'lakesync'
UNION ALL
SELECT 'event trigger', evtname || ' ' || evtevent || ' ' || coalesce(evttags::text, '') || ' '
       || evtfoid::regproc::text || ' ' || evtenabled::text FROM pg_event_trigger
UNION ALL
SELECT 'dump', extconfig::regclass[]::text FROM pg_extension WHERE extname = 'pg_lakesync'
ORDER BY 1, 2
"""


def extension_dir():
    share = subprocess.run(["pg_config", "--sharedir"], capture_output=True, text=True,
                           check=True).stdout.strip()
    return os.path.join(share, "extension")


def old_versions():
    return sorted(os.path.basename(p)[len("pg_lakesync--"):-len(".sql")]
                  for p in glob.glob(os.path.join(REPO, "sql", "archive", "pg_lakesync--*.sql")))


@pytest.fixture()
def fresh_db(cluster):
    made = []

    def make():
        name = f"u_{os.getpid()}_{len(made)}"
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return psycopg.connect(cluster.dsn(dbname=name), autocommit=True)

    yield make
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        for name in made:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s", (name,))
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.mark.parametrize("version", old_versions())
def test_upgrade_equals_fresh_install_and_keeps_specs(cluster, fresh_db, version):
    if cluster.external:
        pytest.skip("installs an old script into the server's extension directory")
    # The released script, as it was generated (a local build may have left a different one).
    shutil.copy(os.path.join(REPO, "sql", "archive", f"pg_lakesync--{version}.sql"),
                os.path.join(extension_dir(), f"pg_lakesync--{version}.sql"))
    old = fresh_db()
    old.execute(f"CREATE EXTENSION pg_lakesync VERSION '{version}'")
    old.execute("INSERT INTO lakesync.synced_tables (target, source, mode, primary_key) "
                "VALUES ('public.kept', '/nowhere', 'snapshot', ARRAY['id'])")
    old.execute("ALTER EXTENSION pg_lakesync UPDATE")
    new = fresh_db()
    new.execute("CREATE EXTENSION pg_lakesync")
    assert old.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_lakesync'"
                       ).fetchone() == new.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'pg_lakesync'").fetchone()
    assert old.execute(SURFACE).fetchall() == new.execute(SURFACE).fetchall()
    assert old.execute("SELECT target, mode, primary_key FROM lakesync.synced_tables"
                       ).fetchall() == [("public.kept", "snapshot", ["id"])]
