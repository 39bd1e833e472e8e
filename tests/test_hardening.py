"""Regressions of the review before the background worker (issue 10): each test failed on 0.2.0.

Encodings, privileges as COPY checks them, catalog writes only through the functions,
search_path hijacking, replaced tables, identifier folding, failure records."""
import glob
import json
import os
import shutil

import psycopg
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from pgcluster import world_readable_tmpdir

CDF = {"delta.enableChangeDataFeed": "true"}
TEXT = "\u00e9\u65e5"  # 'é日': one Latin-1 character and one that only Unicode encodings hold


def table_path(name="src"):
    return os.path.join(world_readable_tmpdir(), name)


def write(path, rows, mode="append", cdf=False, schema=None):
    write_deltalake(path, pa.Table.from_pylist(rows, schema=schema), mode=mode,
                    configuration=CDF if cdf else None)
    os.system(f"chmod -R a+rX {path}")


def error_of(conn, sql, params=()):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, params)
    d = e.value.diag
    return d.sqlstate, d.message_primary, d.message_hint


def as_role(cluster, db, role):
    return psycopg.connect(cluster.dsn(dbname=db.dbname_, user=role), autocommit=True)


@pytest.fixture()
def app(db):
    """A login role that may read server files and create tables in public."""
    db.execute("CREATE ROLE app LOGIN")
    db.execute("GRANT lakesync_user TO app")
    try:
        db.execute("GRANT pg_read_server_files TO app")
        db.execute("GRANT CREATE ON SCHEMA public TO app")
        yield "app"
    finally:
        db.execute("DROP OWNED BY app CASCADE")
        db.execute("DROP ROLE app")


# -- 1. text does not depend on the caller's client_encoding --------------------------------

@pytest.mark.parametrize("encoding", ["LATIN1", "WIN1252", "EUC_JP", "SQL_ASCII"])
def test_text_and_jsonb_independent_of_client_encoding(db, cluster, encoding):
    path = table_path()
    write(path, [{"id": 1, "t": TEXT, "s": {"a": TEXT}}], cdf=True)
    with psycopg.connect(cluster.dsn(dbname=db.dbname_), autocommit=True) as c:
        c.execute(f"SET client_encoding = '{encoding}'")
        c.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'triggered')", (path,))
        write(path, [{"id": 2, "t": TEXT + "2", "s": {"a": TEXT + "2"}}])
        c.execute("SELECT sync_now('t')")
        # The session keeps its own encoding.
        shown = c.execute("SHOW client_encoding").fetchone()[0]
        assert (shown.decode() if isinstance(shown, bytes) else shown) == encoding
    assert db.execute("SELECT id, t, s FROM t ORDER BY id").fetchall() == [
        (1, TEXT, {"a": TEXT}), (2, TEXT + "2", {"a": TEXT + "2"})]


@pytest.fixture()
def latin1_db(cluster):
    name = f"latin1_{os.getpid()}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
                      "TEMPLATE template0")
    conn = psycopg.connect(cluster.dsn(dbname=name), autocommit=True)
    conn.execute("CREATE EXTENSION pg_lakesync")
    yield conn
    conn.close()
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_non_utf8_database_converts_or_fails_clearly(latin1_db):
    path = table_path()
    write(path, [{"id": 1, "t": "caf\u00e9", "s": {"a": "\u00e9"}}])
    latin1_db.execute("SET client_encoding = 'UTF8'")
    latin1_db.execute("SELECT create_synced_table('t', %s, ARRAY['id'])", (path,))
    assert latin1_db.execute("SELECT t, octet_length(t), s FROM t").fetchall() == [
        ("caf\u00e9", 4, {"a": "\u00e9"})]  # stored as one Latin-1 byte, not as mojibake
    for row, column in [({"id": 2, "t": TEXT, "s": {"a": "x"}}, "t"),
                        ({"id": 2, "t": "x", "s": {"a": TEXT}}, "s")]:
        write(path, [row])
        with pytest.raises(psycopg.Error) as e:
            latin1_db.execute("SELECT sync_now('t')")
        d = e.value.diag
        assert d.sqlstate == "22P05", d.message_primary
        assert d.message_primary == (
            f'column "{column}" of the row with key (id)=(2) holds character U+65E5, '
            'which database encoding "LATIN1" cannot store')
        assert "UTF8" in d.message_hint
        assert latin1_db.execute("SELECT count(*) FROM t").fetchone() == (1,)
        write(path, [{"id": 1, "t": "caf\u00e9", "s": {"a": "\u00e9"}}], mode="overwrite")


