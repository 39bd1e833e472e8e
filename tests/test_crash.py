"""Exactly once under SIGKILL and concurrency: a TRIGGERED sync killed at any point leaves the old
state, the next sync continues from the last committed version, and no change is applied twice.

These tests kill backends, which makes the postmaster restart every session, so they run on a
cluster of their own."""
import os
import signal
import threading

import psycopg
import pytest
from deltalake import DeltaTable

from pgcluster import Cluster, wait_for
from test_triggered import create, delta_rows, pg_table, readable, sync, table_path, write


@pytest.fixture(scope="module")
def own_cluster():
    c = Cluster()
    if c.external:
        pytest.skip("kills backends: needs a throwaway cluster")
    c.start()
    yield c
    c.stop()


def connect(cluster, dbname):
    conn = None

    def attempt():
        nonlocal conn
        try:
            conn = psycopg.connect(cluster.dsn(dbname=dbname), autocommit=True)
            return True
        except psycopg.OperationalError:
            return False

    assert wait_for(attempt, timeout=60), "the cluster did not come back"
    return conn


@pytest.fixture()
def crash_db(own_cluster):
    name = f"c_{os.getpid()}_{os.urandom(3).hex()}"
    with connect(own_cluster, "postgres") as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    conn = connect(own_cluster, name)
    conn.execute("CREATE EXTENSION pg_lakesync")
    yield name
    conn.close()


def make_changes(path):
    dt = DeltaTable(path)
    dt.update(predicate="id < 300", updates={"val": "'updated'"})
    dt.delete(predicate="id >= 900")
    write(path, [{"id": i, "val": "new"} for i in range(1000, 1200)])
    readable(path)


def paused(cluster, pid, point):
    return f'backend {pid} paused at "{point}"' in cluster.log()


@pytest.mark.parametrize("point", ["read", "apply", "commit"])
def test_sigkill_during_sync_leaves_old_state_and_next_sync_continues(own_cluster, crash_db,
                                                                      point):
    path = table_path()
    write(path, [{"id": i, "val": "v0"} for i in range(1000)])
    db = connect(own_cluster, crash_db)
    create(db, path)
    make_changes(path)
    victim = connect(own_cluster, crash_db)
    pid = victim.execute("SELECT pg_backend_pid()").fetchone()[0]
    victim.execute(f"SET lakesync.debug_pause = '{point}'")
    outcome = {}

    def run():
        try:
            sync(victim)
            outcome["finished"] = True
        except psycopg.Error as e:
            outcome["error"] = type(e).__name__

    t = threading.Thread(target=run)
    t.start()
    assert wait_for(lambda: paused(own_cluster, pid, point), timeout=30)
    ready = "database system is ready to accept connections"
    restarts = own_cluster.log().count(ready)
    os.kill(pid, signal.SIGKILL)
    t.join(60)
    assert "error" in outcome, outcome
    # The postmaster restarts every backend after a crash: a connection made before it noticed
    # would be closed under the next query.
    assert wait_for(lambda: own_cluster.log().count(ready) > restarts, timeout=60)

    db = connect(own_cluster, crash_db)
    assert pg_table(db) == delta_rows(path, version=0)
    assert db.execute("SELECT state, synced_version FROM lakesync.synced_tables").fetchone() == (
        "synced", 0)
    r = sync(db)
    assert r[:6] == (0, 3, 200, 300, 100, "cdf")
    assert pg_table(db) == delta_rows(path)
    runs = db.execute("SELECT change_source, from_version, to_version, status "
                      "FROM lakesync.sync_runs ORDER BY run_id").fetchall()
    assert runs == [("snapshot", None, 0, "succeeded"), ("cdf", 0, 3, "succeeded")]
    db.close()


def test_two_syncs_at_once_apply_the_changes_once(own_cluster, crash_db):
    path = table_path()
    write(path, [{"id": i, "val": "v0"} for i in range(1000)])
    db = connect(own_cluster, crash_db)
    create(db, path)
    make_changes(path)
    first = connect(own_cluster, crash_db)
    pid = first.execute("SELECT pg_backend_pid()").fetchone()[0]
    first.execute("SET lakesync.debug_pause = 'commit:3'")
    results = {}

    def run(name, conn):
        results[name] = sync(conn)

    a = threading.Thread(target=run, args=("first", first))
    a.start()
    assert wait_for(lambda: paused(own_cluster, pid, "commit"), timeout=30)
    second = connect(own_cluster, crash_db)
    b = threading.Thread(target=run, args=("second", second))
    b.start()
    a.join(60)
    b.join(60)
    assert results["first"][:6] == (0, 3, 200, 300, 100, "cdf")
    assert results["second"][5] == "none"
    assert pg_table(db) == delta_rows(path)
    assert db.execute("SELECT count(*) FROM lakesync.sync_runs WHERE change_source = 'cdf'"
                      ).fetchone() == (1,)
