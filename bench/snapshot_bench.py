"""Snapshot sync throughput against server-side COPY FROM of the same rows, and the syncing
backend's peak memory. Ratios are measured in one run on one machine; see BENCHMARKS.md.

    python3 bench/snapshot_bench.py --rows 1000000 --runs 3
"""
import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import threading
import time
from decimal import Decimal

import numpy as np
import psycopg
import pyarrow as pa
from deltalake import write_deltalake

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from pgcluster import Cluster, world_readable_tmpdir  # noqa: E402

CONF = {"shared_buffers": "'1GB'", "max_wal_size": "'8GB'", "checkpoint_timeout": "'30min'"}


def make_table(path, rows, files=10, seed=42):
    rng = np.random.default_rng(seed)
    per = rows // files
    for f in range(files):
        n = per if f < files - 1 else rows - per * (files - 1)
        ids = np.arange(f * per, f * per + n, dtype=np.int64)
        lens = rng.integers(10, 41, n)
        alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", dtype=np.uint8)
        text = [alphabet[rng.integers(0, 36, int(k))].tobytes().decode() for k in lens]
        cents = rng.integers(0, 10**10, n)
        batch = pa.table({
            "id": ids,
            "qty": pa.array(rng.integers(-2**31, 2**31 - 1, n, dtype=np.int64).astype(np.int32)),
            "score": pa.array(rng.random(n)),
            "amount": pa.array([Decimal(int(c)).scaleb(-2) for c in cents], pa.decimal128(12, 2)),
            "note": pa.array(text, pa.string()),
            "at": pa.array(1_700_000_000_000_000 + rng.integers(0, 10**13, n), pa.timestamp("us", tz="UTC")),
            "day": pa.array(rng.integers(0, 20000, n).astype(np.int32), pa.date32()),
            "flag": pa.array(rng.random(n) < 0.5),
        })
        write_deltalake(path, batch, mode="append")
    os.system(f"chmod -R a+rX {path}")


def proc_status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


class AnonSampler(threading.Thread):
    """Peak private (anonymous) memory of a backend, sampled every 10 ms. VmHWM would also count
    the shared buffers the backend touched, which are not its own memory."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, proc_status_kib(self.pid, "RssAnon"))
            except OSError:
                return
            time.sleep(0.01)


def one_sync(cluster, path, name):
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        base = proc_status_kib(pid, "RssAnon")
        sampler = AnonSampler(pid)
        sampler.start()
        t = time.perf_counter()
        n = c.execute("SELECT rows_loaded FROM create_synced_table(%s, %s, ARRAY['id'])",
                      (name, path)).fetchone()[0]
        secs = time.perf_counter() - t
        sampler.stop.set()
        sampler.join()
    return secs, n, sampler.peak, base


def one_copy(cluster, binfile, like, name):
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        c.execute(f"CREATE TABLE {name} (LIKE {like} INCLUDING ALL)")
        t = time.perf_counter()
        c.execute(f"COPY {name} FROM '{binfile}' (FORMAT binary)")
        secs = time.perf_counter() - t
        n = c.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
    return secs, n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    cluster = Cluster(conf=CONF).start()
    try:
        path = os.path.join(world_readable_tmpdir("lakesync-bench-"), "w1")
        t = time.perf_counter()
        make_table(path, args.rows)
        print(f"wrote {args.rows} rows in {time.perf_counter() - t:.1f}s", flush=True)
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_lakesync")
            settings = c.execute("SELECT name, current_setting(name) FROM pg_settings WHERE name IN "
                                 "('shared_buffers', 'wal_level', 'fsync', 'synchronous_commit', "
                                 "'max_wal_size') ORDER BY 1").fetchall()
        bindir = world_readable_tmpdir("lakesync-bench-bin-")
        shutil.chown(bindir, "postgres", "postgres")  # the server writes the COPY file
        binfile = os.path.join(bindir, "rows.bin")
        sync_t, copy_t, peaks = [], [], []
        for i in range(args.runs):
            secs, n, peak, base = one_sync(cluster, path, f"public.sync_{i}")
            assert n == args.rows, n
            sync_t.append(secs)
            peaks.append(peak)
            print(f"sync run {i}: {secs:.2f}s, {n / secs:,.0f} rows/s, backend peak private "
                  f"memory {peak / 1024:.0f} MiB (at connect {base / 1024:.0f} MiB)", flush=True)
            if i == 0:
                with psycopg.connect(cluster.dsn(), autocommit=True) as c:
                    c.execute(f"COPY public.sync_0 TO '{binfile}' (FORMAT binary)")
            secs, n = one_copy(cluster, binfile, "public.sync_0", f"public.copy_{i}")
            assert n == args.rows, n
            copy_t.append(secs)
            print(f"copy run {i}: {secs:.2f}s, {n / secs:,.0f} rows/s", flush=True)
        ms, mc = statistics.median(sync_t), statistics.median(copy_t)
        print()
        print(f"rows: {args.rows:,}  Delta size: {size / 2**20:.1f} MiB  runs: {args.runs}")
        print("server: " + ", ".join(f"{n}={s}" for n, s in settings))
        print(f"| path | median s | rows/s | ratio vs COPY |")
        print(f"|---|---|---|---|")
        print(f"| create_synced_table | {ms:.2f} | {args.rows / ms:,.0f} | {mc / ms:.2f}x |")
        print(f"| COPY FROM file (binary) | {mc:.2f} | {args.rows / mc:,.0f} | 1.00x |")
        print(f"syncing backend peak private memory (RssAnon): max {max(peaks) / 1024:.0f} MiB")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