# -- 2. writes are checked as COPY FROM checks them; the catalog is written by functions only

def test_sync_needs_insert_privilege_on_the_target(db, cluster, app):
    path = table_path()
    write(path, [{"id": 1}])
    with as_role(cluster, db, app) as c:
        c.execute("SELECT create_synced_table('t', %s, ARRAY['id'])", (path,))
        c.execute("REVOKE INSERT ON t FROM app")
        write(path, [{"id": 2}])
        state, msg, _ = error_of(c, "SELECT sync_now('t')")
        assert (state, msg) == ("42501", "permission denied for table t")
    assert db.execute("SELECT id FROM t").fetchall() == [(1,)]


def test_sync_refuses_row_level_security_like_copy(db, cluster, app):
    path = table_path()
    write(path, [{"id": 1}])
    with as_role(cluster, db, app) as c:
        c.execute("SELECT create_synced_table('t', %s, ARRAY['id'])", (path,))
        c.execute("ALTER TABLE t ENABLE ROW LEVEL SECURITY")
        c.execute("ALTER TABLE t FORCE ROW LEVEL SECURITY")
        c.execute("CREATE POLICY small ON t USING (true) WITH CHECK (id < 5)")
        write(path, [{"id": 7}])
        state, msg, hint = error_of(c, "SELECT sync_now('t')")
        assert state == "0A000" and "row-level security" in msg, msg
        assert hint
    assert db.execute("SELECT id FROM t").fetchall() == [(1,)]


def test_catalog_is_written_only_through_the_functions(db, cluster, app):
    path = table_path()
    write(path, [{"id": 1}])
    db.execute("CREATE TABLE public.victim (id bigint)")
    with as_role(cluster, db, app) as c:
        c.execute("SELECT create_synced_table('t', %s, ARRAY['id'])", (path,))
        for sql in [
            "INSERT INTO lakesync.synced_tables (target, source, mode) "
            "VALUES ('public.victim', '/etc', 'snapshot')",
            "UPDATE lakesync.synced_tables SET source = '/etc'",
            "DELETE FROM lakesync.synced_tables",
            "INSERT INTO lakesync.sync_runs (target, started_at, status) "
            "VALUES ('public.t', now(), 'succeeded')",
            "SELECT nextval('lakesync.sync_runs_run_id_seq')",
        ]:
            assert error_of(c, sql)[0] == "42501", sql
        # The functions still work for the role, and it sees its own rows.
        write(path, [{"id": 2}])
        assert c.execute("SELECT rows_loaded FROM sync_now('t')").fetchone() == (2,)
        assert c.execute("SELECT owner, state FROM lakesync.synced_tables").fetchall() == [
            ("app", "synced")]
        assert c.execute("SELECT owner, status FROM lakesync.sync_runs ORDER BY run_id"
                         ).fetchall() == [("app", "succeeded")] * 2
        assert c.execute("SELECT drop_synced_table('t')").fetchone() == (True,)
    assert db.execute("SELECT source FROM lakesync.synced_tables").fetchall() == []


@pytest.mark.parametrize("bypassrls", [False, True])
def test_other_roles_cannot_sync_or_drop_a_spec(db, cluster, app, bypassrls):
    path = table_path()
    write(path, [{"id": 1}])
    db.execute("SELECT create_synced_table('public.mine', %s, ARRAY['id'])", (path,))
    if bypassrls:  # sees every row of the catalog, owns none of them
        db.execute("ALTER ROLE app BYPASSRLS")
    before = db.execute("SELECT state, last_error FROM lakesync.synced_tables").fetchone()
    with as_role(cluster, db, app) as c:
        assert error_of(c, "SELECT sync_now('public.mine')")[0] == "42704"
        assert error_of(c, "SELECT drop_synced_table('public.mine')")[0] == "42704"
        assert error_of(c, "SELECT full_refresh('public.mine')")[0] == "42704"
        seen = c.execute("SELECT count(*) FROM lakesync.synced_tables").fetchone()
        assert seen == ((1,) if bypassrls else (0,))
    assert db.execute("SELECT state, last_error FROM lakesync.synced_tables").fetchone() == before
    assert db.execute("SELECT count(*) FROM lakesync.sync_runs").fetchone() == (1,)


# -- 3. search_path hijacking ---------------------------------------------------------------

