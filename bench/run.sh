#!/usr/bin/env bash
# Every benchmark in one command; results go to stdout and target/bench/<time>.md.
#   bash bench/run.sh           W1 (1 M and 10 M rows), W2 (10 M rows at 1/10/50 % churn), W4,
#                               files-mode memory (one new 1 M-row file), and the background
#                               worker's W3 lag (300 commits) and W5 idle cost, and W6 (1 M rows
#                               from the S3 emulator vs local disk vs DIY), W7 (re-sync and
#                               full_refresh vs first load, readers raced), W4b (memory by Parquet
#                               layout, one 1 GiB file included), W1c (60-column table) and W1p
#                               (a first load shared among 2 workers vs one backend)
#   bash bench/run.sh --quick   the same at 1 M rows (a few minutes)
#   add --perf                  one run of each path under perf (CPU and page-fault profiles,
#                               target/bench/<time>-perf/); timings from profiled runs are skewed
# See BENCHMARKS.md for what each path does.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=1000000,10000000 changes_rows=10000000 runs=3 perf=() commits=300 layout=
stamp=$(date -u +%Y%m%dT%H%M%SZ)
for arg in "$@"; do
  case "$arg" in
    --quick) rows=1000000 changes_rows=1000000 commits=100 layout=--quick ;;
    --perf) runs=1 perf=(--perf "target/bench/$stamp-perf") ;;
    *) echo "usage: bash bench/run.sh [--quick] [--perf]" >&2; exit 2 ;;
  esac
done
bash scripts/prereqs.sh
# Benchmarks measure the release build; `scripts/test.sh` installs the debug one.
cargo pgrx install --release --pg-config "${PG_CONFIG:-/usr/bin/pg_config}" >/dev/null
if [ ${#perf[@]} -gt 0 ] && ! command -v perf >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
fi
mkdir -p target/bench
out="target/bench/$stamp.md"
{
  echo "# pg_lakesync benchmarks, $(date -u +%F), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
  python3 bench/snapshot_bench.py --rows "$rows" --runs "$runs" "${perf[@]}"
  python3 bench/changes_bench.py --rows "$changes_rows" --churn 0.01,0.1,0.5 --runs "$runs" "${perf[@]}"
  python3 bench/files_memory.py --rows 1000000 --runs "$runs"
  python3 bench/worker_bench.py --commits "$commits" --big-rows "${rows##*,}"
  python3 bench/store_bench.py --rows 1000000 --runs "$runs"
  python3 bench/resync_bench.py --rows "${rows##*,}" --runs "$runs"
  python3 bench/parallel_bench.py --rows "${rows##*,}" --runs "$runs"
  python3 bench/layout_memory.py $layout
  python3 bench/wide_bench.py --rows 200000 --runs "$runs" "${perf[@]}"
} 2>&1 | tee "$out"
echo "results: $out"
