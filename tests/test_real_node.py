"""The dev cluster's real node: pods run for real (containerd, runc, CNI bridge, kubelet), the API
server reaches the kubelet (logs, exec), Services work through kube-proxy and their names through
CoreDNS, kwok keeps every pod that did not ask for the real node, made-up addresses stay local,
and a stop leaves nothing behind.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cxg_devcluster import cluster as dc
from cxg_devcluster import node as dn
from cxg_devcluster.cluster import DevCluster
from cxg_devcluster.node import RealNode, leftovers

from tests.conftest import REPO, wait_for

pytest.register_assert_rewrite("tests.fixtures_node")  # before the import below, so its asserts explain
from tests.fixtures_node import PAGE, apply, busybox_pod, create_real_namespace, pod  # noqa: E402

pytest_plugins = ["tests.fixtures_node"]
pytestmark = pytest.mark.cluster

HTTPD = ["httpd", "-f", "-v", "-p", "8080", "-h", "/www"]


def _wait_ready(cluster: DevCluster, namespace: str, *names: str, timeout: int = 90) -> None:
    pods = [f"pod/{n}" for n in names]
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", *pods, f"--timeout={timeout}s")


@pytest.fixture(scope="module")
def web(cluster: DevCluster, real_namespace: str, busybox_image: str) -> Iterator[dict[str, str]]:
    """An httpd pod with a readiness probe, a ClusterIP Service in front of it and a client pod,
    all on the real node; what the tests need to reach them."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    probe = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
    apply(
        cluster,
        real_namespace,
        busybox_pod("web", busybox_image, HTTPD, readinessProbe=probe, ports=[{"containerPort": 8080}]),
        busybox_pod("client", busybox_image, ["sleep", "3600"]),
        service,
    )
    _wait_ready(cluster, real_namespace, "web", "client")
    service = json.loads(cluster.kubectl("get", "service", "-n", real_namespace, "web", "-o", "json").stdout)
    cluster_ip = service["spec"]["clusterIP"]
    # kube-proxy writes a Service's rules a moment after its endpoint turns ready
    wait_for(lambda: _answers(f"http://{cluster_ip}/"), 30, f"kube-proxy's rules for Service web ({cluster_ip})")
    yield {"namespace": real_namespace, "pod_ip": pod(cluster, real_namespace, "web")["status"]["podIP"],
           "cluster_ip": cluster_ip}  # fmt: skip


def _exec(cluster: DevCluster, namespace: str, pod_name: str, *applet: str) -> str:
    """``kubectl exec`` of a busybox applet (the image holds no links to them)."""
    return cluster.kubectl("exec", "-n", namespace, pod_name, "--", "/bin/busybox", *applet).stdout


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return bytes(resp.read())


def _answers(url: str) -> bool:
    try:
        return _get(url) == PAGE
    except OSError:
        return False


def test_a_pod_runs_on_the_real_node_and_passes_its_readiness_probe(cluster: DevCluster, web: dict[str, str]) -> None:
    web_pod = pod(cluster, web["namespace"], "web")
    assert web_pod["spec"]["nodeName"] == dn.NODE_NAME, "the namespace's node selector sends its pods to the real node"
    ready = {c["type"]: c["status"] for c in web_pod["status"]["conditions"]}
    assert ready["Ready"] == "True"
    status = web_pod["status"]["containerStatuses"][0]
    assert status["ready"] and status["containerID"].startswith("containerd://")
    assert ipaddress.ip_address(web["pod_ip"]) in ipaddress.ip_network(dn.POD_SUBNET)
    assert _get(f"http://{web['pod_ip']}:8080/") == PAGE, "the host reaches the pod on its bridge"


def test_kubectl_logs_and_exec_reach_the_kubelet(cluster: DevCluster, web: dict[str, str]) -> None:
    """The API server dials the kubelet at its InternalIP with a client certificate the kubelet
    trusts; the kubelet's serving certificate is checked against the cluster CA."""
    _get(f"http://{web['pod_ip']}:8080/")  # httpd -v logs each request
    logs = cluster.kubectl("logs", "-n", web["namespace"], "web").stdout
    assert "GET /" in logs or "response:200" in logs, logs
    assert _exec(cluster, web["namespace"], "web", "cat", "/www/index.html").encode() == PAGE
    hostname = _exec(cluster, web["namespace"], "client", "hostname").strip()
    assert hostname == "client"