def test_look_alike_functions_and_operators_on_the_search_path_are_not_called(db):
    db.execute("CREATE SCHEMA evil")
    db.execute("CREATE TABLE evil.calls (what text)")
    for fn, args, ret in [("to_regclass", "text", "regclass"),
                          ("format_type", "oid, integer", "text"),
                          ("current_schema", "", "name"),
                          ("concat_ws", "text, text", "text"),
                          ("count", "bigint", "bigint")]:
        db.execute(f"CREATE FUNCTION evil.{fn}({args}) RETURNS {ret} LANGUAGE plpgsql AS $$ "
                   f"BEGIN INSERT INTO evil.calls VALUES ('{fn}'); RETURN NULL; END $$")
    for typ in ["text", "bigint", "name", "oid"]:
        db.execute(f"CREATE FUNCTION evil.eq_{typ}({typ}, {typ}) RETURNS boolean "
                   "LANGUAGE plpgsql AS $$ BEGIN INSERT INTO evil.calls VALUES ('='); "
                   "RETURN false; END $$")
        db.execute(f"CREATE OPERATOR evil.= (LEFTARG = {typ}, RIGHTARG = {typ}, "
                   f"FUNCTION = evil.eq_{typ})")
    path = table_path()
    write(path, [{"id": 1, "v": "a"}], cdf=True)
    db.execute("SET search_path = evil, pg_catalog, public")
    db.execute("SELECT public.create_synced_table('public.t', %s, ARRAY['id'], 'triggered')",
               (path,))
    write(path, [{"id": 2, "v": "b"}])
    assert db.execute("SELECT rows_inserted FROM public.sync_now('public.t')").fetchone() == (1,)
    assert db.execute("SELECT rows_loaded FROM public.full_refresh('public.t')"
                      ).fetchone() == (2,)
    # The failure recorder (a background worker) takes the database's search_path.
    db.execute(f'ALTER DATABASE "{db.dbname_}" SET search_path = evil, pg_catalog, public')
    write(path, [{"id": 5, "v": "x"}, {"id": 5, "v": "y"}])  # one key twice in one commit
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute("SELECT public.sync_now('public.t')")
    assert db.execute("SELECT status FROM lakesync.sync_runs ORDER BY run_id DESC LIMIT 1"
                      ).fetchone() == ("failed",)
    assert db.execute("SELECT public.drop_synced_table('public.t', true)").fetchone() == (True,)
    db.execute(f'ALTER DATABASE "{db.dbname_}" RESET search_path')
    db.execute("RESET search_path")
    assert db.execute("SELECT what FROM evil.calls").fetchall() == []


# -- 4. schema changes the target does not see are no gap ------------------------------------

@pytest.mark.parametrize("change", ["excluded_column", "comment", "not_null"])
def test_harmless_schema_change_is_no_gap(db, change):
    from deltalake import DeltaTable
    path = table_path()
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False), ("v", pa.string())])
    write(path, [{"id": 1, "v": "a"}], cdf=True, schema=schema)
    options = {"columns": ["id", "v"]} if change == "excluded_column" else {}
    db.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'triggered', %s)",
               (path, json.dumps(options)))
    write(path, [{"id": 2, "v": "b"}], schema=schema)                 # v1, old schema
    if change == "excluded_column":
        wide = pa.schema([pa.field("id", pa.int64(), nullable=False), ("v", pa.string()),
                          ("extra", pa.int64())])
        write_deltalake(path, pa.Table.from_pylist([{"id": 3, "v": "c", "extra": 9}],
                                                   schema=wide), mode="append",
                        schema_mode="merge")
    elif change == "comment":
        DeltaTable(path).alter.set_column_metadata("v", {"comment": "the value"})
    else:
        DeltaTable(path).alter.drop_column_not_null("id")
    os.system(f"chmod -R a+rX {path}")
    if change != "excluded_column":
        write(path, [{"id": 3, "v": "c"}], schema=schema if change == "comment" else None)
    r = db.execute("SELECT change_source, rows_inserted, message FROM sync_now('t')").fetchone()
    assert r[:2] == ("cdf", 2), r
    assert db.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [
        (1, "a"), (2, "b"), (3, "c")]
    assert db.execute("SELECT state FROM lakesync.synced_tables").fetchone() == ("synced",)


# -- 5. a table replaced at the same path ---------------------------------------------------

