#!/usr/bin/env bash
# Runs every test layer of pg_lakesync. This is the README's test command and what CI runs.
#   0. formatting and clippy lints, as errors
#   1. #[pg_test] units inside a Postgres backend, and pure unit tests (cargo pgrx test)
#   2. pg_test/sql scripts against expected psql output, and
#   3. the external suite in tests/ against a throwaway cluster (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/prereqs.sh

echo "== formatting and lints (cargo fmt --check, cargo clippy -D warnings)"
cargo fmt --check
cargo clippy --all-targets -- -D warnings

echo "== layer 1: in-backend unit tests (cargo pgrx test)"
pgdata_parent=$(mktemp -d /tmp/lakesync-pgrx-XXXXXX)
chown postgres:postgres "$pgdata_parent"
trap 'rm -rf "$pgdata_parent"' EXIT
cargo pgrx test pg15 --runas postgres --pgdata "$pgdata_parent/data"

echo "== installing the extension into PostgreSQL 15"
# cargo pgrx test installed its test build; put the regular one in place.
cargo pgrx install --pg-config /usr/bin/pg_config

echo "== layers 2 and 3: SQL scripts and the external suite (pytest)"
python3 -m pytest -q tests/ "$@"
