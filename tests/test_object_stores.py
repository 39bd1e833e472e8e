"""Object-store sources: S3 (moto), Azure Blob (Azurite) and GCS (fake-gcs-server), with
credentials, and the security model tried by real roles: two owners (alice, bob) and an
attacker (mallory), all non-superusers granted lakesync_user.

Every table is written by the Python deltalake package and read back by it; the synced rows
must be exactly what it reads.
"""
import json
import os
import threading
import time

import psycopg
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from conftest import database_with_extension
from lakecompare import canon_rows, pg_rows
from pgcluster import Cluster, wait_for
from stores import AZURITE_ACCOUNT, AZURITE_KEY, Azurite, FakeGcs, Moto, local_copy_dir

CDF = {"delta.enableChangeDataFeed": "true"}
# Secrets that must never appear anywhere but in the credential catalog.
S3_SECRET = "s3-SECRET-never-shown-4f1c9e"
S3_TOKEN = "session-TOKEN-never-shown-77ab"
WRONG_AZ_KEY = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk9PQ=="


@pytest.fixture(scope="module")
def moto():
    m = Moto().start()
    m.create_bucket("lake")
    yield m
    m.stop()


@pytest.fixture(scope="module")
def azurite():
    a = Azurite().start()
    a.create_container("lake")
    yield a
    a.stop()


@pytest.fixture(scope="module")
def gcs():
    g = FakeGcs().start()
    g.create_bucket("lake")
    yield g
    g.stop()


def same(conn, target, dt):
    """The synced rows are exactly what the deltalake package reads."""
    fields = json.loads(dt.schema().to_json())["fields"]
    expected = canon_rows(dt.to_pyarrow_table().to_pylist(), fields, "expected")
    assert canon_rows(pg_rows(conn, target), fields, "actual") == expected


def batch(ids, tag="v1"):
    return pa.table({"id": pa.array(ids, pa.int64()),
                     "name": pa.array([f"{tag}-{i}" for i in ids]),
                     "amount": pa.array([i * 1.5 for i in ids], pa.float64())})


class Roles:
    def __init__(self, db, cluster):
        self.db, self.cluster = db, cluster
        self.conns = {}
        for r in ("alice", "bob", "mallory"):
            db.execute(f"DROP ROLE IF EXISTS {r}")
        for r in ("alice", "bob", "mallory"):
            db.execute(f"CREATE ROLE {r} LOGIN")
            db.execute(f"GRANT lakesync_user TO {r}")
            db.execute(f"GRANT CREATE ON SCHEMA public TO {r}")

    def __getitem__(self, role):
        if role not in self.conns:
            self.conns[role] = psycopg.connect(self.cluster.dsn(dbname=self.db.dbname_, user=role),
                                               autocommit=True)
        return self.conns[role]

    def close(self):
        for c in self.conns.values():
            c.close()


@pytest.fixture()
def roles(db, cluster):
    r = Roles(db, cluster)
    yield r
    r.close()
    db.execute("DROP OWNED BY alice, bob, mallory CASCADE")


def s3_credential(conn, name, moto, secret="moto-secret", extra=None):
    # Options as a bind parameter: the secret never enters the statement's text.
    opts = {"access_key_id": "AKIDLAKESYNC", "secret_access_key": secret,
            "endpoint": moto.endpoint, "region": "us-east-1", "allow_http": True}
    opts.update(extra or {})
    conn.execute("SELECT create_credential(%s, 's3', %s)", (name, json.dumps(opts)))


def create(conn, target, source, mode="snapshot", key=("id",), options=None):
    return conn.execute(
        "SELECT delta_version, rows_loaded, message FROM create_synced_table(%s, %s, %s, %s, %s)",
        (target, source, list(key), mode, json.dumps(options or {}))).fetchone()


def sync(conn, target):
    return conn.execute("SELECT delta_version, rows_inserted, rows_updated, rows_deleted, "
                        "change_source FROM sync_now(%s)", (target,)).fetchone()


def error_of(conn, sql, args=()):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, args)
    return e.value


# --- S3 ----------------------------------------------------------------------------------------

