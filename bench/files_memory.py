"""Peak private memory of a TRIGGERED sync with change_detection 'files' that reads one large new
data file (issue 10, defect 9: files mode used to hold every batch of a file at once).

    python3 bench/files_memory.py --rows 1000000 --runs 3
"""
import argparse
import os
import statistics
import sys

import psycopg

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import snapshot_bench as sb  # noqa: E402
from pgcluster import Cluster, world_readable_tmpdir  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    cluster = Cluster(conf=sb.CONF).start()
    peaks, secs = [], []
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_lakesync")
        for run in range(args.runs):
            path = os.path.join(world_readable_tmpdir(), "files")
            sb.make_table(path, 1000, files=1)
            with psycopg.connect(cluster.dsn(), autocommit=True) as c:
                # The files path itself: the new file is nearly all of the table, so the default
                # crossover would do a full refresh instead.
                c.execute("SELECT create_synced_table('f', %s, ARRAY['id'], 'triggered', "
                          "'{\"change_detection\": \"files\", \"full_refresh_above\": false}')",
                          (path,))
            # One new file of --rows rows (ids after the first 1000).
            big = os.path.join(world_readable_tmpdir(), "big")
            sb.make_table(big, args.rows + 1000, files=1)
            from deltalake import DeltaTable, write_deltalake
            rows = DeltaTable(big).to_pyarrow_table()
            rows = rows.filter(rows["id"].to_numpy() >= 1000)
            write_deltalake(path, rows, mode="append")
            os.system(f"chmod -R a+rX {path}")
            with psycopg.connect(cluster.dsn(), autocommit=True) as c:
                with sb.measured(c, "files") as m:
                    n = c.execute("SELECT rows_inserted FROM sync_now('f')").fetchone()[0]
                assert n == args.rows, n
                c.execute("SELECT drop_synced_table('f', true)")
            peaks.append(m["peak"] / 1024)
            secs.append(m["secs"])
            print(f"run {run}: {m['secs']:.2f}s, backend peak private memory {m['peak'] / 1024:.0f} MiB",
                  flush=True)
    finally:
        cluster.stop()
    print(f"files mode, one new file of {args.rows:,} rows: median {statistics.median(secs):.2f}s, "
          f"peak private memory {min(peaks):.0f}–{max(peaks):.0f} MiB")


if __name__ == "__main__":
    main()
