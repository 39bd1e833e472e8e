"""TRIGGERED mode: a first snapshot, then the Change Data Feed applied exactly once."""
import json
import os

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from lakecompare import canon_rows, pg_rows, read_expected
from pgcluster import world_readable_tmpdir

CDF = {"delta.enableChangeDataFeed": "true"}


def table_path(name="src"):
    return os.path.join(world_readable_tmpdir(), name)


def readable(path):
    os.system(f"chmod -R a+rX {path}")


def write(path, rows, mode="append", cdf=True):
    write_deltalake(path, pa.Table.from_pylist(rows), mode=mode,
                    configuration=CDF if cdf else None)
    readable(path)


def create(db, path, key=("id",), options=None):
    return db.execute(
        "SELECT delta_version, rows_loaded, change_source FROM create_synced_table("
        "'t', %s, %s, 'triggered', %s)",
        (path, list(key), json.dumps(options or {}))).fetchone()


def sync(db, target="t"):
    return db.execute(
        "SELECT from_version, delta_version, rows_inserted, rows_updated, rows_deleted, "
        "change_source, message FROM sync_now(%s)", (target,)).fetchone()


def delta_rows(path, version=None):
    dt = DeltaTable(path, version=version)
    return sorted(dt.to_pyarrow_table().to_pylist(), key=lambda r: r["id"])