@pytest.mark.parametrize("mode", ["snapshot", "triggered"])
def test_replaced_table_at_the_synced_version_is_noticed(db, mode):
    path = table_path()
    write(path, [{"id": 1}], cdf=True)
    write(path, [{"id": 2}])
    db.execute("SELECT create_synced_table('t', %s, ARRAY['id'], %s)", (path, mode))
    shutil.rmtree(path)
    write(path, [{"id": 10}], cdf=True)
    write(path, [{"id": 20}])  # the new table reaches the synced version number, 1
    if mode == "snapshot":
        r = db.execute("SELECT delta_version, rows_loaded, message FROM sync_now('t')").fetchone()
        assert r[:2] == (1, 2), r
        assert db.execute("SELECT id FROM t ORDER BY id").fetchall() == [(10,), (20,)]
    else:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
            db.execute("SELECT sync_now('t')")
        assert "replaced" in e.value.diag.message_primary
        assert db.execute("SELECT state FROM lakesync.synced_tables").fetchone() == (
            "needs_full_refresh",)
        db.execute("SELECT full_refresh('t')")
        assert db.execute("SELECT id FROM t ORDER BY id").fetchall() == [(10,), (20,)]
        assert db.execute("SELECT message FROM sync_now('t')").fetchone()[0].endswith(
            "nothing to do")


# -- 6. names are parsed as Postgres parses them --------------------------------------------

def test_identifiers_fold_as_postgres_folds_them(db):
    path = table_path()
    write(path, [{"id": 1}])
    r = db.execute("SELECT target FROM create_synced_table('\u00c4RGER', %s)", (path,)).fetchone()
    # Postgres folds ASCII letters only: ÄRGER is the table "Ärger".
    assert r == ('public."\u00c4rger"',)
    assert db.execute("SELECT count(*) FROM \u00c4RGER").fetchone() == (1,)
    assert db.execute("SELECT target FROM sync_now('\u00c4rger')").fetchone() == r


def test_bare_name_resolves_through_the_search_path(db):
    path = table_path()
    write(path, [{"id": 1}])
    db.execute("CREATE SCHEMA first")
    db.execute("SELECT create_synced_table('public.t', %s)", (path,))
    db.execute("SET search_path = first, public")
    assert db.execute("SELECT target FROM sync_now('t')").fetchone() == ("public.t",)
    # A new table still goes to the first schema of the path, as CREATE TABLE does.
    assert db.execute("SELECT target FROM create_synced_table('u', %s)", (path,)
                      ).fetchone() == ("first.u",)


# -- 7. columns the user added are the user's -----------------------------------------------

@pytest.mark.parametrize("mode", ["snapshot", "triggered"])
def test_user_columns_survive_syncs_and_full_refresh(db, mode):
    path = table_path()
    write(path, [{"id": 1, "v": "red apple"}], cdf=True)
    db.execute("SELECT create_synced_table('t', %s, ARRAY['id'], %s)", (path, mode))
    db.execute("ALTER TABLE t ADD COLUMN doc tsvector "
               "GENERATED ALWAYS AS (to_tsvector('simple', v)) STORED")
    db.execute("CREATE INDEX t_doc ON t USING gin (doc)")
    db.execute("ALTER TABLE t ADD COLUMN note text DEFAULT 'mine'")
    write(path, [{"id": 2, "v": "green pear"}])
    r = db.execute("SELECT rows_loaded, message FROM sync_now('t')").fetchone()
    assert r[0] == (2 if mode == "snapshot" else 1), r
    db.execute("SET enable_seqscan = off")
    assert db.execute("SELECT id, note FROM t WHERE doc @@ 'pear'::tsquery").fetchall() == [
        (2, "mine")]
    db.execute("SELECT full_refresh('t')")
    assert db.execute("SELECT id FROM t WHERE doc @@ 'apple'::tsquery").fetchall() == [(1,)]
    assert db.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 't_doc'"
                      ).fetchone() == (1,)
    assert db.execute("SELECT synced_columns, state FROM lakesync.synced_tables").fetchone() == (
        ["id", "v"], "synced")


# -- 8. failures are always recorded --------------------------------------------------------

@pytest.fixture()
def nologin_app(db):
    db.execute("CREATE ROLE nologin_app NOLOGIN")
    db.execute("GRANT lakesync_user TO nologin_app")
    yield "nologin_app"
    db.execute("RESET ROLE")
    db.execute("DROP OWNED BY nologin_app CASCADE")
    db.execute("DROP ROLE nologin_app")


