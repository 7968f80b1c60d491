"""The edge as a real controller: Traefik v3.6.12, both a Gateway API implementation and an Ingress
controller, against the session's cluster.

Loaded with ``pytest_plugins = ["tests.fixtures_edge"]``. Issue 14 lets an installation use any
Gateway API implementation or Ingress controller in place of ingress-nginx, so the tests need a
real one of each: this is the real Traefik, built from its own Go module by
``devcluster/build.sh traefik`` (same dependency versions as its release), configured by flags
only, with its ``kubernetesgateway`` and ``kubernetesingress`` providers reading the API server
as a ServiceAccount bound to the ClusterRole below. The Gateway API CRDs are the standard
channel of the version Traefik's client is built with (collected by the same build step).

It runs as a host process, not as a pod: the tests reach it on 127.0.0.1 without a Service, a
port-forward or an image of it, it listens on 127.0.0.1 only, and from the host it reaches the
real node's pods on their bridge, the only backends it may be given (kwok's pods have no process
behind their addresses). It is told not to phone home (version check, anonymous usage), serves
only Ingresses of its own IngressClass and Gateways of its own GatewayClass, refuses ExternalName
Services (its default), and :meth:`EdgeController.backends` lists every address it would send a
request to, so a test can check they are all pods on the real node.

Traefik logs (and its access log) go to one file; when a test that uses ``edge_controller``
fails, its last lines are attached to the report.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cxg_devcluster.cluster import DevCluster, Process, binary, default_bin_dir, free_port

from tests.conftest import wait_for

TRAEFIK_VERSION = "v3.6.12"
GATEWAY_API_VERSION = "v1.4.0"  # what Traefik's go.mod requires (devcluster/build.sh checks it)
# The controller names Traefik claims classes by; both are fixed in its source.
GATEWAY_CONTROLLER = "traefik.io/gateway-controller"
INGRESS_CONTROLLER = "traefik.io/ingress-controller"
CLASS_NAME = "cxg-traefik"  # the GatewayClass and the IngressClass
ACCOUNT_NAMESPACE = "cxg-edge"
ACCOUNT = "traefik"
BUILD_HINT = "run `bash devcluster/build.sh traefik`"
# Traefik's answer when no router matches: told apart from a backend's 404 by its text.
NOT_FOUND_BODY = b"404 page not found\n"

# What Traefik's two providers use, no more (read from their informers and status writers in
# pkg/provider/kubernetes/{gateway,ingress}/client.go): Secrets and ConfigMaps are watched for TLS
# certificates and BackendTLSPolicy CAs, Nodes for NodePort load-balancing (the Ingress
# provider's cluster-scope informer, which also brings IngressClasses), Namespaces for a Gateway's
# allowedRoutes selectors. TCPRoute and TLSRoute are left out: they need the experimental channel.
CLUSTER_ROLE_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": ["namespaces", "nodes"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["services", "secrets", "configmaps"], "verbs": ["list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "ingressclasses"], "verbs": ["list", "watch"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses/status"], "verbs": ["update"]},
    {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": [
            "gatewayclasses",
            "gateways",
            "httproutes",
            "grpcroutes",
            "referencegrants",
            "backendtlspolicies",
        ],
        "verbs": ["list", "watch"],
    },
    {
        "apiGroups": ["gateway.networking.k8s.io"],
        "resources": [
            "gatewayclasses/status",
            "gateways/status",
            "httproutes/status",
            "grpcroutes/status",
            "backendtlspolicies/status",
        ],
        "verbs": ["update"],
    },
]


def edge_objects() -> list[dict[str, Any]]:
    """Traefik's account, its ClusterRole and binding, and the two classes it serves."""
    role = f"{ACCOUNT_NAMESPACE}-{ACCOUNT}"
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ACCOUNT_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": ACCOUNT, "namespace": ACCOUNT_NAMESPACE}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": role},
            "rules": CLUSTER_ROLE_RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": ACCOUNT_NAMESPACE}],
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": CLASS_NAME},
            "spec": {"controllerName": GATEWAY_CONTROLLER},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": {"name": CLASS_NAME},
            "spec": {"controller": INGRESS_CONTROLLER},
        },
    ]


def install_gateway_api(cluster: DevCluster, bin_dir: Path) -> None:
    """The Gateway API's standard CRDs, Established (server-side: HTTPRoute's schema is too big
    for client-side apply's annotation)."""
    path = bin_dir / f"gateway-api-crds-{GATEWAY_API_VERSION}.yaml"
    if not path.is_file():
        pytest.fail(f"{path} is missing: {BUILD_HINT}", pytrace=False)
    names = [doc["metadata"]["name"] for doc in yaml.safe_load_all(path.read_text()) if doc]
    cluster.kubectl("apply", "--server-side", "-f", str(path))
    cluster.kubectl("wait", "--for=condition=Established", *[f"crd/{n}" for n in names], "--timeout=60s")


