"""The background worker, on a cluster with shared_preload_libraries = 'pg_lakesync': continuous
tables follow their Delta log by themselves, schedules fire, failures back off beside healthy
tables, syncs run as the table's owner, pause/resume/alter, DROP DATABASE is not held up."""
import json
import os
import time

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from conftest import database_with_extension
from pgcluster import Cluster, wait_for, world_readable_tmpdir

CDF = {"delta.enableChangeDataFeed": "true"}


@pytest.fixture(scope="module")
def wcluster():
    c = Cluster(conf={"shared_preload_libraries": "'pg_lakesync'",
                      "lakesync.poll_interval": "'200ms'",
                      "lakesync.max_retry_interval": "'2s'"}).start()
    if c.external:
        pytest.skip("needs a cluster of its own with the library preloaded")
    yield c
    c.stop()


@pytest.fixture()
def wdb(wcluster):
    yield from database_with_extension(wcluster, "w")


def table_path():
    return os.path.join(world_readable_tmpdir(), "src")


def write(path, rows, mode="append"):
    write_deltalake(path, pa.Table.from_pylist(rows), mode=mode, configuration=CDF)
    os.system(f"chmod -R a+rX {path}")


def ids(db, table="t"):
    return [r[0] for r in db.execute(f"SELECT id FROM {table} ORDER BY id")]


def scheduler_running(db):
    return db.execute("SELECT worker FROM lakesync.status LIMIT 1").fetchone() == ("running",)


def test_status_says_the_worker_is_not_running_without_the_preload(db):
    path = table_path()
    write(path, [{"id": 1}])
    db.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'continuous')", (path,))
    state, worker = db.execute("SELECT state, worker FROM lakesync.status").fetchone()
    assert state == "online_continuous_update"
    assert worker.startswith("not running: add pg_lakesync to shared_preload_libraries")


def test_continuous_table_follows_each_commit_and_notifies(wdb, wcluster):
    path = table_path()
    write(path, [{"id": 1, "v": "a"}])
    wdb.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'continuous')", (path,))
    # CREATE EXTENSION in a new database is picked up by itself.
    assert wait_for(lambda: scheduler_running(wdb), timeout=15)
    with psycopg.connect(wcluster.dsn(dbname=wdb.dbname_), autocommit=True) as listener:
        listener.execute("LISTEN lakesync")
        for i in range(2, 5):
            write(path, [{"id": i, "v": "b"}])
            assert wait_for(lambda: ids(wdb) == list(range(1, i + 1)), timeout=15), ids(wdb)
        DeltaTable(path).delete("id = 2")
        os.system(f"chmod -R a+rX {path}")
        assert wait_for(lambda: ids(wdb) == [1, 3, 4], timeout=15), ids(wdb)
        heard = [json.loads(n.payload) for n in listener.notifies(timeout=1, stop_after=None)]
    assert [(n["to_version"], n["rows_inserted"], n["rows_deleted"]) for n in heard] == [
        (1, 1, 0), (2, 1, 0), (3, 1, 0), (4, 0, 1)]
    runs = wdb.execute("SELECT change_source, status FROM lakesync.sync_runs "
                       "WHERE from_version IS NOT NULL ORDER BY run_id").fetchall()
    assert runs == [("cdf", "succeeded")] * 4
    state, version = wdb.execute("SELECT state, synced_version FROM lakesync.status").fetchone()
    assert (state, version) == ("online_continuous_update", 4)


def test_schedule_fires_and_next_sync_is_shown(wdb):
    path = table_path()
    write(path, [{"id": 1}])
    wdb.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'snapshot', "
                "'{\"schedule\": \"1 second\"}')", (path,))
    write(path, [{"id": 2}])
    assert wait_for(lambda: ids(wdb) == [1, 2], timeout=15), ids(wdb)
    last, nxt = wdb.execute("SELECT last_sync, next_sync FROM lakesync.status").fetchone()
    assert nxt is not None and last is not None
    # An on-demand table is never synced by the worker.
    other = table_path()
    write(other, [{"id": 1}])
    wdb.execute("SELECT create_synced_table('od', %s, ARRAY['id'])", (other,))
    write(other, [{"id": 2}])
    time.sleep(1.5)
    assert ids(wdb, "od") == [1]
    assert wdb.execute("SELECT next_sync FROM lakesync.status WHERE target = 'public.od'"
                       ).fetchone() == (None,)


