"""Shared fixtures: the real local control plane, a namespace per test, the operator as a process.

When a test fails, the operator's log and the namespace's Events are attached to its report, so
a failure reads like a story rather than a bare assertion.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cxg_devcluster.cluster import DevCluster, free_port, stop_process

from cxg_on_k8s.api import crd
from cxg_on_k8s.k8s.client import K8ApiHandler, load_client
from cxg_on_k8s.render import install

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """One real control plane for the whole session, with the CRD installed."""
    with DevCluster(workdir=tmp_path_factory.mktemp("devcluster")) as running:
        install_crd(running, crd.definition())
        yield running
        # Kept for the record (README, notes): what the control plane needed for the whole suite.
        ARTIFACTS.mkdir(exist_ok=True)
        peaks = {name: proc.peak_rss_mib() for name, proc in running.processes.items()}
        (ARTIFACTS / "devcluster-peak-rss.txt").write_text(
            "".join(f"{name}\t{mib:.0f} MiB\n" for name, mib in peaks.items() if mib is not None)
        )


def install_crd(cluster: DevCluster, definition: dict[str, Any]) -> None:
    """Apply a CRD and wait until it is Established: objects of its kind are refused before."""
    cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(definition))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{definition['metadata']['name']}", "--timeout=60s")


def remove_peering_crd(cluster: DevCluster) -> None:
    """kopf's peering CRD goes after the tests that install it, so that the rest of the session
    runs as a cluster without it would (the operator then runs without peering)."""
    cluster.kubectl("delete", "crd", install.KOPF_PEERING_CRD_NAME, "--ignore-not-found", "--wait=true", "--timeout=60s")


@pytest.fixture
def namespace(cluster: DevCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    if request.node.stash.get(FAILED, False):
        events = cluster.kubectl("get", "events", "-n", name, "--sort-by=.lastTimestamp", check=False).stdout
        request.node.add_report_section("teardown", f"events in {name}", events)
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def k8s(cluster: DevCluster, namespace: str) -> K8ApiHandler:
    return K8ApiHandler(client=load_client(str(cluster.kubeconfig)), namespace=namespace)


FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[FAILED] = True
    return report


@dataclass
class OperatorProcess:
    """``cxg-k8s operator`` running as its own process, as in a pod."""

    popen: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.popen, timeout=20, sig=sig)


StartOperator = Callable[..., OperatorProcess]


def operator_env(kubeconfig: str | os.PathLike[str], namespace: str, **settings: Any) -> dict[str, str]:
    """The operator's environment in tests: this namespace, plain http, no metrics scraping (the
    URL is the discard port's) and no metrics port of its own; ``settings`` as CXG_* overrides."""
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "CXG_NAMESPACE": namespace,
        "CXG_URL_SCHEME": "http",
        "CXG_HOST_NAME": "cxg.localtest",
        "CXG_METRICS_SERVICE": "",
        "CXG_METRICS_URL": "http://127.0.0.1:9/metrics",
        "CXG_OPERATOR_METRICS_PORT": "0",
    }
    env.update({f"CXG_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@pytest.fixture
def start_operator(
    cluster: DevCluster, namespace: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start the operator for this test's namespace; settings as CXG_* keyword overrides."""
    started: list[OperatorProcess] = []

    def start(*args: str, kubeconfig: str | os.PathLike[str] | None = None, **settings: Any) -> OperatorProcess:
        """``args``: extra ``cxg-k8s operator`` options (e.g. ``--standalone``). ``kubeconfig``:
        run with other credentials than the admin's (e.g. the operator's own service account,
        to prove its RBAC suffices)."""
        env = operator_env(kubeconfig or cluster.kubeconfig, namespace, **settings)
        proc = launch_operator(env, tmp_path / f"operator-{len(started)}.log", *args, started=started)
        return proc

    yield start
    for proc in started:
        proc.stop()
    if request.node.stash.get(FAILED, False):
        for i, proc in enumerate(started):
            request.node.add_report_section("teardown", f"operator log {i}", proc.text()[-20000:])


def launch_operator(env: dict[str, str], log: Path, *args: str, started: list[OperatorProcess]) -> OperatorProcess:
    """``cxg-k8s operator`` as its own process with ``env``, once its liveness endpoint answers;
    appended to ``started`` first, so that the caller stops it even when it never answers."""
    port = free_port()
    with log.open("wb") as handle:
        popen = subprocess.Popen(
            [sys.executable, "-m", "cxg_on_k8s", "operator", "--liveness", f"http://127.0.0.1:{port}/healthz", *args],
            env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    proc = OperatorProcess(popen, log, env)
    started.append(proc)
    wait_for(lambda: _healthy(port) or _died(proc), 60, "the operator's liveness endpoint")
    if popen.poll() is not None:
        raise AssertionError(f"operator exited with {popen.returncode}:\n{proc.text()[-3000:]}")
    return proc


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def _died(proc: OperatorProcess) -> bool:
    return proc.popen.poll() is not None


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll until truthy; the error says what was awaited and for how long."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
