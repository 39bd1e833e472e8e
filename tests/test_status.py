"""What lakesync.status shows beyond the catalog, on a cluster with the library preloaded: the
latest Delta version the worker has seen, versions behind and lag for a table nobody syncs, a
running sync's progress and the triggered states; cron schedules."""
import json
import threading
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from conftest import database_with_extension
from pgcluster import wait_for
from test_worker import ids, scheduler_running, table_path, wcluster, write  # noqa: F401

STATUS = ("SELECT state, synced_version, latest_version, versions_behind, lag_seconds "
          "FROM lakesync.status WHERE target = %s")


@pytest.fixture()
def sdb(wcluster):  # noqa: F811
    yield from database_with_extension(wcluster, "s")


def test_latest_version_versions_behind_and_lag_of_an_on_demand_table(sdb):
    path = table_path()
    write(path, [{"id": 1}])
    sdb.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'triggered')", (path,))
    assert wait_for(lambda: scheduler_running(sdb), timeout=15)
    # Caught up: nothing pending.
    assert wait_for(lambda: sdb.execute(STATUS, ("public.t",)).fetchone()
                    == ("online_no_pending_update", 0, 0, 0, 0), timeout=15), \
        sdb.execute(STATUS, ("public.t",)).fetchone()
    first_unsynced = time.time()
    for i in range(2, 5):
        write(path, [{"id": i}])
    # The worker looks at a table that is not continuous every 10 s; it syncs nothing by itself.
    assert wait_for(lambda: sdb.execute(STATUS, ("public.t",)).fetchone()[2] == 3, timeout=25), \
        sdb.execute(STATUS, ("public.t",)).fetchone()
    state, synced, latest, behind, lag = sdb.execute(STATUS, ("public.t",)).fetchone()
    assert (state, synced, latest, behind) == ("online", 0, 3, 3)
    # Lag counts from the commit of the oldest unsynced version (version 1).
    assert time.time() - first_unsynced - 1 <= lag <= time.time() - first_unsynced + 2, lag
    assert ids(sdb) == [1]
    sdb.execute("SELECT sync_now('t')")
    assert sdb.execute(STATUS, ("public.t",)).fetchone() == ("online_no_pending_update", 3, 3, 0, 0)


def test_a_running_sync_shows_its_progress_and_the_triggered_state(sdb, wcluster):  # noqa: F811
    path = table_path()
    write(path, [{"id": i} for i in range(1000)])
    sdb.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'snapshot')", (path,))
    write(path, [{"id": i} for i in range(1000, 1500)])
    # A sync_now held at its commit point, seen from another session: every row written, as
    # many as the Delta log's statistics announced.
    with psycopg.connect(wcluster.dsn(dbname=sdb.dbname_), autocommit=True) as syncer:
        syncer.execute("SET lakesync.debug_pause = 'commit:4'")
        began = time.time()
        pid, = syncer.execute("SELECT pg_backend_pid()").fetchone()
        t = threading.Thread(target=lambda: syncer.execute("SELECT sync_now('t')"))
        t.start()
        try:
            assert wait_for(lambda: sdb.execute(
                "SELECT sync_rows_done FROM lakesync.status").fetchone() == (1500,), timeout=4)
            row = sdb.execute("SELECT state, sync_rows_done, sync_rows_expected, latest_version "
                              "FROM lakesync.status").fetchone()
            assert row == ("online_triggered_update", 1500, 1500, 1), row
            assert sdb.execute("SELECT sync_pid FROM lakesync.board()").fetchone() == (pid,)
        finally:
            t.join()
    assert time.time() - began >= 3
    row = sdb.execute("SELECT state, synced_version, sync_rows_done, sync_rows_expected "
                      "FROM lakesync.status").fetchone()
    assert row == ("online_no_pending_update", 1, None, None), row