def test_bad_schedule_and_schedule_with_continuous_are_refused(wdb):
    path = table_path()
    write(path, [{"id": 1}])
    bounds = "an interval from 1 microsecond to 1 year"
    for mode, options, words in [
            ("snapshot", {"schedule": "every tuesday"}, bounds),
            ("snapshot", {"schedule": "-5 minutes"}, bounds),
            ("snapshot", {"schedule": "2 years"}, bounds),
            ("continuous", {"schedule": "5 minutes"}, "snapshot and triggered modes"),
            ("continuous", {"version": 0}, "continuous mode follows the latest")]:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            wdb.execute("SELECT create_synced_table('t', %s, ARRAY['id'], %s, %s)",
                        (path, mode, json.dumps(options)))
        assert words in e.value.diag.message_primary, e.value.diag.message_primary
    wdb.execute("SELECT create_synced_table('t', %s, ARRAY['id'])", (path,))
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        wdb.execute("SELECT alter_synced_table('t', options => '{\"schedule\": \"soon\"}')")


def test_failing_table_backs_off_beside_a_healthy_one(wdb):
    bad, good = table_path(), table_path()
    write(bad, [{"id": 1}])
    write(good, [{"id": 1}])
    wdb.execute("SELECT create_synced_table('bad', %s, ARRAY['id'], 'continuous')", (bad,))
    wdb.execute("SELECT create_synced_table('good', %s, ARRAY['id'], 'continuous')", (good,))
    write(bad, [{"id": 5}, {"id": 5}])  # one key twice in one commit: every sync fails
    assert wait_for(lambda: wdb.execute(
        "SELECT consecutive_failures >= 2 FROM lakesync.status WHERE target = 'public.bad'"
    ).fetchone() == (True,), timeout=20)
    state, error, nxt = wdb.execute(
        "SELECT state, last_error, next_sync FROM lakesync.status WHERE target = 'public.bad'"
    ).fetchone()
    assert state == "online_pipeline_failed" and "(id)=(5)" in error and nxt is not None
    for i in range(2, 4):
        write(good, [{"id": i}])
        assert wait_for(lambda: ids(wdb, "good") == list(range(1, i + 1)), timeout=15)
    assert ids(wdb, "bad") == [1]
    failed = wdb.execute("SELECT count(*) FROM lakesync.sync_runs "
                         "WHERE target = 'public.bad' AND status = 'failed'").fetchone()[0]
    assert failed >= 2
    # Fixed in Delta and rebuilt once (the change feed keeps the bad commit): the worker goes on.
    DeltaTable(bad).delete("id = 5")
    os.system(f"chmod -R a+rX {bad}")
    wdb.execute("SELECT full_refresh('bad')")
    write(bad, [{"id": 6}])
    assert wait_for(lambda: ids(wdb, "bad") == [1, 6], timeout=20), ids(wdb, "bad")
    assert wdb.execute("SELECT state, consecutive_failures FROM lakesync.status "
                       "WHERE target = 'public.bad'").fetchone() == ("online_continuous_update", 0)


