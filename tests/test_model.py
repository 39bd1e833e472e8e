"""Randomized model test of TRIGGERED mode: from a fixed seed, an independent writer (the Python
deltalake package) performs random operations with random syncs in between; after every sync the
Postgres table equals the Delta table at the synced version.

Variants, each for both change sources:
- plain: one row per key; appends, merges, updates, deletes, overwrites, compactions, added columns.
- columns: the same, syncing only `columns` (so added columns are excluded, and the change feed
  must still be read across their schema changes).
- timeseries: several rows per key with a `timeseries_key`; the newest row of each key is synced.
- schema: also widens a column and drops added columns (lossy: `full_refresh` applies it).

Deletion vectors are not covered here: the Python writer does not write them (the Spark fixtures
with deletion vectors are synced in test_fixtures.py and test_triggered.py).

LAKESYNC_MODEL_SEEDS (default 12 for plain, a third of it for each other variant) and
LAKESYNC_MODEL_OPS (default 30) bound the run."""
import itertools
import json
import os
import random

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from pgcluster import world_readable_tmpdir

SEEDS = int(os.environ.get("LAKESYNC_MODEL_SEEDS", "12"))
OPS = int(os.environ.get("LAKESYNC_MODEL_OPS", "30"))
KEYS = 60

SCHEMA = pa.schema([("id", pa.int64()), ("val", pa.string()), ("n", pa.float64()),
                    ("q", pa.int32()), ("ts", pa.int64())])
# A fresh, unique timeseries value for every row ever written: no two rows of a key tie.
_ts = itertools.count(1)


def batch(rng, count, ids=None, schema=SCHEMA):
    """Rows of SCHEMA's columns, typed as in `schema` (the Delta table's now: after a widening
    q is bigint, and then holds values beyond integer's range)."""
    ids = ids if ids is not None else rng.sample(range(KEYS), count)
    typed = pa.schema([schema.field(f.name) if f.name in schema.names else f for f in SCHEMA])
    wide = typed.field("q").type == pa.int64()
    return pa.Table.from_pylist(
        [{"id": i, "val": rng.choice(["a", "b", "", "ünï"]) + str(rng.randint(0, 9))
          if rng.random() < 0.9 else None, "n": rng.choice([rng.random(), None, -0.0, 1e300]),
          "q": rng.choice([rng.randint(-1000, 1000), 2**40 + rng.randint(0, 9)]) if wide
          else rng.randint(-1000, 1000),
          "ts": next(_ts)}
         for i in ids], schema=typed)


def current_schema(dt):
    return dt.to_pyarrow_table().schema


