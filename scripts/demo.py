"""Writes a sample Delta table of taxi trips, syncs it into Postgres and shows it with psql;
then lets the background worker follow it (CONTINUOUS) while a dashboard LISTENs for each sync
and new trips, a fare correction and a cancellation are committed to Delta."""
import datetime as dt
import json
import os
import random
import subprocess
import sys
from decimal import Decimal

import psycopg
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from pgcluster import Cluster, world_readable_tmpdir  # noqa: E402


def taxi_trips(n=5000, seed=7):
    rnd = random.Random(seed)
    start = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    zips = [10001, 10002, 10003, 10011, 10013, 10019, 10022, 10036, 11201, 11211]
    rows = []
    for i in range(n):
        pickup = start + dt.timedelta(seconds=rnd.randrange(0, 31 * 24 * 3600))
        minutes = rnd.randrange(3, 75)
        distance = round(rnd.uniform(0.3, 25.0), 2)
        rows.append({
            "trip_id": i + 1,
            "tpep_pickup_datetime": pickup,
            "tpep_dropoff_datetime": pickup + dt.timedelta(minutes=minutes),
            "trip_distance": distance,
            "fare_amount": Decimal(str(round(2.5 + distance * 2.5 + minutes * 0.35, 2))),
            "pickup_zip": rnd.choice(zips),
            "dropoff_zip": rnd.choice(zips),
        })
    schema = pa.schema([
        ("trip_id", pa.int64()), ("tpep_pickup_datetime", pa.timestamp("us", tz="UTC")),
        ("tpep_dropoff_datetime", pa.timestamp("us", tz="UTC")), ("trip_distance", pa.float64()),
        ("fare_amount", pa.decimal128(10, 2)), ("pickup_zip", pa.int32()),
        ("dropoff_zip", pa.int32())])
    return pa.Table.from_pylist(rows, schema=schema)


def dashboard_line(c):
    trips, fares = c.execute("SELECT count(*), sum(fare_amount) FROM demo.trips").fetchone()
    return f"{trips} trips, ${fares} in fares"


def live(cluster, path):
    """The background worker follows the Delta table; a dashboard waits on NOTIFY lakesync."""
    env = cluster.env()
    with psycopg.connect(cluster.dsn(), autocommit=True) as c:
        running = c.execute("SELECT bool_or(worker = 'running') FROM lakesync.status").fetchone()[0]
        if not running:
            print("\n(the background worker is not running on this server: "
                  "add pg_lakesync to shared_preload_libraries to see the live part)")
            return
        print("\n== alter_synced_table('demo.trips', 'continuous'): the worker follows the log")
        c.execute("SELECT alter_synced_table('demo.trips', 'continuous')")
        dashboard = psycopg.connect(cluster.dsn(), autocommit=True)
        dashboard.execute("LISTEN lakesync")
        print(f"dashboard: {dashboard_line(dashboard)}")
        more = taxi_trips(n=5100, seed=7).slice(5000)  # trips 5001..5100
        commits = [
            ("100 new trips", lambda: write_deltalake(path, more, mode="append")),
            ("a fare correction on trip 42",
             lambda: DeltaTable(path).update(updates={"fare_amount": "fare_amount + 5"},
                                            predicate="trip_id = 42")),
            ("trip 7 cancelled", lambda: DeltaTable(path).delete("trip_id = 7")),
        ]
        for what, commit in commits:
            commit()
            subprocess.run(["chmod", "-R", "a+rX", path], check=True)
            committed = dt.datetime.now()
            print(f"\nDelta commit: {what}")
            # (the connection serves queries again once the generator is done)
            for n in list(dashboard.notifies(timeout=30, stop_after=1)):
                change = json.loads(n.payload)
                seconds = (dt.datetime.now() - committed).total_seconds()
                print(f"NOTIFY lakesync {n.payload}")
                print(f"dashboard ({seconds:.1f} s after the commit, version "
                      f"{change['to_version']}): {dashboard_line(dashboard)}")
        dashboard.close()
    subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1"], text=True, env=env, check=True,
                   input="""
\\echo '== lakesync.status'
SELECT target, mode, state, synced_version, latest_version, versions_behind, lag_seconds,
       worker FROM lakesync.status;
SELECT run_id, from_version, to_version, rows_inserted, rows_updated, rows_deleted,
       change_source, status FROM lakesync.sync_runs ORDER BY run_id;
""")


def main():
    cluster = Cluster(conf={"shared_preload_libraries": "'pg_lakesync'"}).start()
    try:
        path = os.path.join(world_readable_tmpdir("lakesync-demo-"), "nyctaxi_trips")
        write_deltalake(path, taxi_trips(),
                        configuration={"delta.enableChangeDataFeed": "true"})
        subprocess.run(["chmod", "-R", "a+rX", os.path.dirname(path)], check=True)
        print(f"Wrote a Delta table of 5000 taxi trips to {path}\n")
        with psycopg.connect(cluster.dsn(), autocommit=True) as c:
            c.execute("DROP EXTENSION IF EXISTS pg_lakesync CASCADE")
            c.execute("DROP SCHEMA IF EXISTS demo CASCADE")
        sql = f"""
\\echo '== CREATE EXTENSION pg_lakesync;'
CREATE EXTENSION pg_lakesync;
\\echo '== create_synced_table'
SELECT target, mode, delta_version, rows_loaded, message
  FROM create_synced_table('demo.trips', '{path}', ARRAY['trip_id']);
\\echo '== the synced rows'
SELECT * FROM demo.trips ORDER BY trip_id LIMIT 10;
SELECT count(*) AS trips, sum(fare_amount) AS fares, round(avg(trip_distance)::numeric, 2) AS avg_miles
  FROM demo.trips;
\\echo '== status'
SELECT target, source, mode, primary_key, state, synced_version, rows FROM lakesync.synced_tables;
SELECT run_id, target, to_version, rows_inserted, status, message FROM lakesync.sync_runs;
\\echo '== sync_now (nothing changed in Delta)'
SELECT delta_version, rows_loaded, message FROM sync_now('demo.trips');
"""
        env = cluster.env()
        env["PGTZ"] = "UTC"
        subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1"], input=sql, text=True, env=env,
                       check=True)
        live(cluster, path)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