def test_a_worker_sync_is_a_running_run_until_it_commits(sdb, wcluster):  # noqa: F811
    path = table_path()
    write(path, [{"id": i} for i in range(10)])
    sdb.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'continuous')", (path,))
    sdb.execute(f'ALTER DATABASE "{sdb.dbname_}" SET lakesync.debug_pause = \'commit:3\'')
    try:
        write(path, [{"id": i} for i in range(10, 17)])
        assert wait_for(lambda: sdb.execute(
            "SELECT count(*) FROM lakesync.sync_runs WHERE status = 'running'").fetchone() == (1,),
            timeout=15)
        worker, = sdb.execute("SELECT pid FROM pg_stat_activity "
                              "WHERE backend_type = 'pg_lakesync sync'").fetchone()
        assert sdb.execute("SELECT pid, finished_at, from_version FROM lakesync.sync_runs "
                           "WHERE status = 'running'").fetchone() == (worker, None, None)
        # An incremental sync's progress: the changes staged; no total from the statistics.
        assert wait_for(lambda: sdb.execute(
            "SELECT sync_rows_done FROM lakesync.status").fetchone() == (7,), timeout=5)
        assert sdb.execute("SELECT sync_rows_expected, latest_version, versions_behind "
                           "FROM lakesync.status").fetchone() == (None, 1, 1)
        assert wait_for(lambda: ids(sdb) == list(range(17)), timeout=15)
    finally:
        sdb.execute(f'ALTER DATABASE "{sdb.dbname_}" RESET lakesync.debug_pause')
    runs = sdb.execute("SELECT from_version, to_version, status, pid IS NOT NULL, "
                       "finished_at IS NOT NULL FROM lakesync.sync_runs ORDER BY run_id"
                       ).fetchall()
    assert runs == [(None, 0, "succeeded", False, True), (0, 1, "succeeded", True, True)], runs


def test_the_board_shows_each_role_only_its_own_tables(sdb, wcluster):  # noqa: F811
    path = table_path()
    write(path, [{"id": 1}])
    sdb.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'triggered')", (path,))
    assert wait_for(lambda: sdb.execute("SELECT count(*) FROM lakesync.board()").fetchone()
                    == (1,), timeout=15)
    sdb.execute("CREATE ROLE snoop LOGIN")
    try:
        sdb.execute("GRANT SELECT ON t TO snoop")
        with psycopg.connect(wcluster.dsn(dbname=sdb.dbname_, user="snoop"),
                             autocommit=True) as c:
            assert c.execute("SELECT count(*) FROM lakesync.board()").fetchone() == (0,)
            assert c.execute("SELECT count(*) FROM lakesync.status").fetchone() == (0,)
    finally:
        sdb.execute("DROP OWNED BY snoop")
        sdb.execute("DROP ROLE snoop")


def test_without_the_preload_what_the_worker_would_see_is_null(db):
    path = table_path()
    write(path, [{"id": 1}])
    db.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'triggered')", (path,))
    assert db.execute("SELECT state, synced_version, latest_version, versions_behind, "
                      "lag_seconds, sync_rows_done FROM lakesync.status").fetchone() == (
        "online", 0, None, None, None, None)
    assert db.execute("SELECT count(*) FROM lakesync.board()").fetchone() == (0,)


def test_cron_schedule_fires_on_the_minute(sdb):
    path = table_path()
    write(path, [{"id": 1}])
    sdb.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'triggered', "
                "'{\"schedule\": \"* * * * *\"}')", (path,))
    started, nxt = sdb.execute("SELECT s.last_sync_started, st.next_sync FROM "
                               "lakesync.synced_tables s JOIN lakesync.status st USING (target)"
                               ).fetchone()
    minute = started.astimezone(timezone.utc).replace(second=0, microsecond=0)
    assert nxt == minute + timedelta(minutes=1)
    write(path, [{"id": 2}])
    assert wait_for(lambda: ids(sdb) == [1, 2], timeout=75), ids(sdb)
    fired, = sdb.execute("SELECT last_sync_started FROM lakesync.synced_tables").fetchone()
    assert fired >= nxt and (fired - nxt).total_seconds() < 5, (fired, nxt)
    assert fired.astimezone(timezone.utc).second < 5


