"""A first load shared among background workers (option load_workers): the same rows as a load
by one backend, one atomic result, nothing left behind whichever way it ends."""
import os
import threading
import time

import psycopg
import pytest

from pgcluster import wait_for
from test_snapshot import table_path, write


def stages(db):
    """The parallel loads' stage tables there are in the database."""
    return db.execute("SELECT relname FROM pg_class WHERE relname ~ '^lakesync_load_' "
                      "ORDER BY 1").fetchall()


def files_table(path, files, rows_per_file, big=False):
    """A Delta table of `files` data files (one commit each), ids 0.. in order."""
    for f in range(files):
        start = f * rows_per_file
        rows = [{"id": i, "val": f"v{i}"} for i in range(start, start + rows_per_file)]
        if big:
            for r in rows:
                r["big"] = "x" * 3000 + str(r["id"])
        write(path, rows)


def writers(db, table):
    """How many transactions wrote the table's rows."""
    return db.execute(f"SELECT count(DISTINCT xmin::text) FROM {table}").fetchone()[0]


def test_parallel_load_matches_serial_load(db):
    path = table_path()
    files_table(path, 5, 400, big=True)  # TOASTed values too
    r = db.execute("SELECT rows_loaded, delta_version FROM create_synced_table('p', %s, "
                   "ARRAY['id'], options => '{\"load_workers\": 2}')", (path,)).fetchone()
    assert r == (2000, 4)
    db.execute("SELECT create_synced_table('s', %s, ARRAY['id'])", (path,))
    rows = "SELECT id, val, big FROM {} ORDER BY id"
    assert db.execute(rows.format("p")).fetchall() == db.execute(rows.format("s")).fetchall()
    assert db.execute("SELECT count(*), min(id), max(id) FROM p").fetchone() == (2000, 0, 1999)
    # Two workers wrote it, each in a transaction of its own; one backend wrote the other.
    assert writers(db, "p") == 2
    assert writers(db, "s") == 1
    # The table has its key and its own TOAST table, and nothing of the load is left.
    assert db.execute("SELECT conname FROM pg_constraint WHERE conrelid = 'p'::regclass "
                      "AND contype = 'p'").fetchone() == ("p_pkey",)
    oid = db.execute("SELECT 'p'::regclass::oid::int").fetchone()[0]
    assert db.execute("SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = %s",
                      (oid,)).fetchone() == (f"pg_toast.pg_toast_{oid}",)
    assert stages(db) == []
    # Its inserts count for autovacuum (and auto-analyze) as those of any load do.
    assert wait_for(lambda: db.execute(
        "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'p'").fetchone() == (2000,))
    db.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    db.execute("SELECT bt_index_check('p_pkey'::regclass, true)")
    # The synced table goes on like any other: a re-sync, read-only to applications.
    write(path, [{"id": 5000, "val": "new", "big": None}])
    db.execute("SELECT sync_now('p')")
    assert db.execute("SELECT count(*), max(id) FROM p").fetchone() == (2001, 5000)
    with pytest.raises(psycopg.Error):
        db.execute("DELETE FROM p")


def test_parallel_load_falls_back_to_one_backend(db):
    path = table_path()
    write(path, [{"id": i, "val": f"v{i}"} for i in range(100)])  # one file
    r = db.execute("SELECT rows_loaded FROM create_synced_table('one', %s, ARRAY['id'], "
                   "options => '{\"load_workers\": 4}')", (path,)).fetchone()
    assert r == (100,)
    assert writers(db, "one") == 1
    # A transaction with one snapshot for all its statements could not see the workers' rows.
    path2 = table_path("two")
    files_table(path2, 3, 10)
    with psycopg.connect(db.info.dsn) as c:
        c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        c.execute("SELECT create_synced_table('rr', %s, ARRAY['id'], "
                  "options => '{\"load_workers\": 2}')", (path2,))
        assert c.execute("SELECT count(*) FROM rr").fetchone() == (30,)
        c.execute("COMMIT")
    assert writers(db, "rr") == 1


@pytest.fixture()
def par_owner(db):
    db.execute("CREATE ROLE par_owner NOLOGIN")
    db.execute("CREATE ROLE par_snoop")
    yield "par_owner"
    db.execute("RESET ROLE")
    db.execute("DROP OWNED BY par_owner CASCADE")
    db.execute("DROP OWNED BY par_snoop CASCADE")
    db.execute("DROP ROLE par_owner")
    db.execute("DROP ROLE par_snoop")