def step(rng, path, variant):
    """One random operation; returns its name."""
    ops = ["append", "append", "merge", "merge", "update", "delete", "overwrite", "optimize",
           "noop_delete", "add_column"]
    if variant == "timeseries":
        # Appends add newer rows for keys that exist; merges would make keys unique again.
        ops = ["append", "append", "append_existing", "update", "delete", "overwrite",
               "optimize", "noop_delete"]
    elif variant == "schema":
        ops += ["widen", "drop_column", "drop_column"]
    op = rng.choice(ops)
    dt = DeltaTable(path)
    schema = current_schema(dt)
    present = [r["id"] for r in dt.to_pyarrow_table(columns=["id"]).to_pylist()]
    free = [k for k in range(KEYS) if k not in present]
    if op == "append":
        if variant == "timeseries":
            rows = batch(rng, rng.randint(1, 8))
        else:
            # Only keys not present: a key appended twice would be a duplicate in the source.
            if not free:
                return "skip"
            rows = batch(rng, 0, ids=rng.sample(free, min(len(free), rng.randint(1, 8))),
                         schema=schema)
        write_deltalake(path, rows, mode="append", schema_mode="merge")
    elif op == "append_existing":
        if not present:
            return "skip"
        rows = batch(rng, 0, ids=[rng.choice(present) for _ in range(rng.randint(1, 6))])
        write_deltalake(path, rows, mode="append")
    elif op == "merge":
        (dt.merge(batch(rng, rng.randint(1, 12), schema=schema), predicate="t.id = s.id",
                  source_alias="s", target_alias="t")
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
        count = rng.randint(0, 20)
        ids = ([rng.randrange(KEYS) for _ in range(count)] if variant == "timeseries"
               else rng.sample(range(KEYS), count))
        write_deltalake(path, batch(rng, 0, ids=ids, schema=schema), mode="overwrite",
                        schema_mode="merge")
    elif op == "optimize":
        dt.optimize.compact()
    elif op == "add_column":
        # Schema evolution: a new nullable column, written by an append that merges schemas.
        if len(free) < 2:
            return "skip"
        name = f"x{len(schema)}"
        rows = batch(rng, 0, ids=rng.sample(free, 2), schema=schema)
        rows = rows.append_column(name, pa.array([rng.randint(-5, 5) for _ in range(2)],
                                                 pa.int64()))
        write_deltalake(path, rows, mode="append", schema_mode="merge")
    elif op == "widen":
        # integer -> bigint, rewriting the table (as a writer without type widening does).
        if schema.field("q").type == pa.int64():
            return "skip"
        table = dt.to_pyarrow_table()
        table = table.set_column(table.schema.get_field_index("q"), "q",
                                 table.column("q").cast(pa.int64()))
        write_deltalake(path, table, mode="overwrite", schema_mode="overwrite")
    elif op == "drop_column":
        added = [n for n in schema.names if n.startswith("x")]
        if not added:
            return "skip"
        table = dt.to_pyarrow_table().drop_columns([rng.choice(added)])
        write_deltalake(path, table, mode="overwrite", schema_mode="overwrite")
    return op


def delta_at(path, version, variant, columns):
    rows = DeltaTable(path, version=version).to_pyarrow_table().to_pylist()
    if variant == "timeseries":
        newest = {}
        for r in rows:
            if r["id"] not in newest or r["ts"] > newest[r["id"]]["ts"]:
                newest[r["id"]] = r
        rows = list(newest.values())
    if columns:
        rows = [{c: r[c] for c in columns} for r in rows]
    return sorted(rows, key=lambda r: r["id"])


def pg_now(db):
    cur = db.execute("SELECT * FROM t ORDER BY id", prepare=False)
    names = [d.name for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def sync(db, variant):
    """sync_now; in the schema variant, a lossy change needs (and gets) a full_refresh."""
    try:
        return db.execute("SELECT delta_version FROM sync_now('t')").fetchone()[0], False
    except psycopg.errors.ObjectNotInPrerequisiteState as e:
        assert variant == "schema" and "is no longer in the Delta table" in str(e), e
        return db.execute("SELECT delta_version FROM full_refresh('t')").fetchone()[0], True


VARIANTS = {
    "plain": ({}, None),
    "columns": ({"columns": ["n", "id", "q"]}, ["n", "id", "q"]),
    "timeseries": ({"timeseries_key": "ts"}, None),
    "schema": ({}, None),
}
CASES = [(v, s) for v in VARIANTS for s in range(SEEDS if v == "plain" else max(1, SEEDS // 3))]


@pytest.mark.parametrize("detection", ["cdf", "files"])
@pytest.mark.parametrize("variant,seed", CASES)
def test_random_operations_and_syncs_match_delta(db, variant, seed, detection):
    rng = random.Random(seed)
    options, columns = VARIANTS[variant]
    path = os.path.join(world_readable_tmpdir(), "model")
    first = (batch(rng, 0, ids=[rng.randrange(KEYS) for _ in range(20)])
             if variant == "timeseries" else batch(rng, 20))
    write_deltalake(path, first, mode="append",
                    configuration={"delta.enableChangeDataFeed": "true"}
                    if detection == "cdf" else None)
    os.system(f"chmod -R a+rX {path}")
    db.execute("SELECT create_synced_table('t', %s, ARRAY['id'], 'triggered', %s)",
               (path, json.dumps({"change_detection": detection, **options})))
    history, refreshed = [], False
    for _ in range(OPS):
        history.append(step(rng, path, variant))
        if rng.random() < 0.35:
            os.system(f"chmod -R a+rX {path}")
            version, full = sync(db, variant)
            refreshed |= full
            assert pg_now(db) == delta_at(path, version, variant, columns), (seed, history)
    os.system(f"chmod -R a+rX {path}")
    version, full = sync(db, variant)
    refreshed |= full
    assert version == DeltaTable(path).version()
    assert pg_now(db) == delta_at(path, version, variant, columns), (seed, history)
    # Every sync after the first was incremental; none fell back to a snapshot (but a timeseries
    # range with deletes or updates reloads, and a full_refresh is one).
    sources = {r[0] for r in db.execute(
        "SELECT change_source FROM lakesync.sync_runs WHERE from_version IS NOT NULL")}
    if variant == "timeseries" or refreshed:
        sources.discard("snapshot")
    else:
        assert detection in sources, (sources, history)  # some sync did apply changes
    assert sources <= {detection}, (sources, history)
