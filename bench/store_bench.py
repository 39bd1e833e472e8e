"""W6: a snapshot sync from an S3 store (the moto emulator on loopback) against the same table on
local disk and against the do-it-yourself Python path reading the same bucket, with the number of
requests each sync sends. Ratios are measured in one run on one machine; see BENCHMARKS.md.

    python3 bench/store_bench.py --rows 1000000 --runs 3
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import time

import psycopg
from deltalake import DeltaTable

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import snapshot_bench as sb  # noqa: E402
from pgcluster import Cluster, world_readable_tmpdir  # noqa: E402
from stores import Moto  # noqa: E402


def upload(moto, local, bucket, prefix):
    s3 = moto.client()
    for root, _, files in os.walk(local):
        for f in files:
            path = os.path.join(root, f)
            s3.upload_file(path, bucket, prefix + "/" + os.path.relpath(path, local))


def one_store_sync(cluster, uri, name, moto):
    before = moto.requests()
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        with sb.measured(c, name) as m:
            n = c.execute("SELECT rows_loaded FROM create_synced_table(%s, %s, ARRAY['id'], "
                          "options => '{\"credential\": \"bench\"}')", (name, uri)).fetchone()[0]
    time.sleep(0.2)  # the emulator writes its access log line after answering
    m["requests"] = moto.requests() - before
    return n, m


def one_store_diy(cluster, uri, like, name, moto):
    """Python deltalake reading the bucket → pyarrow batches → psycopg binary COPY."""
    before = moto.requests()
    n, m = sb.one_diy(cluster, uri, like, name, storage_options=moto.storage_options())
    time.sleep(0.2)
    m["requests"] = moto.requests() - before
    return n, m


def drop(cluster, name, synced):
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        if synced:
            c.execute("SELECT drop_synced_table(%s, true)", (name,))
        else:
            c.execute(f"DROP TABLE {name}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-diy", action="store_true")
    args = ap.parse_args()
    rows = args.rows
    moto = Moto().start()
    moto.create_bucket("bench")
    cluster = Cluster(conf=sb.CONF).start()
    try:
        path = os.path.join(world_readable_tmpdir("lakesync-bench-"), "w6")
        sb.make_table(path, rows)
        mib = sb.delta_mib(path)
        upload(moto, path, "bench", "w6")
        uri = "s3://bench/w6"
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("CREATE EXTENSION pg_lakesync")
            c.execute("SELECT create_credential('bench', 's3', %s)", (json.dumps({
                "access_key_id": "AKIDLAKESYNC", "secret_access_key": "moto-secret",
                "endpoint": moto.endpoint, "region": "us-east-1", "allow_http": True}),))
            settings = sb.server_settings(c)
        sb.one_sync(cluster, path, "public.template")  # warm-up, and the DIY table's shape
        paths = [("local", lambda n: sb.one_sync(cluster, path, n)),
                 ("s3", lambda n: one_store_sync(cluster, uri, n, moto))]
        if not args.no_diy:
            paths.append(("diy", lambda n: one_store_diy(cluster, uri, "public.template", n, moto)))
        times = {k: [] for k, _ in paths}
        peaks = {k: [] for k, _ in paths}
        reqs = {k: [] for k, _ in paths}
        for i in range(args.runs):
            for key, load in paths[i % len(paths):] + paths[:i % len(paths)]:
                sb.checkpoint(cluster)
                n, m = load(f"public.{key}_{i}")
                assert n == rows, n
                times[key].append(m["secs"])
                peaks[key].append(m["peak"])
                reqs[key].append(m.get("requests"))
                print(f"{key} run {i}: {m['secs']:.2f}s, {n / m['secs']:,.0f} rows/s, peak "
                      f"{m['peak'] / 1024:.0f} MiB, requests {m.get('requests', '-')}", flush=True)
                drop(cluster, f"public.{key}_{i}", synced=key != "diy")
        med = {k: statistics.median(v) for k, v in times.items()}
        print()
        print(f"W6, {rows / 1e6:g} M rows ({mib:.0f} MiB Delta, 10 files), moto S3 on loopback; "
              f"{settings}")
        print()
        print("| path | seconds (median) | rows/s | vs local disk | vs DIY from S3 | requests "
              "| backend peak private memory |")
        print("|---|---|---|---|---|---|---|")
        names = {"local": "create_synced_table, local path",
                 "s3": "create_synced_table, s3://",
                 "diy": "DIY: deltalake (s3://) → pyarrow → psycopg binary COPY"}
        for key in med:
            r = [x for x in reqs[key] if x is not None]
            print(f"| {names[key]} | {med[key]:.2f} | {rows / med[key]:,.0f} | "
                  f"{med['local'] / med[key]:.2f}x | "
                  + (f"{med['diy'] / med[key]:.2f}x" if "diy" in med else "–")
                  + f" | {statistics.median(r) if r and key != 'local' else '–'} | "
                  f"{min(peaks[key]) / 1024:.0f}–{max(peaks[key]) / 1024:.0f} MiB |")
        shutil.rmtree(os.path.dirname(path))
    finally:
        cluster.stop()
        moto.stop()


if __name__ == "__main__":
    main()
