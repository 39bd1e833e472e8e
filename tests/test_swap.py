"""A full replace (SNAPSHOT re-sync, full_refresh) builds a new table and swaps its files in:
what must survive the swap, what it must leave behind (nothing), where it must not be used, and
that first loads and swaps write frozen pages."""
import threading
import time

import psycopg
import pytest

from pgcluster import wait_for
from test_snapshot import rows_of, table_path, write


def filenode(db, table):
    return db.execute("SELECT pg_relation_filenode(%s::regclass)", (table,)).fetchone()[0]


def checked(db, table):
    """Every index of `table` holds exactly its heap's rows (amcheck), and the rows read back."""
    db.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    for (index,) in db.execute("SELECT indexrelid::regclass::text FROM pg_index "
                               "WHERE indrelid = %s::regclass", (table,)).fetchall():
        db.execute("SELECT bt_index_check(%s::regclass, true)", (index,))
    toast = db.execute("SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = %s::regclass",
                       (table,)).fetchone()[0]
    oid = db.execute("SELECT %s::regclass::oid::int", (table,)).fetchone()[0]
    assert toast == f"pg_toast.pg_toast_{oid}"
    # Nothing of the build is left.
    assert db.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'pg\\_temp\\_%%' "
                      "AND relnamespace <> 'pg_toast'::regnamespace").fetchone() == (0,)


def frozen(db, table):
    db.execute("CREATE EXTENSION IF NOT EXISTS pg_visibility")
    pages, all_frozen = db.execute(
        "SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int, all_frozen "
        "FROM pg_visibility_map_summary(%s::regclass)", (table, table)).fetchone()
    return pages > 0 and pages == all_frozen


def test_swap_keeps_dependents_and_replaces_files(db):
    path = table_path()
    long = "x" * 5000  # TOASTed
    write(path, [{"id": i, "val": f"v{i}", "big": long + str(i)} for i in range(200)])
    db.execute("SELECT create_synced_table('s', %s, ARRAY['id'])", (path,))
    assert frozen(db, "s")
    oid = db.execute("SELECT 's'::regclass::oid").fetchone()[0]
    db.execute("CREATE INDEX s_val ON s (val) WHERE id > 10")
    db.execute("CREATE UNIQUE INDEX s_big ON s (md5(big))")
    db.execute("ALTER TABLE s ADD COLUMN note text")  # the user's own column, no default
    db.execute("ALTER TABLE s ADD COLUMN gone int")
    db.execute("ALTER TABLE s DROP COLUMN gone")  # a dropped column stays in the heap's layout
    db.execute("CREATE VIEW s_view AS SELECT id, val FROM s WHERE id % 2 = 0")
    db.execute("CREATE ROLE swap_reader")
    db.execute("GRANT SELECT ON s, s_view TO swap_reader")
    db.execute("ALTER TABLE s ENABLE ROW LEVEL SECURITY")
    db.execute("CREATE POLICY only_small ON s FOR SELECT TO swap_reader USING (id < 150)")
    db.execute("COMMENT ON TABLE s IS 'gold'")
    before = filenode(db, "s")
    write(path, [{"id": i, "val": f"w{i}", "big": long + str(i)} for i in range(100, 300)],
          mode="overwrite")
    r = db.execute("SELECT rows_loaded, rows_deleted FROM sync_now('s')").fetchone()
    assert r == (200, 200)
    assert filenode(db, "s") != before
    assert db.execute("SELECT 's'::regclass::oid").fetchone()[0] == oid
    rows = db.execute("SELECT id, val, big, note FROM s ORDER BY id").fetchall()
    assert rows == [(i, f"w{i}", long + str(i), None) for i in range(100, 300)]
    assert db.execute("SELECT count(*), min(id) FROM s_view").fetchone() == (100, 100)
    db.execute("SET enable_seqscan = off")
    assert db.execute("SELECT id FROM s WHERE val = 'w200'").fetchone() == (200,)
    db.execute("RESET enable_seqscan")
    db.execute("SET ROLE swap_reader")
    assert db.execute("SELECT count(*) FROM s").fetchone() == (50,)
    db.execute("RESET ROLE")
    assert db.execute("SELECT obj_description('s'::regclass)").fetchone() == ("gold",)
    checked(db, "s")
    assert frozen(db, "s")
    # No dead rows, no second copy: the table is as large as after a first load of these rows.
    assert db.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 's'"
                      ).fetchone() == (0,)
    # Writes stay refused; the next sync works on the swapped table.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        db.execute("DELETE FROM s")
    write(path, [{"id": 999, "val": "z", "big": "b"}])
    assert db.execute("SELECT rows_loaded FROM full_refresh('s')").fetchone() == (201,)
    checked(db, "s")