def test_pause_resume_and_alter(wdb):
    path = table_path()
    write(path, [{"id": 1}])
    wdb.execute("SELECT create_synced_table('t', %s, ARRAY['id'])", (path,))
    assert wdb.execute("SELECT alter_synced_table('t', 'continuous')").fetchone() == (True,)
    write(path, [{"id": 2}])
    assert wait_for(lambda: ids(wdb) == [1, 2], timeout=15)
    assert wdb.execute("SELECT pause_sync('t')").fetchone() == (True,)
    assert wdb.execute("SELECT state FROM lakesync.status").fetchone() == ("paused",)
    write(path, [{"id": 3}])
    time.sleep(1.5)
    assert ids(wdb) == [1, 2]
    assert wdb.execute("SELECT resume_sync('t')").fetchone() == (True,)
    assert wait_for(lambda: ids(wdb) == [1, 2, 3], timeout=15)
    assert wdb.execute("SELECT change_source FROM lakesync.sync_runs WHERE status <> 'running' "
                       "ORDER BY run_id DESC LIMIT 1").fetchone() == ("cdf",)
    with pytest.raises(psycopg.errors.UndefinedObject):
        wdb.execute("SELECT pause_sync('nope')")


def test_worker_syncs_as_the_owner_never_as_a_superuser(wdb, wcluster):
    wdb.execute("CREATE ROLE wapp LOGIN")
    wdb.execute("GRANT lakesync_user TO wapp")
    wdb.execute("GRANT pg_read_server_files TO wapp")
    wdb.execute("GRANT CREATE ON SCHEMA public TO wapp")
    try:
        path = table_path()
        write(path, [{"id": 1}])
        with psycopg.connect(wcluster.dsn(dbname=wdb.dbname_, user="wapp"),
                             autocommit=True) as c:
            c.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'continuous')", (path,))
        write(path, [{"id": 2}])
        assert wait_for(lambda: ids(wdb) == [1, 2], timeout=15)
        wdb.execute("REVOKE pg_read_server_files FROM wapp")
        write(path, [{"id": 3}])
        assert wait_for(lambda: wdb.execute(
            "SELECT state FROM lakesync.synced_tables").fetchone() == ("failed",), timeout=15)
        owner, status, message = wdb.execute(
            "SELECT owner, status, message FROM lakesync.sync_runs WHERE status <> 'running' "
            "ORDER BY run_id DESC LIMIT 1"
        ).fetchone()
        assert (owner, status) == ("wapp", "failed") and "permission denied to read" in message
        assert ids(wdb) == [1, 2]
    finally:
        wdb.execute("DROP OWNED BY wapp CASCADE")
        wdb.execute("DROP ROLE wapp")


def test_deferred_triggers_of_the_owner_run_as_the_owner(wdb, wcluster):
    """The worker commits as the owner too: a deferred trigger fires at commit."""
    wdb.execute("CREATE ROLE wowner LOGIN")
    wdb.execute("GRANT lakesync_user TO wowner")
    wdb.execute("GRANT pg_read_server_files TO wowner")
    wdb.execute("GRANT CREATE ON SCHEMA public TO wowner")
    try:
        path = table_path()
        write(path, [{"id": 1}])
        with psycopg.connect(wcluster.dsn(dbname=wdb.dbname_, user="wowner"),
                             autocommit=True) as c:
            c.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'continuous')", (path,))
            c.execute("CREATE TABLE who (name text)")
            c.execute("CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                      "INSERT INTO public.who VALUES (current_user); RETURN NULL; END $$")
            c.execute("CREATE CONSTRAINT TRIGGER later AFTER INSERT ON t DEFERRABLE "
                      "INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION note()")
        write(path, [{"id": 2}])
        assert wait_for(lambda: ids(wdb) == [1, 2], timeout=15)
        assert wdb.execute("SELECT name FROM who").fetchall() == [("wowner",)]
    finally:
        wdb.execute("DROP OWNED BY wowner CASCADE")
        wdb.execute("DROP ROLE wowner")


def test_a_table_given_to_another_role_is_not_synced_with_the_old_owners_rights(wdb):
    wdb.execute("CREATE ROLE wother")
    try:
        path = table_path()
        write(path, [{"id": 1}])
        wdb.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'continuous')", (path,))
        wdb.execute("ALTER TABLE t OWNER TO wother")
        write(path, [{"id": 2}])
        assert wait_for(lambda: wdb.execute(
            "SELECT state FROM lakesync.synced_tables").fetchone() == ("failed",), timeout=15)
        error = wdb.execute("SELECT last_error FROM lakesync.synced_tables").fetchone()[0]
        assert 'owned by "wother" but its spec by "postgres"' in error, error
        assert ids(wdb) == [1]
    finally:
        wdb.execute("DROP OWNED BY wother CASCADE")
        wdb.execute("DROP ROLE wother")


