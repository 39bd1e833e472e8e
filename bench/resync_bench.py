"""W7: SNAPSHOT re-sync and full_refresh against the first load of the same table, with a reader
racing each sync (its longest wait), the table's size after each (bloat), and the VACUUM after a
first load against the VACUUM after a plain COPY (frozen pages). Ratios in one run; see
BENCHMARKS.md.

    python3 bench/resync_bench.py --rows 1000000 --runs 3
"""
import argparse
import os
import statistics
import sys
import threading
import time

import psycopg
import pyarrow as pa
from deltalake import write_deltalake

sys.path.insert(0, os.path.dirname(__file__))
from snapshot_bench import CONF, checkpoint, make_table, server_settings  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from pgcluster import Cluster, world_readable_tmpdir  # noqa: E402


class Reader(threading.Thread):
    """Counts the table's rows again and again while a sync runs: the longest single query is
    the longest a reader waited, and every count must be the old or the new row count."""

    def __init__(self, dsn, table):
        super().__init__(daemon=True)
        self.dsn, self.table, self.stop = dsn, table, threading.Event()
        self.longest, self.counts, self.queries = 0.0, set(), 0

    def run(self):
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self.stop.is_set():
                t = time.perf_counter()
                # An index lookup and a count: both the heap and the key's index are read.
                c.execute(f"SELECT count(*) FROM {self.table} WHERE id >= 0").fetchone()
                n = c.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0]
                self.longest = max(self.longest, time.perf_counter() - t)
                self.counts.add(n)
                self.queries += 1


class Probe(threading.Thread):
    """A point lookup every 5 ms: its longest query is the longest any reader was blocked
    (a count of 10 M rows takes a second itself, so the Reader cannot tell a wait from work)."""

    def __init__(self, dsn, table):
        super().__init__(daemon=True)
        self.dsn, self.table, self.stop = dsn, table, threading.Event()
        self.longest = 0.0

    def run(self):
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self.stop.is_set():
                t = time.perf_counter()
                c.execute(f"SELECT id FROM {self.table} WHERE id = 1").fetchone()
                self.longest = max(self.longest, time.perf_counter() - t)
                time.sleep(0.005)


def timed(cluster, sql, args, table, race=False):
    """Seconds of one statement; with `race`, a reader queries the table throughout (it takes a
    core of the two, so raced runs are for the reader's waits, not for the ratios)."""
    checkpoint(cluster)
    reader = Reader(cluster.dsn(), table)
    reader.probe = Probe(cluster.dsn(), table)
    if race:
        reader.start()
        reader.probe.start()
        time.sleep(0.2)
    reader.phases = []
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        # Where a swap's time goes (its debug1 line); the rest is the scan's setup and the commit.
        c.execute("SET client_min_messages = debug1")
        c.add_notice_handler(lambda d: reader.phases.append(d.message_primary)
                             if "swap of" in (d.message_primary or "") else None)
        t = time.perf_counter()
        c.execute(sql, args)
        secs = time.perf_counter() - t
    reader.stop.set()
    reader.probe.stop.set()
    if race:
        reader.join()
        reader.probe.join()
    return secs, reader


def size_mib(c, table):
    return c.execute("SELECT pg_total_relation_size(%s::regclass)", (table,)).fetchone()[0] / 2**20


def vacuum_secs(c, table):
    """VACUUM (FREEZE) as anti-wraparound vacuum would do it: seconds and WAL written."""
    lsn = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    t = time.perf_counter()
    c.execute(f"VACUUM (FREEZE) {table}")
    secs = time.perf_counter() - t
    wal = c.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn,)).fetchone()[0]
    return secs, wal / 2**20


