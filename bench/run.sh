#!/usr/bin/env bash
# Every benchmark in one command; results go to stdout and target/bench/<time>.md.
#   bash bench/run.sh           W1 (1 M and 10 M rows), W2 (10 M rows at 1/10/50 % churn), W4
#   bash bench/run.sh --quick   the same at 1 M rows (a few minutes)
# See BENCHMARKS.md for what each path does.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh
# Benchmarks measure the release build; `scripts/test.sh` installs the debug one.
cargo pgrx install --release --pg-config "${PG_CONFIG:-/usr/bin/pg_config}" >/dev/null
if [ "${1:-}" = "--quick" ]; then
  rows=1000000 changes_rows=1000000
else
  rows=1000000,10000000 changes_rows=10000000
fi
mkdir -p target/bench
out="target/bench/$(date -u +%Y%m%dT%H%M%SZ).md"
{
  echo "# pg_lakesync benchmarks, $(date -u +%F), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
  python3 bench/snapshot_bench.py --rows "$rows" --runs 3
  python3 bench/changes_bench.py --rows "$changes_rows" --churn 0.01,0.1,0.5 --runs 3
} 2>&1 | tee "$out"
echo "results: $out"