def test_failure_of_a_nologin_role_is_recorded(db, nologin_app):
    db.execute("GRANT pg_read_server_files TO nologin_app")
    db.execute("GRANT CREATE ON SCHEMA public TO nologin_app")
    path = table_path()
    write(path, [{"id": 1}])
    db.execute("SET ROLE nologin_app")
    db.execute("SELECT create_synced_table('t', %s, ARRAY['id'])", (path,))
    write(path, [{"id": 1}])  # a duplicate key
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute("SELECT sync_now('t')")
    db.execute("RESET ROLE")
    assert db.execute("SELECT owner, status FROM lakesync.sync_runs ORDER BY run_id"
                      ).fetchall() == [("nologin_app", "succeeded"), ("nologin_app", "failed")]
    assert db.execute("SELECT state FROM lakesync.synced_tables").fetchone() == ("failed",)


def test_failed_full_refresh_keeps_needs_full_refresh(db):
    path = table_path()
    schema = pa.schema([("id", pa.int64()), ("val", pa.string())])
    write(path, [{"id": 1, "val": "a"}], cdf=True, schema=schema)
    db.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'triggered')", (path,))
    narrow = pa.schema([("id", pa.int64())])
    write_deltalake(path, pa.Table.from_pylist([{"id": 2}], schema=narrow), mode="overwrite",
                    schema_mode="overwrite")
    os.system(f"chmod -R a+rX {path}")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        db.execute("SELECT sync_now('t')")
    assert db.execute("SELECT state FROM lakesync.synced_tables").fetchone() == (
        "needs_full_refresh",)
    for f in glob.glob(os.path.join(path, "*.parquet")):
        os.remove(f)
    with pytest.raises(psycopg.errors.UndefinedFile):
        db.execute("SELECT full_refresh('t')")
    state, err = db.execute("SELECT state, last_error FROM lakesync.synced_tables").fetchone()
    assert state == "needs_full_refresh" and "missing" in err
    assert db.execute("SELECT status FROM lakesync.sync_runs ORDER BY run_id DESC LIMIT 1"
                      ).fetchone() == ("failed",)


# -- the job: a spec follows its table ------------------------------------------------------

def test_spec_follows_rename_set_schema_and_schema_rename(db):
    path = table_path()
    write(path, [{"id": 1}], cdf=True)
    db.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'triggered')", (path,))
    db.execute("ALTER TABLE t RENAME TO t2")
    assert db.execute("SELECT target FROM lakesync.synced_tables").fetchone() == ("public.t2",)
    write(path, [{"id": 2}])
    assert db.execute("SELECT target, rows_inserted FROM sync_now('t2')").fetchone() == (
        "public.t2", 1)
    db.execute("CREATE SCHEMA s1")
    db.execute("ALTER TABLE t2 SET SCHEMA s1")
    db.execute('ALTER SCHEMA s1 RENAME TO "Gold"')
    assert db.execute("SELECT target FROM lakesync.synced_tables").fetchone() == ('"Gold".t2',)
    write(path, [{"id": 3}])
    assert db.execute("""SELECT rows_inserted FROM sync_now('"Gold".t2')""").fetchone() == (1,)
    assert db.execute('SELECT id FROM "Gold".t2 ORDER BY id').fetchall() == [(1,), (2,), (3,)]
    # Unrelated DDL leaves the spec alone.
    db.execute("CREATE TABLE other (x int)")
    db.execute("ALTER TABLE other RENAME TO other2")
    assert db.execute("SELECT target FROM lakesync.synced_tables").fetchone() == ('"Gold".t2',)


def test_dropped_target_is_a_clear_error(db):
    path = table_path()
    write(path, [{"id": 1}])
    db.execute("SELECT create_synced_table('t', %s, ARRAY['id'])", (path,))
    db.execute("DROP TABLE t")
    state, msg, hint = error_of(db, "SELECT sync_now('t')")
    assert state == "22023" and msg == 'the table of synced table "public.t" no longer exists'
    assert "drop_synced_table('public.t')" in hint
    assert db.execute("SELECT drop_synced_table('t')").fetchone() == (True,)


