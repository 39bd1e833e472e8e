"""TRIGGERED apply throughput: a Delta merge of N changes (70 % updates, 20 % inserts, 10 %
deletes) on a synced table, applied by sync_now, against the expert's SQL path on an identical
table in the same run: binary COPY of the same changes into a staging table, then
INSERT … ON CONFLICT DO UPDATE and DELETE … USING. See BENCHMARKS.md.

    python3 bench/changes_bench.py --rows 10000000 --churn 0.1 --runs 3
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import time

import numpy as np
import psycopg
import pyarrow as pa
from deltalake import DeltaTable

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from pgcluster import Cluster, world_readable_tmpdir  # noqa: E402
import snapshot_bench  # noqa: E402
from snapshot_bench import (CONF, make_table, measured, perf_arg, server_settings,  # noqa: E402
                            set_perf)

COLS = ["id", "qty", "score", "amount", "note", "at", "day", "flag"]


def merge_changes(path, rows, changes, seed=7):
    """One Delta MERGE: 70 % updates and 10 % deletes of existing keys, 20 % new keys."""
    rng = np.random.default_rng(seed)
    n_upd, n_ins = int(changes * 0.7), int(changes * 0.2)
    n_del = changes - n_upd - n_ins
    existing = rng.choice(rows, n_upd + n_del, replace=False).astype(np.int64)
    new_ids = np.arange(rows, rows + n_ins, dtype=np.int64)
    ids = np.concatenate([existing, new_ids])
    ops = ["update"] * n_upd + ["delete"] * n_del + ["insert"] * n_ins
    dt = DeltaTable(path)
    base = dt.to_pyarrow_table().slice(0, len(ids))  # realistic values, new keys
    src = base.set_column(0, "id", pa.array(ids)).append_column("op", pa.array(ops))
    src = src.set_column(2, "score", pa.array(rng.random(len(ids))))
    sets = {c: f"s.{c}" for c in COLS}
    (dt.merge(src, predicate="t.id = s.id", source_alias="s", target_alias="t")
     .when_matched_delete(predicate="s.op = 'delete'")
     .when_matched_update(updates=sets, predicate="s.op = 'update'")
     .when_not_matched_insert(updates=sets)
     .execute())
    os.system(f"chmod -R a+rX {path}")
    return src.drop_columns(["op"]).append_column("op", pa.array(ops)), (n_upd, n_ins, n_del)


def checksum(c, table):
    return c.execute(f"SELECT count(*), sum(hashtextextended(t::text, 0)) FROM {table} t"
                     ).fetchone()


def bench_churn(cluster, base_path, base_version, rows, churn, runs):
    """W2 at one churn: sync_now against the expert's SQL, and a full_refresh of the same
    table (a full snapshot) to show where reloading becomes cheaper than applying changes."""
    changes = int(rows * churn)
    snapshot_bench.PERF_TAG = f"w2-{rows}-{churn:g}"
    path = os.path.join(world_readable_tmpdir("lakesync-bench-"), "w2")
    shutil.copytree(base_path, path)
    os.system(f"chmod -R a+rX {os.path.dirname(path)}")
    t = time.perf_counter()
    src, (n_upd, n_ins, n_del) = merge_changes(path, rows, changes)
    print(f"merged {changes:,} changes in {time.perf_counter() - t:.1f}s", flush=True)
    bindir = world_readable_tmpdir("lakesync-bench-bin-")
    shutil.chown(bindir, "postgres", "postgres")
    binfile = os.path.join(bindir, "changes.bin")
    sync_t, expert_t, full_t, auto_t, peaks = [], [], [], [], []
    chose = None
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS changes_src")
        c.execute("CREATE TABLE changes_src (id bigint, qty integer, score double precision, "
                  "amount numeric(12,2), note text, at timestamptz, day date, flag boolean, "
                  "op text)")
        with c.cursor().copy(f"COPY changes_src ({', '.join(COLS)}, op) FROM STDIN") as cp:
            for r in src.to_pylist():
                cp.write_row([r[k] for k in COLS] + [r["op"]])
        c.execute(f"COPY changes_src TO '{binfile}' (FORMAT binary)")
    for i in range(runs):
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("DROP TABLE IF EXISTS expert")
            c.execute("SELECT drop_synced_table(target, true) FROM lakesync.synced_tables")
            # Changes applied as changes, whatever their size: the crossover is measured here.
            c.execute("SELECT create_synced_table('synced', %s, ARRAY['id'], 'triggered', "
                      "jsonb_build_object('version', %s::int, 'full_refresh_above', false))",
                      (path, base_version))
            c.execute("CREATE TABLE expert (LIKE synced INCLUDING ALL)")
            c.execute("INSERT INTO expert SELECT * FROM synced")
            c.execute("VACUUM ANALYZE synced")
            c.execute("VACUUM ANALYZE expert")
            c.execute("CHECKPOINT")
            c.execute("UPDATE lakesync.synced_tables SET options = options - 'version'")
            with measured(c, "sync_now") as m:
                r = c.execute("SELECT rows_inserted, rows_updated, rows_deleted, change_source "
                              "FROM sync_now('synced')").fetchone()
            assert r == (n_ins, n_upd, n_del, "cdf"), r
            secs = m["secs"]
            sync_t.append(secs)
            peaks.append(m["peak"])
            print(f"sync_now run {i}: {secs:.2f}s, {changes / secs:,.0f} changes/s, "
                  f"backend peak private memory {m['peak'] / 1024:.0f} MiB", flush=True)
            c.execute("CHECKPOINT")
            set_list = ", ".join(f"{k} = EXCLUDED.{k}" for k in COLS[1:])
            with measured(c, "expert") as m:
                with c.transaction():
                    c.execute("CREATE TEMP TABLE stage (LIKE changes_src) ON COMMIT DROP")
                    c.execute(f"COPY stage FROM '{binfile}' (FORMAT binary)")
                    c.execute("ANALYZE stage")
                    c.execute(f"INSERT INTO expert SELECT {', '.join(COLS)} FROM stage "
                              f"WHERE op <> 'delete' ON CONFLICT (id) DO UPDATE SET {set_list}")
                    c.execute("DELETE FROM expert e USING stage s "
                              "WHERE s.op = 'delete' AND e.id = s.id")
            secs = m["secs"]
            expert_t.append(secs)
            print(f"expert run {i}: {secs:.2f}s, {changes / secs:,.0f} changes/s", flush=True)
            assert checksum(c, "synced") == checksum(c, "expert"), "tables differ"
            c.execute("CHECKPOINT")
            t = time.perf_counter()
            c.execute("SELECT full_refresh('synced')")
            secs = time.perf_counter() - t
            full_t.append(secs)
            print(f"full_refresh run {i}: {secs:.2f}s", flush=True)
            assert checksum(c, "synced") == checksum(c, "expert"), "full refresh differs"
            # The default: the sync chooses by the change files' bytes before it reads.
            c.execute("SELECT drop_synced_table('synced', true)")
            c.execute("SELECT create_synced_table('synced', %s, ARRAY['id'], 'triggered', "
                      "jsonb_build_object('version', %s::int))", (path, base_version))
            c.execute("UPDATE lakesync.synced_tables SET options = options - 'version'")
            c.execute("VACUUM ANALYZE synced")
            c.execute("CHECKPOINT")
            t = time.perf_counter()
            msg = c.execute("SELECT message FROM sync_now('synced')").fetchone()[0]
            secs = time.perf_counter() - t
            auto_t.append(secs)
            chose = "full refresh" if "full refresh" in msg else "changes"
            print(f"default (chose {chose}) run {i}: {secs:.2f}s", flush=True)
            assert checksum(c, "synced") == checksum(c, "expert"), "default sync differs"
    ms, me, mf, ma = (statistics.median(v) for v in (sync_t, expert_t, full_t, auto_t))
    share = change_bytes_share(path)
    shutil.rmtree(os.path.dirname(path))
    shutil.rmtree(bindir)
    label = (f"{changes / 1e6:g} M changes on {rows / 1e6:g} M rows ({churn:.0%}; change files "
             f"{share:.1%} of the table's bytes)")
    return {"churn": churn, "share": share, "sync": ms, "full": mf, "rows": [
        f"| {label} | sync_now (CDF, full_refresh_above: false) | {ms:.2f} | {changes / ms:,.0f} "
        f"| {me / ms:.2f}x |",
        f"| {label} | expert SQL | {me:.2f} | {changes / me:,.0f} | 1.00x |",
        f"| {label} | full_refresh (snapshot) | {mf:.2f} | – | {me / mf:.2f}x |",
        f"| {label} | sync_now, default (chose {chose}) | {ma:.2f} | {changes / ma:,.0f} | "
        f"{me / ma:.2f}x, {ma / min(ms, mf):.2f}x the better of the two |",
    ], "peak": max(peaks)}


def change_bytes_share(path):
    """What the crossover estimates from the log: the last commit's change data files (else its
    added and removed files) against the bytes of the table's files."""
    log = os.path.join(path, "_delta_log")
    last = max(f for f in os.listdir(log) if f.endswith(".json"))
    acts = [json.loads(line) for line in open(os.path.join(log, last)) if line.strip()]
    cdc = sum(a["cdc"]["size"] for a in acts if "cdc" in a)
    if not cdc:
        cdc = sum(a[k].get("size", 0) for a in acts for k in ("add", "remove") if k in a)
    table = sum(DeltaTable(path).get_add_actions(flatten=True).column("size_bytes").to_pylist())
    return cdc / table