def test_drop_extension_is_not_held_up_by_a_sync_in_flight(wdb):
    path = table_path()
    write(path, [{"id": 1}])
    wdb.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'continuous')", (path,))
    wdb.execute(f'ALTER DATABASE "{wdb.dbname_}" SET lakesync.debug_pause = \'commit:30\'')
    write(path, [{"id": 2}])
    assert wait_for(lambda: wdb.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_lakesync sync' "
        "AND datname = current_database()").fetchone() == (1,), timeout=15)
    time.sleep(0.5)
    began = time.time()
    wdb.execute("DROP EXTENSION pg_lakesync CASCADE")  # the read-only triggers go too
    assert time.time() - began < 10
    wdb.execute(f'ALTER DATABASE "{wdb.dbname_}" RESET lakesync.debug_pause')
    assert ids(wdb) == [1]  # the sync in flight rolled back


def test_drop_database_is_not_held_up_by_the_workers(wcluster):
    name = f"wd_{os.getpid()}"
    with psycopg.connect(wcluster.dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(wcluster.dsn(dbname=name), autocommit=True) as c:
        c.execute("CREATE EXTENSION pg_lakesync")
        path = table_path()
        write(path, [{"id": 1}])
        c.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'continuous')", (path,))
        assert wait_for(lambda: scheduler_running(c), timeout=15)
    with psycopg.connect(wcluster.dsn(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}"')  # no FORCE
        assert admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                             (name,)).fetchone() == (0,)


def test_drop_extension_is_not_held_up(wdb):
    path = table_path()
    write(path, [{"id": 1}])
    wdb.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'continuous')", (path,))
    assert wait_for(lambda: scheduler_running(wdb), timeout=15)
    wdb.execute("SET lock_timeout = '5s'")
    wdb.execute("DROP EXTENSION pg_lakesync CASCADE")  # the read-only triggers go too
    assert wait_for(lambda: wdb.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_lakesync scheduler' "
        "AND datname = current_database()").fetchone() == (0,), timeout=10)


# -- crashes, restarts, shutdowns (a cluster of their own: they take the server down) -----------

@pytest.fixture()
def own(wcluster):
    c = Cluster(conf=wcluster.conf).start()
    with psycopg.connect(c.dsn(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_lakesync")
    yield c
    c.stop()


def connect(c):
    return psycopg.connect(c.dsn(), autocommit=True)


def sync_worker_pid(conn):
    row = conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_lakesync sync'"
                       ).fetchone()
    return row[0] if row else None


@pytest.mark.parametrize("point", ["read", "commit"])
def test_sigkill_of_a_sync_worker_loses_and_doubles_nothing(own, point):
    path = table_path()
    write(path, [{"id": 1}])
    with connect(own) as c:
        c.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'continuous')", (path,))
        c.execute(f"ALTER DATABASE postgres SET lakesync.debug_pause = '{point}:30'")
        write(path, [{"id": 2}, {"id": 3}])
        assert wait_for(lambda: sync_worker_pid(c) is not None, timeout=15)
        time.sleep(1.0)  # at the pause point
        os.kill(sync_worker_pid(c), 9)
    # The postmaster restarts every process (a crash); the launcher comes back by itself.
    time.sleep(2)
    assert wait_for(lambda: _try(lambda: connect(own).close()), timeout=30)
    with connect(own) as c:
        c.execute("ALTER DATABASE postgres RESET lakesync.debug_pause")
        assert wait_for(lambda: ids(c) == [1, 2, 3], timeout=30), ids(c)
        runs = c.execute("SELECT from_version, to_version, status FROM lakesync.sync_runs "
                         "ORDER BY run_id").fetchall()
        # The killed run, left 'running', is marked failed when the scheduler starts again.
        assert runs == [(None, 0, "succeeded"), (None, None, "failed"),
                        (0, 1, "succeeded")], runs
        message, = c.execute("SELECT message FROM lakesync.sync_runs WHERE status = 'failed'"
                             ).fetchone()
        assert message.startswith("the sync did not finish: its background worker (pid ")
        assert "nothing it wrote was kept" in message


