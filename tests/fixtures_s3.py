"""Real parts for the user-data tests: moto's S3 server, a line to it that can be cut, cellxgene.

Loaded with ``pytest_plugins = ["tests.fixtures_s3"]``. Nothing here imitates a server: moto runs
as its own HTTP server process with credentials enforced, cellxgene 1.3.0 runs from its own venv
(scripts/cellxgene-venv.sh) on an .h5ad written by anndata (scripts/make_h5ad.py). Tests that use
cellxgene are marked ``slow`` here (they take tens of seconds; they are never skipped).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from cxg_devcluster.cluster import free_port, stop_process

from tests.conftest import REPO, wait_for

REGION = "us-east-1"
SLOW_FIXTURE = "cellxgene_venv"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: runs real cellxgene; tens of seconds, never skipped")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the cellxgene venv as slow, so ``-m "not slow"`` is quick."""
    for item in items:
        if SLOW_FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker("slow")


def wait_until(check: Any, *, timeout: float, what: str, interval: float = 0.1) -> Any:
    """conftest's ``wait_for`` with keyword arguments and a finer default interval, as the S3 and
    viewer tests call it (``free_port`` is re-exported here for them too)."""
    return wait_for(check, timeout, what, interval)


def http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status < 500)
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


@dataclass
class MotoS3:
    """moto's S3 server as a process, with an IAM user whose keys are the only ones accepted."""

    endpoint: str
    access_key: str
    secret_key: str
    log_path: Path

    def client(self, endpoint: str | None = None) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def env(self, endpoint: str | None = None, **overrides: str) -> dict[str, str]:
        """Environment of a pod's data container: the standard AWS variables and nothing else."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            AWS_DEFAULT_REGION=REGION,
            AWS_ENDPOINT_URL=endpoint or self.endpoint,
            # no ~/.aws files and no instance metadata: only what the pod would get
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            AWS_EC2_METADATA_DISABLED="true",
        )
        env.update(overrides)
        return env


@contextlib.contextmanager
def moto_server(log_path: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """moto's S3 server as its own process on a free port of ``host`` (loopback, or the real
    node's address, which its pods reach); yields the endpoint URL once it answers."""
    port = free_port()
    endpoint = f"http://{host}:{port}"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: http_answers(f"{endpoint}/moto-api/"), timeout=60, what="moto_server")
        yield endpoint
    finally:
        stop_process(process, timeout=10)


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    """moto_server with an IAM user whose keys, from then on, are the only ones accepted."""
    with moto_with_keys(tmp_path_factory.mktemp("moto") / "moto.log") as moto:
        yield moto


@contextlib.contextmanager
def moto_with_keys(log_path: Path, host: str = "127.0.0.1") -> Iterator[MotoS3]:
    """:func:`moto_server` on ``host`` with an IAM user whose keys are the only ones accepted."""
    with moto_server(log_path, host) as endpoint:
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="cellxgene-pod")
        iam.put_user_policy(
            UserName="cellxgene-pod",
            PolicyName="s3",
            PolicyDocument='{"Version": "2012-10-17", "Statement": '
            '[{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}',
        )
        key = iam.create_access_key(UserName="cellxgene-pod")["AccessKey"]
        # From now on every request must be signed with that key, as on AWS.
        request = urllib.request.Request(
            f"{endpoint}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form body would hide the number from moto
        )
        urllib.request.urlopen(request, timeout=10).close()
        yield MotoS3(endpoint, key["AccessKeyId"], key["SecretAccessKey"], log_path)


@pytest.fixture
def bucket(moto_s3: MotoS3) -> str:
    """A fresh bucket per test, so tests sharing the server never see each other's objects."""
    name = f"cxg-test-{uuid.uuid4().hex[:12]}"
    moto_s3.client().create_bucket(Bucket=name)
    return name


class Relay:
    """A TCP relay in front of moto whose line can be cut and restored, like a network outage.

    Cutting closes the listening socket and every open connection, so clients get "connection
    refused" (not a hang) until ``restore()`` listens on the same port again. moto keeps its
    objects meanwhile, so tests can check that the last good copy survived.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                # shutdown() wakes the thread blocked in accept(); close() alone would leave the
                # socket listening until that call returns.
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # the listener was closed by cut()
                return
            with self._lock:
                if self._listener is not listener:  # cut while this one was being accepted
                    client.close()
                    return
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
                self._open.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


@pytest.fixture
def relay(moto_s3: MotoS3) -> Iterator[Relay]:
    port = int(moto_s3.endpoint.rsplit(":", 1)[1])
    line = Relay(port)
    line.restore()
    yield line
    line.cut()


# --- cellxgene ------------------------------------------------------------------------------


def ensure_cellxgene_venv() -> Path:
    """cellxgene 1.3.0's own venv, created once per machine by scripts/cellxgene-venv.sh."""
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "cellxgene-venv.sh")],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"scripts/cellxgene-venv.sh failed:\n{result.stderr}"
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def cellxgene_venv() -> Path:
    return ensure_cellxgene_venv()


def make_h5ad(venv: Path, out: Path, *, cells: int, genes: int) -> Path:
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            str(REPO / "scripts" / "make_h5ad.py"),
            str(out),
            "--cells",
            str(cells),
            "--genes",
            str(genes),
        ],
        check=True,
        timeout=600,
    )
    return out


@pytest.fixture(scope="session")
def small_h5ad(cellxgene_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 300 cells x 50 genes .h5ad with X_umap and a categorical cell_type column."""
    return make_h5ad(
        cellxgene_venv, tmp_path_factory.mktemp("h5ad") / "pbmc-small.h5ad", cells=300, genes=50
    )


@dataclass
class Cellxgene:
    """A running ``cellxgene launch`` as the pod runs it, and where its log goes."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_cellxgene(venv: Path, data: Path, *extra: str, timeout: float = 180) -> Iterator[Cellxgene]:
    """Launch cellxgene on ``data/dataset.h5ad`` with the pod's flags (and ``extra`` ones, e.g.
    --backed); yield once it answers /health; stop it with SIGTERM, as the kubelet does."""
    port = free_port()
    log_path = data.parent / f"cellxgene-{port}.log"
    command = [
        str(venv / "bin" / "cellxgene"), "--no-upgrade-check", "launch", "--verbose", "-p", str(port),
        "--host", "127.0.0.1", str(data / "dataset.h5ad"),
        "--annotations-file", str(data / "annotations.csv"),
        "--gene-sets-file", str(data / "gene_sets.csv"), *extra,
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=data)
    viewer = Cellxgene(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + timeout
        while not http_answers(f"{viewer.url}/health"):
            assert process.poll() is None, f"cellxgene exited:\n{viewer.log()}"
            assert time.monotonic() < deadline, f"cellxgene did not answer:\n{viewer.log()}"
            time.sleep(0.2)
        yield viewer
    finally:
        stop_process(process, timeout=20)