def crossover(results, by):
    """The churn (or change-bytes share) at which a full snapshot costs what applying changes
    does (interpolated)."""
    pts = sorted((r[by], r["sync"] - r["full"]) for r in results)
    for (c0, d0), (c1, d1) in zip(pts, pts[1:]):
        if d0 < 0 <= d1:
            return c0 + (c1 - c0) * (-d0) / (d1 - d0)
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--churn", default="0.1", help="comma-separated, e.g. 0.01,0.1,0.5")
    ap.add_argument("--runs", type=int, default=3)
    perf_arg(ap)
    args = ap.parse_args()
    set_perf(args)
    cluster = Cluster(conf=CONF).start()
    try:
        base = os.path.join(world_readable_tmpdir("lakesync-bench-"), "base")
        t = time.perf_counter()
        make_table(base, args.rows)
        print(f"wrote {args.rows:,} rows in {time.perf_counter() - t:.1f}s", flush=True)
        DeltaTable(base).alter.set_table_properties({"delta.enableChangeDataFeed": "true"})
        base_version = DeltaTable(base).version()
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_lakesync")
            settings = server_settings(c)
        results = [bench_churn(cluster, base, base_version, args.rows, float(ch), args.runs)
                   for ch in args.churn.split(",")]
        shutil.rmtree(os.path.dirname(base))
        print()
        print(f"## W2 incremental: Delta MERGE of 70 % updates, 20 % inserts, 10 % deletes "
              f"(median of {args.runs} runs)")
        print("server: " + settings)
        print()
        print("| workload | path | median s | changes/s | vs expert |")
        print("|---|---|---|---|---|")
        for r in results:
            print("\n".join(r["rows"]))
        x, b = crossover(results, "churn"), crossover(results, "share")
        print()
        print("full snapshot cheaper than applying changes above churn: "
              + (f"~{x:.0%}, change files ~{b:.1%} of the table's bytes" if x is not None
                 else "not within the measured churns"))
        print(f"syncing backend peak private memory (RssAnon): "
              f"max {max(r['peak'] for r in results) / 1024:.0f} MiB")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