def test_s3_snapshot_and_triggered_cdf_and_files(db, roles, moto):
    uri = "s3://lake/orders"
    so = moto.storage_options()
    write_deltalake(uri, batch(range(1, 1001)), storage_options=so, configuration=CDF)
    alice = roles["alice"]
    s3_credential(alice, "lake", moto)
    assert create(alice, "orders_snap", uri, options={"credential": "lake"})[:2] == (0, 1000)
    assert create(alice, "orders_cdf", uri, "triggered", options={"credential": "lake"})[:2] == (0, 1000)
    assert create(alice, "orders_files", uri, "triggered",
                  options={"credential": "lake", "change_detection": "files"})[:2] == (0, 1000)
    # A merge (updates and inserts), a delete and an append.
    dt = DeltaTable(uri, storage_options=so)
    dt.merge(batch(range(990, 1011), "v2"), "t.id = s.id", source_alias="s", target_alias="t") \
        .when_matched_update_all().when_not_matched_insert_all().execute()
    DeltaTable(uri, storage_options=so).delete("id <= 10")
    write_deltalake(uri, batch(range(2000, 2005)), mode="append", storage_options=so)
    dt = DeltaTable(uri, storage_options=so)
    assert sync(alice, "orders_cdf") == (3, 15, 11, 10, "cdf")
    assert sync(alice, "orders_files")[0] == 3
    assert sync(alice, "orders_snap")[:2] == (3, 1005)
    for t in ("orders_snap", "orders_cdf", "orders_files"):
        same(alice, t, dt)
    # Which credential each run used is on record.
    used = alice.execute("SELECT DISTINCT credential FROM lakesync.sync_runs").fetchall()
    assert used == [("lake",)]


def test_scoped_credentials_most_specific_prefix_wins(db, roles, moto):
    so = moto.storage_options()
    write_deltalake("s3://lake/sales/eu/orders", batch([1, 2, 3]), storage_options=so)
    write_deltalake("s3://lake/sales/us/orders", batch([4, 5]), storage_options=so)
    alice = roles["alice"]
    s3_credential(alice, "whole_lake", moto, extra={"scope": "s3://lake"})
    s3_credential(alice, "sales_eu", moto, extra={"scope": "s3://lake/sales/eu/"})
    # A prefix of a name is not a prefix of the path: s3://lake/sales/e must not cover .../eu/.
    s3_credential(alice, "sales_e", moto, extra={"scope": "s3://lake/sales/e"})
    create(alice, "eu", "s3://lake/sales/eu/orders")
    create(alice, "us", "s3://lake/sales/us/orders")
    used = dict(alice.execute("SELECT target, credential FROM lakesync.sync_runs").fetchall())
    assert used == {"public.eu": "sales_eu", "public.us": "whole_lake"}
    scopes = dict(alice.execute("SELECT name, scope FROM lakesync.credentials").fetchall())
    assert scopes == {"whole_lake": "s3://lake/", "sales_eu": "s3://lake/sales/eu/",
                      "sales_e": "s3://lake/sales/e/"}
    # Bob has no credential for it: alice's scopes are not his.
    e = error_of(roles["bob"], "SELECT create_synced_table('b', 's3://lake/sales/eu/orders')")
    assert e.sqlstate == "22023" and 'no credential of role "bob"' in str(e), str(e)


def test_no_credential_and_wrong_provider(db, roles, moto, azurite):
    alice = roles["alice"]
    e = error_of(alice, "SELECT create_synced_table('x', 's3://lake/none')")
    assert e.sqlstate == "22023" and "create_credential" in e.diag.message_hint
    alice.execute("SELECT create_credential('az', 'azure', %s)",
                  (json.dumps({"use_emulator": True}),))
    e = error_of(alice, "SELECT create_synced_table('x', 's3://lake/none', "
                        "options => '{\"credential\": \"az\"}')")
    assert e.sqlstate == "22023" and 'credential "az" is for azure' in str(e)
    e = error_of(alice, "SELECT create_synced_table('x', 's3://lake/none', "
                        "options => '{\"credential\": \"nope\"}')")
    assert e.sqlstate == "42704" and 'credential "nope" does not exist' in str(e)
    assert alice.execute("SELECT count(*) FROM lakesync.synced_tables").fetchone() == (0,)