def test_parallel_load_of_a_role_without_login(db, par_owner):
    """The workers work as the syncing role, also one that cannot log in (PG 15's check)."""
    path = table_path()
    files_table(path, 4, 50)
    db.execute("GRANT pg_read_server_files, lakesync_user TO par_owner")
    db.execute("CREATE SCHEMA par AUTHORIZATION par_owner")
    # Default privileges would grant the stage to others: the load revokes them.
    db.execute("ALTER DEFAULT PRIVILEGES FOR ROLE par_owner IN SCHEMA par "
               "GRANT ALL ON TABLES TO par_snoop")
    db.execute("SET ROLE par_owner")
    r = db.execute("SELECT rows_loaded FROM create_synced_table('par.t', %s, ARRAY['id'], "
                   "options => '{\"load_workers\": 2}')", (path,)).fetchone()
    db.execute("RESET ROLE")
    assert r == (200,)
    assert writers(db, "par.t") == 2
    assert db.execute("SELECT tableowner FROM pg_tables WHERE schemaname = 'par' "
                      "AND tablename = 't'").fetchone() == ("par_owner",)
    assert stages(db) == []


def test_failed_share_rolls_back_and_leaves_no_stage(db):
    path = table_path()
    files_table(path, 4, 100)
    # One data file is gone: the worker that reads it fails, and so does the whole load.
    victim = sorted(f for f in os.listdir(path) if f.endswith(".parquet"))[2]
    os.remove(os.path.join(path, victim))
    with pytest.raises(psycopg.Error) as e:
        db.execute("SELECT create_synced_table('f', %s, ARRAY['id'], "
                   "options => '{\"load_workers\": 2}')", (path,))
    assert e.value.diag.sqlstate == "58P01"
    assert victim in e.value.diag.message_primary
    assert db.execute("SELECT to_regclass('f')").fetchone() == (None,)
    assert db.execute("SELECT count(*) FROM lakesync.synced_tables").fetchone() == (0,)
    # Worker 0 drops the stage once the failed transaction is over.
    assert wait_for(lambda: stages(db) == [], timeout=20)


def test_repeated_key_across_shares(db):
    path = table_path()
    write(path, [{"id": i, "val": "a"} for i in range(10)])
    write(path, [{"id": 7, "val": "b"}])
    with pytest.raises(psycopg.Error) as e:
        db.execute("SELECT create_synced_table('d', %s, ARRAY['id'], "
                   "options => '{\"load_workers\": 2}')", (path,))
    assert e.value.diag.sqlstate == "23505"
    assert "(id)=(7)" in e.value.diag.message_primary
    assert wait_for(lambda: stages(db) == [], timeout=20)


def load_workers_running(db):
    return db.execute("SELECT count(*) FROM pg_stat_activity "
                      "WHERE backend_type = 'pg_lakesync load'").fetchone()[0]


def interrupted_load(db, table, interrupt):
    """Starts a parallel load of `table`, calls interrupt(leader pid) while both workers load,
    and returns the load's error; then no worker, stage or table is left."""
    path = table_path()
    files_table(path, 4, 150_000)
    leader = psycopg.connect(db.info.dsn, autocommit=True)
    pid = leader.info.backend_pid
    failure = []

    def load():
        try:
            leader.execute(f"SELECT create_synced_table('{table}', %s, ARRAY['id'], "
                           "options => '{\"load_workers\": 2}')", (path,))
        except psycopg.Error as e:
            failure.append(e)

    t = threading.Thread(target=load)
    t.start()
    assert wait_for(lambda: load_workers_running(db) == 2, timeout=30)
    time.sleep(0.3)
    interrupt(pid)
    t.join(60)
    leader.close()
    assert wait_for(lambda: load_workers_running(db) == 0, timeout=30)
    assert stages(db) == []
    assert db.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,)
    return failure[0] if failure else None


def test_cancel_stops_workers_and_cleans_up(db):
    e = interrupted_load(db, "c", lambda pid: db.execute("SELECT pg_cancel_backend(%s)", (pid,)))
    assert e is not None and e.diag.sqlstate == "57014"


def test_terminated_sync_stops_workers_and_cleans_up(db):
    e = interrupted_load(db, "k",
                         lambda pid: db.execute("SELECT pg_terminate_backend(%s)", (pid,)))
    assert e is not None