def _try(f):
    try:
        f()
        return True
    except psycopg.Error:
        return False


def test_schedules_resume_after_a_restart(own):
    path = table_path()
    write(path, [{"id": 1}])
    with connect(own) as c:
        c.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'continuous')", (path,))
    own.pg_ctl("restart", "-m", "fast")
    write(path, [{"id": 2}])
    with connect(own) as c:
        assert wait_for(lambda: ids(c) == [1, 2], timeout=20), ids(c)


def test_fast_shutdown_stops_an_inflight_sync_and_rolls_it_back(own):
    path = table_path()
    write(path, [{"id": 1}])
    with connect(own) as c:
        c.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'continuous')", (path,))
        # Long enough to be caught in flight; a worker started after the restart, before the
        # RESET below, pauses once more.
        c.execute("ALTER DATABASE postgres SET lakesync.debug_pause = 'commit:6'")
        write(path, [{"id": 2}])
        assert wait_for(lambda: sync_worker_pid(c) is not None, timeout=15)
        time.sleep(1.0)
    began = time.time()
    own.pg_ctl("stop", "-m", "fast")
    took = time.time() - began
    assert took < 10, took  # generous: a loaded machine (measured: see the closing note)
    own.pg_ctl("start")
    with connect(own) as c:
        assert ids(c) == [1]  # the in-flight sync rolled back
        c.execute("ALTER DATABASE postgres RESET lakesync.debug_pause")
        assert wait_for(lambda: ids(c) == [1, 2], timeout=30), ids(c)
    print(f"fast shutdown with a sync in flight: {took:.2f} s")


def test_hot_standby_runs_no_worker_and_serves_the_synced_rows(own):
    """A streaming standby of a preloaded primary: our workers start only after recovery, so it
    runs none; the rows the primary's worker synced arrive by replication."""
    import shutil
    import subprocess
    from pgcluster import PG_BIN, _as_postgres, _free_port
    path = table_path()
    write(path, [{"id": 1}])
    with connect(own) as c:
        c.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'continuous')", (path,))
    standby = os.path.join(own.dir, "standby")
    _as_postgres([f"{PG_BIN}/pg_basebackup", "-D", standby, "-h", "127.0.0.1",
                  "-p", str(own.port), "-U", "postgres", "-R", "-X", "stream"])
    port = _free_port()
    with open(os.path.join(standby, "postgresql.auto.conf"), "a") as f:
        f.write(f"port = {port}\nhot_standby = on\n")
    shutil.chown(os.path.join(standby, "postgresql.auto.conf"), "postgres", "postgres")
    _as_postgres([f"{PG_BIN}/pg_ctl", "-D", standby, "-l", os.path.join(own.dir, "standby.log"),
                  "-w", "-t", "60", "start"])
    try:
        dsn = f"host=127.0.0.1 port={port} dbname=postgres user=postgres"
        write(path, [{"id": 2}, {"id": 3}])
        with psycopg.connect(dsn, autocommit=True) as s:
            assert s.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            assert wait_for(lambda: ids(s) == [1, 2, 3], timeout=20), ids(s)
            time.sleep(1)
            assert s.execute("SELECT count(*) FROM pg_stat_activity "
                             "WHERE backend_type LIKE 'pg_lakesync%'").fetchone() == (0,)
            assert s.execute("SELECT worker FROM lakesync.status").fetchone()[0] \
                .startswith("not running: a hot standby")
    finally:
        subprocess.run(["sudo", "-u", "postgres", f"{PG_BIN}/pg_ctl", "-D", standby, "-m",
                        "immediate", "-w", "stop"], capture_output=True)
