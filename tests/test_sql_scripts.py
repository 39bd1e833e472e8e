"""The psql-visible surface: each pg_test/sql/NAME.sql runs through psql in a fresh database and
its output must equal pg_test/expected/NAME.out. Set LAKESYNC_ACCEPT=1 to write the expected
files from the actual output (then review the diff)."""
import difflib
import glob
import os
import shutil
import subprocess

import psycopg
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "pg_test", "sql", "*.sql")))
# A fixed path, so the expected output does not depend on where tests run.
STABLE_FIXTURES = "/tmp/lakesync-regress/delta"


@pytest.fixture(scope="module")
def stable_fixtures(fixtures_dir):
    shutil.rmtree(os.path.dirname(STABLE_FIXTURES), ignore_errors=True)
    os.makedirs(os.path.dirname(STABLE_FIXTURES))
    os.chmod(os.path.dirname(STABLE_FIXTURES), 0o755)
    shutil.copytree(fixtures_dir, STABLE_FIXTURES)
    os.system(f"chmod -R a+rX {os.path.dirname(STABLE_FIXTURES)}")
    return STABLE_FIXTURES


@pytest.mark.parametrize("script", SCRIPTS, ids=[os.path.basename(s) for s in SCRIPTS])
def test_sql_script(cluster, stable_fixtures, script):
    name = os.path.splitext(os.path.basename(script))[0]
    db = f"regress_{name}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db}"')
        admin.execute(f'CREATE DATABASE "{db}"')
    env = cluster.env()
    env["PGDATABASE"] = db
    env["PGTZ"] = "UTC"
    out = subprocess.run(
        ["psql", "-X", "-a", "-q", "-v", "VERBOSITY=default", "-v", "SHOW_CONTEXT=never",
         "-f", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    actual = out.stdout.replace(f"psql:{script}:", "psql:")
    expected_path = os.path.join(REPO, "pg_test", "expected", f"{name}.out")
    if os.environ.get("LAKESYNC_ACCEPT"):
        with open(expected_path, "w") as f:
            f.write(actual)
    with open(expected_path) as f:
        expected = f.read()
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True),
                                            "expected", "actual"))
        pytest.fail(f"{name}.sql output differs:\n{diff}")
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{db}"')