def test_old_files_are_removed_at_commit_and_kept_on_rollback(db):
    path = table_path()
    write(path, rows_of(1000))
    db.execute("SELECT create_synced_table('s', %s, ARRAY['id'])", (path,))
    datadir = db.execute("SHOW data_directory").fetchone()[0]
    old = db.execute("SELECT pg_relation_filepath('s')").fetchone()[0]
    write(path, rows_of(10, start=5000))
    db.execute("BEGIN")
    db.execute("SELECT full_refresh('s')")
    db.execute("ROLLBACK")
    assert db.execute("SELECT pg_relation_filepath('s')").fetchone() == (old,)
    assert db.execute("SELECT count(*) FROM s").fetchone() == (1000,)
    db.execute("SELECT full_refresh('s')")
    assert db.execute("SELECT count(*), min(id) FROM s").fetchone() == (1010, 0)
    db.execute("CHECKPOINT")  # unlinks the old files
    import os
    assert not os.path.exists(os.path.join(datadir, old)) or os.path.getsize(
        os.path.join(datadir, old)) == 0


def test_duplicate_key_leaves_table_as_it_was(db):
    path = table_path()
    write(path, rows_of(10))
    db.execute("SELECT create_synced_table('s', %s, ARRAY['id'])", (path,))
    before = filenode(db, "s")
    write(path, rows_of(3, start=5))  # 5, 6, 7 again
    with pytest.raises(psycopg.errors.UniqueViolation, match=r"\(id\)=\(5\)"):
        db.execute("SELECT full_refresh('s')")
    assert filenode(db, "s") == before
    assert db.execute("SELECT count(*) FROM s").fetchone() == (10,)
    checked(db, "s")


@pytest.mark.parametrize("setup", [
    "CREATE PUBLICATION p_{n} FOR TABLE s",
    "CREATE FUNCTION f_{n}() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END' ;; "
    "CREATE TRIGGER t_{n} AFTER INSERT ON s FOR EACH ROW EXECUTE FUNCTION f_{n}()",
    "CREATE TABLE app_{n} (s_id bigint REFERENCES s (id))",
    "ALTER TABLE s ADD CHECK (id >= 0)",
    "ALTER TABLE s ADD COLUMN seen timestamptz DEFAULT now()",
])
def test_replaced_in_place_where_a_swap_would_skip_something(db, setup):
    path = table_path()
    write(path, rows_of(10))
    db.execute("SELECT create_synced_table('s', %s, ARRAY['id'])", (path,))
    for sql in setup.format(n=db.dbname_.replace("-", "_")).split(" ;; "):
        db.execute(sql)
    before = filenode(db, "s")
    write(path, rows_of(5, start=10))
    assert db.execute("SELECT rows_loaded FROM full_refresh('s')").fetchone() == (15,)
    assert filenode(db, "s") == before
    assert db.execute("SELECT count(*) FROM s").fetchone() == (15,)


