"""W1c: the W1 snapshot load on a wide gold table: 60 columns of strings, decimals, timestamps,
dates, numbers, booleans, arrays and structs (→ jsonb), against COPY of the same rows. Same paths,
runs and tables as W1 (snapshot_bench.bench_rows); only the Delta table differs.

    python3 bench/wide_bench.py --rows 200000 --runs 3
"""
import argparse
import datetime as dt
import os
import sys
from decimal import Decimal

import numpy as np
import psycopg
import pyarrow as pa
from deltalake import write_deltalake

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import snapshot_bench as sb  # noqa: E402
from pgcluster import Cluster  # noqa: E402

WORDS = np.array(["alpha", "beta", "gamma", "delta", "north", "south", "gold", "silver", "online",
                  "retail", "premium", "basic", "EUR", "USD", "Zürich", "São Paulo"])


def wide_table(path, rows, files=10, seed=7):
    """60 columns: 1 key, 16 strings, 10 decimals, 8 timestamps, 4 dates, 10 numbers,
    4 booleans, 4 arrays, 3 structs."""
    rng = np.random.default_rng(seed)
    per = rows // files
    epoch = 1_700_000_000_000_000
    for f in range(files):
        n = per if f < files - 1 else rows - per * (files - 1)
        cols = {"id": pa.array(np.arange(f * per, f * per + n, dtype=np.int64))}
        for c in range(16):
            if c % 4 == 0:  # free text
                cols[f"s{c}"] = pa.array([" ".join(WORDS[rng.integers(0, 16, 6)]) for _ in range(n)])
            elif c % 4 == 1:  # codes
                cols[f"s{c}"] = pa.array([f"C-{x:08d}" for x in rng.integers(0, 10**8, n)])
            else:  # categories
                cols[f"s{c}"] = pa.array(WORDS[rng.integers(0, 16, n)].tolist())
        for c in range(10):
            cents = rng.integers(-10**12, 10**12, n)
            cols[f"d{c}"] = pa.array([Decimal(int(x)).scaleb(-4) for x in cents], pa.decimal128(18, 4))
        for c in range(8):
            cols[f"t{c}"] = pa.array(epoch + rng.integers(0, 10**14, n), pa.timestamp("us", tz="UTC"))
        for c in range(4):
            cols[f"day{c}"] = pa.array(rng.integers(0, 20000, n).astype(np.int32), pa.date32())
        for c in range(5):
            cols[f"i{c}"] = pa.array(rng.integers(-2**40, 2**40, n))
            cols[f"f{c}"] = pa.array(rng.random(n))
        for c in range(4):
            cols[f"b{c}"] = pa.array(rng.random(n) < 0.5)
        lens = rng.integers(0, 6, n)
        cols["tags"] = pa.array([WORDS[rng.integers(0, 16, k)].tolist() for k in lens],
                                pa.list_(pa.string()))
        cols["scores"] = pa.array([rng.integers(0, 100, k).tolist() for k in lens], pa.list_(pa.int64()))
        cols["prices"] = pa.array([rng.random(k).round(4).tolist() for k in lens], pa.list_(pa.float64()))
        cols["codes"] = pa.array([[f"x{k}"] * int(k) for k in lens], pa.list_(pa.string()))
        for c in range(3):
            cols[f"st{c}"] = pa.array(
                [{"city": str(WORDS[a % 16]), "zip": int(a), "verified": bool(a % 2)}
                 for a in rng.integers(0, 99999, n)],
                pa.struct([("city", pa.string()), ("zip", pa.int64()), ("verified", pa.bool_())]))
        batch = pa.table(cols)
        assert batch.num_columns == 60, batch.num_columns
        write_deltalake(path, batch, mode="append")
    os.system(f"chmod -R a+rX {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    sb.perf_arg(ap)
    args = ap.parse_args()
    sb.set_perf(args)
    sb.make_table = wide_table  # bench_rows writes its table with this
    cluster = Cluster(conf=sb.CONF).start()
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_lakesync")
            settings = sb.server_settings(c)
        table, mem = sb.bench_rows(cluster, args.rows, args.runs, diy=False)
        print()
        print(f"## W1c wide table: 60 columns (median of {args.runs} runs)")
        print("server: " + settings)
        print()
        print("| workload | path | median s | rows/s | MiB/s (Delta) | vs COPY | vs COPY + key | "
              "vs DIY |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(table))
        print()
        print("| workload | peak private memory: sync | COPY | COPY + key | DIY | at connect |")
        print("|---|---|---|---|---|---|")
        print(mem)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
