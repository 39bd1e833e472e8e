"""Every real Delta table in tests/fixtures syncs, and the rows equal an independent reader's."""
import json
import os

import pytest
from deltalake import DeltaTable

from lakecompare import canon_rows, pg_rows, read_expected

TABLES = sorted(os.listdir(os.path.join(os.path.dirname(__file__), "fixtures", "delta")))


def schema_fields(path):
    return json.loads(DeltaTable(path).schema().to_json())["fields"]


@pytest.mark.parametrize("table", TABLES)
def test_fixture_syncs_exactly(db, fixtures_dir, expected_dir, table):
    path = os.path.join(fixtures_dir, table)
    target = '"fx"."' + table.replace('"', '""') + '"'
    row = db.execute(
        "SELECT target, delta_version, rows_loaded FROM create_synced_table(%s, %s)",
        (target, path)).fetchone()
    latest = DeltaTable(path).version()
    assert row[1] == latest
    fields = schema_fields(path)
    expected = read_expected(os.path.join(expected_dir, f"{table}.jsonl"))
    actual = pg_rows(db, target)
    assert row[2] == len(expected)
    assert canon_rows(actual, fields, "actual") == canon_rows(expected, fields, "expected")
    # The catalog says what was synced.
    state, version, rows = db.execute(
        "SELECT state, synced_version, rows FROM lakesync.synced_tables WHERE target = %s",
        (row[0],)).fetchone()
    assert (state, version, rows) == ("synced", latest, len(expected))


def test_fixture_list_is_complete():
    assert len(TABLES) == 14
