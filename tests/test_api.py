"""K8ApiHandler against the real API server: the proof of concept's constructor and calls, and one
clear error type (ApiError: the API's status and reason, the object, what to do) for every failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cxg_devcluster.cluster import DevCluster, free_port
from kubernetes.client.exceptions import ApiException

from cxg_on_k8s.api import access, model
from cxg_on_k8s.k8s.client import ApiError, K8ApiHandler
from cxg_on_k8s.render import install, viewer
from cxg_on_k8s.settings import Settings
from tests import service_accounts
from tests.conftest import wait_for
from tests.instances import DATASET, OWNER


@pytest.fixture
def portal_token(cluster: DevCluster, namespace: str) -> Iterator[str]:
    """The portal's account (omicsdm) with its Role in the test namespace, and a real token."""
    rbac = install.portal_rbac(Settings(namespace=namespace))
    service_accounts.apply(cluster, rbac)
    yield service_accounts.token(cluster, namespace, install.PORTAL_ACCOUNT)
    service_accounts.delete_cluster_scoped(cluster, rbac)


@pytest.fixture
def portal(cluster: DevCluster, namespace: str, portal_token: str) -> K8ApiHandler:
    """Exactly as the portal builds it (the PoC's constructor), then moved to the test namespace."""
    handler = K8ApiHandler(host=cluster.server, oidc_client=(install.PORTAL_ACCOUNT, portal_token), cert=str(cluster.pki / "ca.crt"))
    assert handler.namespace == "cellxgene"  # the PoC's default
    handler.change_namespace(namespace)
    return handler


def child_bodies(namespace: str, name: str) -> dict[str, dict[str, Any]]:
    parsed = model.SingleUserInstanceSpec(owner=OWNER, dataset=DATASET)
    settings = Settings(namespace=namespace)
    return {
        "deployment": viewer.deployment(name, namespace, parsed, settings, access.resolve(parsed, {})),
        "service": viewer.service(name, namespace),
        "ingress": viewer.route(name, namespace, settings),
    }


def raises_api_error(call: Callable[[], Any]) -> ApiError:
    """The call fails with an ApiError, and nothing else (in particular not the client's own)."""
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the type is what this checks
        call()
    assert type(caught.value) is ApiError, f"{type(caught.value).__name__}: {caught.value}"
    assert not isinstance(caught.value, ApiException)
    return caught.value


# --- the portal: a service-account token, the PoC's constructor ---------------------------------------


def test_the_portals_token_creates_reads_lists_and_deletes_an_instance(portal: K8ApiHandler, namespace: str) -> None:
    name = viewer.new_instance_name()
    created = portal.create_custom_resource(viewer.instance(name, namespace, OWNER, DATASET))
    assert created["metadata"]["name"] == name
    assert portal.read_custom_resource(name)["spec"]["owner"] == OWNER
    assert [i["metadata"]["name"] for i in portal.list_instances()] == [name]
    portal.delete_custom_resource(name)
    gone = raises_api_error(lambda: portal.read_custom_resource(name))
    assert gone.status == 404 and gone.reason == "Not Found"
    assert name in str(gone)


def test_the_portal_may_not_create_a_deployment_and_the_error_says_why_and_what_to_do(
    portal: K8ApiHandler, namespace: str
) -> None:
    name = viewer.new_instance_name()
    error = raises_api_error(lambda: portal.create_deployment(child_bodies(namespace, name)["deployment"]))
    assert error.status == 403 and error.reason == "Forbidden"
    message = str(error)
    assert f"creating Deployment {namespace}/{name}" in message  # names the object
    assert f"system:serviceaccount:{namespace}:omicsdm" in message and 'cannot create resource "deployments"' in message
    assert "kubectl auth can-i" in message and "may only manage SingleUserInstances" in message  # what to do
    assert not error.transient


@pytest.mark.parametrize(
    "call",
    ["create_service", "create_ingress", "read_deployment", "delete_service", "list_pods", "list_services"],
)
def test_every_call_outside_the_portals_role_is_a_403_api_error(portal: K8ApiHandler, namespace: str, call: str) -> None:
    name = viewer.new_instance_name()
    bodies = child_bodies(namespace, name)
    argument = {"create_service": bodies["service"], "create_ingress": bodies["ingress"]}.get(call, name)
    if call.startswith("list_"):
        error = raises_api_error(lambda: getattr(portal, call)())
    else:
        error = raises_api_error(lambda: getattr(portal, call)(argument))
    assert error.status == 403, str(error)
    assert namespace in str(error)