# --- Azure -------------------------------------------------------------------------------------

def az_credential(conn, name, azurite, key=AZURITE_KEY, extra=None):
    opts = {"account_name": AZURITE_ACCOUNT, "account_key": key, "endpoint": azurite.endpoint,
            "allow_http": True}
    opts.update(extra or {})
    conn.execute("SELECT create_credential(%s, 'azure', %s)", (name, json.dumps(opts)))


def test_azure_snapshot_triggered_and_abfss(db, roles, azurite):
    local = os.path.join(local_copy_dir(), "customers")
    write_deltalake(local, batch(range(1, 501)), configuration=CDF)
    azurite.upload_dir(local, "lake", "customers")
    uri = "az://lake/customers"
    alice = roles["alice"]
    az_credential(alice, "blob", azurite)
    assert create(alice, "c_snap", uri, options={"credential": "blob"})[:2] == (0, 500)
    assert create(alice, "c_cdf", uri, "triggered", options={"credential": "blob"})[:2] == (0, 500)
    abfss = f"abfss://lake@{AZURITE_ACCOUNT}.dfs.core.windows.net/customers"
    assert create(alice, "c_abfss", abfss, "triggered",
                  options={"credential": "blob", "change_detection": "files"})[:2] == (0, 500)
    DeltaTable(local).delete("id > 490")
    DeltaTable(local).update({"name": "'renamed'"}, predicate="id = 7")
    azurite.upload_dir(local, "lake", "customers")
    dt = DeltaTable(local)
    assert sync(alice, "c_cdf") == (2, 0, 1, 10, "cdf")
    assert sync(alice, "c_abfss")[0] == 2
    assert sync(alice, "c_snap")[:2] == (2, 490)
    for t in ("c_snap", "c_cdf", "c_abfss"):
        same(alice, t, dt)


def test_wrong_key_then_rotation_without_touching_the_table(db, roles, azurite, cluster):
    local = os.path.join(local_copy_dir(), "rotate")
    write_deltalake(local, batch([1, 2, 3]), configuration=CDF)
    azurite.upload_dir(local, "lake", "rotate")
    uri = "az://lake/rotate"
    alice = roles["alice"]
    az_credential(alice, "rot", azurite)
    create(alice, "rot", uri, "triggered", options={"credential": "rot"})
    write_deltalake(local, batch([4]), mode="append")
    azurite.upload_dir(local, "lake", "rotate")
    alice.execute("SELECT alter_credential('rot', %s)", (json.dumps({"account_key": WRONG_AZ_KEY}),))
    e = error_of(alice, "SELECT * FROM sync_now('rot')")
    assert e.sqlstate == "42501", str(e)
    assert 'refused credential "rot"' in str(e) and uri in str(e)
    assert WRONG_AZ_KEY not in str(e) and "alter_credential" in e.diag.message_hint
    # The store's answer is cut to its status and error code: no response body in messages.
    assert "403 Forbidden (AuthorizationFailure)" in str(e) and "<?xml" not in str(e), str(e)
    assert alice.execute("SELECT count(*) FROM rot").fetchone() == (3,)
    state = alice.execute("SELECT state, synced_version, options FROM lakesync.synced_tables").fetchone()
    assert state == ("failed", 0, {"credential": "rot"})
    run = alice.execute("SELECT status, credential, message FROM lakesync.sync_runs "
                        "ORDER BY run_id DESC LIMIT 1").fetchone()
    assert run[:2] == ("failed", "rot") and WRONG_AZ_KEY not in run[2]
    # Rotated back: the spec is untouched, the next sync goes on from version 0.
    alice.execute("SELECT alter_credential('rot', %s)", (json.dumps({"account_key": AZURITE_KEY}),))
    assert sync(alice, "rot") == (1, 1, 0, 0, "cdf")
    assert WRONG_AZ_KEY not in cluster.log()