def test_orphaned_stage_is_dropped_by_the_next_load(db):
    path = table_path()
    files_table(path, 2, 10)
    # What a load whose worker 0 died leaves: its stage, named after a finished transaction.
    xid = db.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
    db.execute(f"CREATE TABLE lakesync_load_{xid} (id bigint)")
    db.execute(f"COMMENT ON TABLE lakesync_load_{xid} IS "
               "'pg_lakesync: stage of a parallel first load (dropped when the load ends)'")
    db.execute("CREATE TABLE lakesync_load_1 (id bigint)")  # not ours: no such comment
    db.execute("SELECT create_synced_table('o', %s, ARRAY['id'], "
               "options => '{\"load_workers\": 2}')", (path,))
    assert stages(db) == [("lakesync_load_1",)]


@pytest.mark.parametrize("value", ["0", "17", "\"2\"", "1.5"])
def test_load_workers_option_is_checked(db, value):
    path = table_path()
    write(path, [{"id": 1, "val": "a"}])
    with pytest.raises(psycopg.Error) as e:
        db.execute("SELECT create_synced_table('x', %s, ARRAY['id'], options => "
                   f"'{{\"load_workers\": {value}}}')", (path,))
    assert e.value.diag.sqlstate == "22023"
    assert e.value.diag.message_primary.startswith(
        'option "load_workers" must be an integer from 1 to 16')
    assert "max_worker_processes" in e.value.diag.message_hint


def test_stage_that_cannot_be_made_means_one_backend(db):
    path = table_path()
    files_table(path, 3, 20)
    # Tables of the names the next stages would get (after the sync's transaction ID).
    xid = int(db.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
    with db.transaction():
        for n in range(xid + 2, xid + 12):
            db.execute(f"CREATE TABLE lakesync_load_{n} (x int)")
    notices = []
    db.add_notice_handler(lambda n: notices.append(n.message_primary))
    r = db.execute("SELECT rows_loaded FROM create_synced_table('n', %s, ARRAY['id'], "
                   "options => '{\"load_workers\": 2}')", (path,)).fetchone()
    assert r == (60,)
    assert writers(db, "n") == 1
    assert any("stage table cannot be created" in n and "already exists" in n
               for n in notices), notices
    # Not ours (no stage comment): left alone.
    assert len(stages(db)) == 10


def test_what_a_swap_would_skip_means_one_backend(db):
    """An event trigger would see the stage's DDL and the takeover skip what it adds."""
    path = table_path()
    files_table(path, 3, 20)
    db.execute("""CREATE FUNCTION noop() RETURNS event_trigger LANGUAGE plpgsql AS
                  $$BEGIN END$$""")
    db.execute("CREATE EVENT TRIGGER noop ON ddl_command_end EXECUTE FUNCTION noop()")
    r = db.execute("SELECT rows_loaded FROM create_synced_table('e', %s, ARRAY['id'], "
                   "options => '{\"load_workers\": 2}')", (path,)).fetchone()
    assert r == (60,)
    assert writers(db, "e") == 1
    db.execute("DROP EVENT TRIGGER noop")


def test_credential_of_the_same_transaction_means_one_backend(db):
    """What the workers cannot see yet (here: the source's read grant, made in the syncing
    transaction), the leader can: it loads by itself."""
    path = table_path()
    files_table(path, 3, 20)
    db.execute("CREATE ROLE par_late LOGIN")
    db.execute("GRANT lakesync_user TO par_late")
    db.execute("CREATE SCHEMA late AUTHORIZATION par_late")
    try:
        notices = []
        db.add_notice_handler(lambda n: notices.append(n.message_primary))
        with db.transaction():
            db.execute("GRANT pg_read_server_files TO par_late")
            db.execute("SET LOCAL ROLE par_late")
            r = db.execute("SELECT rows_loaded FROM create_synced_table('late.t', %s, ARRAY['id'], "
                           "options => '{\"load_workers\": 2}')", (path,)).fetchone()
        assert r == (60,)
        assert writers(db, "late.t") == 1
        assert any("cannot read the source" in n for n in notices), notices
        assert wait_for(lambda: stages(db) == [], timeout=20)
    finally:
        db.execute("DROP OWNED BY par_late CASCADE")
        db.execute("DROP ROLE par_late")
