"""The type matrix: every Delta type, with NULLs and extremes, written by the Python deltalake
package and read back from Postgres exactly."""
import datetime as dt
import math
import os
from decimal import Decimal

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from pgcluster import world_readable_tmpdir

UTC = dt.timezone.utc
D38 = Decimal("12345678901234567890123456.789012345678")  # 38 digits, scale 12

SCHEMA = pa.schema([
    ("id", pa.int64()),
    ("i64", pa.int64()),
    ("i32", pa.int32()),
    ("i16", pa.int16()),
    ("i8", pa.int8()),
    ("flag", pa.bool_()),
    ("f32", pa.float32()),
    ("f64", pa.float64()),
    ("d38", pa.decimal128(38, 12)),
    ("d52", pa.decimal128(5, 2)),
    ("s", pa.string()),
    ("b", pa.binary()),
    ("day", pa.date32()),
    ("ts", pa.timestamp("us", tz="UTC")),
    ("ts_ntz", pa.timestamp("us")),
    ("ints", pa.list_(pa.int32())),
    ("tags", pa.map_(pa.string(), pa.int64())),
    ("by_num", pa.map_(pa.int32(), pa.string())),
    ("st", pa.struct([("a", pa.int32()), ("b", pa.string()), ("d", pa.date32()),
                      ("n", pa.decimal128(10, 3)), ("x", pa.float64())])),
])

ROWS = [
    dict(id=1, i64=2**63 - 1, i32=2**31 - 1, i16=2**15 - 1, i8=127, flag=True,
         f32=3.4028234663852886e38, f64=1.7976931348623157e308, d38=D38, d52=Decimal("999.99"),
         s="plain", b=b"\x00\x01\xff", day=dt.date(9999, 12, 31),
         ts=dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
         ts_ntz=dt.datetime(2262, 4, 12, 0, 0, 1), ints=[1, 2, 3],
         tags=[("a", 1), ("b", 2)], by_num=[(1, "one"), (2, "two")],
         st=dict(a=1, b="x", d=dt.date(2024, 2, 29), n=Decimal("-1.500"), x=0.1)),
    dict(id=2, i64=-2**63, i32=-2**31, i16=-2**15, i8=-128, flag=False,
         f32=-1.1754943508222875e-38, f64=5e-324, d38=Decimal("-12345678901234567890123456.789012345678"), d52=Decimal("-999.99"),
         s="ünïcödé ✓ 𝄞 日本", b=b"", day=dt.date(1, 1, 1),
         ts=dt.datetime(1, 1, 1, 0, 0, 0, tzinfo=UTC), ts_ntz=dt.datetime(1900, 1, 1, 12, 30),
         ints=[], tags=[], by_num=[], st=dict(a=None, b="", d=None, n=None, x=None)),
    dict(id=3, **{f.name: None for f in SCHEMA if f.name != "id"}),
    dict(id=4, i64=0, i32=0, i16=0, i8=0, flag=None, f32=float("nan"), f64=float("nan"),
         d38=Decimal(0), d52=Decimal("0.01"), s="", b=b"x", day=dt.date(1969, 12, 31),
         ts=dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
         ts_ntz=dt.datetime(1970, 1, 1), ints=[None, 7], tags=[("k", None)],
         by_num=[(-1, None)], st=None),
    dict(id=5, i64=-1, i32=-1, i16=-1, i8=-1, flag=True, f32=float("inf"), f64=float("-inf"),
         d38=Decimal("0.000000000001"), d52=Decimal("-0.01"), s='quote " backslash \\ tab\t',
         b=b"\\", day=dt.date(2000, 1, 1), ts=dt.datetime(2000, 1, 1, tzinfo=UTC),
         ts_ntz=dt.datetime(1999, 12, 31, 23, 59, 59), ints=[2**31 - 1],
         tags=[("emoji 😀", -5)], by_num=[(0, "zero")],
         st=dict(a=-2**31, b="\n", d=dt.date(1583, 1, 1), n=Decimal("9999999.999"),
                 x=float("inf"))),
]


@pytest.fixture(scope="module")
def types_table():
    path = os.path.join(world_readable_tmpdir(), "types")
    write_deltalake(path, pa.Table.from_pylist(ROWS, schema=SCHEMA))
    os.system(f"chmod -R a+rX {path}")
    return path