def test_store_killed_mid_scan_then_next_sync_succeeds(db, roles, azurite):
    local = os.path.join(local_copy_dir(), "killed")
    for i in range(6):  # six files: the scan is still fetching when the store dies
        write_deltalake(local, batch(range(i * 100000, (i + 1) * 100000)), mode="append")
    azurite.upload_dir(local, "lake", "killed")
    uri = "az://lake/killed"
    alice = roles["alice"]
    az_credential(alice, "k", azurite, extra={"timeout": "5s", "connect_timeout": "2s",
                                              "max_retries": 1, "retry_timeout": "3s"})
    create(alice, "killed", uri, options={"credential": "k"})
    write_deltalake(local, batch([999999]), mode="append")
    azurite.upload_dir(local, "lake", "killed")
    # A superuser's sync_now (the pause is a superuser's setting) reads with alice's credential.
    db.execute("SET lakesync.debug_pause = 'read:2'")
    killer = threading.Timer(0.5, azurite.stop)
    killer.start()
    t0 = time.time()
    e = error_of(db, "SELECT * FROM sync_now('public.killed')")
    killer.join()
    assert e.sqlstate == "58030", str(e)
    took = time.time() - t0
    assert "did not answer" in str(e) and took < 30, (took, str(e))
    db.execute("RESET lakesync.debug_pause")
    assert alice.execute("SELECT count(*) FROM killed").fetchone() == (600000,)
    # Fixed: started again on the same port; a SIGKILL may have cost Azurite its unsaved
    # metadata, so the container and files are put back as they were.
    azurite.start()
    try:
        azurite.create_container("lake")
    except Exception:  # noqa: BLE001 - it kept its metadata
        pass
    azurite.upload_dir(local, "lake", "killed")
    assert sync(alice, "killed")[:2] == (6, 600001)
    same(alice, "killed", DeltaTable(local))


# --- GCS ---------------------------------------------------------------------------------------

def test_gcs_snapshot_and_triggered_files(db, roles, gcs):
    local = os.path.join(local_copy_dir(), "events")
    write_deltalake(local, batch(range(1, 301)), configuration=CDF)
    gcs.upload_dir(local, "lake", "events")
    alice = roles["alice"]
    alice.execute("SELECT create_credential('g', 'gcs', %s)", (json.dumps(
        {"base_url": gcs.endpoint, "skip_signature": True, "allow_http": True}),))
    assert create(alice, "ev_snap", "gs://lake/events", options={"credential": "g"})[:2] == (0, 300)
    assert create(alice, "ev_cdf", "gs://lake/events", "triggered",
                  options={"credential": "g"})[:2] == (0, 300)
    assert create(alice, "ev_files", "gs://lake/events", "triggered",
                  options={"credential": "g", "change_detection": "files"})[:2] == (0, 300)
    DeltaTable(local).delete("id % 3 = 0")
    write_deltalake(local, batch([1000, 1001]), mode="append")
    gcs.upload_dir(local, "lake", "events")
    dt = DeltaTable(local)
    assert sync(alice, "ev_cdf") == (2, 2, 0, 100, "cdf")
    assert sync(alice, "ev_files")[0] == 2
    assert sync(alice, "ev_snap")[:2] == (2, 202)
    for t in ("ev_snap", "ev_cdf", "ev_files"):
        same(alice, t, dt)


# --- Faults ------------------------------------------------------------------------------------

def test_missing_bucket_and_path(db, roles, moto):
    alice = roles["alice"]
    s3_credential(alice, "c", moto)
    e = error_of(alice, "SELECT create_synced_table('m', 's3://no-such-bucket/t', "
                        "options => '{\"credential\": \"c\"}')")
    assert e.sqlstate == "58P01" and "s3://no-such-bucket/t" in str(e), str(e)
    e = error_of(alice, "SELECT create_synced_table('m', 's3://lake/no/such/table', "
                        "options => '{\"credential\": \"c\"}')")
    assert e.sqlstate in ("58P01", "42809"), str(e)
    assert "s3://lake/no/such/table" in str(e)
    assert alice.execute("SELECT to_regclass('public.m')").fetchone() == (None,)


