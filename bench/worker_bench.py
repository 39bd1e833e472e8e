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


def lag(cluster, tables, commits, rate, prefix=None):
    conn = psycopg.connect(cluster.dsn(), autocommit=True)
    prefix = prefix or f"w3_{tables}_"
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
    # Where the lag goes, per commit: until the sync that applied it started (the poll, the
    # worker's start), and that sync's own duration (from its run row).
    runs = conn.execute(
        "SELECT target, from_version, to_version, extract(epoch FROM started_at), "
        "extract(epoch FROM finished_at) FROM lakesync.sync_runs "
        "WHERE target LIKE %s AND status = 'succeeded' AND from_version IS NOT NULL",
        (f"public.{prefix}%",)).fetchall()
    waits, durations = [], []
    for target, lo, hi, start, end in runs:
        durations.append(float(end) - float(start))
        for v in range(lo + 1, hi + 1):
            if (target, v) in committed:
                waits.append(float(start) - committed[(target, v)])
    conn.close()
    listener.close()
    return lags, missing, rows / (time.time() - began), waits, durations


def sustained(cluster, sizes, commits, rate):
    """One continuous table fed `commits` commits of n rows at `rate` commits/s, for growing n:
    the lag at each offered rate. Falling behind shows as a p99 far above p50 (the later commits
    wait for the earlier ones); the last size whose p99 stays under 2 s is what it keeps up with."""
    conn = psycopg.connect(cluster.dsn(), autocommit=True)
    path = os.path.join(world_readable_tmpdir(), "w3s")
    write_deltalake(path, batch(0, 1), configuration=CDF)
    os.system(f"chmod -R a+rX {path}")
    conn.execute("SELECT create_synced_table('w3s', %s, ARRAY['id'], 'continuous')", (path,))
    listener = psycopg.connect(cluster.dsn(), autocommit=True)
    listener.execute("LISTEN lakesync")
    seen, done = [], threading.Event()  # (to_version, time heard), by a thread of its own

    def listen():
        while not done.is_set():
            for note in listener.notifies(timeout=0.2, stop_after=None):
                seen.append((json.loads(note.payload)["to_version"], time.time()))

    heard = threading.Thread(target=listen)
    heard.start()
    out, next_id, version = [], 1, 0
    for n in sizes:
        data = [batch(next_id + i * n, n) for i in range(commits)]
        committed = {}
        began = time.time()
        for i in range(commits):
            write_deltalake(path, data[i], mode="append")
            version += 1
            committed[version] = time.time()
            time.sleep(max(0.0, began + (i + 1) / rate - time.time()))
        offered = n * commits / (time.time() - began)
        next_id += n * commits
        deadline = time.time() + 120
        while time.time() < deadline and (not seen or max(v for v, _ in seen) < version):
            time.sleep(0.1)
        lags = []
        for v, at in committed.items():
            after = [t for to, t in seen if to >= v]
            lags.append((min(after) if after else time.time()) - at)
        out.append((n, offered, percentile(lags, 50), percentile(lags, 99)))
        if percentile(lags, 99) > 10:
            break  # far behind: larger commits only fall further
    done.set()
    heard.join()
    conn.close()
    listener.close()
    return out