def test_dump_restored_into_a_new_database_syncs_again(db, cluster):
    import subprocess
    path = table_path()
    write(path, [{"id": 1}], cdf=True)
    db.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'triggered')", (path,))
    db.execute("CREATE TABLE filler (x int)")  # so OIDs differ in the new database
    dump = subprocess.run(["pg_dump", "-Fc", "-d", db.dbname_], env=cluster.env(), check=True,
                          capture_output=True).stdout
    new = db.dbname_ + "_restored"
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{new}"')
    try:
        subprocess.run(["pg_restore", "-d", new], input=dump, env=cluster.env(), check=True,
                       capture_output=True)
        with psycopg.connect(cluster.dsn(dbname=new), autocommit=True) as r:
            assert r.execute("SELECT target, state, synced_version FROM lakesync.synced_tables"
                             ).fetchall() == [("public.t", "synced", 0)]
            write(path, [{"id": 2}])
            assert r.execute("SELECT from_version, rows_inserted FROM sync_now('t')"
                             ).fetchone() == (0, 1)
            assert r.execute("SELECT id FROM t ORDER BY id").fetchall() == [(1,), (2,)]
            assert r.execute("SELECT target_relid = 'public.t'::regclass "
                             "FROM lakesync.synced_tables").fetchone() == (True,)
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{new}" WITH (FORCE)')


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_callers_in_repeatable_read_and_serializable(db, cluster, isolation):
    path = table_path()
    write(path, [{"id": 1}], cdf=True)
    db.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'triggered')", (path,))
    write(path, [{"id": 2}])
    with psycopg.connect(cluster.dsn(dbname=db.dbname_)) as c:
        c.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        assert c.execute("SELECT count(*) FROM t").fetchone() == (1,)
        assert c.execute("SELECT rows_inserted FROM sync_now('t')").fetchone() == (1,)
        assert c.execute("SELECT count(*) FROM t").fetchone() == (2,)  # its own writes
        c.commit()
    # A second sync in a snapshot taken before another session synced: serialized on the spec
    # row, it fails cleanly (never applies twice) and a retry finds nothing to do.
    write(path, [{"id": 3}])
    with psycopg.connect(cluster.dsn(dbname=db.dbname_)) as c:
        c.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        c.execute("SELECT count(*) FROM t")  # takes the snapshot
        assert db.execute("SELECT rows_inserted FROM sync_now('t')").fetchone() == (1,)
        with pytest.raises(psycopg.errors.SerializationFailure):
            c.execute("SELECT sync_now('t')")
        c.rollback()
        # Losing the race changed nothing: the table stays synced, only the run is recorded.
        assert db.execute("SELECT state, last_error FROM lakesync.synced_tables").fetchone() == (
            "synced", None)
        assert c.execute("SELECT message FROM sync_now('t')").fetchone()[0].endswith(
            "nothing to do")
        c.commit()
    assert db.execute("SELECT id FROM t ORDER BY id").fetchall() == [(1,), (2,), (3,)]


# -- cancel at every stage ------------------------------------------------------------------

@pytest.mark.parametrize("point", ["open", "read", "apply"])
def test_cancel_while_the_log_opens_reads_or_applies(db, cluster, point):
    import threading
    import time
    path = table_path()
    write(path, [{"id": i} for i in range(100)], cdf=True)
    db.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'triggered')", (path,))
    write(path, [{"id": i} for i in range(100, 200)])
    pid = db.execute("SELECT pg_backend_pid()").fetchone()[0]
    db.execute(f"SET lakesync.debug_pause = '{point}:30'")
    result = {}

    def run():
        try:
            db.execute("SELECT sync_now('t')")
        except psycopg.Error as e:
            result["state"], result["at"] = e.diag.sqlstate, time.time()

    t = threading.Thread(target=run)
    t.start()
    with psycopg.connect(cluster.dsn(dbname=db.dbname_), autocommit=True) as c:
        # Wait until the backend is inside the sync (the pause holds it there).
        time.sleep(1.0)
        sent = time.time()
        c.execute("SELECT pg_cancel_backend(%s)", (pid,))
        t.join(30)
    assert result.get("state") == "57014", result
    assert result["at"] - sent < 10.0  # generous: a loaded machine; usually well under 1 s
    db.execute("RESET lakesync.debug_pause")
    assert db.execute("SELECT count(*), max(id) FROM t").fetchone() == (100, 99)
    assert db.execute("SELECT synced_version FROM lakesync.synced_tables").fetchone() == (0,)
    assert db.execute("SELECT rows_inserted FROM sync_now('t')").fetchone() == (100,)


