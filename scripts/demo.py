"""Writes a sample Delta table of taxi trips, syncs it into Postgres and shows it with psql."""
import datetime as dt
import os
import random
import subprocess
import sys
from decimal import Decimal

import psycopg
import pyarrow as pa
from deltalake import write_deltalake

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


def main():
    cluster = Cluster().start()
    try:
        path = os.path.join(world_readable_tmpdir("lakesync-demo-"), "nyctaxi_trips")
        write_deltalake(path, taxi_trips())
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
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
