"""W4b: peak private memory of a first load whatever the Parquet layout: one huge row group,
200 columns, long strings, a 1 GiB file. The backend's private (anonymous) memory is sampled
every 10 ms; mapped file pages (page cache) are not the backend's and are not counted.

    python3 bench/layout_memory.py            # every layout (~1 GiB written, ~3 min)
    python3 bench/layout_memory.py --quick    # smaller sizes, the same shapes
"""
import argparse
import os
import sys

import numpy as np
import psycopg
import pyarrow as pa
from deltalake import WriterProperties, write_deltalake

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import snapshot_bench as sb  # noqa: E402
from pgcluster import Cluster, world_readable_tmpdir  # noqa: E402

ONE_GROUP = WriterProperties(max_row_group_size=1 << 30)
# The writer splits files at ~100 MiB by default: one file per table, however large.
ONE_FILE = 1 << 34


def one_row_group(path, rows):
    """The W1 table's 8 columns, all rows in one file and one row group."""
    tmp = path + "-parts"
    sb.make_table(tmp, rows, files=1)
    from deltalake import DeltaTable
    write_deltalake(path, DeltaTable(tmp).to_pyarrow_table(), writer_properties=ONE_GROUP,
                    target_file_size=ONE_FILE)


def wide(path, rows, cols=200):
    rng = np.random.default_rng(1)
    data = {"id": np.arange(rows, dtype=np.int64)}
    for c in range(1, cols):
        kind = c % 4
        if kind == 0:
            data[f"c{c}"] = pa.array(rng.integers(0, 1 << 40, rows))
        elif kind == 1:
            data[f"c{c}"] = pa.array(rng.random(rows))
        elif kind == 2:
            data[f"c{c}"] = pa.array([f"s{x}" for x in rng.integers(0, 1 << 30, rows)])
        else:
            data[f"c{c}"] = pa.array(rng.random(rows) < 0.5)
    write_deltalake(path, pa.table(data), writer_properties=ONE_GROUP,
                    target_file_size=ONE_FILE)


def long_strings(path, rows, length):
    """Incompressible strings of `length` bytes, in one row group."""
    rng = np.random.default_rng(2)
    body = [rng.bytes(length // 2).hex() for _ in range(rows)]
    write_deltalake(path, pa.table({"id": np.arange(rows, dtype=np.int64), "doc": body}),
                    writer_properties=ONE_GROUP,
                    target_file_size=ONE_FILE)


def file_mib(path):
    files = [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs if f.endswith(".parquet")]
    return max(os.path.getsize(f) for f in files) / 2**20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    scale = 10 if args.quick else 1
    layouts = [
        ("one row group, 8 columns", one_row_group, (10_000_000 // scale,)),
        ("200 columns, one row group", wide, (200_000 // scale,)),
        ("10 KiB strings, one row group", long_strings, (30_000 // scale, 10_240)),
        ("1 GiB file of 64 KiB strings, one row group", long_strings, (16_000 // scale, 65_536)),
    ]
    cluster = Cluster(conf=sb.CONF).start()
    out = []
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_lakesync")
        for i, (name, make, make_args) in enumerate(layouts):
            path = os.path.join(world_readable_tmpdir("lakesync-layout-"), f"l{i}")
            make(path, *make_args)
            os.system(f"chmod -R a+rX {path}")
            sb.checkpoint(cluster)
            with psycopg.connect(cluster.dsn(), autocommit=True) as c:
                with sb.measured(c, f"layout{i}") as m:
                    n = c.execute("SELECT rows_loaded FROM create_synced_table(%s, %s, ARRAY['id'])",
                                  (f"layout_{i}", path)).fetchone()[0]
                assert n == make_args[0], n
                c.execute(f"SELECT drop_synced_table('layout_{i}', true)")
            row = (f"| {name} | {make_args[0]:,} | {file_mib(path):.0f} | {m['secs']:.1f} | "
                   f"{m['peak'] / 1024:.0f} |")
            print(row, flush=True)
            out.append(row)
            os.system(f"rm -rf {path} {path}-parts")
    finally:
        cluster.stop()
    print()
    print("## W4b peak backend private memory by Parquet layout (first load)")
    print()
    print("| layout | rows | largest file MiB | s | peak private MiB |")
    print("|---|---|---|---|---|")
    print("\n".join(out))


if __name__ == "__main__":
    main()
