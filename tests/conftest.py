import os
import sys

import psycopg
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from pgcluster import Cluster, share_dir  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The Spark/Databricks Delta tables and an independent reader's rows, carried in the repository
# (tests/fixtures/README.md), so the suite runs on any fresh clone.
FIXTURES = os.path.join(REPO, "tests", "fixtures")


@pytest.fixture(scope="session")
def cluster():
    c = Cluster().start()
    yield c
    c.stop()


@pytest.fixture(scope="session")
def fixtures_dir():
    """A copy of the Delta fixtures the postgres OS user can read (tests write to copies only)."""
    return share_dir(os.path.join(FIXTURES, "delta"))


@pytest.fixture(scope="session")
def expected_dir():
    return os.path.join(FIXTURES, "expected")


def database_with_extension(cluster, prefix="t"):
    """A fresh database of `cluster` with the extension, dropped afterwards (a generator for
    fixtures); the connection carries its name as `dbname_`."""
    name = f"{prefix}_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    conn = psycopg.connect(cluster.dsn(dbname=name), autocommit=True)
    conn.execute("CREATE EXTENSION pg_lakesync")
    conn.dbname_ = name
    yield conn
    conn.close()
    with psycopg.connect(cluster.dsn(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture()
def db(cluster):
    """A fresh database with the extension, dropped afterwards."""
    yield from database_with_extension(cluster)


def _count():
    n = 0
    while True:
        n += 1
        yield n


_counter = _count()