def test_a_sync_inside_a_trigger_of_a_syncing_table(db):
    """A trigger on a synced table may itself run a sync: the COPY feeds nest."""
    p1, p2 = table_path("one"), table_path("two")
    write(p1, [{"id": 1}])
    write(p2, [{"id": 10}])
    db.execute("SELECT create_synced_table('t1', %s, ARRAY['id'])", (p1,))
    db.execute("SELECT create_synced_table('t2', %s, ARRAY['id'])", (p2,))
    # Syncs run with search_path = pg_catalog, pg_temp: the trigger qualifies what it calls.
    db.execute("""CREATE FUNCTION public.also_sync() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN PERFORM public.sync_now('public.t2'); RETURN NEW; END $$""")
    db.execute("CREATE TRIGGER also BEFORE INSERT ON t1 FOR EACH ROW "
               "EXECUTE FUNCTION public.also_sync()")
    write(p1, [{"id": 2}])
    write(p2, [{"id": 20}])
    assert db.execute("SELECT rows_loaded FROM sync_now('t1')").fetchone() == (2,)
    assert db.execute("SELECT id FROM t1 ORDER BY id").fetchall() == [(1,), (2,)]
    assert db.execute("SELECT id FROM t2 ORDER BY id").fetchall() == [(10,), (20,)]


# -- review of 0.3.0 --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["triggered", "timeseries"])
def test_row_level_security_is_refused_for_sql_applied_changes_too(db, cluster, app, kind):
    """Changes and timeseries loads reach the target by SQL, which would apply a policy
    silently (skip hidden rows) instead of refusing it."""
    path = table_path()
    write(path, [{"id": 1, "ts": 1}, {"id": 7, "ts": 1}], cdf=True)
    mode, options = (("triggered", {}) if kind == "triggered"
                     else ("snapshot", {"timeseries_key": "ts"}))
    with as_role(cluster, db, app) as c:
        c.execute("SELECT create_synced_table('t', %s, ARRAY['id'], %s, %s)",
                  (path, mode, json.dumps(options)))
        c.execute("ALTER TABLE t ENABLE ROW LEVEL SECURITY")
        c.execute("ALTER TABLE t FORCE ROW LEVEL SECURITY")
        c.execute("CREATE POLICY small ON t USING (id < 5) WITH CHECK (true)")
        write(path, [{"id": 2, "ts": 2}])
        state, msg, hint = error_of(c, "SELECT sync_now('t')")
        assert state == "0A000" and "row-level security" in msg, msg
        assert hint
    assert db.execute("SELECT id FROM t ORDER BY id").fetchall() == [(1,), (7,)]


def test_superuser_sync_of_anothers_table_is_recorded_as_the_owners(db, cluster, app):
    path = table_path()
    write(path, [{"id": 1}])
    with as_role(cluster, db, app) as c:
        c.execute("SELECT create_synced_table('t', %s, ARRAY['id'])", (path,))
    write(path, [{"id": 2}])
    db.execute("SELECT sync_now('public.t')")  # the superuser
    write(path, [{"id": 2}])  # a duplicate key
    with pytest.raises(psycopg.errors.UniqueViolation):
        db.execute("SELECT sync_now('public.t')")
    with as_role(cluster, db, app) as c:
        assert c.execute("SELECT owner, status FROM lakesync.sync_runs ORDER BY run_id"
                         ).fetchall() == [("app", "succeeded"), ("app", "succeeded"),
                                          ("app", "failed")]
        state, error = c.execute("SELECT state, last_error FROM lakesync.synced_tables"
                                 ).fetchone()
        assert state == "failed" and "(id)=(2)" in error, error


def test_look_alike_types_and_domains_are_not_used(db):
    """Names are resolved before the search_path is pinned: a planted domain `text` whose check
    calls a function of the attacker's must never be used."""
    db.execute("CREATE SCHEMA evil")
    db.execute("CREATE TABLE evil.calls (what text)")
    db.execute("CREATE FUNCTION evil.spy(pg_catalog.text) RETURNS boolean LANGUAGE plpgsql AS "
               "$$ BEGIN INSERT INTO evil.calls VALUES ($1); RETURN true; END $$")
    for typ in ["text", "oid", "regclass", "name"]:
        db.execute(f"CREATE DOMAIN evil.{typ} AS pg_catalog.{typ} "
                   f"CHECK (evil.spy(VALUE::pg_catalog.text))")
    path = table_path()
    write(path, [{"id": 1}], cdf=True)
    db.execute("SET search_path = evil, pg_catalog, public")
    db.execute("SELECT public.create_synced_table('t', %s, ARRAY['id'], 'triggered')", (path,))
    write(path, [{"id": 2}])
    assert db.execute("SELECT rows_inserted FROM public.sync_now('t')").fetchone() == (1,)
    db.execute("RESET search_path")
    assert db.execute("SELECT what FROM evil.calls").fetchall() == []