def test_a_refused_token_is_a_401_api_error(cluster: DevCluster, namespace: str) -> None:
    handler = K8ApiHandler(host=cluster.server, oidc_client=("omicsdm", "not-a-token"), cert=str(cluster.pki / "ca.crt"), namespace=namespace)
    error = raises_api_error(lambda: handler.list_instances())
    assert error.status == 401 and "check the token" in str(error)


def test_an_unreachable_api_server_is_an_api_error_naming_the_address(cluster: DevCluster) -> None:
    host = f"https://127.0.0.1:{free_port()}"
    handler = K8ApiHandler(host=host, oidc_client=("omicsdm", "x"), cert=str(cluster.pki / "ca.crt"))
    handler.client.configuration.retries = 0
    error = raises_api_error(lambda: handler.read_deployment("cellxgene-x"))
    assert error.status is None
    assert host in str(error) and "Deployment cellxgene/cellxgene-x" in str(error)


def test_change_namespace_refuses_a_name_that_cannot_be_one(portal: K8ApiHandler, namespace: str) -> None:
    error = raises_api_error(lambda: portal.change_namespace("Not A Namespace"))
    assert "'Not A Namespace'" in str(error) and "valid namespace name" in str(error)
    assert portal.namespace == namespace  # unchanged


# --- every PoC call with full rights (the admin's kubeconfig) -------------------------------------------


def test_children_are_created_read_listed_and_deleted(k8s: K8ApiHandler, namespace: str) -> None:
    name = viewer.new_instance_name()
    bodies = child_bodies(namespace, name)
    assert k8s.create_deployment(bodies["deployment"]).metadata.name == name
    assert k8s.create_service(bodies["service"]).metadata.name == name
    assert k8s.create_ingress(bodies["ingress"]).metadata.name == name
    assert k8s.read_deployment(name).spec.selector.match_labels == {"instance": name}
    assert k8s.read_service(name).spec.selector == {"instance": name}
    assert k8s.read_ingress(name).spec.rules[0].http.paths[0].path == f"/{name}"
    assert [s.metadata.name for s in k8s.list_services().items] == [name]
    assert k8s.list_services("app=nothing").items == []
    # The Deployment's one pod (made by the controller-manager a moment later), listed by its label;
    # waited for, as an empty list would pass any check on its items.
    (pod,) = wait_for(lambda: k8s.list_pods(f"instance={name}").items, 30, f"the pod of Deployment {name}")
    assert pod.metadata.labels["instance"] == name
    assert pod.metadata.owner_references[0].kind == "ReplicaSet"
    assert k8s.list_pods("instance=nothing").items == []

    again = raises_api_error(lambda: k8s.create_service(bodies["service"]))
    assert again.status == 409 and again.reason == "Conflict" and f"Service {namespace}/{name}" in str(again)

    k8s.delete_ingress(name)
    k8s.delete_service(name)
    k8s.delete_deployment(name)
    for read, kind in ((k8s.read_deployment, "Deployment"), (k8s.read_service, "Service"), (k8s.read_ingress, "Ingress")):
        error = raises_api_error(lambda read=read: read(name))
        assert error.status == 404, kind
        assert f"reading {kind} {namespace}/{name}" in str(error)
    missing = raises_api_error(lambda: k8s.delete_service(name))
    assert missing.status == 404 and "does not exist" in str(missing)


def test_a_schema_violation_is_a_422_api_error_naming_the_field(k8s: K8ApiHandler, namespace: str) -> None:
    name = viewer.new_instance_name()
    body = viewer.instance(name, namespace, OWNER, DATASET)
    body["spec"]["lifespan"] = 5
    error = raises_api_error(lambda: k8s.create_custom_resource(body))
    assert error.status == 422 and "spec.lifespan" in str(error) and name in str(error)


def test_change_namespace_moves_every_later_call(k8s: K8ApiHandler, cluster: DevCluster, namespace: str) -> None:
    other = f"{namespace}-b"
    cluster.kubectl("create", "namespace", other)
    try:
        name = viewer.new_instance_name()
        k8s.change_namespace(other)
        k8s.create_service(viewer.service(name, other))
        assert k8s.read_service(name).metadata.namespace == other
        k8s.change_namespace(namespace)
        assert raises_api_error(lambda: k8s.read_service(name)).status == 404
    finally:
        cluster.kubectl("delete", "namespace", other, "--wait=false", check=False)