def test_in_place_inside_a_repeatable_read_transaction(db):
    """Frozen rows need a transaction with no older snapshot; in one, the replace is in place,
    so the transaction's own snapshot rules hold."""
    path = table_path()
    write(path, rows_of(10))
    db.execute("SELECT create_synced_table('s', %s, ARRAY['id'])", (path,))
    before = filenode(db, "s")
    write(path, rows_of(5, start=10))
    db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    db.execute("SELECT count(*) FROM lakesync.synced_tables")
    db.execute("SELECT full_refresh('s')")
    db.execute("COMMIT")
    assert filenode(db, "s") == before
    assert db.execute("SELECT count(*) FROM s").fetchone() == (15,)


def test_readers_wait_only_for_the_swap(cluster, db):
    """Readers run through the whole build; only the swap itself holds them, and they see the
    old rows or the new ones, never an empty or partial table."""
    path = table_path()
    write(path, rows_of(200_000))
    db.execute("SELECT create_synced_table('s', %s, ARRAY['id'])", (path,))
    write(path, rows_of(1, start=200_000))
    db.execute("SELECT alter_synced_table('s', options => '{\"full_refresh_above\": false}')")
    seen, longest, stop = set(), [0.0], threading.Event()

    def read():
        with psycopg.connect(cluster.dsn(dbname=db.dbname_), autocommit=True) as c:
            while not stop.is_set():
                t = time.perf_counter()
                seen.add(c.execute("SELECT count(*) FROM s").fetchone()[0])
                longest[0] = max(longest[0], time.perf_counter() - t)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        t = time.perf_counter()
        db.execute("SELECT sync_now('s')")
        took = time.perf_counter() - t
    finally:
        stop.set()
        reader.join()
    assert seen <= {200_000, 200_001} and 200_001 in seen
    assert longest[0] < max(0.5, took / 3), (longest[0], took)


def waiting_to_swap(admin, pid):
    """The sync is in its lock wait: trying (an Extension wait) or queued briefly (a Lock wait)."""
    return admin.execute("SELECT wait_event_type IN ('Extension', 'Lock') FROM pg_stat_activity "
                         "WHERE pid = %s", (pid,)).fetchone()[0]


def held_while_resyncing(cluster, db, rows):
    """A synced table `s` of `rows` rows with one row more in Delta, to be swapped in, and a
    session that has read it and so holds ACCESS SHARE until it ends. Returns that session, the
    table's file before the swap, and the syncing session's pid."""
    path = table_path()
    write(path, rows_of(rows))
    db.execute("SELECT create_synced_table('s', %s, ARRAY['id'])", (path,))
    before = filenode(db, "s")
    write(path, rows_of(1, start=rows))
    db.execute("SELECT alter_synced_table('s', options => '{\"full_refresh_above\": false}')")
    holder = psycopg.connect(cluster.dsn(dbname=db.dbname_))
    holder.execute("SELECT count(*) FROM s")
    return holder, before, db.execute("SELECT pg_backend_pid()").fetchone()[0]


def test_cancel_while_waiting_to_swap(cluster, db):
    """A reader holding the table: the sync waits to swap; cancelled there, it leaves the table
    as it was."""
    holder, before, pid = held_while_resyncing(cluster, db, 100)
    with psycopg.connect(cluster.dsn(dbname=db.dbname_), autocommit=True) as admin:
        def cancel():
            wait_for(lambda: waiting_to_swap(admin, pid), timeout=30)
            admin.execute("SELECT pg_cancel_backend(%s)", (pid,))
        t = threading.Thread(target=cancel)
        t.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            db.execute("SELECT sync_now('s')")
        t.join()
    holder.rollback()
    holder.close()
    assert filenode(db, "s") == before
    assert db.execute("SELECT count(*) FROM s").fetchone() == (100,)
    assert db.execute("SELECT rows_loaded FROM sync_now('s')").fetchone() == (101,)
    checked(db, "s")