def test_a_cluster_ip_answers_from_the_host_and_from_a_pod(web: dict[str, str], cluster: DevCluster) -> None:
    assert _get(f"http://{web['cluster_ip']}/") == PAGE
    body = _exec(cluster, web["namespace"], "client", "wget", "-q", "-O", "-", f"http://{web['cluster_ip']}/")
    assert body.encode() == PAGE


def test_service_names_resolve_in_pods(web: dict[str, str], cluster: DevCluster) -> None:
    fqdn = f"web.{web['namespace']}.svc.{dn.CLUSTER_DOMAIN}"
    answer = _exec(cluster, web["namespace"], "client", "nslookup", fqdn)
    assert web["cluster_ip"] in answer, answer
    # the short name, through the search path the kubelet wrote into the pod's resolv.conf
    body = _exec(cluster, web["namespace"], "client", "wget", "-q", "-O", "-", "http://web/")
    assert body.encode() == PAGE
    resolv = _exec(cluster, web["namespace"], "client", "cat", "/etc/resolv.conf")
    assert f"nameserver {dn.NODE_IP}" in resolv, resolv


def test_pods_reach_the_api_server_through_the_kubernetes_service(cluster: DevCluster, web: dict[str, str]) -> None:
    """In-cluster clients (the operator in a pod) dial ``kubernetes.default.svc``: CoreDNS,
    kube-proxy and the node's relay to the API server on 127.0.0.1. busybox speaks no modern
    TLS, so the pod sends plain HTTP and the API server's own refusal proves it answered; the
    host checks that TLS passes the relay intact."""
    request = 'printf "GET /version HTTP/1.0\\r\\n\\r\\n" | /bin/busybox nc -w 5 kubernetes.default.svc 443'
    reply = _exec(cluster, web["namespace"], "client", "sh", "-c", request)
    assert "Client sent an HTTP request to an HTTPS server" in reply, reply
    context = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
    context.load_cert_chain(str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))
    with socket.create_connection((dn.NODE_IP, cluster.api_port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="kubernetes.default.svc") as tls:
            tls.sendall(b"GET /version HTTP/1.0\r\n\r\n")
            assert b'"gitVersion": "v1.36.3"' in tls.recv(65536) + tls.recv(65536)


def test_an_opted_in_test_namespace_runs_its_deployments_on_the_real_node(
    cluster: DevCluster, on_real_node: str, busybox_image: str
) -> None:
    """What an end-to-end test of the operator relies on: a Deployment's pods (made by the
    controllers, no node selector or toleration of their own) land on the real node."""
    template = busybox_pod("web", busybox_image, HTTPD)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": template["metadata"], "spec": template["spec"]}},
    }  # fmt: skip
    apply(cluster, on_real_node, deployment)
    cluster.kubectl("rollout", "status", "-n", on_real_node, "deployment/web", "--timeout=90s")
    pods = json.loads(cluster.kubectl("get", "pods", "-n", on_real_node, "-l", "app=web", "-o", "json").stdout)
    assert {p["spec"]["nodeName"] for p in pods["items"]} == {dn.NODE_NAME}


def test_pods_of_other_namespaces_stay_on_kwok(cluster: DevCluster, real_node: RealNode, namespace: str) -> None:
    """The real node's taint keeps every pod that did not ask for it on kwok's nodes, so the
    kwok tests keep their instant, image-less pods."""
    apply(cluster, namespace, *[busybox_pod(f"p{i}", "localhost/no-such-image:1", ["true"]) for i in range(4)])
    _wait_ready(cluster, namespace, *[f"p{i}" for i in range(4)])
    nodes = {pod(cluster, namespace, f"p{i}")["spec"]["nodeName"] for i in range(4)}
    assert nodes and all(n.startswith("kwok-node-") for n in nodes), nodes


