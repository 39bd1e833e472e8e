"""Bad input: a clear ERROR with the right SQLSTATE, and every table left as it was."""
import glob
import json
import os
import shutil

import psycopg
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from pgcluster import world_readable_tmpdir


def make_table(rows, schema=None, name="t"):
    path = os.path.join(world_readable_tmpdir(), name)
    write_deltalake(path, pa.Table.from_pylist(rows, schema=schema))
    os.system(f"chmod -R a+rX {path}")
    return path


def error_of(db, sql, params=()):
    with pytest.raises(psycopg.Error) as e:
        db.execute(sql, params)
    d = e.value.diag
    return d.sqlstate, d.message_primary, d.message_hint


def nothing_created(db, target="public.t"):
    assert db.execute("SELECT to_regclass(%s)", (target,)).fetchone() == (None,)
    assert db.execute("SELECT count(*) FROM lakesync.synced_tables").fetchone() == (0,)


def test_path_does_not_exist(db):
    state, msg, _ = error_of(db, "SELECT create_synced_table('t', '/nonexistent/table')")
    assert state == "58P01"
    assert msg == 'Delta table source "/nonexistent/table" does not exist'
    nothing_created(db)


def test_not_a_delta_table(db):
    d = world_readable_tmpdir()
    state, msg, hint = error_of(db, "SELECT create_synced_table('t', %s)", (d,))
    assert state == "42809"
    assert "is not a Delta table" in msg and d in msg
    assert "_delta_log" in hint
    nothing_created(db)


def test_relative_path_and_unknown_scheme(db):
    state, msg, _ = error_of(db, "SELECT create_synced_table('t', 'relative/path')")
    assert state == "22023" and "neither an absolute path nor a URI" in msg
    state, msg, _ = error_of(db, "SELECT create_synced_table('t', 'gopher://x/y')")
    assert state == "0A000" and '"gopher"' in msg
    nothing_created(db)


def test_corrupt_data_file(db):
    path = make_table([{"id": i} for i in range(10)])
    for f in glob.glob(os.path.join(path, "*.parquet")):
        with open(f, "r+b") as fh:
            fh.seek(0)
            fh.write(b"garbage!" * 64)
    state, msg, _ = error_of(db, "SELECT create_synced_table('t', %s)", (path,))
    assert state == "XX001", msg
    assert path in msg
    nothing_created(db)


def test_missing_data_file(db):
    path = make_table([{"id": i} for i in range(10)])
    for f in glob.glob(os.path.join(path, "*.parquet")):
        os.remove(f)
    state, msg, _ = error_of(db, "SELECT create_synced_table('t', %s)", (path,))
    assert state == "58P01", msg
    assert "missing" in msg
    nothing_created(db)


def test_unsupported_reader_feature(db):
    path = make_table([{"id": 1}])
    log = os.path.join(path, "_delta_log", "00000000000000000000.json")
    lines = [json.loads(x) for x in open(log)]
    for x in lines:
        if "protocol" in x:
            x["protocol"] = {"minReaderVersion": 3, "minWriterVersion": 7,
                             "readerFeatures": ["someFutureFeature"],
                             "writerFeatures": ["someFutureFeature"]}
    with open(log, "w") as f:
        f.write("\n".join(json.dumps(x) for x in lines) + "\n")
    state, msg, _ = error_of(db, "SELECT create_synced_table('t', %s)", (path,))
    assert state == "0A000", msg
    assert "someFutureFeature" in msg
    nothing_created(db)


def test_primary_key_not_in_source(db):
    path = make_table([{"id": 1, "v": "a"}])
    state, msg, hint = error_of(db, "SELECT create_synced_table('t', %s, ARRAY['nope'])", (path,))
    assert state == "42703"
    assert msg.startswith('column "nope" does not exist in Delta table')
    assert '"id"' in hint and '"v"' in hint
    nothing_created(db)


def test_duplicate_keys(db):
    path = make_table([{"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": 2, "v": "c"}])
    state, msg, hint = error_of(db, "SELECT create_synced_table('t', %s, ARRAY['id'])", (path,))
    assert state == "23505"
    assert "(id)=(2)" in msg
    assert "timeseries_key" in hint
    nothing_created(db)