def test_a_long_reader_never_stalls_other_readers(cluster, db):
    """A reader holding the table for seconds: the sync waits for it, yet readers arriving
    meanwhile are never queued behind the sync for longer than a brief queued attempt (an
    ordinary lock request would hold them all until the long reader ends)."""
    holder, _, pid = held_while_resyncing(cluster, db, 1000)
    longest, probes, stop = [0.0], [0], threading.Event()

    def probe():
        with psycopg.connect(cluster.dsn(dbname=db.dbname_), autocommit=True) as c:
            while not stop.is_set():
                t = time.perf_counter()
                c.execute("SELECT id FROM s WHERE id = 7").fetchone()
                longest[0] = max(longest[0], time.perf_counter() - t)
                probes[0] += 1
                time.sleep(0.01)

    syncing = threading.Thread(target=lambda: db.execute("SELECT sync_now('s')"))
    with psycopg.connect(cluster.dsn(dbname=db.dbname_), autocommit=True) as admin:
        syncing.start()
        wait_for(lambda: waiting_to_swap(admin, pid), timeout=30)
        prober = threading.Thread(target=probe)
        prober.start()
        time.sleep(6)  # past the first queued attempts
        held = admin.execute("SELECT state FROM pg_stat_activity WHERE pid = %s",
                             (pid,)).fetchone()
        holder.rollback()
        syncing.join(timeout=30)
        stop.set()
        prober.join()
    holder.close()
    assert held == ("active",)  # the sync was still waiting for the long reader
    assert not syncing.is_alive()
    assert db.execute("SELECT count(*) FROM s").fetchone() == (1001,)
    assert probes[0] > 50
    assert longest[0] < 1.0, longest[0]  # a queued attempt lasts 200 ms


def test_a_reader_that_waits_for_the_sync_is_a_deadlock_not_a_hang(cluster, db):
    """A session that read the table and then waits for the sync's own lock would never let go:
    the sync then queues like any lock request and Postgres' deadlock check ends one of the two."""
    holder, _, pid = held_while_resyncing(cluster, db, 1000)
    outcome = {}

    def run_sync():
        try:
            outcome["sync"] = db.execute("SELECT rows_loaded FROM sync_now('s')").fetchone()
        except psycopg.errors.DeadlockDetected:
            outcome["sync"] = "deadlock"

    syncing = threading.Thread(target=run_sync)
    t = time.perf_counter()
    with psycopg.connect(cluster.dsn(dbname=db.dbname_), autocommit=True) as admin:
        syncing.start()
        wait_for(lambda: waiting_to_swap(admin, pid), timeout=30)
        try:
            # Conflicts with the EXCLUSIVE lock the sync holds while it builds the new table.
            holder.execute("LOCK TABLE s IN ROW EXCLUSIVE MODE")
            outcome["holder"] = "locked"
        except psycopg.errors.DeadlockDetected:
            outcome["holder"] = "deadlock"
        holder.rollback()
        syncing.join(timeout=60)
    holder.close()
    took = time.perf_counter() - t
    assert not syncing.is_alive()
    assert sorted(outcome.values(), key=str).count("deadlock") == 1, outcome
    assert took < 20, took
    count = db.execute("SELECT count(*) FROM s").fetchone()[0]
    assert count == (1001 if outcome["sync"] != "deadlock" else 1000)


def test_lock_timeout_bounds_the_wait_to_swap(cluster, db):
    holder, before, _ = held_while_resyncing(cluster, db, 100)
    db.execute("SET lock_timeout = '3s'")
    t = time.perf_counter()
    with pytest.raises(psycopg.errors.LockNotAvailable) as e:
        db.execute("SELECT sync_now('s')")
    took = time.perf_counter() - t
    db.execute("RESET lock_timeout")
    holder.rollback()
    holder.close()
    assert 'synced table "public.s"' in e.value.diag.message_primary
    assert "lock_timeout" in e.value.diag.message_hint
    assert 3 <= took < 10, took
    assert filenode(db, "s") == before
    assert db.execute("SELECT count(*) FROM s").fetchone() == (100,)
    assert db.execute("SELECT state FROM lakesync.synced_tables").fetchone() == ("failed",)
    assert db.execute("SELECT rows_loaded FROM sync_now('s')").fetchone() == (101,)


