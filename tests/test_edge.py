"""Issue 14: a real edge in place of ingress-nginx. Traefik (tests/fixtures_edge.py), as a Gateway
API implementation and as an Ingress controller, routes an HTTPRoute and an annotation-free
Ingress to a pod on the real node, and only by the path rules the two APIs define.

The pod serves the same page under the routed prefix, under the prefix with a character added and
at ``/``, so each "not routed" check would see the page if Traefik routed too much: a 404 with
Traefik's own text can only mean that no rule of Traefik's matched.
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cxg_devcluster import node as dn
from cxg_devcluster.cluster import DevCluster

from tests.conftest import wait_for

pytest.register_assert_rewrite("tests.fixtures_edge", "tests.fixtures_node")  # before the imports below
from tests.fixtures_edge import NOT_FOUND_BODY, EdgeController, http_get
from tests.fixtures_node import PAGE, apply, busybox_pod, pod

pytest_plugins = ["tests.fixtures_node", "tests.fixtures_edge"]
pytestmark = pytest.mark.cluster

PORT = 8080


@dataclass(frozen=True)
class Site:
    """busybox httpd on the real node behind Service ``web``; ``gateway_path`` and
    ``ingress_path`` are the prefixes routed to it, each also served with an ``x`` appended."""

    namespace: str
    pod_ip: str
    gateway_path: str
    ingress_path: str


@pytest.fixture(scope="module")
def site(cluster: DevCluster, real_namespace: str, busybox_image: str) -> Site:
    """The page under ``/``, ``/<prefix>/`` and ``/<prefix>x/`` for both prefixes: the pod makes
    the directories (the image holds one page), then runs httpd."""
    suffix = uuid.uuid4().hex[:8]
    gateway_path, ingress_path = f"/gw-{suffix}", f"/ing-{suffix}"
    dirs = " ".join(f"/www{p} /www{p}x" for p in (gateway_path, ingress_path))
    script = f"for d in {dirs}; do mkdir -p $d && cp /www/index.html $d/; done; exec httpd -f -v -p {PORT} -h /www"
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": PORT}]},
    }
    probe = {"httpGet": {"path": "/", "port": PORT}, "periodSeconds": 1}
    web = busybox_pod("web", busybox_image, ["sh", "-c", script], readinessProbe=probe, ports=[{"containerPort": PORT}])
    apply(cluster, real_namespace, web, service)
    cluster.kubectl("wait", "-n", real_namespace, "--for=condition=Ready", "pod/web", "--timeout=90s")
    pod_ip = pod(cluster, real_namespace, "web")["status"]["podIP"]
    for path in ("/", f"{gateway_path}/", f"{gateway_path}x/", f"{ingress_path}/", f"{ingress_path}x/"):
        assert http_get(f"http://{pod_ip}:{PORT}{path}") == (200, PAGE), f"the pod itself serves {path}"
    return Site(real_namespace, pod_ip, gateway_path, ingress_path)


def page_at(url: str) -> Callable[[], bool]:
    """For ``wait_for``: routes take effect a moment after Traefik reports them in their status."""
    return lambda: http_get(url) == (200, PAGE)


def assert_backends_are_the_pod(edge: EdgeController, site: Site) -> None:
    """Traefik would send requests to this pod and to nothing off the real node's bridge."""
    backends = edge.backends()
    assert f"http://{site.pod_ip}:{PORT}" in backends, backends
    subnet = ipaddress.ip_network(dn.POD_SUBNET)
    outside = {url for url in backends if ipaddress.ip_address(url.split("//")[1].rsplit(":", 1)[0]) not in subnet}
    assert not outside, f"Traefik has backends outside the real node's pods ({dn.POD_SUBNET}): {outside}"


def assert_no_refusals(edge: EdgeController) -> None:
    """Every request Traefik made to the API server was allowed: its ClusterRole is enough."""
    refused = [line for line in edge.process.log.read_text(errors="replace").splitlines() if "forbidden" in line]
    assert not refused, "the API server refused Traefik's account (fixtures_edge.CLUSTER_ROLE_RULES):\n" + "\n".join(
        refused
    )


def httproute(name: str, gateway: str, prefix: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": gateway}],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                    "backendRefs": [{"name": "web", "port": 80}],
                }
            ],
        },
    }


def assert_served_under_the_prefix_only(edge: EdgeController, site: Site, prefix: str) -> None:
    """The page under ``prefix``, Traefik's own 404 under ``prefix`` + "x" and at ``/`` (the pod
    would serve both if they were routed), by the pod's address alone, with no refusal logged."""
    wait_for(page_at(f"{edge.base_url}{prefix}/"), 30, f"the page at {edge.base_url}{prefix}/")
    assert http_get(f"{edge.base_url}{prefix}/index.html") == (200, PAGE)
    assert http_get(f"{edge.base_url}{prefix}x/") == (404, NOT_FOUND_BODY)
    assert http_get(f"{edge.base_url}/") == (404, NOT_FOUND_BODY)
    assert_backends_are_the_pod(edge, site)
    assert_no_refusals(edge)


def test_an_httproute_on_a_gateway_reaches_the_pod_by_its_path_prefix(
    cluster: DevCluster, edge_controller: EdgeController, site: Site
) -> None:
    edge = edge_controller
    edge.gateway(site.namespace, "edge")
    gateway = json.loads(cluster.kubectl("get", "gateway", "-n", site.namespace, "edge", "-o", "json").stdout)
    assert gateway["status"]["addresses"] == [{"type": "IPAddress", "value": "127.0.0.1"}]
    apply(cluster, site.namespace, httproute("web", "edge", site.gateway_path))
    edge.wait_route(site.namespace, "web")

    # PathPrefix matches whole path elements
    assert_served_under_the_prefix_only(edge, site, site.gateway_path)


def test_an_ingress_without_annotations_reaches_the_pod_by_its_prefix(
    cluster: DevCluster, edge_controller: EdgeController, site: Site
) -> None:
    edge = edge_controller
    path = {
        "path": site.ingress_path,
        "pathType": "Prefix",
        "backend": {"service": {"name": "web", "port": {"name": "http"}}},
    }
    ingress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "web"},
        "spec": {"ingressClassName": edge.ingress_class, "rules": [{"http": {"paths": [path]}}]},
    }
    apply(cluster, site.namespace, ingress)
    edge.wait_ingress(site.namespace, "web")

    # Prefix is per path element in the Ingress API: /<path>x is another path
    assert_served_under_the_prefix_only(edge, site, site.ingress_path)