def test_slow_store_times_out_and_cancel_is_prompt(db, roles, moto):
    uri = "s3://lake/slow"
    write_deltalake(uri, batch([1, 2]), storage_options=moto.storage_options())
    alice = roles["alice"]
    s3_credential(alice, "slow", moto, extra={"timeout": "2s", "max_retries": 0})
    create(alice, "slow", uri, options={"credential": "slow"})
    moto.freeze()
    try:
        t0 = time.time()
        e = error_of(alice, "SELECT * FROM sync_now('slow')")
        took = time.time() - t0
        assert e.sqlstate == "58030" and "did not answer" in str(e), str(e)
        assert took < 15, took
        # A cancel while the sync waits on the network stops it within a second.
        alice.execute("SELECT alter_credential('slow', '{\"timeout\": \"60s\"}')")
        pid = alice.execute("SELECT pg_backend_pid()").fetchone()[0]
        out = {}

        def run():
            t = time.time()
            try:
                alice.execute("SELECT * FROM sync_now('slow')")
            except psycopg.Error as err:
                out["e"], out["after"] = err, time.time() - t
        th = threading.Thread(target=run)
        th.start()
        time.sleep(1.5)
        t_cancel = time.time()
        db.execute("SELECT pg_cancel_backend(%s)", (pid,))
        th.join(10)
        assert out["e"].sqlstate == "57014"
        assert time.time() - t_cancel < 1.0 + 0.5
    finally:
        moto.thaw()
    assert sync(alice, "slow")[0] == 0
    assert alice.execute("SELECT count(*) FROM slow").fetchone() == (2,)


# --- The security model ------------------------------------------------------------------------

def test_credentials_belong_to_their_owner(db, roles, moto):
    alice, bob, mallory = roles["alice"], roles["bob"], roles["mallory"]
    s3_credential(alice, "prod", moto, secret=S3_SECRET, extra={"session_token": S3_TOKEN})
    write_deltalake("s3://lake/private", batch([1, 2]), storage_options=moto.storage_options())
    create(alice, "private", "s3://lake/private", options={"credential": "prod"})
    # Alice sees her credential, without its secrets; the others see nothing of it.
    shown = alice.execute("SELECT name, provider, owner, options, secrets_set "
                          "FROM lakesync.credentials").fetchall()
    assert shown == [("prod", "s3", "alice",
                      {"aws_access_key_id": "AKIDLAKESYNC", "aws_endpoint": moto.endpoint,
                       "aws_region": "us-east-1", "allow_http": True},
                      ["aws_secret_access_key", "aws_session_token"])]
    for who in (bob, mallory):
        assert who.execute("SELECT count(*) FROM lakesync.credentials").fetchone() == (0,)
        e = error_of(who, "SELECT * FROM lakesync.stored_credentials")
        assert e.sqlstate == "42501"
        # Naming it reaches nothing: it does not exist for them.
        e = error_of(who, "SELECT create_synced_table('stolen', 's3://lake/private', "
                          "options => '{\"credential\": \"prod\"}')")
        assert e.sqlstate == "42704" and 'credential "prod" does not exist' in str(e)
        for sql in ("SELECT alter_credential('prod', '{\"region\": \"eu-west-1\"}')",
                    "SELECT drop_credential('prod')"):
            assert error_of(who, sql).sqlstate == "42704"
        # Their own credential of the same name is theirs alone.
    s3_credential(mallory, "prod", moto, secret="mallory-own-secret")
    assert alice.execute("SELECT count(*) FROM lakesync.credentials").fetchone() == (1,)
    # Nor do they see alice's specs or runs.
    for who in (bob, mallory):
        assert who.execute("SELECT count(*) FROM lakesync.synced_tables").fetchone() == (0,)
        assert who.execute("SELECT count(*) FROM lakesync.sync_runs").fetchone() == (0,)
        assert who.execute("SELECT count(*) FROM lakesync.status").fetchone() == (0,)
        e = error_of(who, "SELECT * FROM sync_now('public.private')")
        assert e.sqlstate == "42704"
    # A superuser sees every credential, and still no secret.
    everything = json.dumps(db.execute("SELECT * FROM lakesync.credentials").fetchall(), default=str)
    assert "prod" in everything and S3_SECRET not in everything and S3_TOKEN not in everything
    # A credential in use cannot be dropped.
    e = error_of(alice, "SELECT drop_credential('prod')")
    assert e.sqlstate == "2BP01" and "public.private" in str(e)