def test_snapshot_resync_applies_only_changed_files_when_few(db):
    path = table_path()
    for part in range(10):
        write(path, rows_of(100, start=100 * part))
    # Explicit: the measured default applies only to tables of 16 MiB and more.
    db.execute("SELECT create_synced_table('s', %s, ARRAY['id'], "
               "options => '{\"full_refresh_above\": 0.5}')", (path,))
    before = filenode(db, "s")
    write(path, rows_of(1, start=1000))
    r = db.execute("SELECT rows_loaded FROM sync_now('s')").fetchone()
    assert r == (1,)
    assert filenode(db, "s") == before  # no swap: only the new file was read
    assert db.execute("SELECT change_source FROM lakesync.sync_runs ORDER BY run_id DESC LIMIT 1"
                      ).fetchone() == ("files",)
    # A rewrite of most files: more than the crossover, so it reads everything (and swaps).
    write(path, rows_of(600, tag="w"), mode="overwrite")
    r = db.execute("SELECT rows_loaded, rows_deleted FROM sync_now('s')").fetchone()
    assert r == (600, 1001)
    assert filenode(db, "s") != before
    assert db.execute("SELECT change_source FROM lakesync.sync_runs ORDER BY run_id DESC LIMIT 1"
                      ).fetchone() == ("snapshot",)
    assert db.execute("SELECT count(*), min(val) FROM s").fetchone() == (600, "w0")
    # The option decides: always in full.
    db.execute("SELECT alter_synced_table('s', options => '{\"full_refresh_above\": false}')")
    write(path, rows_of(1, start=600))
    db.execute("SELECT sync_now('s')")
    assert db.execute("SELECT change_source FROM lakesync.sync_runs ORDER BY run_id DESC LIMIT 1"
                      ).fetchone() == ("snapshot",)
    assert db.execute("SELECT count(*) FROM s").fetchone() == (601,)


def test_incremental_sync_switches_to_full_refresh_above_the_crossover(db):
    path = table_path()
    write_cdf = dict(configuration={"delta.enableChangeDataFeed": "true"})
    from deltalake import write_deltalake, DeltaTable
    import pyarrow as pa
    write_deltalake(path, pa.Table.from_pylist(rows_of(1000)), **write_cdf)
    import os
    os.system(f"chmod -R a+rX {path}")
    db.execute("SELECT create_synced_table('s', %s, ARRAY['id'], 'triggered', "
               "'{\"full_refresh_above\": 0.5}')", (path,))
    # A few rows: applied as changes.
    write(path, rows_of(10, start=1000))
    r = db.execute("SELECT rows_inserted, message FROM sync_now('s')").fetchone()
    assert r[0] == 10 and "full refresh" not in r[1], r
    # Every row updated: the change files outweigh the table, so it reloads instead.
    DeltaTable(path).update(updates={"val": "'u'"})
    os.system(f"chmod -R a+rX {path}")
    r = db.execute("SELECT rows_loaded, message FROM sync_now('s')").fetchone()
    assert r[0] == 1010
    assert "(full refresh: the changes are " in r[1], r
    assert db.execute("SELECT count(*), min(val), max(val) FROM s").fetchone() == (1010, "u", "u")
    assert db.execute("SELECT change_source FROM lakesync.sync_runs ORDER BY run_id DESC LIMIT 1"
                      ).fetchone() == ("snapshot",)
    # Turned off: the same kind of change is applied as changes.
    db.execute("SELECT alter_synced_table('s', options => '{\"full_refresh_above\": false}')")
    DeltaTable(path).update(updates={"val": "'v'"})
    os.system(f"chmod -R a+rX {path}")
    r = db.execute("SELECT rows_updated, message FROM sync_now('s')").fetchone()
    assert r[0] == 1010 and "full refresh" not in r[1], r
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="full_refresh_above"):
        db.execute("SELECT alter_synced_table('s', options => '{\"full_refresh_above\": 0}')")