def test_made_up_addresses_are_routed_locally(cluster: DevCluster, real_node: RealNode) -> None:
    """kwok's pod and node IPs fail at once, here; nothing is sent out by the default route."""
    for address in ("10.244.3.7", dc.KWOK_NODE_IP, "10.250.200.1"):
        route = subprocess.run(["ip", "route", "get", address], capture_output=True, text=True)
        assert route.returncode != 0 and "no route to host" in route.stderr.lower(), (address, route)
        with pytest.raises(OSError) as refused, socket.create_connection((address, 80), timeout=5):
            pass
        # Refused by the local routing table (an unreachable route: EHOSTUNREACH at once), not a
        # dial that left by the default route and timed out: told by the error, not by a clock.
        assert not isinstance(refused.value, TimeoutError), f"a dial to {address} timed out instead of failing locally"
        assert refused.value.errno == errno.EHOSTUNREACH, (address, refused.value)
    route = subprocess.run(["ip", "route", "get", "10.0.77.1"], capture_output=True, text=True, check=True).stdout
    assert route.startswith("local "), route
    assert dn._forward_guard_present(), "pods may not forward past their bridge"


def test_a_second_cluster_shares_the_routes_and_refuses_a_second_real_node(
    cluster: DevCluster, real_node: RealNode, tmp_path: Path
) -> None:
    second = DevCluster(workdir=tmp_path / "second", nodes=1, quiet=True)
    with second:
        with pytest.raises(RuntimeError, match="another real node runs on this machine"):
            second.start_real_node()
        second.node = None  # it never started: nothing of the first one may be touched
    # the second cluster stopped; the first still runs, so the routes stay
    route = subprocess.run(["ip", "route", "get", "10.244.3.7"], capture_output=True, text=True)
    assert "no route to host" in route.stderr.lower(), route
    assert cluster.kubectl("get", "node", dn.NODE_NAME, "-o", "name").stdout.strip() == f"node/{dn.NODE_NAME}"


class _FailingNode(RealNode):
    """A node whose last step fails, to see that a failed start undoes the steps before it."""

    def _start_coredns(self, binary: Path) -> None:
        raise dc.ClusterStartError("CoreDNS failed on purpose")


def test_stop_and_a_failed_start_leave_nothing_behind(
    cluster: DevCluster, real_node: RealNode, busybox_image: str
) -> None:
    """Runs last in this module: it stops the session's node (with a pod running, so there are
    shims, mounts, a network namespace and iptables rules), checks the machine, then starts it
    again (images are imported again)."""
    namespace = create_real_namespace(cluster)
    apply(cluster, namespace, busybox_pod("web", busybox_image, HTTPD))
    _wait_ready(cluster, namespace, "web")
    root = real_node.root
    assert leftovers(root), "a running node should show up in leftovers()"
    real_node.stop()
    assert leftovers(root) == []

    failing = _FailingNode(cluster)
    with pytest.raises(dc.ClusterStartError, match="on purpose"):
        failing.start()
    assert leftovers(failing.root) == []

    real_node.start()
    apply(cluster, namespace, busybox_pod("again", busybox_image, HTTPD))
    _wait_ready(cluster, namespace, "again")
    assert _get(f"http://{pod(cluster, namespace, 'again')['status']['podIP']}:8080/") == PAGE
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")


CRASHING_NODE = """
import json, os, signal, sys
from pathlib import Path
from cxg_devcluster.cluster import DevCluster
from tests.fixtures_node import apply, busybox_pod, create_real_namespace

workdir, bin_dir, api_port = sys.argv[1], sys.argv[2], int(sys.argv[3])
cluster = DevCluster(workdir=Path(workdir), bin_dir=Path(bin_dir), api_port=api_port, quiet=True)
node = cluster.start_real_node()
namespace = create_real_namespace(cluster)
apply(cluster, namespace, busybox_pod("p", node.pause_image, []))
cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "pod/p", "--timeout=60s")
print(json.dumps({"namespace": namespace, "pids": [p.popen.pid for p in node.processes.values()]}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_start_clears_what_a_crashed_node_left(cluster: DevCluster, real_node: RealNode) -> None:
    """A node whose process was killed (SIGKILL: no stop ran) leaves its processes, shims, mounts,
    bridge and rules; the next start of a node clears them before it begins."""
    real_node.stop()
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_NODE, str(cluster.workdir), str(cluster.bin_dir), str(cluster.api_port)],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    left = json.loads(crashed.stdout.splitlines()[-1])
    assert len(leftovers(real_node.root)) > 10, "a crashed node should leave things behind"
    real_node.start()
    alive = [pid for pid in left["pids"] if Path(f"/proc/{pid}").exists()]
    assert alive == [], f"processes of the crashed node still run: {alive}"
    assert all(proc.popen.poll() is None for proc in real_node.processes.values())
    cluster.kubectl("delete", "namespace", left["namespace"], "--wait=false")