def isolation(cluster, big_rows, commits, rate):
    """W3 lag of 5 continuous tables while the worker loads a big snapshot of another table
    (a SNAPSHOT table with a 1-second schedule whose source was just overwritten with
    `big_rows` rows), against the same 5 tables' lag without it, in the same run."""
    conn = psycopg.connect(cluster.dsn(), autocommit=True)
    path = os.path.join(world_readable_tmpdir(), "w3big")
    write_deltalake(path, batch(0, 1))
    os.system(f"chmod -R a+rX {path}")
    conn.execute("SELECT create_synced_table('w3big', %s, ARRAY['id'], 'snapshot', "
                 "'{\"schedule\": \"1 second\"}')", (path,))
    conn.execute("SELECT pause_sync('w3big')")
    ids = pa.array(range(big_rows), type=pa.int64())
    write_deltalake(path, pa.table({"id": ids, "v": pa.array(["x" * 20] * big_rows)}),
                    mode="overwrite")
    os.system(f"chmod -R a+rX {path}")
    alone = lag(cluster, 5, commits, rate, "w3a_")[0]
    conn.execute("SELECT resume_sync('w3big')")
    began = time.time()
    while conn.execute("SELECT sync_rows_done IS NULL FROM lakesync.status "
                       "WHERE target = 'public.w3big'").fetchone()[0]:
        if time.time() - began > 30:
            break
        time.sleep(0.1)
    beside = lag(cluster, 5, commits, rate, "w3b_")[0]
    busy = conn.execute("SELECT sync_rows_done IS NOT NULL FROM lakesync.status "
                        "WHERE target = 'public.w3big'").fetchone()[0]
    while conn.execute("SELECT synced_version FROM lakesync.synced_tables "
                       "WHERE target = 'public.w3big'").fetchone()[0] != 1:
        time.sleep(1)
    took = time.time() - began
    conn.close()
    return alone, beside, busy, took


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
    # The launcher and the scheduler: with no commit no sync worker starts (counted below).
    # Not the postmaster's reaped children: autovacuum workers cleaning up after the earlier
    # parts are among them.
    ours = [r[0] for r in conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE backend_type IN "
        "('pg_lakesync launcher', 'pg_lakesync scheduler')")]
    before = cpu_of(ours)
    time.sleep(seconds)
    after = cpu_of(ours)
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
    ap.add_argument("--sizes", default="1000,5000,20000,50000,100000,200000",
                    help="rows per commit for the sustained rate, at --rate commits/s")
    ap.add_argument("--big-rows", type=int, default=10_000_000)
    ap.add_argument("--only", default="w3,sustained,isolation,w5",
                    help="which parts to run (comma-separated)")
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
        print("| case | commits | p50 lag | p95 | p99 | max | not seen | rows/s written | "
              "p50 commit → sync start | p50 sync duration | syncs |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        parts = args.only.split(",")
        for tables in (1, 20) if "w3" in parts else ():
            lags, missing, rate, waits, durations = lag(cluster, tables, args.commits, args.rate)
            print(f"| W3 {tables} table{'s' if tables > 1 else ''} | {len(lags) + missing} | "
                  f"{percentile(lags, 50):.2f} s | {percentile(lags, 95):.2f} s | "
                  f"{percentile(lags, 99):.2f} s | {max(lags):.2f} s | {missing} | {rate:.0f} | "
                  f"{percentile(waits, 50):.2f} s | {percentile(durations, 50):.3f} s | "
                  f"{len(durations)} |")
        if "sustained" in parts:
            print("\n| sustained: rows per commit | offered rows/s | p50 lag | p99 lag |")
            print("|---|---|---|---|")
            for n, offered, p50, p99 in sustained(
                    cluster, [int(x) for x in args.sizes.split(",")], 20, args.rate):
                print(f"| {n} | {offered:.0f} | {p50:.2f} s | {p99:.2f} s |")
        if "isolation" in parts:
            alone, beside, busy, took = isolation(cluster, args.big_rows, 40, args.rate)
            print("\n| isolation: 5 continuous tables, 40 commits | p50 lag | p99 lag |")
            print("|---|---|---|")
            print(f"| alone | {percentile(alone, 50):.2f} s | {percentile(alone, 99):.2f} s |")
            print(f"| beside a {args.big_rows:,}-row snapshot sync "
                  f"({'still running after' if busy else 'finished within'} the window; "
                  f"{took:.0f} s in all) | {percentile(beside, 50):.2f} s | "
                  f"{percentile(beside, 99):.2f} s |")
        if "w5" in parts:
            share, syncs = idle(cluster, args.idle_tables, args.idle_seconds)
            print(f"\n| W5 idle | {args.idle_tables} continuous tables, {args.idle_seconds} s | "
                  f"CPU {share * 100:.2f} % of one core | syncs started while idle: "
                  f"{syncs - args.idle_tables} |")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