def test_null_bytes(db):
    path = make_table([{"id": 1, "v": "fine"}, {"id": 7, "v": "bad\x00byte"}])
    state, msg, hint = error_of(db, "SELECT create_synced_table('t', %s, ARRAY['id'])", (path,))
    assert state == "22021"
    assert '"v"' in msg and "(id)=(7)" in msg
    assert "null_bytes" in hint
    nothing_created(db)
    db.execute("""SELECT create_synced_table('t', %s, ARRAY['id'],
                  options => '{"null_bytes": "strip"}')""", (path,))
    assert db.execute("SELECT v FROM t ORDER BY id").fetchall() == [("fine",), ("badbyte",)]


def test_target_exists_and_is_not_synced(db):
    path = make_table([{"id": 1}])
    db.execute("CREATE TABLE t (x int)")
    db.execute("INSERT INTO t VALUES (42)")
    state, msg, _ = error_of(db, "SELECT create_synced_table('t', %s)", (path,))
    assert state == "42P07"
    assert msg == 'table "public.t" already exists and is not a synced table'
    assert db.execute("SELECT * FROM t").fetchall() == [(42,)]


@pytest.mark.parametrize("name", ['a.b.c', '"unterminated', 'bad name', '', 'x.', '1abc',
                                  'a' * 64])
def test_invalid_identifiers(db, name):
    path = make_table([{"id": 1}])
    state, msg, _ = error_of(db, "SELECT create_synced_table(%s, %s)", (name, path))
    assert state == "42602", msg
    assert db.execute("SELECT count(*) FROM lakesync.synced_tables").fetchone() == (0,)


def test_quoted_identifiers_preserved(db):
    path = make_table([{"Order ID": 1, "Amount": 2.5}])
    db.execute("""SELECT create_synced_table('"Sales Data"."Orders 2024"', %s,
                  ARRAY['Order ID'])""", (path,))
    assert db.execute('SELECT "Order ID", "Amount" FROM "Sales Data"."Orders 2024"'
                      ).fetchall() == [(1, 2.5)]
    assert db.execute("SELECT target FROM lakesync.synced_tables").fetchone() == (
        '"Sales Data"."Orders 2024"',)


def test_unknown_mode_and_option(db):
    path = make_table([{"id": 1}])
    state, msg, hint = error_of(db, "SELECT create_synced_table('t', %s, mode => 'eventual')",
                                (path,))
    assert state == "22023" and '"eventual"' in msg and "snapshot" in hint
    state, msg, hint = error_of(
        db, """SELECT create_synced_table('t', %s, options => '{"colums": ["id"]}')""", (path,))
    assert state == "22023" and msg == 'unknown option "colums"' and "columns" in hint
    state, msg, _ = error_of(
        db, """SELECT create_synced_table('t', %s, options => '{"version": -1}')""", (path,))
    assert state == "22023"
    state, msg, _ = error_of(
        db, """SELECT create_synced_table('t', %s, options => '{"version": 99}')""", (path,))
    assert state == "22023" and "no version 99" in msg and "latest version is 0" in msg
    nothing_created(db)


def test_file_access_needs_pg_read_server_files(db, cluster):
    path = make_table([{"id": 1}])
    db.execute("CREATE ROLE app LOGIN")
    db.execute("GRANT lakesync_user TO app")
    db.execute("GRANT CREATE ON SCHEMA public TO app")
    with psycopg.connect(cluster.dsn(dbname=db.dbname_, user="app"), autocommit=True) as app:
        state, msg, hint = error_of(app, "SELECT create_synced_table('t', %s)", (path,))
        assert state == "42501"
        assert "pg_read_server_files" in hint
        nothing_created(db)
        db.execute("GRANT pg_read_server_files TO app")
        app.execute("SELECT create_synced_table('t', %s)", (path,))
        assert app.execute("SELECT id FROM t").fetchall() == [(1,)]
        # Row security: the spec belongs to app, and app sees only its own.
        assert app.execute("SELECT owner FROM lakesync.synced_tables").fetchall() == [("app",)]
    db.execute("DROP OWNED BY app CASCADE")
    db.execute("DROP ROLE app")
