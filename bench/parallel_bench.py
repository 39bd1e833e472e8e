"""W1p: a first load shared among background workers (option load_workers) against the same
load by one backend, and against COPY then ADD PRIMARY KEY, in one run. Also the CPU time all
processes spent (the syncing backend plus its exited workers), and the VACUUM (FREEZE) each
table needs afterwards: a parallel load's rows are not written frozen. See BENCHMARKS.md.

    python3 bench/parallel_bench.py --rows 10000000 --files 10 --workers 1,2 --runs 3
"""
import argparse
import os
import shutil
import statistics
import sys
import time

import psycopg

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from pgcluster import Cluster, world_readable_tmpdir  # noqa: E402
from snapshot_bench import (CONF, checkpoint, delta_mib, drop, make_table,  # noqa: E402
                            one_copy_then_key, server_settings)

TICK = os.sysconf("SC_CLK_TCK")


def cpu_secs(pid, children=False):
    """User + system CPU seconds of a process (with `children`: of its reaped children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime are fields 14-17 (1-based); [0] here is field 3.
    at = 13 if not children else 15
    return (int(fields[at - 2]) + int(fields[at - 1])) / TICK


def one_load(cluster, path, name, workers):
    """One create_synced_table with load_workers; wall seconds, CPU seconds of the backend and
    its workers, the workers' phase (from the DEBUG1 line), and the VACUUM (FREEZE) after."""
    with open(os.path.join(cluster.dir, "data", "postmaster.pid")) as f:
        postmaster = int(f.readline())
    notes = []
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        c.add_notice_handler(lambda n: notes.append(n.message_primary))
        c.execute("SET client_min_messages = debug1")
        cpu0, kids0 = cpu_secs(pid), cpu_secs(postmaster, children=True)
        t = time.perf_counter()
        n = c.execute("SELECT rows_loaded FROM create_synced_table(%s, %s, ARRAY['id'], "
                      "options => jsonb_build_object('load_workers', %s::int))",
                      (name, path, workers)).fetchone()[0]
        secs = time.perf_counter() - t
        # Worker 0 exits once the sync's transaction has ended: then its CPU time is counted.
        while c.execute("SELECT count(*) FROM pg_stat_activity "
                        "WHERE backend_type = 'pg_lakesync load'").fetchone()[0]:
            time.sleep(0.01)
        time.sleep(0.5)  # and the postmaster has reaped it
        cpu = cpu_secs(pid) - cpu0 + cpu_secs(postmaster, children=True) - kids0
        c.execute("RESET client_min_messages")
        t = time.perf_counter()
        c.execute(f"VACUUM (FREEZE) {name}")
        vacuum = time.perf_counter() - t
    phase = next((x for x in notes if x.startswith("pg_lakesync: parallel load")), None)
    shared = None
    if phase:
        shared = int(phase.split(" rows in ")[1].split(" ms")[0]) / 1000
    return n, secs, cpu, shared, vacuum


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    cluster = Cluster(conf=CONF).start()
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_lakesync")
        path = os.path.join(world_readable_tmpdir("lakesync-bench-"), "w1p")
        make_table(path, args.rows, files=args.files)
        mib = delta_mib(path)
        bindir = world_readable_tmpdir("lakesync-bench-bin-")
        shutil.chown(bindir, "postgres", "postgres")
        binfile = os.path.join(bindir, "rows.bin")
        checkpoint(cluster)
        one_load(cluster, path, "public.sync_template", 1)  # warm-up, and the COPY's rows
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute(f"COPY public.sync_template TO '{binfile}' (FORMAT binary)")
            settings = server_settings(c)
        paths = [(f"w{w}", w) for w in counts] + [("copyk", None)]
        res = {k: [] for k, _ in paths}
        for i in range(args.runs):
            for key, w in paths[i % len(paths):] + paths[:i % len(paths)]:
                checkpoint(cluster)
                name = f"public.sync_{key}_{i}" if w else f"public.copyk_{i}"
                if w:
                    n, secs, cpu, shared, vacuum = one_load(cluster, path, name, w)
                else:
                    n, m = one_copy_then_key(cluster, binfile, "public.sync_template", name)
                    secs, cpu, shared = m["secs"], None, None
                    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
                        t = time.perf_counter()
                        c.execute(f"VACUUM (FREEZE) {name}")
                        vacuum = time.perf_counter() - t
                assert n == args.rows, n
                res[key].append((secs, cpu, shared, vacuum))
                print(f"{key} run {i}: {secs:.2f}s, cpu {cpu if cpu is None else round(cpu, 1)}s, "
                      f"workers' phase {shared}s, VACUUM (FREEZE) after {vacuum:.2f}s", flush=True)
                drop(cluster, name)
        drop(cluster, "public.sync_template")
        shutil.rmtree(os.path.dirname(path))
        shutil.rmtree(bindir)
    finally:
        cluster.stop()

    def med(key, i):
        vals = [r[i] for r in res[key] if r[i] is not None]
        return statistics.median(vals) if vals else None

    one = med("w1", 0) if "w1" in res else None
    copyk = med("copyk", 0)
    print()
    print(f"W1p: {args.rows / 1e6:g} M rows in {args.files} files ({mib:.0f} MiB Delta), "
          f"median of {args.runs}, {os.cpu_count()} cores; {settings}")
    print()
    print("| path | seconds | rows/s | vs 1 worker | vs COPY + ADD PRIMARY KEY | CPU seconds | "
          "workers' phase s | VACUUM (FREEZE) after, s |")
    print("|---|---|---|---|---|---|---|---|")
    for key, w in paths:
        s = med(key, 0)
        name = f"load_workers {w}" if w else "COPY FROM file (binary), then ADD PRIMARY KEY"
        cpu, shared = med(key, 1), med(key, 2)
        print(f"| {name} | {s:.2f} | {args.rows / s:,.0f} | "
              f"{(one / s) if one else float('nan'):.2f}x | {copyk / s:.2f}x | "
              f"{'–' if cpu is None else f'{cpu:.1f}'} | {'–' if shared is None else f'{shared:.2f}'} | "
              f"{med(key, 3):.2f} |")


if __name__ == "__main__":
    main()
