"""Randomized model test of TRIGGERED mode: from a fixed seed, an independent writer (the Python
deltalake package) performs random operations with random syncs in between; after every sync the
Postgres table equals the Delta table at the synced version.

LAKESYNC_MODEL_SEEDS (default 12) and LAKESYNC_MODEL_OPS (default 30) bound the run."""
import json
import os
import random

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from pgcluster import world_readable_tmpdir

SEEDS = int(os.environ.get("LAKESYNC_MODEL_SEEDS", "12"))
OPS = int(os.environ.get("LAKESYNC_MODEL_OPS", "30"))
KEYS = 60

SCHEMA = pa.schema([("id", pa.int64()), ("val", pa.string()), ("n", pa.float64())])


def batch(rng, count):
    ids = rng.sample(range(KEYS), count)
    return pa.Table.from_pylist(
        [{"id": i, "val": rng.choice(["a", "b", "", "ünï"]) + str(rng.randint(0, 9))
          if rng.random() < 0.9 else None, "n": rng.choice([rng.random(), None, -0.0, 1e300])}
         for i in ids], schema=SCHEMA)


def step(rng, path):
    """One random operation; returns its name."""
    op = rng.choice(["append", "append", "merge", "merge", "update", "delete", "overwrite",
                     "optimize", "noop_delete", "add_column"])
    dt = DeltaTable(path)
    present = [r["id"] for r in dt.to_pyarrow_table(columns=["id"]).to_pylist()]
    if op == "append":
        # Only keys not present: a key appended twice would be a duplicate in the source.
        free = [k for k in range(KEYS) if k not in present]
        if not free:
            return "skip"
        rows = batch(rng, min(len(free), rng.randint(1, 8)))
        ids = rng.sample(free, rows.num_rows)
        rows = rows.set_column(0, "id", pa.array(ids, pa.int64()))
        write_deltalake(path, rows, mode="append", schema_mode="merge")
    elif op == "merge":
        (dt.merge(batch(rng, rng.randint(1, 12)), predicate="t.id = s.id", source_alias="s",
                  target_alias="t")
         .when_matched_update_all().when_not_matched_insert_all().execute())
    elif op == "update":
        lo = rng.randint(0, KEYS)
        dt.update(predicate=f"id >= {lo} AND id < {lo + rng.randint(1, 15)}",
                  updates={"val": f"'u{rng.randint(0, 99)}'", "n": "n + 1"})
    elif op == "delete":
        lo = rng.randint(0, KEYS)
        dt.delete(predicate=f"id >= {lo} AND id < {lo + rng.randint(1, 10)}")
    elif op == "noop_delete":
        dt.delete(predicate="id < 0")
    elif op == "overwrite":
        write_deltalake(path, batch(rng, rng.randint(0, 20)), mode="overwrite",
                        schema_mode="merge")
    elif op == "optimize":
        dt.optimize.compact()
    elif op == "add_column":
        # Schema evolution: a new nullable column, written by an append that merges schemas.
        name = f"x{len(dt.schema().fields)}"
        rows = batch(rng, 2)
        rows = rows.append_column(name, pa.array([rng.randint(-5, 5) for _ in range(2)],
                                                 pa.int64()))
        free = [k for k in range(KEYS) if k not in present]
        if len(free) < 2:
            return "skip"
        rows = rows.set_column(0, "id", pa.array(rng.sample(free, 2), pa.int64()))
        write_deltalake(path, rows, mode="append", schema_mode="merge")
    return op


def delta_at(path, version):
    rows = DeltaTable(path, version=version).to_pyarrow_table().to_pylist()
    return sorted(rows, key=lambda r: r["id"])


def pg_now(db):
    cur = db.execute("SELECT * FROM t ORDER BY id", prepare=False)
    names = [d.name for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


@pytest.mark.parametrize("detection", ["cdf", "files"])
@pytest.mark.parametrize("seed", range(SEEDS))
def test_random_operations_and_syncs_match_delta(db, seed, detection):
    rng = random.Random(seed)
    path = os.path.join(world_readable_tmpdir(), "model")
    write_deltalake(path, batch(rng, 20), mode="append",
                    configuration={"delta.enableChangeDataFeed": "true"}
                    if detection == "cdf" else None)
    os.system(f"chmod -R a+rX {path}")
    db.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'triggered', %s)",
               (path, json.dumps({"change_detection": detection})))
    history = []
    for _ in range(OPS):
        history.append(step(rng, path))
        if rng.random() < 0.35:
            os.system(f"chmod -R a+rX {path}")
            version = db.execute("SELECT delta_version FROM sync_now('t')").fetchone()[0]
            assert pg_now(db) == delta_at(path, version), (seed, history)
    os.system(f"chmod -R a+rX {path}")
    version = db.execute("SELECT delta_version FROM sync_now('t')").fetchone()[0]
    assert version == DeltaTable(path).version()
    assert pg_now(db) == delta_at(path, version), (seed, history)
    # Every sync after the first was incremental; none fell back to a snapshot.
    sources = {r[0] for r in db.execute(
        "SELECT change_source FROM lakesync.sync_runs WHERE from_version IS NOT NULL")}
    assert sources <= {detection}, sources