def bench(cluster, rows, runs):
    path = os.path.join(world_readable_tmpdir("lakesync-bench-"), "w7")
    make_table(path, rows)
    first, resync, refresh, inplace = [], [], [], []
    waits = {"resync": [], "refresh": [], "inplace": []}
    sizes = {}
    vac = {"sync": [], "copy": []}
    bindir = world_readable_tmpdir("lakesync-bench-bin-")
    os.chown(bindir, *(lambda p: (p.pw_uid, p.pw_gid))(__import__("pwd").getpwnam("postgres")))
    binfile = os.path.join(bindir, "rows.bin")
    appended = 0
    for run in range(runs):
        name = f"public.w7_{run}"
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            checkpoint(cluster)
            t = time.perf_counter()
            c.execute("SELECT create_synced_table(%s, %s, ARRAY['id'], 'SNAPSHOT')", (name, path))
            first.append(time.perf_counter() - t)
            sizes.setdefault("first", []).append(size_mib(c, name))
            if run == 0:
                c.execute(f"COPY {name} TO '{binfile}' (FORMAT binary)")
            s, w = vacuum_secs(c, name)
            vac["sync"].append((s, w))
            copy = f"public.w7_copy_{run}"
            c.execute(f"CREATE TABLE {copy} (LIKE {name})")
            c.execute(f"COPY {copy} FROM '{binfile}' (FORMAT binary)")
            c.execute(f"ALTER TABLE {copy} ADD PRIMARY KEY (id)")
            checkpoint(cluster)
            vac["copy"].append(vacuum_secs(c, copy))
            c.execute(f"DROP TABLE {copy}")
        # One row more in Delta: a re-sync must still read it all, but replace cheaply.
        appended += 1
        write_deltalake(path, pa.table({
            "id": pa.array([rows + appended], pa.int64()), "qty": pa.array([1], pa.int32()),
            "score": [0.5], "amount": pa.array([None], pa.decimal128(12, 2)), "note": ["x"],
            "at": pa.array([None], pa.timestamp("us", tz="UTC")), "day": pa.array([None], pa.date32()),
            "flag": [True]}), mode="append")
        os.system(f"chmod -R a+rX {path}")
        # The reader alone, for what its queries take without a sync.
        alone = Reader(cluster.dsn(), name)
        alone.start()
        time.sleep(2)
        alone.stop.set()
        alone.join()
        waits.setdefault("alone", []).append(alone.longest)
        secs, reader = timed(cluster, "SELECT sync_now(%s)", (name,), name)
        resync.append(secs)
        secs, reader = timed(cluster, "SELECT full_refresh(%s)", (name,), name)
        refresh.append(secs)
        print(f"full_refresh run {run}: {secs:.2f}s; {'; '.join(reader.phases)}", flush=True)
        _, reader = timed(cluster, "SELECT full_refresh(%s)", (name,), name, race=True)
        waits["refresh"].append(reader.longest)
        waits.setdefault("refresh_probe", []).append(reader.probe.longest)
        assert reader.counts == {rows + appended}, reader.counts
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            sizes.setdefault("refresh", []).append(size_mib(c, name))
            n = c.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
            assert n == rows + appended, n
            # The same replace, in place: a publication makes the sync keep the row stream.
            c.execute(f"CREATE PUBLICATION w7_pub_{run} FOR TABLE {name}")
        secs, reader = timed(cluster, "SELECT full_refresh(%s)", (name,), name)
        inplace.append(secs)
        _, reader = timed(cluster, "SELECT full_refresh(%s)", (name,), name, race=True)
        waits["inplace"].append(reader.longest)
        waits.setdefault("inplace_probe", []).append(reader.probe.longest)
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            sizes.setdefault("inplace", []).append(size_mib(c, name))
            c.execute(f"DROP PUBLICATION w7_pub_{run}")
            c.execute("SELECT drop_synced_table(%s, true)", (name,))
    med = statistics.median
    f = med(first)
    print()
    print(f"## W7 SNAPSHOT re-sync and full_refresh vs first load, {rows:,} rows "
          f"(median of {runs} runs)")
    print()
    print("| path | median s | vs first load | longest count(*) query s (raced run) | "
          "longest point lookup s (raced run) | table MiB after |")
    print("|---|---|---|---|---|---|")
    print(f"| first load (create_synced_table) | {f:.2f} | 1.00× | {max(waits['alone']):.2f} "
          f"(no sync running) | – | {med(sizes['first']):.0f} |")
    print(f"| SNAPSHOT re-sync after a 1-row append (sync_now) | {med(resync):.2f} | "
          f"{med(resync) / f:.2f}× | – | – | – |")
    print(f"| full_refresh (swap) | {med(refresh):.2f} | {med(refresh) / f:.2f}× | "
          f"{max(waits['refresh']):.2f} | {max(waits['refresh_probe']):.3f} | "
          f"{med(sizes['refresh']):.0f} |")
    print(f"| full_refresh in place (table in a publication) | {med(inplace):.2f} | "
          f"{med(inplace) / f:.2f}× | {max(waits['inplace']):.2f} | "
          f"{max(waits['inplace_probe']):.3f} | {med(sizes['inplace']):.0f} |")
    print()
    sv = med(s for s, _ in vac["sync"])
    cv = med(s for s, _ in vac["copy"])
    print("| VACUUM (FREEZE) after | median s | WAL MiB | vs after COPY |")
    print("|---|---|---|---|")
    print(f"| first load (frozen pages) | {sv:.2f} | {med(w for _, w in vac['sync']):.1f} | "
          f"{sv / cv:.2f}× |")
    print(f"| COPY then ADD PRIMARY KEY | {cv:.2f} | {med(w for _, w in vac['copy']):.1f} | 1.00× |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    cluster = Cluster(conf=CONF).start()
    try:
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_lakesync")
            print("server: " + server_settings(c))
        bench(cluster, args.rows, args.runs)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