def test_rename_never_takes_another_specs_name_nor_breaks_the_alter(db):
    path = table_path()
    write(path, [{"id": 1}])
    db.execute("SELECT create_synced_table('a', %s, ARRAY['id'])", (path,))
    db.execute("SELECT create_synced_table('b', %s, ARRAY['id'])", (path,))
    db.execute("DROP TABLE b")  # spec b stays; its table is gone
    assert db.execute("SELECT target_relid FROM lakesync.synced_tables WHERE target = 'public.b'"
                      ).fetchone() == (None,)
    db.execute("ALTER TABLE a RENAME TO b")  # succeeds: spec b keeps its name, spec a its own
    assert db.execute("SELECT target FROM lakesync.synced_tables ORDER BY 1").fetchall() == [
        ("public.a",), ("public.b",)]


def test_non_ascii_column_name_in_a_non_utf8_database_is_refused(latin1_db):
    path = table_path()
    write(path, [{"id": 1, "caf\u00e9": 1}])
    with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
        latin1_db.execute("SELECT create_synced_table('t', %s, ARRAY['id'])", (path,))
    assert "non-ASCII name" in e.value.diag.message_primary
    assert "columns" in e.value.diag.message_hint
    latin1_db.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'snapshot', "
                      "'{\"columns\": [\"id\"]}')", (path,))
    assert latin1_db.execute("SELECT id FROM t").fetchall() == [(1,)]


def test_temporary_target_is_refused(db):
    path = table_path()
    write(path, [{"id": 1}])
    db.execute("CREATE TEMP TABLE scratch (x int)")  # this session's temporary schema exists
    for target in ["pg_temp.t", "t"]:
        if target == "t":
            db.execute("SET search_path = pg_temp, public")
        state, msg, _ = error_of(db, "SELECT public.create_synced_table(%s, %s)", (target, path))
        assert state == "42602" and "temporary schema" in msg, msg
    db.execute("RESET search_path")
    assert db.execute("SELECT count(*) FROM lakesync.synced_tables").fetchone() == (0,)


def test_debug_pause_is_for_superusers_only(db, cluster, app):
    with as_role(cluster, db, app) as c:
        error_of(c, "SELECT sync_now('nothing')")  # loads the library, which defines it
        state, _, _ = error_of(c, "SET lakesync.debug_pause = 'commit'")
        assert state == "42501"


def test_users_own_unique_index_is_not_blamed_on_the_source(db):
    path = table_path()
    write(path, [{"id": 1, "email": "a@x"}])
    db.execute("SELECT create_synced_table('t', %s, ARRAY['id'])", (path,))
    db.execute("CREATE UNIQUE INDEX t_email ON t (email)")
    write(path, [{"id": 2, "email": "a@x"}])
    with pytest.raises(psycopg.errors.UniqueViolation) as e:
        db.execute("SELECT sync_now('t')")
    assert e.value.diag.message_primary == \
        'duplicate key value violates unique constraint "t_email"'
    assert db.execute("SELECT id FROM t").fetchall() == [(1,)]


def test_two_syncs_across_an_added_column_queue_without_deadlock(db, cluster):
    """The first sync adds the column (ALTER TABLE) while the second waits: the second must wait
    holding nothing the ALTER needs."""
    import threading
    import time
    path = table_path()
    write(path, [{"id": 1}], cdf=True)
    db.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'triggered')", (path,))
    write_deltalake(path, pa.Table.from_pylist([{"id": 2, "extra": "x"}]), mode="append",
                    schema_mode="merge")
    os.system(f"chmod -R a+rX {path}")
    results = {}

    def first():
        with psycopg.connect(cluster.dsn(dbname=db.dbname_), autocommit=True) as c:
            c.execute("SET lakesync.debug_pause = 'open:2'")  # holds the table and spec row
            results["first"] = c.execute("SELECT message FROM sync_now('t')").fetchone()[0]

    t = threading.Thread(target=first)
    t.start()
    time.sleep(0.7)
    with psycopg.connect(cluster.dsn(dbname=db.dbname_), autocommit=True) as c:
        second = c.execute("SELECT message FROM sync_now('t')").fetchone()[0]
    t.join()
    assert 'added column "extra"' in results["first"], results
    assert second.endswith("nothing to do"), second
    assert db.execute("SELECT id, extra FROM t ORDER BY id").fetchall() == [(1, None), (2, "x")]