def test_attacker_cannot_reach_the_server(db, roles, fixtures_dir):
    mallory = roles["mallory"]
    # Server files need pg_read_server_files, as COPY FROM a file.
    path = os.path.join(fixtures_dir, "simple_types")
    for src in (path, "file://" + path):
        e = error_of(mallory, "SELECT create_synced_table('f', %s)", (src,))
        assert e.sqlstate == "42501" and "pg_read_server_files" in e.diag.message_hint
    # The server's own identity: instance metadata, credential files, the Azure CLI.
    for provider, opts in (("s3", {"use_environment": True}),
                           ("s3", {"access_key_id": "a", "secret_access_key": "bbbbbbbb",
                                   "metadata_endpoint": "http://169.254.169.254"}),
                           ("s3", {"web_identity_token_file": "/etc/passwd", "role_arn": "x"}),
                           ("azure", {"account_name": "a", "use_azure_cli": True}),
                           ("gcs", {"service_account": "/var/lib/postgresql/key.json"}),
                           ("gcs", {"application_credentials": "/etc/shadow"})):
        e = error_of(mallory, "SELECT create_credential('x', %s, %s)", (provider, json.dumps(opts)))
        assert e.sqlstate == "42501", (provider, opts, str(e))
    # Without keys of its own a credential would fall back to the server's identity: refused.
    e = error_of(mallory, "SELECT create_credential('x', 's3', '{\"region\": \"us-east-1\"}')")
    assert e.sqlstate == "22023" and "no key" in str(e)
    # Unknown options and bucket overrides are refused by name.
    e = error_of(mallory, "SELECT create_credential('x', 's3', "
                          "'{\"skip_signature\": true, \"secret_acces_key\": \"typo\"}')")
    assert e.sqlstate == "22023" and "secret_acces_key" in str(e)
    e = error_of(mallory, "SELECT create_credential('x', 's3', "
                          "'{\"skip_signature\": true, \"bucket\": \"other\"}')")
    assert e.sqlstate == "22023"
    # Waits are bounded, in a form we can check.
    for opts in ({"timeout": "1week"}, {"timeout": "11m"}, {"max_retries": 1000},
                 {"retry_timeout": "1h"}):
        opts = dict(opts, skip_signature=True)
        e = error_of(mallory, "SELECT create_credential('x', 's3', %s)", (json.dumps(opts),))
        assert e.sqlstate == "22023", (opts, str(e))
    # The catalog is not writable directly.
    for sql in ("INSERT INTO lakesync.stored_credentials (owner, name, provider) "
                "VALUES ('alice', 'x', 's3')",
                "UPDATE lakesync.synced_tables SET owner = 'mallory'",
                "INSERT INTO lakesync.sync_runs (target, started_at, status) "
                "VALUES ('x', now(), 'failed')"):
        assert error_of(mallory, sql).sqlstate == "42501"
    assert db.execute("SELECT count(*) FROM lakesync.stored_credentials").fetchone() == (0,)


def test_server_identity_needs_the_role(db, roles, moto):
    bob, mallory = roles["bob"], roles["mallory"]
    # Not by altering a credential of one's own either (the check is the caller's, not the
    # catalog owner's).
    s3_credential(mallory, "m", moto)
    e = error_of(mallory, "SELECT alter_credential('m', '{\"use_environment\": true}')")
    assert e.sqlstate == "42501" and "lakesync_use_server_credentials" in e.diag.message_hint
    e = error_of(mallory, "SELECT alter_credential('m', "
                          "'{\"use_environment\": true, \"web_identity_token_file\": \"/etc/passwd\"}')")
    assert e.sqlstate == "42501"
    assert mallory.execute("SELECT use_environment, options ? 'aws_web_identity_token_file' "
                           "FROM lakesync.credentials").fetchone() == (False, False)
    db.execute("GRANT lakesync_use_server_credentials TO bob")
    bob.execute("SELECT create_credential('env', 's3', '{\"use_environment\": true}')")
    assert bob.execute("SELECT use_environment FROM lakesync.credentials").fetchone() == (True,)
    # Options reaching the server's files stay tied to use_environment: turning it off with
    # them still stored is refused.
    bob.execute("SELECT alter_credential('env', '{\"web_identity_token_file\": \"/tmp/t\", "
                "\"role_arn\": \"arn:aws:iam::1:role/r\"}')")
    e = error_of(bob, "SELECT alter_credential('env', '{\"use_environment\": false, "
                      "\"skip_signature\": true}')")
    assert e.sqlstate == "42501" and "uses the database server's own identity" in str(e)
    # Revoked later: the credential can no longer be used.
    db.execute("REVOKE lakesync_use_server_credentials FROM bob")
    e = error_of(bob, "SELECT create_synced_table('e', 's3://lake/x', "
                      "options => '{\"credential\": \"env\"}')")
    assert e.sqlstate == "42501" and "lakesync_use_server_credentials" in e.diag.message_hint


