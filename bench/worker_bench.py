"""W3 and W5: the background worker, on a throwaway cluster with the library preloaded.

W3 lag: commits of 1-1,000 rows to continuous tables at about 2 commits/s in all; for each
commit, the time from the Delta commit to the NOTIFY of the sync that made it visible (sent at
that sync's commit, so it is when readers can see it): p50/p95/p99, for 1 table and for 20
tables committing at once (round robin).

W5 idle cost: 100 continuous tables with no new commits; CPU time of the launcher, the
scheduler and every sync worker (reaped children of the postmaster) over the window, as a share
of one core.

Usage: python3 bench/worker_bench.py [--commits 300] [--idle-seconds 60]
"""
import argparse
import json
import os
import random
import select
import sys
import tempfile
import threading
import time

import psycopg
import pyarrow as pa
from deltalake import write_deltalake

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from pgcluster import Cluster, world_readable_tmpdir  # noqa: E402

CDF = {"delta.enableChangeDataFeed": "true"}
TICKS = os.sysconf("SC_CLK_TCK")


def batch(start, n):
    return pa.Table.from_pylist([{"id": start + i, "v": "x" * 20} for i in range(n)])


def make_tables(conn, count, prefix):
    paths = []
    for t in range(count):
        path = os.path.join(world_readable_tmpdir(), f"{prefix}{t}")
        write_deltalake(path, batch(0, 1), configuration=CDF)
        os.system(f"chmod -R a+rX {path}")
        conn.execute(f"SELECT create_synced_table('{prefix}{t}', %s, ARRAY['id'], 'continuous')",
                     (path,))
        paths.append(path)
    return paths


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def lag(cluster, tables, commits, rate):
    conn = psycopg.connect(cluster.dsn(), autocommit=True)
    prefix = f"w3_{tables}_"
    paths = make_tables(conn, tables, prefix)
    listener = psycopg.connect(cluster.dsn(), autocommit=True)
    listener.execute("LISTEN lakesync")
    committed = {}  # (target, version) -> time of the Delta commit
    seen = []  # (target, to_version, time)
    done = threading.Event()

    def listen():
        while not done.is_set():
            for n in listener.notifies(timeout=0.2, stop_after=None):
                p = json.loads(n.payload)
                seen.append((p["target"], p["to_version"], time.time()))

    t = threading.Thread(target=listen)
    t.start()
    rng = random.Random(3)
    next_id = [1] * tables
    rows = 0
    began = time.time()
    for i in range(commits):
        k = i % tables
        n = rng.randint(1, 1000)
        write_deltalake(paths[k], batch(next_id[k], n), mode="append")
        committed[(f"public.{prefix}{k}", i // tables + 1)] = time.time()
        next_id[k] += n
        rows += n
        os.system(f"chmod -R a+rX {paths[k]}")
        time.sleep(max(0.0, began + (i + 1) / rate - time.time()))
    deadline = time.time() + 30
    while time.time() < deadline and len({(a, b) for a, b, _ in seen}) < len(committed):
        time.sleep(0.2)
    done.set()
    t.join()
    visible = {}
    for target, version, at in seen:
        for v in range(1, version + 1):
            key = (target, v)
            if key in committed and key not in visible:
                visible[key] = at
    lags = [visible[k] - committed[k] for k in committed if k in visible]
    missing = len(committed) - len(lags)
    conn.close()
    listener.close()
    return lags, missing, rows / (time.time() - began)


def cpu_of(pids):
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        except OSError:
            pass
    return total / TICKS


def idle(cluster, tables, seconds):
    conn = psycopg.connect(cluster.dsn(), autocommit=True)
    make_tables(conn, tables, "w5_")
    time.sleep(5)  # let the first syncs settle
    ours = [r[0] for r in conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'pg_lakesync%'")]
    postmaster = int(open(os.path.join(cluster.dir, "data", "postmaster.pid")).readline())
    before = cpu_of(ours) + cpu_of([postmaster])
    time.sleep(seconds)
    after = cpu_of(ours) + cpu_of([postmaster])
    syncs = conn.execute("SELECT count(*) FROM lakesync.sync_runs WHERE target LIKE 'public.w5_%'"
                         ).fetchone()[0]
    conn.close()
    return (after - before) / seconds, syncs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=300)
    ap.add_argument("--rate", type=float, default=2.0, help="commits per second, in all")
    ap.add_argument("--idle-tables", type=int, default=100)
    ap.add_argument("--idle-seconds", type=int, default=60)
    args = ap.parse_args()
    cluster = Cluster(conf={"shared_preload_libraries": "'pg_lakesync'",
                            "max_worker_processes": "16"}).start()
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_lakesync")
            settings = dict(c.execute(
                "SELECT name, setting FROM pg_settings WHERE name LIKE 'lakesync.%'").fetchall())
        time.sleep(4)
        print(f"\n## W3/W5: background worker (poll_interval {settings['lakesync.poll_interval']} "
              f"ms, max_workers {settings['lakesync.max_workers']})\n")
        print("| case | commits | p50 lag | p95 | p99 | max | not seen | rows/s written |")
        print("|---|---|---|---|---|---|---|---|")
        for tables in (1, 20):
            lags, missing, rate = lag(cluster, tables, args.commits, args.rate)
            print(f"| W3 {tables} table{'s' if tables > 1 else ''} | {len(lags) + missing} | "
                  f"{percentile(lags, 50):.2f} s | {percentile(lags, 95):.2f} s | "
                  f"{percentile(lags, 99):.2f} s | {max(lags):.2f} s | {missing} | {rate:.0f} |")
        share, syncs = idle(cluster, args.idle_tables, args.idle_seconds)
        print(f"\n| W5 idle | {args.idle_tables} continuous tables, {args.idle_seconds} s | "
              f"CPU {share * 100:.2f} % of one core | syncs started while idle: "
              f"{syncs - args.idle_tables} |")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