def pg_table(db, target="t"):
    cur = db.execute(f"SELECT * FROM {target} ORDER BY id")
    names = [d.name for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


# -- the shared CDF fixtures ---------------------------------------------------------------

FIXTURE_KEYS = {
    "cdf-table": ["id"],
    "cdf-table-non-partitioned": ["id", "name"],
    "simple_table_with_cdc": ["id"],
    "simple_table": ["id"],
    "checkpoint-v2-table": ["id"],
    "table-with-dv-small": ["value"],
}
WITH_CDF = {"cdf-table", "cdf-table-non-partitioned", "simple_table_with_cdc"}
CASES = [(t, "cdf") for t in sorted(WITH_CDF)] + [(t, "files") for t in sorted(FIXTURE_KEYS)]


@pytest.mark.parametrize("table,detection", CASES)
def test_fixture_from_each_early_version_to_latest(db, fixtures_dir, expected_dir, table,
                                                   detection):
    path = os.path.join(fixtures_dir, table)
    latest = DeltaTable(path).version()
    fields = json.loads(DeltaTable(path).schema().to_json())["fields"]
    expected = canon_rows(read_expected(os.path.join(expected_dir, f"{table}.jsonl")), fields,
                          "expected")
    for start in range(latest):
        target = f'"fx"."{table}_{start}"'
        r = db.execute(
            "SELECT delta_version, change_source FROM create_synced_table(%s, %s, %s, "
            "'triggered', %s)",
            (target, path, FIXTURE_KEYS[table],
             json.dumps({"version": start, "change_detection": detection}))).fetchone()
        assert r == (start, "snapshot")
        db.execute("UPDATE lakesync.synced_tables SET options = options - 'version' "
                   "WHERE options ? 'version'")
        r = db.execute("SELECT from_version, delta_version, change_source FROM sync_now(%s)",
                       (target,)).fetchone()
        assert r == (start, latest, detection)
        assert canon_rows(pg_rows(db, target), fields, "actual") == expected, (table, start)
        runs = db.execute("SELECT change_source, from_version, to_version, status "
                          "FROM lakesync.sync_runs WHERE target::regclass = %s::regclass "
                          "ORDER BY run_id", (target,)).fetchall()
        assert runs == [("snapshot", None, start, "succeeded"),
                        (detection, start, latest, "succeeded")]


# -- behaviour on tables written here -------------------------------------------------------

def test_appends_updates_deletes_apply_by_key_with_counts(db):
    path = table_path()
    write(path, [{"id": i, "val": f"a{i}"} for i in range(10)])
    assert create(db, path) == (0, 10, "snapshot")
    dt = DeltaTable(path)
    dt.update(predicate="id < 3", updates={"val": "'u'"})          # v1: 3 updates
    dt.delete(predicate="id >= 8")                                 # v2: 2 deletes
    write(path, [{"id": i, "val": f"n{i}"} for i in range(10, 14)])  # v3: 4 inserts
    readable(path)
    r = sync(db)
    assert r[:6] == (0, 3, 4, 3, 2, "cdf")
    assert pg_table(db) == delta_rows(path)
    run = db.execute("SELECT from_version, to_version, rows_inserted, rows_updated, "
                     "rows_deleted, change_source FROM lakesync.sync_runs "
                     "ORDER BY run_id DESC LIMIT 1").fetchone()
    assert run == (0, 3, 4, 3, 2, "cdf")
    state = db.execute("SELECT state, synced_version, rows FROM lakesync.synced_tables").fetchone()
    assert state == ("synced", 3, 12)
    # Nothing new: nothing applied.
    assert sync(db)[5:6] == ("none",)


def test_last_change_of_a_key_wins_across_commits(db):
    path = table_path()
    write(path, [{"id": 1, "val": "first"}, {"id": 2, "val": "keep"}])
    create(db, path)
    dt = DeltaTable(path)
    dt.update(predicate="id = 1", updates={"val": "'second'"})
    dt.delete(predicate="id = 1")
    write(path, [{"id": 1, "val": "third"}])
    dt = DeltaTable(path)
    dt.update(predicate="id = 1", updates={"val": "'fourth'"})
    dt.delete(predicate="id = 2")
    write(path, [{"id": 2, "val": "back"}])
    readable(path)
    sync(db)
    assert pg_table(db) == [{"id": 1, "val": "fourth"}, {"id": 2, "val": "back"}]


def test_update_that_changes_the_primary_key_removes_the_old_key(db):
    path = table_path()
    write(path, [{"id": i, "val": "x"} for i in range(5)])
    create(db, path)
    DeltaTable(path).update(predicate="id = 4", updates={"id": "40"})
    readable(path)
    sync(db)
    assert [r["id"] for r in pg_table(db)] == [0, 1, 2, 3, 40]


def test_update_that_swaps_two_keys_keeps_both_rows(db):
    # Each pre-image shares its key with the other row's post-image in the same commit.
    path = table_path()
    write(path, [{"id": 1, "val": "a"}, {"id": 2, "val": "b"}, {"id": 3, "val": "c"}])
    create(db, path)
    DeltaTable(path).update(predicate="id IN (1, 2)",
                            updates={"id": "CASE WHEN id = 1 THEN 2 ELSE 1 END"})
    readable(path)
    sync(db)
    assert pg_table(db) == delta_rows(path) == [
        {"id": 1, "val": "b"}, {"id": 2, "val": "a"}, {"id": 3, "val": "c"}]


def test_overwrite_and_optimize(db):
    path = table_path()
    for i in range(4):
        write(path, [{"id": i * 10 + j, "val": "v"} for j in range(10)])
    create(db, path)
    DeltaTable(path).optimize.compact()
    readable(path)
    r = sync(db)
    assert r[2:6] == (0, 0, 0, "cdf")  # compaction changes nothing
    write(path, [{"id": 5, "val": "over"}, {"id": 100, "val": "new"}], mode="overwrite")
    r = sync(db)
    assert pg_table(db) == delta_rows(path)
    assert r[2:5] == (1, 1, 39)


def test_triggered_needs_a_primary_key_and_the_change_feed(db):
    path = table_path()
    write(path, [{"id": 1, "val": "a"}], cdf=False)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        db.execute("SELECT * FROM create_synced_table('t', %s, NULL, 'triggered')", (path,))
    assert "primary key" in str(e.value)
    with pytest.raises(psycopg.errors.FeatureNotSupported) as e:
        db.execute("SELECT * FROM create_synced_table('t', %s, ARRAY['id'], 'triggered')",
                   (path,))
    assert "change data feed" in e.value.diag.message_primary
    assert e.value.diag.message_hint == (
        f"Enable it in Delta: ALTER TABLE delta.`{path}` SET TBLPROPERTIES "
        "(delta.enableChangeDataFeed = true); or pass option \"change_detection\": \"files\" "
        "to derive the changes from the data files.")
    assert db.execute("SELECT to_regclass('t'), count(*) FROM lakesync.synced_tables"
                      ).fetchone() == (None, 0)


def test_duplicate_key_in_changes_fails_and_changes_nothing(db):
    path = table_path()
    write(path, [{"id": 1, "val": "a"}])
    create(db, path)
    write(path, [{"id": 2, "val": "b"}, {"id": 2, "val": "c"}])
    with pytest.raises(psycopg.errors.UniqueViolation) as e:
        sync(db)
    assert "(id)=(2)" in e.value.diag.message_primary
    assert pg_table(db) == [{"id": 1, "val": "a"}]
    assert db.execute("SELECT state, synced_version FROM lakesync.synced_tables"
                      ).fetchone() == ("failed", 0)


def test_duplicate_key_in_an_earlier_commit_of_the_range_still_fails(db):
    path = table_path()
    write(path, [{"id": 1, "val": "a"}])
    create(db, path)
    write(path, [{"id": 2, "val": "b"}, {"id": 2, "val": "c"}])
    DeltaTable(path).update(predicate="id = 1", updates={"val": "'u'"})
    write(path, [{"id": 3, "val": "d"}])
    readable(path)
    with pytest.raises(psycopg.errors.UniqueViolation) as e:
        sync(db)
    assert "(id)=(2)" in e.value.diag.message_primary
    assert pg_table(db) == [{"id": 1, "val": "a"}]


def test_dry_run_reports_and_changes_nothing(db):
    path = table_path()
    write(path, [{"id": i, "val": "a"} for i in range(5)])
    create(db, path)
    DeltaTable(path).delete(predicate="id = 0")
    write(path, [{"id": 9, "val": "b"}])
    r = db.execute("SELECT from_version, delta_version, rows_inserted, rows_updated, "
                   "rows_deleted, message FROM sync_now('t', dry_run => true)").fetchone()
    assert r[:5] == (0, 2, 1, 0, 1)
    assert r[5].startswith("dry run, nothing changed: ")
    assert len(pg_table(db)) == 5
    assert db.execute("SELECT synced_version FROM lakesync.synced_tables").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM lakesync.sync_runs").fetchone() == (1,)
    assert sync(db)[2:5] == (1, 0, 1)


def test_timeseries_key_appends_keep_latest_and_deletes_reload(db):
    path = table_path()
    write(path, [{"id": 1, "ts": 1, "val": "a"}, {"id": 1, "ts": 3, "val": "c"}])
    create(db, path, options={"timeseries_key": "ts"})
    write(path, [{"id": 1, "ts": 2, "val": "b"}, {"id": 2, "ts": 1, "val": "x"}])
    assert sync(db)[5] == "cdf"
    assert [(r["id"], r["val"]) for r in pg_table(db)] == [(1, "c"), (2, "x")]
    DeltaTable(path).delete(predicate="ts = 3")
    readable(path)
    r = sync(db)
    assert r[5] == "snapshot" and "timeseries_key" in r[6]
    assert [(r["id"], r["val"]) for r in pg_table(db)] == [(1, "b"), (2, "x")]


# -- gaps: versions that cannot be replayed ------------------------------------------------

def state_of(db, target="t"):
    return db.execute("SELECT state, synced_version FROM lakesync.synced_tables "
                      "WHERE target::regclass = %s::regclass", (target,)).fetchone()


def expect_gap(db, words):
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
        sync(db)
    msg = e.value.diag.message_primary
    assert msg.startswith("cannot sync incrementally: ") and words in msg, msg
    assert "full_refresh()" in e.value.diag.message_hint
    return msg


def gap_log_removed(path):
    for i in range(1, 4):
        write(path, [{"id": 100 + i, "val": "g"}])
    DeltaTable(path).create_checkpoint()
    for v in (1, 2):
        os.remove(os.path.join(path, "_delta_log", f"{v:020d}.json"))
    return "log retention"


def gap_cdf_disabled(path):
    dt = DeltaTable(path)
    dt.alter.set_table_properties({"delta.enableChangeDataFeed": "false"})
    write(path, [{"id": 100, "val": "g"}], cdf=False)
    DeltaTable(path).alter.set_table_properties({"delta.enableChangeDataFeed": "true"})
    readable(path)
    return "not enabled at version"


def gap_change_files_vacuumed(path):
    DeltaTable(path).update(predicate="id = 1", updates={"val": "'g'"})
    for f in os.listdir(os.path.join(path, "_change_data")):
        os.remove(os.path.join(path, "_change_data", f))
    return "change data file"


def gap_table_replaced(path):
    import shutil
    shutil.rmtree(path)
    for i in range(3):
        write(path, [{"id": 200 + i, "val": "new"}])
    return "replaced by a new table"


def gap_data_files_vacuumed(path):
    before = set(DeltaTable(path).file_uris())
    DeltaTable(path).update(predicate="id = 1", updates={"val": "'g'"})
    for f in before - set(DeltaTable(path).file_uris()):
        os.remove(f.replace("file://", ""))
    return "data file"


GAPS = {
    "log_removed": gap_log_removed,
    "cdf_disabled": gap_cdf_disabled,
    "change_files_vacuumed": gap_change_files_vacuumed,
    "table_replaced": gap_table_replaced,
    "data_files_vacuumed": gap_data_files_vacuumed,
}
GAP_CASES = [("cdf", g) for g in ["log_removed", "cdf_disabled", "change_files_vacuumed",
                                  "table_replaced"]] + \
            [("files", g) for g in ["log_removed", "table_replaced", "data_files_vacuumed"]]


@pytest.mark.parametrize("detection,gap", GAP_CASES)
def test_gap_fails_clearly_then_full_refresh_rebuilds(db, detection, gap):
    path = table_path()
    write(path, [{"id": i, "val": "a"} for i in range(5)])
    create(db, path, options={"change_detection": detection})
    before = pg_table(db)
    words = GAPS[gap](path)
    expect_gap(db, words)
    assert pg_table(db) == before
    assert state_of(db) == ("needs_full_refresh", 0)
    run = db.execute("SELECT status, message FROM lakesync.sync_runs "
                     "ORDER BY run_id DESC LIMIT 1").fetchone()
    assert run[0] == "failed" and words in run[1]
    # It stays that way: later syncs say so instead of skipping versions.
    expect_gap(db, "needs a full refresh")
    r = db.execute("SELECT delta_version, change_source, message FROM full_refresh('t')"
                   ).fetchone()
    latest = DeltaTable(path).version()
    assert r[:2] == (latest, "snapshot")
    assert pg_table(db) == delta_rows(path)
    assert state_of(db) == ("synced", latest)
    # And incremental syncs continue from there.
    write(path, [{"id": 999, "val": "after"}])
    assert sync(db)[5] == detection
    assert pg_table(db) == delta_rows(path)


@pytest.mark.parametrize("detection,gap", GAP_CASES)
def test_on_gap_full_refresh_rebuilds_automatically(db, detection, gap):
    path = table_path()
    write(path, [{"id": i, "val": "a"} for i in range(5)])
    create(db, path, options={"on_gap": "full_refresh", "change_detection": detection})
    words = GAPS[gap](path)
    r = sync(db)
    assert r[5] == "snapshot" and "full refresh" in r[6] and words in r[6], r
    assert pg_table(db) == delta_rows(path)
    assert state_of(db) == ("synced", DeltaTable(path).version())


# -- schema evolution ------------------------------------------------------------------------

def columns_of(db, target="t"):
    return db.execute("SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
                      "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
                      "ORDER BY attnum", (target,)).fetchall()


def test_added_column_is_added_and_changes_before_and_after_apply(db):
    path = table_path()
    write(path, [{"id": i, "val": "a"} for i in range(4)])
    create(db, path)
    write(path, [{"id": 10, "val": "old schema"}])                          # v1
    write_deltalake(path, pa.Table.from_pylist([{"id": 11, "val": "b", "score": 1.5}]),
                    mode="append", schema_mode="merge")                      # v2: adds score
    DeltaTable(path).update(predicate="id = 0", updates={"score": "2.5"})   # v3
    readable(path)
    r = sync(db)
    assert r[5] == "cdf" and 'added column "score" double precision' in r[6], r
    assert columns_of(db) == [("id", "bigint"), ("val", "text"), ("score", "double precision")]
    assert pg_table(db) == delta_rows(path)
    run = db.execute("SELECT message FROM lakesync.sync_runs ORDER BY run_id DESC LIMIT 1"
                     ).fetchone()[0]
    assert 'added column "score"' in run
    write(path, [{"id": 12, "val": "c", "score": 3.5}])
    sync(db)
    assert pg_table(db) == delta_rows(path)


def test_widened_column_is_widened_in_place(db):
    path = table_path()
    schema = pa.schema([("id", pa.int64()), ("qty", pa.int32())])
    write_deltalake(path, pa.Table.from_pylist([{"id": 1, "qty": 5}], schema=schema),
                    configuration=CDF)
    readable(path)
    create(db, path)
    wide = pa.schema([("id", pa.int64()), ("qty", pa.int64())])
    write_deltalake(path, pa.Table.from_pylist([{"id": 1, "qty": 5}, {"id": 2, "qty": 2**40}],
                                               schema=wide),
                    mode="overwrite", schema_mode="overwrite")
    readable(path)
    r = sync(db)
    assert r[5] == "cdf" and "widened column \"qty\" from integer to bigint" in r[6], r
    assert columns_of(db) == [("id", "bigint"), ("qty", "bigint")]
    assert pg_table(db) == delta_rows(path)


@pytest.mark.parametrize("change", ["dropped", "renamed", "narrowed"])
def test_lossy_schema_change_needs_full_refresh(db, change):
    path = table_path()
    schema = pa.schema([("id", pa.int64()), ("val", pa.string()), ("qty", pa.int64())])
    write_deltalake(path, pa.Table.from_pylist([{"id": 1, "val": "a", "qty": 1}], schema=schema),
                    configuration=CDF)
    readable(path)
    create(db, path)
    db.execute("CREATE INDEX t_val ON t (val)")
    new = {
        "dropped": pa.schema([("id", pa.int64()), ("qty", pa.int64())]),
        "renamed": pa.schema([("id", pa.int64()), ("value", pa.string()), ("qty", pa.int64())]),
        "narrowed": pa.schema([("id", pa.int64()), ("val", pa.string()), ("qty", pa.int32())]),
    }[change]
    rows = [{k: v for k, v in {"id": 2, "val": "b", "value": "b", "qty": 2}.items()
             if k in new.names}]
    write_deltalake(path, pa.Table.from_pylist(rows, schema=new), mode="overwrite",
                    schema_mode="overwrite")
    readable(path)
    before = pg_table(db)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
        sync(db)
    words = {"dropped": '"val" is no longer in the Delta table',
             "renamed": '"val" is no longer in the Delta table',
             "narrowed": '"qty" changed type from bigint to integer'}[change]
    assert words in e.value.diag.message_primary
    assert "full_refresh('public.t')" in e.value.diag.message_hint
    assert pg_table(db) == before
    assert state_of(db) == ("needs_full_refresh", 0)
    r = db.execute("SELECT change_source, message FROM full_refresh('t')").fetchone()
    assert r[0] == "snapshot"
    assert pg_table(db) == delta_rows(path)
    # A renamed column comes back at the end: columns are matched by name.
    assert sorted(c for c, _ in columns_of(db)) == sorted(new.names)
    assert state_of(db) == ("synced", 1)


@pytest.mark.parametrize("detection", ["cdf", "files"])
def test_compaction_changes_nothing_and_reads_no_data(db, detection):
    path = table_path()
    for i in range(5):
        write(path, [{"id": i * 10 + j, "val": "v"} for j in range(10)])
    create(db, path, options={"change_detection": detection})
    before = set(DeltaTable(path).file_uris())
    DeltaTable(path).optimize.compact()
    # Vacuum the compacted files: a sync that read them would fail.
    for f in before - set(DeltaTable(path).file_uris()):
        os.remove(f.replace("file://", ""))
    readable(path)
    r = sync(db)
    assert r[1:6] == (5, 0, 0, 0, detection)
    assert pg_table(db) == delta_rows(path)


def test_files_detection_needs_no_change_feed(db):
    path = table_path()
    write(path, [{"id": i, "val": "a"} for i in range(5)], cdf=False)
    create(db, path, options={"change_detection": "files"})
    DeltaTable(path).update(predicate="id = 1", updates={"val": "'b'"})
    DeltaTable(path).delete(predicate="id = 2")
    write(path, [{"id": 7, "val": "c"}], cdf=False)
    r = sync(db)
    assert r[2:6] == (1, 4, 1, "files")  # the rewritten file's rows are all upserted
    assert pg_table(db) == delta_rows(path)
