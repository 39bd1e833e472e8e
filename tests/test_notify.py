"""NOTIFY lakesync after each committed sync: sent at commit, never for a dry run, a failed sync
or one that found nothing to do."""
import json
import os

import psycopg
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from pgcluster import world_readable_tmpdir


def write(path, rows):
    write_deltalake(path, pa.Table.from_pylist(rows), mode="append",
                    configuration={"delta.enableChangeDataFeed": "true"})
    os.system(f"chmod -R a+rX {path}")


def heard(listener, timeout=0.5):
    return [json.loads(n.payload) for n in listener.notifies(timeout=timeout, stop_after=None)
            if n.channel == "lakesync"]


def test_each_committed_sync_notifies_listeners_at_commit(db, cluster):
    path = os.path.join(world_readable_tmpdir(), "src")
    write(path, [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}])
    with psycopg.connect(cluster.dsn(dbname=db.dbname_), autocommit=True) as listener:
        listener.execute("LISTEN lakesync")
        db.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'triggered')", (path,))
        assert heard(listener) == [{"target": "public.t", "from_version": None, "to_version": 0,
                                    "rows_inserted": 2, "rows_updated": 0, "rows_deleted": 0}]
        write(path, [{"id": 3, "v": "c"}])
        db.execute("SELECT sync_now('t', dry_run => true)")
        db.execute("SELECT sync_now('public.t')")
        assert heard(listener) == [{"target": "public.t", "from_version": 0, "to_version": 1,
                                    "rows_inserted": 1, "rows_updated": 0, "rows_deleted": 0}]
        db.execute("SELECT sync_now('t')")  # nothing to do
        assert heard(listener) == []
        # Inside a transaction: heard only once it commits.
        write(path, [{"id": 4, "v": "d"}])
        with psycopg.connect(cluster.dsn(dbname=db.dbname_)) as c:
            c.execute("SELECT sync_now('t')")
            assert heard(listener) == []
            c.commit()
        assert heard(listener) == [{"target": "public.t", "from_version": 1, "to_version": 2,
                                    "rows_inserted": 1, "rows_updated": 0, "rows_deleted": 0}]
        write(path, [{"id": 5, "v": "x"}, {"id": 5, "v": "y"}])  # one key twice in one commit
        with pytest.raises(psycopg.errors.UniqueViolation):
            db.execute("SELECT sync_now('t')")
        assert heard(listener) == []
