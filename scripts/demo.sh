#!/usr/bin/env bash
# The demo: installs what is missing, builds and installs pg_lakesync, starts a throwaway
# Postgres 15 (or uses DATABASE_URL / PG* variables), writes a sample Delta table of taxi trips,
# syncs it and shows the result as psql does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh
cargo pgrx install --pg-config /usr/bin/pg_config
exec python3 scripts/demo.py