def test_without_the_user_role_nothing_is_callable(db, cluster):
    db.execute("DROP ROLE IF EXISTS outsider")
    db.execute("CREATE ROLE outsider LOGIN")
    with psycopg.connect(cluster.dsn(dbname=db.dbname_, user="outsider"), autocommit=True) as c:
        for sql in ("SELECT create_credential('x', 's3', '{\"skip_signature\": true}')",
                    "SELECT create_synced_table('x', 's3://lake/x')",
                    "SELECT * FROM sync_now('x')"):
            assert error_of(c, sql).sqlstate == "42501"
        # Reading its own (empty) catalog rows is fine.
        assert c.execute("SELECT count(*) FROM lakesync.credentials").fetchone() == (0,)
    db.execute("DROP ROLE outsider")


def test_synced_tables_are_read_only(db, roles, moto):
    uri = "s3://lake/ro"
    so = moto.storage_options()
    write_deltalake(uri, batch([1, 2, 3]), storage_options=so, configuration=CDF)
    alice, bob = roles["alice"], roles["bob"]
    s3_credential(alice, "c", moto)
    create(alice, "ro", uri, "triggered", options={"credential": "c"})
    alice.execute("GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ro TO bob")
    for who in (alice, bob, db):
        for sql in ("INSERT INTO public.ro VALUES (9, 'x', 1)", "UPDATE public.ro SET amount = 0",
                    "DELETE FROM public.ro", "TRUNCATE public.ro"):
            e = error_of(who, sql)
            assert e.sqlstate == "42501" and "synced table public.ro: it is read-only" in str(e), sql
            assert '"read_only": false' in e.diag.message_hint
    # The syncs write it: incremental, and a full refresh.
    write_deltalake(uri, batch([4]), mode="append", storage_options=so)
    assert sync(alice, "ro")[:2] == (1, 1)
    alice.execute("SELECT * FROM full_refresh('ro')")
    same(alice, "ro", DeltaTable(uri, storage_options=so))
    # The owner opts out, and back in.
    alice.execute("SELECT alter_synced_table('ro', options => "
                  "'{\"credential\": \"c\", \"read_only\": false}')")
    bob.execute("UPDATE public.ro SET amount = 0 WHERE id = 1")
    alice.execute("SELECT alter_synced_table('ro', options => '{\"credential\": \"c\"}')")
    assert error_of(bob, "DELETE FROM public.ro").sqlstate == "42501"
    # Created writable from the start.
    create(alice, "rw", uri, options={"credential": "c", "read_only": False})
    alice.execute("INSERT INTO rw VALUES (100, 'mine', 0)")