def traefik_args(cluster: DevCluster, token: Path, web_port: int, api_port: int) -> list[str]:
    """Traefik's static configuration as flags.

    ``web`` is the one entry point routes attach to (``asDefault``, so Ingress routers skip the
    ``traefik`` one, which serves only ping and the API, read by :meth:`EdgeController.backends`).
    A Gateway listener is bound to the entry point whose address ends in ``:<listener port>``,
    so Gateways here listen on ``web_port``. ``strictPrefixMatching``: without it Traefik matches
    an Ingress's Prefix path by characters (``/a`` would take ``/ab``), not by path elements as the
    Ingress API says. The status addresses are what a client of this edge dials: 127.0.0.1.
    """
    connection = [f"--endpoint={cluster.server}", f"--token={token}", f"--certAuthFilePath={cluster.pki / 'ca.crt'}"]
    return [
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
        "--log.level=INFO",
        "--log.noColor=true",
        "--accessLog=true",
        f"--entryPoints.web.address=127.0.0.1:{web_port}",
        "--entryPoints.web.asDefault=true",
        f"--entryPoints.traefik.address=127.0.0.1:{api_port}",
        "--ping=true",
        "--api.insecure=true",
        "--api.dashboard=false",
        "--providers.kubernetesGateway=true",
        *[f"--providers.kubernetesGateway.{flag[2:]}" for flag in connection],
        "--providers.kubernetesGateway.statusAddress.ip=127.0.0.1",
        "--providers.kubernetesIngress=true",
        *[f"--providers.kubernetesIngress.{flag[2:]}" for flag in connection],
        f"--providers.kubernetesIngress.ingressClass={CLASS_NAME}",
        "--providers.kubernetesIngress.strictPrefixMatching=true",
        "--providers.kubernetesIngress.ingressEndpoint.ip=127.0.0.1",
    ]


