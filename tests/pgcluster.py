"""A throwaway Postgres 15 cluster for tests and the demo, or an existing server.

Postgres refuses to run as root, so the cluster is created and started as the `postgres` OS
user in a directory that user owns, on a free port. `DATABASE_URL` (or PGHOST/PGPORT/...) points
everything at an existing server instead; then nothing is started or stopped.
"""
import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time

PG_BIN = "/usr/lib/postgresql/15/bin"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(args, **kw):
    if os.geteuid() == 0:
        args = ["sudo", "-u", "postgres", "--"] + args
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


class Cluster:
    def __init__(self, conf=None):
        self.external = bool(os.environ.get("DATABASE_URL") or os.environ.get("PGHOST"))
        self.conf = conf or {}
        self.dir = None
        self.port = None

    def start(self):
        if self.external:
            return self
        self.dir = tempfile.mkdtemp(prefix="lakesync-pg-")
        shutil.chown(self.dir, "postgres", "postgres")
        os.chmod(self.dir, 0o700)
        data = os.path.join(self.dir, "data")
        _as_postgres([f"{PG_BIN}/initdb", "-D", data, "-U", "postgres", "--auth=trust",
                      "--encoding=UTF8", "--locale=C.UTF-8"])
        self.port = _free_port()
        conf = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.dir}'",
            "max_worker_processes": "16",
            "fsync": "on",
            "log_min_messages": "warning",
        }
        conf.update(self.conf)
        with open(os.path.join(data, "postgresql.auto.conf"), "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        _as_postgres([f"{PG_BIN}/pg_ctl", "-D", data, "-l", os.path.join(self.dir, "log"),
                      "-w", "-t", "60", "start"])
        return self

    def stop(self):
        if self.external or not self.dir:
            return
        try:
            _as_postgres([f"{PG_BIN}/pg_ctl", "-D", os.path.join(self.dir, "data"), "-m",
                          "immediate", "-w", "stop"])
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def pg_ctl(self, *args):
        """Runs pg_ctl on this cluster (restart, stop -m fast, start ...)."""
        data = os.path.join(self.dir, "data")
        return _as_postgres([f"{PG_BIN}/pg_ctl", "-D", data, "-l", os.path.join(self.dir, "log"),
                             "-w", "-t", "60"] + list(args))

    def log(self):
        if self.external or not self.dir:
            return ""
        try:
            with open(os.path.join(self.dir, "log")) as f:
                return f.read()
        except OSError:
            return ""

    def dsn(self, dbname="postgres", user="postgres"):
        if self.external:
            url = os.environ.get("DATABASE_URL")
            return url if url else ""
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    def env(self):
        """Environment for psql / pg_dump against this cluster."""
        env = dict(os.environ)
        if not self.external:
            env.update(PGHOST="127.0.0.1", PGPORT=str(self.port), PGUSER="postgres",
                       PGDATABASE="postgres")
        return env


def _tmpdir(prefix):
    """A directory the postgres OS user can read, removed when the Python process exits."""
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o755)
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return d


def share_dir(path):
    """Copies a directory tree somewhere the postgres OS user can read and returns the copy."""
    dst = _tmpdir("lakesync-data-")
    out = os.path.join(dst, os.path.basename(path.rstrip("/")))
    shutil.copytree(path, out)
    for root, dirs, files in os.walk(dst):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    return out


def world_readable_tmpdir(prefix="lakesync-"):
    return _tmpdir(prefix)


def wait_for(cond, timeout=10.0, step=0.05):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(step)
    return False