def test_secrets_never_leak(db, roles, moto, cluster):
    """Errors, NOTICEs, the server log, sync_runs, the spec and pg_stat_activity never show a
    secret: run a failing and a succeeding sync with one, then look everywhere."""
    alice = roles["alice"]
    notices = []
    alice.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
    s3_credential(alice, "leak", moto, secret=S3_SECRET, extra={"session_token": S3_TOKEN})
    write_deltalake("s3://lake/leak", batch([1]), storage_options=moto.storage_options())
    create(alice, "leak", "s3://lake/leak", options={"credential": "leak"})
    # A bad option value fails validation without echoing the secrets given with it.
    e = error_of(alice, "SELECT alter_credential('leak', %s)", (json.dumps(
        {"secret_access_key": S3_SECRET + "2", "allow_http": "maybe"}),))
    assert S3_SECRET not in str(e)
    # pg_stat_activity of a session that just stored a secret (bind parameters: not in the text).
    alice.execute("SELECT alter_credential('leak', %s)", (json.dumps({"session_token": S3_TOKEN}),))
    pid = alice.execute("SELECT pg_backend_pid()").fetchone()[0]
    queries = db.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchall()
    # A sync that fails (the store is down) and one that succeeds.
    moto.freeze()
    try:
        alice.execute("SELECT alter_credential('leak', '{\"timeout\": \"1s\", \"max_retries\": 0}')")
        e2 = error_of(alice, "SELECT * FROM sync_now('leak')")
    finally:
        moto.thaw()
    sync(alice, "leak")
    seen = "\n".join([str(e), str(e2), e2.diag.message_hint or "", json.dumps(queries)] + notices)
    seen += json.dumps(db.execute("SELECT * FROM lakesync.sync_runs").fetchall(), default=str)
    seen += json.dumps(db.execute("SELECT * FROM lakesync.synced_tables").fetchall(), default=str)
    seen += json.dumps(db.execute("SELECT * FROM lakesync.credentials").fetchall(), default=str)
    seen += json.dumps(db.execute("SELECT * FROM lakesync.status").fetchall(), default=str)
    seen += cluster.log()
    for secret in (S3_SECRET, S3_TOKEN):
        assert secret not in seen
    # ... while the catalog does hold them, for the syncs.
    held = db.execute("SELECT secrets::text FROM lakesync.stored_credentials").fetchone()[0]
    assert S3_TOKEN in held


# --- The background worker ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def wcluster():
    c = Cluster(conf={"shared_preload_libraries": "'pg_lakesync'",
                      "lakesync.poll_interval": "'200ms'"}).start()
    if c.external:
        pytest.skip("needs a cluster of its own with the library preloaded")
    yield c
    c.stop()


def test_worker_follows_an_s3_table_continuously_as_its_owner(wcluster, moto):
    gen = database_with_extension(wcluster, "os")
    wdb = next(gen)
    try:
        wdb.execute("DROP ROLE IF EXISTS carol")
        wdb.execute("CREATE ROLE carol LOGIN")
        wdb.execute("GRANT lakesync_user TO carol")
        wdb.execute("GRANT CREATE ON SCHEMA public TO carol")
        with psycopg.connect(wcluster.dsn(dbname=wdb.dbname_, user="carol"),
                             autocommit=True) as carol:
            uri = "s3://lake/stream"
            so = moto.storage_options()
            write_deltalake(uri, batch([1, 2, 3]), storage_options=so, configuration=CDF)
            s3_credential(carol, "stream", moto, extra={"scope": "s3://lake/stream"})
            create(carol, "stream", uri, "continuous")
            write_deltalake(uri, batch([4, 5]), mode="append", storage_options=so)
            DeltaTable(uri, storage_options=so).delete("id = 1")
            assert wait_for(lambda: carol.execute(
                "SELECT synced_version FROM lakesync.synced_tables").fetchone() == (2,), timeout=20)
            same(carol, "stream", DeltaTable(uri, storage_options=so))
            # The scheduler watched the bucket's log with carol's credential: the status knows
            # the latest version and that nothing is pending.
            assert wait_for(lambda: carol.execute(
                "SELECT latest_version, versions_behind, lag_seconds FROM lakesync.status"
            ).fetchone() == (2, 0, 0), timeout=20), carol.execute(
                "SELECT * FROM lakesync.status").fetchone()
            runs = carol.execute("SELECT DISTINCT status, credential FROM lakesync.sync_runs "
                                 "WHERE status <> 'running'").fetchall()
            assert runs == [("succeeded", "stream")]
            # A version that is there but not synced yet shows as pending while paused.
            carol.execute("SELECT pause_sync('stream')")
            write_deltalake(uri, batch([6]), mode="append", storage_options=so)
            carol.execute("SELECT resume_sync('stream')")
            assert wait_for(lambda: carol.execute("SELECT count(*) FROM stream").fetchone()
                            == (5,), timeout=20)
    finally:
        wdb.execute("REVOKE CREATE ON SCHEMA public FROM carol")
        try:
            next(gen)
        except StopIteration:
            pass
        with psycopg.connect(wcluster.dsn(), autocommit=True) as admin:
            admin.execute("DROP ROLE IF EXISTS carol")
