"""Snapshot sync throughput against server-side COPY FROM of the same rows, and the syncing
backend's peak memory. Ratios are measured in one run on one machine; see BENCHMARKS.md.

    python3 bench/snapshot_bench.py --rows 1000000 --runs 3
"""
import argparse
import contextlib
import datetime as dt
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from decimal import Decimal

import numpy as np
import psycopg
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from pgcluster import Cluster, world_readable_tmpdir  # noqa: E402

CONF = {"shared_buffers": "'1GB'", "max_wal_size": "'8GB'", "checkpoint_timeout": "'30min'"}


# --perf DIR: record each measured path with perf (CPU samples, and page faults in 64s, all threads of
# the backend) into DIR/<path>.{cpu,faults}.{data,txt}. Profiled runs are slower; use --runs 1.
PERF_DIR = None
PERF_TAG = ""  # the workload being measured, e.g. "w1-1000000"


@contextlib.contextmanager
def profiled(pid, name):
    """perf on one backend while the block runs, when --perf is given; a no-op otherwise."""
    name = name.split(".")[-1]
    if not PERF_DIR:
        yield
        return
    events = {"cpu": ["-e", "cpu-clock", "-F", "499"], "faults": ["-e", "page-faults", "-c", "64"]}
    stem = os.path.join(PERF_DIR, f"{PERF_TAG}-{name}")
    procs = {k: subprocess.Popen(["perf", "record", "-g", *ev, "-p", str(pid), "-o",
                                  f"{stem}.{k}.data"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for k, ev in events.items()}
    time.sleep(0.5)  # perf attaches to every thread of the backend
    try:
        yield
    finally:
        for k, p in procs.items():
            p.send_signal(signal.SIGINT)
            p.wait()
            data = f"{stem}.{k}.data"
            with open(f"{stem}.{k}.txt", "w") as f:
                for sort in ("dso", "dso,sym"):
                    subprocess.run(["perf", "report", "-i", data, "--no-children", "-g", "none",
                                    "--sort", sort, "--percent-limit", "0.5", "--stdio"],
                                   stdout=f, stderr=subprocess.DEVNULL)


def perf_arg(ap):
    ap.add_argument("--perf", metavar="DIR", help="profile each measured path with perf into DIR")


def set_perf(args):
    global PERF_DIR
    if args.perf:
        PERF_DIR = os.path.abspath(args.perf)
        os.makedirs(PERF_DIR, exist_ok=True)


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


def delta_mib(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs) / 2**20


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


@contextlib.contextmanager
def measured(c, name):
    """Times the block and samples the backend's peak private memory (and profiles it with
    --perf); yields a dict that holds secs and peak (KiB) once the block is done."""
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    out = {"base": proc_status_kib(pid, "RssAnon")}
    sampler = AnonSampler(pid)
    sampler.start()
    with profiled(pid, name):
        t = time.perf_counter()
        yield out
        out["secs"] = time.perf_counter() - t
    sampler.stop.set()
    sampler.join()
    out["peak"] = sampler.peak


def one_sync(cluster, path, name):
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        with measured(c, name) as m:
            n = c.execute("SELECT rows_loaded FROM create_synced_table(%s, %s, ARRAY['id'])",
                          (name, path)).fetchone()[0]
    return n, m


def one_copy(cluster, binfile, like, name):
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        c.execute(f"CREATE TABLE {name} (LIKE {like} INCLUDING ALL)")
        with measured(c, name) as m:
            c.execute(f"COPY {name} FROM '{binfile}' (FORMAT binary)")
        n = c.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
    return n, m


def one_copy_then_key(cluster, binfile, like, name):
    """The expert's bulk load: COPY into the table without its key, then ADD PRIMARY KEY (one
    sorted index build instead of a b-tree insert per row) — what the first sync does too."""
    with psycopg.connect(cluster.dsn()) as c:
        c.execute(f"CREATE TABLE {name} (LIKE {like} INCLUDING DEFAULTS)")
        c.commit()
        with measured(c, name) as m:
            c.execute(f"COPY {name} FROM '{binfile}' (FORMAT binary)")
            c.execute(f"ALTER TABLE {name} ADD PRIMARY KEY (id)")
            c.commit()
        n = c.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
    return n, m


def one_diy(cluster, path, like, name, storage_options=None):
    """The do-it-yourself path a user would script: Python deltalake → pyarrow batches →
    psycopg binary COPY, into an identical table, in one transaction."""
    with psycopg.connect(cluster.dsn()) as c:
        c.execute(f"CREATE TABLE {name} (LIKE {like} INCLUDING ALL)")
        oids = [r[0] for r in c.execute(
            "SELECT atttypid::int FROM pg_attribute WHERE attrelid = %s::regclass "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum", (name,))]
        c.commit()
        with measured(c, name) as m:
            with c.cursor().copy(f"COPY {name} FROM STDIN (FORMAT binary)") as cp:
                cp.set_types(oids)
                dt = DeltaTable(path, storage_options=storage_options)
                for batch in dt.to_pyarrow_dataset().to_batches():
                    for row in zip(*(col.to_pylist() for col in batch.columns)):
                        cp.write_row(row)
            c.commit()
        n = c.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
    return n, m


def server_settings(c):
    """The settings every results table reports, read from the server measured."""
    rows = c.execute("SELECT name, current_setting(name) FROM pg_settings WHERE name IN "
                     "('shared_buffers', 'wal_level', 'fsync', 'synchronous_commit', "
                     "'max_wal_size') ORDER BY 1").fetchall()
    return ", ".join(f"{n}={v}" for n, v in rows)


def checkpoint(cluster):
    """Every timed path starts from the same state: no dirty buffers left by the one before."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        c.execute("CHECKPOINT")


def drop(cluster, name):
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        if name.startswith("public.sync_"):
            c.execute("SELECT drop_synced_table(%s, true)", (name,))
        else:
            c.execute(f"DROP TABLE {name}")


def bench_rows(cluster, rows, runs, diy=True):
    """W1 and W4 at one table size; returns the markdown rows of the results table."""
    global PERF_TAG
    PERF_TAG = f"w1-{rows}"
    path = os.path.join(world_readable_tmpdir("lakesync-bench-"), "w1")
    t = time.perf_counter()
    make_table(path, rows)
    print(f"wrote {rows:,} rows in {time.perf_counter() - t:.1f}s", flush=True)
    mib = delta_mib(path)
    bindir = world_readable_tmpdir("lakesync-bench-bin-")
    shutil.chown(bindir, "postgres", "postgres")  # the server writes the COPY file
    binfile = os.path.join(bindir, "rows.bin")
    # Unmeasured warm-up: the template every baseline copies its definition from, the rows of
    # the COPY paths, and WAL segments every later path recycles instead of creating.
    checkpoint(cluster)
    one_sync(cluster, path, "public.sync_template")
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        c.execute(f"COPY public.sync_template TO '{binfile}' (FORMAT binary)")
    paths = [("sync", "sync", lambda name: one_sync(cluster, path, name)),
             ("copy", "copy", lambda name: one_copy(cluster, binfile, "public.sync_template", name)),
             ("copyk", "copy + add key",
              lambda name: one_copy_then_key(cluster, binfile, "public.sync_template", name))]
    if diy:
        paths.append(("diy", "diy", lambda name: one_diy(cluster, path, "public.sync_template", name)))
    times = {k: [] for k, _, _ in paths}
    peaks = {k: [] for k, _, _ in paths}
    bases = []
    for i in range(runs):
        # Each run starts with a different path: none always follows the same neighbour.
        for key, what, load in paths[i % len(paths):] + paths[:i % len(paths)]:
            checkpoint(cluster)
            n, m = load(f"public.{key}_{i}")
            assert n == rows, n
            times[key].append(m["secs"])
            peaks[key].append(m["peak"])
            bases.append(m["base"])
            print(f"{what} run {i}: {m['secs']:.2f}s, {n / m['secs']:,.0f} rows/s, backend peak "
                  f"private memory {m['peak'] / 1024:.0f} MiB", flush=True)
            drop(cluster, f"public.{key}_{i}")
    drop(cluster, "public.sync_template")
    shutil.rmtree(os.path.dirname(path))
    shutil.rmtree(bindir)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    label = f"{rows / 1e6:g} M rows ({mib:.0f} MiB Delta)"
    out = []
    for key, name in [("sync", "create_synced_table"), ("copy", "COPY FROM file (binary)"),
                      ("copyk", "COPY FROM file (binary), then ADD PRIMARY KEY"),
                      ("diy", "DIY: deltalake → pyarrow → psycopg binary COPY")]:
        if key in med:
            m = med[key]
            out.append(f"| {label} | {name} | {m:.2f} | {rows / m:,.0f} | {mib / m:.1f} | "
                       f"{med['copy'] / m:.2f}x | {med['copyk'] / m:.2f}x | "
                       + (f"{med['diy'] / m:.2f}x |" if "diy" in med else "– |"))
    mem = f"| {label} | " + " | ".join(
        f"{min(peaks[k]) / 1024:.0f}–{max(peaks[k]) / 1024:.0f} MiB" if k in peaks else "–"
        for k in ("sync", "copy", "copyk", "diy")) + f" | {statistics.median(bases) / 1024:.0f} MiB |"
    return out, mem


def memory_in_small_files(cluster, rows, files):
    """W4 with the same rows in more, smaller files: what the peak owes to the writer's row-group
    size rather than to the table's size. One sync; returns a row of the memory table."""
    path = os.path.join(world_readable_tmpdir("lakesync-bench-"), "w4")
    make_table(path, rows, files=files)
    mib = delta_mib(path)
    checkpoint(cluster)
    n, m = one_sync(cluster, path, "public.sync_w4")
    assert n == rows, n
    peak, base = m["peak"], m["base"]
    print(f"sync of {rows:,} rows in {files} files: {m['secs']:.2f}s, backend peak private "
          f"memory {peak / 1024:.0f} MiB", flush=True)
    drop(cluster, "public.sync_w4")
    shutil.rmtree(os.path.dirname(path))
    return (f"| {rows / 1e6:g} M rows in {files} files ({mib:.0f} MiB Delta) | "
            f"{peak / 1024:.0f} MiB | – | – | – | {base / 1024:.0f} MiB |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1000000",
                    help="comma-separated table sizes, e.g. 1000000,10000000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-diy", action="store_true", help="skip the (slow) Python path")
    ap.add_argument("--small-files", type=int, default=100, metavar="N",
                    help="W4 also loads the largest size written in N files (0: skip)")
    perf_arg(ap)
    args = ap.parse_args()
    set_perf(args)
    cluster = Cluster(conf=CONF).start()
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_lakesync")
            settings = server_settings(c)
        table, mem = [], []
        for rows in [int(r) for r in args.rows.split(",")]:
            t, m = bench_rows(cluster, rows, args.runs, diy=not args.no_diy)
            table += t
            mem.append(m)
        if args.small_files:
            rows = max(int(r) for r in args.rows.split(","))
            mem.append(memory_in_small_files(cluster, rows, args.small_files))
        print()
        print(f"## W1 snapshot, W4 memory (median of {args.runs} runs)")
        print("server: " + settings)
        print()
        print("| workload | path | median s | rows/s | MiB/s (Delta) | vs COPY | vs COPY + key | "
              "vs DIY |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(table))
        print()
        print("Backend peak private memory (RssAnon), min–max over the runs:")
        print()
        print("| workload | create_synced_table | COPY | COPY + ADD PRIMARY KEY | DIY (server side) | "
              "at connect |")
        print("|---|---|---|---|---|---|")
        print("\n".join(mem))
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