def test_column_types(db, types_table):
    db.execute("SELECT create_synced_table('typed.all_types', %s, ARRAY['id'])", (types_table,))
    cols = db.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'typed.all_types'::regclass AND attnum > 0 ORDER BY attnum").fetchall()
    assert cols == [
        ("id", "bigint"), ("i64", "bigint"), ("i32", "integer"), ("i16", "smallint"),
        ("i8", "smallint"), ("flag", "boolean"), ("f32", "real"), ("f64", "double precision"),
        ("d38", "numeric(38,12)"), ("d52", "numeric(5,2)"), ("s", "text"), ("b", "bytea"),
        ("day", "date"), ("ts", "timestamp with time zone"),
        ("ts_ntz", "timestamp without time zone"), ("ints", "jsonb"), ("tags", "jsonb"),
        ("by_num", "jsonb"), ("st", "jsonb")]
    pk = db.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conrelid = 'typed.all_types'::regclass AND contype = 'p'").fetchone()
    assert pk == ("PRIMARY KEY (id)",)


def _fetch(db):
    db.execute("SET TimeZone = 'UTC'")
    cur = db.execute("SELECT * FROM typed.all_types ORDER BY id")
    names = [d.name for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _same_float(a, b, single):
    if a is None or b is None:
        return a is b
    if math.isnan(b):
        return math.isnan(a)
    if single:
        import struct
        return struct.pack("<f", a) == struct.pack("<f", b)
    return a == b


def test_values_exact(db, types_table):
    db.execute("SELECT create_synced_table('typed.all_types', %s, ARRAY['id'])", (types_table,))
    got = _fetch(db)
    assert [r["id"] for r in got] == [1, 2, 3, 4, 5]
    for want, have in zip(ROWS, got):
        for k in ("i64", "i32", "i16", "i8", "flag", "d38", "d52", "s", "day", "ts_ntz"):
            assert have[k] == want[k], (want["id"], k)
        assert have["b"] == want["b"], want["id"]
        assert have["ts"] == want["ts"], want["id"]
        assert _same_float(have["f32"], want["f32"], True), want["id"]
        assert _same_float(have["f64"], want["f64"], False), want["id"]
    one, two, three, four, five = got
    assert one["ints"] == [1, 2, 3]
    assert one["tags"] == {"a": 1, "b": 2}
    assert one["by_num"] == [[1, "one"], [2, "two"]]
    assert one["st"] == {"a": 1, "b": "x", "d": "2024-02-29", "n": -1.5, "x": 0.1}
    assert two["ints"] == [] and two["tags"] == {} and two["by_num"] == []
    assert two["st"] == {"a": None, "b": "", "d": None, "n": None, "x": None}
    assert all(three[k] is None for k in three if k != "id")
    assert four["ints"] == [None, 7] and four["tags"] == {"k": None}
    assert four["by_num"] == [[-1, None]] and four["st"] is None
    assert five["tags"] == {"emoji 😀": -5}
    assert five["st"] == {"a": -2**31, "b": "\n", "d": "1583-01-01",
                          "n": 9999999.999, "x": "Infinity"}
    # Nested decimals keep every digit (jsonb numeric, compared as text).
    assert db.execute("SELECT st->>'n' FROM typed.all_types WHERE id IN (1, 5) ORDER BY id"
                      ).fetchall() == [("-1.500",), ("9999999.999",)]


def test_numeric_text_exact(db, types_table):
    """Decimals keep every digit: compare Postgres' own text output."""
    db.execute("SELECT create_synced_table('typed.all_types', %s, ARRAY['id'])", (types_table,))
    rows = db.execute("SELECT d38::text, d52::text FROM typed.all_types ORDER BY id").fetchall()
    assert rows == [
        ("12345678901234567890123456.789012345678", "999.99"),
        ("-12345678901234567890123456.789012345678", "-999.99"),
        (None, None),
        ("0.000000000000", "0.01"),
        ("0.000000000001", "-0.01"),
    ]


def test_partition_columns_keep_types_and_nulls(db):
    path = os.path.join(world_readable_tmpdir(), "parts")
    schema = pa.schema([("id", pa.int64()), ("region", pa.string()), ("day", pa.date32()),
                        ("n", pa.int32())])
    rows = [dict(id=1, region="eu", day=dt.date(2024, 1, 1), n=1),
            dict(id=2, region=None, day=dt.date(2024, 1, 2), n=None),
            dict(id=3, region="us", day=None, n=3)]
    write_deltalake(path, pa.Table.from_pylist(rows, schema=schema),
                    partition_by=["region", "day", "n"])
    os.system(f"chmod -R a+rX {path}")
    db.execute("SELECT create_synced_table('parts', %s, ARRAY['id'])", (path,))
    cols = db.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                      "WHERE attrelid = 'parts'::regclass AND attnum > 0 ORDER BY attnum").fetchall()
    assert cols == [("id", "bigint"), ("region", "text"), ("day", "date"), ("n", "integer")]
    assert db.execute("SELECT * FROM parts ORDER BY id").fetchall() == [
        (1, "eu", dt.date(2024, 1, 1), 1), (2, None, dt.date(2024, 1, 2), None),
        (3, "us", None, 3)]
