"""Compare a synced Postgres table with what an independent reader sees, value by value.

Both sides are brought to one canonical form, guided by the Delta schema: timestamps as UTC
instants, decimals as Decimal, real as float32, maps with string keys as objects, and VARIANT
(which the expected files hold as raw binary) decoded to the JSON it encodes.
"""
import base64
import datetime as dt
import json
import math
import struct
from decimal import Decimal


# --- VARIANT binary (Parquet variant spec) -----------------------------------------------

def _uint(b, off, size):
    return int.from_bytes(b[off:off + size], "little")


def variant_metadata(meta):
    header = meta[0]
    osize = ((header >> 6) & 0x3) + 1
    n = _uint(meta, 1, osize)
    offs = [_uint(meta, 1 + osize * (i + 1), osize) for i in range(n + 1)]
    base = 1 + osize * (n + 2)
    return [meta[base + offs[i]:base + offs[i + 1]].decode() for i in range(n)]


def variant_value(keys, v, off=0):
    header = v[off]
    basic, vh = header & 0x3, header >> 2
    if basic == 1:  # short string
        return v[off + 1:off + 1 + vh].decode()
    if basic == 0:
        p = off + 1
        if vh == 0:
            return None
        if vh in (1, 2):
            return vh == 1
        if vh in (3, 4, 5, 6):
            size = {3: 1, 4: 2, 5: 4, 6: 8}[vh]
            return int.from_bytes(v[p:p + size], "little", signed=True)
        if vh == 7:
            return struct.unpack("<d", v[p:p + 8])[0]
        if vh == 14:
            return struct.unpack("<f", v[p:p + 4])[0]
        if vh in (8, 9, 10):
            size = {8: 4, 9: 8, 10: 16}[vh]
            scale = v[p]
            unscaled = int.from_bytes(v[p + 1:p + 1 + size], "little", signed=True)
            return Decimal(unscaled).scaleb(-scale)
        if vh == 11:
            days = int.from_bytes(v[p:p + 4], "little", signed=True)
            return (dt.date(1970, 1, 1) + dt.timedelta(days=days)).isoformat()
        if vh in (12, 13):
            us = int.from_bytes(v[p:p + 8], "little", signed=True)
            t = dt.datetime(1970, 1, 1) + dt.timedelta(microseconds=us)
            return t.replace(tzinfo=dt.timezone.utc) if vh == 12 else t
        if vh == 15:
            n = _uint(v, p, 4)
            return base64.b64encode(v[p + 4:p + 4 + n]).decode()
        if vh == 16:
            n = _uint(v, p, 4)
            return v[p + 4:p + 4 + n].decode()
        raise ValueError(f"variant primitive {vh} not handled by the test decoder")
    if basic == 2:  # object
        osize = (vh & 0x3) + 1
        idsize = ((vh >> 2) & 0x3) + 1
        large = (vh >> 4) & 1
        nsize = 4 if large else 1
        n = _uint(v, off + 1, nsize)
        ids_at = off + 1 + nsize
        offs_at = ids_at + n * idsize
        data_at = offs_at + (n + 1) * osize
        out = {}
        for i in range(n):
            fid = _uint(v, ids_at + i * idsize, idsize)
            o = _uint(v, offs_at + i * osize, osize)
            out[keys[fid]] = variant_value(keys, v, data_at + o)
        return out
    if basic == 3:  # array
        osize = (vh & 0x3) + 1
        large = (vh >> 2) & 1
        nsize = 4 if large else 1
        n = _uint(v, off + 1, nsize)
        offs_at = off + 1 + nsize
        data_at = offs_at + (n + 1) * osize
        return [variant_value(keys, v, data_at + _uint(v, offs_at + i * osize, osize))
                for i in range(n)]
    raise ValueError("bad variant header")


def decode_variant(obj):
    meta = bytes.fromhex(obj["metadata"][2:])
    val = bytes.fromhex(obj["value"][2:])
    return variant_value(variant_metadata(meta), val)


# --- canonical form ------------------------------------------------------------------------

def _ts(s, utc):
    t = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    if utc:
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.timezone.utc)
        return t.astimezone(dt.timezone.utc).isoformat()
    return t.replace(tzinfo=None).isoformat()


def _float(x):
    if isinstance(x, str):
        return {"NaN": "NaN", "Infinity": "Infinity", "-Infinity": "-Infinity"}.get(x, x)
    if isinstance(x, float) and math.isnan(x):
        return "NaN"
    if isinstance(x, float) and math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return float(x)


def _json_canon(x):
    """A plain JSON value (decoded VARIANT) in canonical form."""
    if isinstance(x, dict):
        return {k: _json_canon(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_canon(v) for v in x]
    if isinstance(x, (dt.datetime, dt.date)):
        return x.isoformat()
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int):
        return x
    if isinstance(x, (float, Decimal)):
        d = Decimal(str(x))
        return int(d) if d == d.to_integral() else str(d.normalize())
    return x


def canon(value, dtype, side):
    """`side` is 'expected' (independent reader's JSON) or 'actual' (Postgres row_to_json)."""
    if value is None:
        return None
    if isinstance(dtype, str):
        t = dtype
        if t in ("timestamp", "timestamp_ntz"):
            return _ts(value, t == "timestamp")
        if t.startswith("decimal"):
            scale = int(t.split(",")[1].rstrip(")"))
            return str(Decimal(str(value)).quantize(Decimal(1).scaleb(-scale)))
        if t == "float":
            f = _float(value)
            return f if isinstance(f, str) else struct.unpack("<f", struct.pack("<f", f))[0]
        if t == "double":
            return _float(value)
        if t == "variant":
            if side == "expected":
                return _json_canon(decode_variant(value))
            return _json_canon(value)
        if t in ("long", "integer", "short", "byte"):
            return int(value)
        if t == "binary":
            return value.lower()
        return value
    kind = dtype["type"]
    if kind == "array":
        return [canon(v, dtype["elementType"], side) for v in value]
    if kind == "struct":
        return {f["name"]: canon(value.get(f["name"]), f["type"], side) for f in dtype["fields"]}
    if kind == "map":
        kt, vt = dtype["keyType"], dtype["valueType"]
        pairs = value.items() if isinstance(value, dict) else value
        if kt == "string":
            return {k: canon(v, vt, side) for k, v in pairs}
        return sorted(([canon(k, kt, side), canon(v, vt, side)] for k, v in pairs), key=json.dumps)
    raise ValueError(f"unknown type {dtype}")


def canon_rows(rows, schema_fields, side, columns=None):
    out = []
    for r in rows:
        row = {}
        for f in schema_fields:
            if columns is not None and f["name"] not in columns:
                continue
            row[f["name"]] = canon(r.get(f["name"]), f["type"], side)
        out.append(json.dumps(row, sort_keys=True, default=str))
    return sorted(out)


def read_expected(path):
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def pg_rows(conn, table):
    conn.execute("SET TimeZone = 'UTC'")
    return [r[0] for r in conn.execute(f"SELECT row_to_json(t) FROM {table} t").fetchall()]