@pytest.mark.parametrize("schedule,after,expected", [
    ("*/15 * * * *", "2026-12-02 10:07:30+00", "2026-12-02 10:15:00+00"),
    ("0 3 * * 1-5", "2026-12-04 03:00:00+00", "2026-12-07 03:00:00+00"),   # Fri -> Mon
    ("0 0 1 * *", "2026-12-31 23:59:59+00", "2027-01-01 00:00:00+00"),
    ("@hourly", "2026-12-02 10:00:00+00", "2026-12-02 11:00:00+00"),
    ("0 12 13 * 5", "2026-12-02 00:00:00+00", "2026-12-04 12:00:00+00"),  # day OR weekday
    ("5 minutes", "2026-12-02 10:00:00+00", None),
])
def test_cron_next(sdb, schedule, after, expected):
    got, = sdb.execute("SELECT lakesync.cron_next(%s, %s::timestamptz)", (schedule, after)
                       ).fetchone()
    want = None if expected is None else datetime.fromisoformat(expected)
    assert got == want


def test_bad_cron_schedules_are_refused_with_a_hint(sdb):
    path = table_path()
    write(path, [{"id": 1}])
    for schedule, words in [("61 * * * *", "is not a valid cron expression"),
                            ("*/5 * * *", "is not a valid cron expression"),
                            ("1 2 3 4 5 6", "must be an interval"),
                            ("* * * *  * *", "is not a valid cron expression"),
                            ("0 0 31 2 *", "never fires"),
                            ("@fortnightly", "is not a valid cron expression")]:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            sdb.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'snapshot', %s)",
                        (path, json.dumps({"schedule": schedule})))
        assert words in e.value.diag.message_primary, (schedule, e.value.diag.message_primary)
        assert "cron expression" in e.value.diag.message_hint
    assert sdb.execute("SELECT count(*) FROM lakesync.synced_tables").fetchone() == (0,)


@pytest.mark.parametrize("schedule,step", [("@ 1 day 2 hours", timedelta(days=1, hours=2)),
                                           ("1 mon 2 days 03:00:00", None),
                                           ("1 day 2 hours 30", None)])
def test_intervals_of_five_words_are_intervals_not_cron(sdb, schedule, step):
    path = table_path()
    write(path, [{"id": 1}])
    sdb.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'snapshot', %s)",
                (path, json.dumps({"schedule": schedule})))
    started, nxt, want = sdb.execute(
        "SELECT s.last_sync_started, st.next_sync, s.last_sync_started + %s::interval "
        "FROM lakesync.synced_tables s JOIN lakesync.status st USING (target)", (schedule,)
    ).fetchone()
    assert nxt == want
    if step:
        assert nxt - started == step


def test_no_more_than_max_workers_syncs_run_at_once(sdb):
    paths = []
    for i in range(6):
        path = table_path()
        write(path, [{"id": 0}])
        sdb.execute(f"SELECT create_synced_table('t{i}', %s, ARRAY['id'], 'continuous')", (path,))
        paths.append(path)
    assert wait_for(lambda: scheduler_running(sdb), timeout=15)
    sdb.execute(f'ALTER DATABASE "{sdb.dbname_}" SET lakesync.debug_pause = \'commit:2\'')
    try:
        for path in paths:
            write(path, [{"id": 1}])
        most, deadline = 0, time.time() + 8
        while time.time() < deadline:
            n, = sdb.execute("SELECT count(*) FROM pg_stat_activity "
                             "WHERE backend_type = 'pg_lakesync sync'").fetchone()
            most = max(most, n)
            time.sleep(0.05)
        assert most == 2, most  # lakesync.max_workers, the default
    finally:
        sdb.execute(f'ALTER DATABASE "{sdb.dbname_}" RESET lakesync.debug_pause')
    for i in range(6):
        assert wait_for(lambda: ids(sdb, f"t{i}") == [0, 1], timeout=30), (i, ids(sdb, f"t{i}"))