def http_get(url: str) -> tuple[int, bytes]:
    """Status and body, also of an error answer (a 404 is an answer here, not a failure)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _conditions(conditions: list[dict[str, Any]] | None) -> dict[str, str]:
    return {c["type"]: c["status"] for c in conditions or []}


@dataclass(frozen=True)
class EdgeController:
    """The running Traefik and what tests route through it.

    ``base_url`` is its ``web`` entry point; ``port`` is that port, the one a Gateway listener
    must name; ``gateway_class`` and ``ingress_class`` are the class names it serves.
    """

    cluster: DevCluster
    process: Process
    base_url: str
    port: int
    api_url: str
    gateway_class: str = CLASS_NAME
    ingress_class: str = CLASS_NAME

    def tail(self, lines: int = 80) -> str:
        return self.process.tail(lines)

    def gateway(self, namespace: str, name: str, timeout: float = 60) -> None:
        """A Gateway of this class in ``namespace`` with one HTTP listener ``web`` on the entry
        point's port, for routes of its own namespace; returns once Traefik has accepted and
        programmed it."""
        gateway = {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "gatewayClassName": self.gateway_class,
                "listeners": [
                    {
                        "name": "web",
                        "protocol": "HTTP",
                        "port": self.port,
                        "allowedRoutes": {"namespaces": {"from": "Same"}},
                    }
                ],
            },
        }
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(gateway))

        def ready() -> bool:
            status = self._get("gateway", namespace, name).get("status", {})
            conditions = _conditions(status.get("conditions"))
            return conditions.get("Accepted") == "True" and conditions.get("Programmed") == "True"

        self._wait(ready, timeout, f"Gateway {namespace}/{name} Accepted and Programmed", "gateway", namespace, name)

    def wait_route(self, namespace: str, name: str, timeout: float = 60) -> None:
        """Until Traefik reports the HTTPRoute Accepted with its references resolved on every
        parent it lists (status.parents[]: a route's conditions live per Gateway)."""

        def accepted() -> bool:
            parents = self._get("httproute", namespace, name).get("status", {}).get("parents") or []
            ours = [p for p in parents if p.get("controllerName") == GATEWAY_CONTROLLER]
            return bool(ours) and all(
                _conditions(p.get("conditions")).get(kind) == "True"
                for p in ours
                for kind in ("Accepted", "ResolvedRefs")
            )

        self._wait(
            accepted, timeout, f"HTTPRoute {namespace}/{name} Accepted with ResolvedRefs", "httproute", namespace, name
        )

    def wait_ingress(self, namespace: str, name: str, timeout: float = 60) -> None:
        """Until Traefik has taken the Ingress: it writes its status address (127.0.0.1) there."""

        def taken() -> bool:
            ingress = self._get("ingress", namespace, name).get("status", {}).get("loadBalancer", {}).get("ingress")
            return bool(ingress == [{"ip": "127.0.0.1"}])

        self._wait(
            taken,
            timeout,
            f"Ingress {namespace}/{name} taken by Traefik (status 127.0.0.1)",
            "ingress",
            namespace,
            name,
        )

    def backends(self) -> set[str]:
        """Every server URL of every load-balanced HTTP service in Traefik's running
        configuration (its API): where it would send requests."""
        with urllib.request.urlopen(f"{self.api_url}/api/http/services?per_page=1000", timeout=5) as response:
            services: list[dict[str, Any]] = json.load(response)
        return {server["url"] for s in services for server in (s.get("loadBalancer") or {}).get("servers", [])}

    def _get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        found = self.cluster.kubectl("get", kind, "-n", namespace, name, "-o", "json", check=False)
        return json.loads(found.stdout) if found.returncode == 0 else {}

    def _wait(
        self, condition: Callable[[], bool], timeout: float, what: str, kind: str, namespace: str, name: str
    ) -> None:
        """``wait_for``, failing early if Traefik exits, and saying on a timeout what the object's
        status and Traefik's log were."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.popen.poll() is not None:
                raise AssertionError(
                    f"Traefik exited ({self.process.popen.returncode}) while waiting for {what}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                status = json.dumps(self._get(kind, namespace, name).get("status"), indent=1)
                raise AssertionError(
                    f"timed out after {timeout:.0f} s waiting for {what}; its status: {status}\n"
                    f"Traefik's log ({self.process.log}):\n{self.tail()}"
                )
            time.sleep(0.25)


@pytest.fixture(scope="session")
def edge_controller(cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeController]:
    """Traefik on 127.0.0.1 serving Gateways of class ``cxg-traefik`` and Ingresses of class
    ``cxg-traefik``, answering and with its Gateway provider up (the GatewayClass Accepted).
    The CRDs, RBAC and classes live as long as the session's cluster; Traefik stops at its end."""
    bin_dir = default_bin_dir()
    try:
        program = binary("traefik", TRAEFIK_VERSION, bin_dir)
    except FileNotFoundError:
        pytest.fail(f"traefik {TRAEFIK_VERSION} is not built in {bin_dir}: {BUILD_HINT}", pytrace=False)
    install_gateway_api(cluster, bin_dir)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(edge_objects()))
    workdir = tmp_path_factory.mktemp("traefik")
    token = workdir / "token"
    # Traefik reads the token once at start (no refresh): valid for longer than any session.
    issued = cluster.kubectl("create", "token", ACCOUNT, "-n", ACCOUNT_NAMESPACE, "--duration=24h").stdout.strip()
    token.write_text(issued)
    token.chmod(0o600)
    web_port, api_port = free_port(), free_port()
    log = workdir / "traefik.log"
    with log.open("wb") as handle:
        popen = subprocess.Popen(
            [str(program), *traefik_args(cluster, token, web_port, api_port)],
            stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, cwd=workdir,
        )  # fmt: skip
    RUNNING.append(process := Process("traefik", popen, log))
    edge = EdgeController(cluster, process, f"http://127.0.0.1:{web_port}", web_port, f"http://127.0.0.1:{api_port}")
    try:
        wait_for(lambda: popen.poll() is not None or _pings(edge.api_url), 30, f"Traefik's ping at {edge.api_url}")
        if popen.poll() is not None:
            raise AssertionError(f"Traefik exited with {popen.returncode}; its log ({log}):\n{process.tail()}")
        gateway_class = cluster.kubectl(
            "wait", "--for=condition=Accepted", f"gatewayclass/{CLASS_NAME}", "--timeout=60s", check=False
        )
        if gateway_class.returncode != 0:
            raise AssertionError(
                f"Traefik did not accept GatewayClass {CLASS_NAME} ({gateway_class.stderr.strip()}): its Gateway"
                f" provider is not running; its log ({log}):\n{process.tail()}"
            )
        yield edge
    finally:
        process.stop()
        RUNNING.remove(process)


def _pings(api_url: str) -> bool:
    try:
        return http_get(f"{api_url}/ping") == (200, b"OK")
    except OSError:
        return False


RUNNING: list[Process] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of Traefik's log to a failing test that used it."""
    report = yield
    if report.failed and "edge_controller" in getattr(item, "fixturenames", ()):
        for process in RUNNING:
            report.sections.append((f"Traefik log ({process.log})", process.tail(80)))
    return report
