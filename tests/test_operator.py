"""The operator against a real API server: what a portal, a user and an administrator see.

Every test runs in a fresh namespace of the session's control plane (etcd, kube-apiserver,
controller-manager with the garbage collector, scheduler, kwok nodes on which pods turn Ready);
the operator runs as its own process, as in its pod.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from cxg_devcluster.cluster import K8S_VERSION, DevCluster, default_bin_dir
from kubernetes.client.exceptions import ApiException

from cxg_on_k8s.api import access, model
from cxg_on_k8s.controller import handlers
from cxg_on_k8s.culling.pod_activity import PodAddresses
from cxg_on_k8s.k8s.client import ApiError, K8ApiHandler, describe_api_exception, parse_time
from cxg_on_k8s.render import install, viewer
from cxg_on_k8s.settings import Settings
from tests import client_shapes, service_accounts
from tests.conftest import REPO, StartOperator, wait_for
from tests.instances import (
    DATASET,
    OWNER,
    PORTAL_CHILD_KINDS,
    create,
    get_or_none,
    instance_body,
    list_children,
    wait_phase,
)
from tests.poc_form import POC_AUTH_ENDPOINT, POC_AUTH_URL, poc_manifests, set_path
from tests.service_accounts import can_i

# --- helpers ---------------------------------------------------------------------------------------


def raw_body(namespace: str, spec: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """An instance with a spec the model would refuse: what a careless client might send."""
    name = name or viewer.new_instance_name()
    return {
        "apiVersion": model.API_VERSION,
        "kind": model.KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": viewer.labels(name)},
        "spec": spec,
    }


def read_child(k8s: K8ApiHandler, kind: str, name: str) -> Any:
    """The child as the API server has it, or None."""
    readers = {
        "Deployment": k8s.apps.read_namespaced_deployment,
        "Service": k8s.core.read_namespaced_service,
        "Ingress": k8s.networking.read_namespaced_ingress,
        "NetworkPolicy": k8s.networking.read_namespaced_network_policy,
    }
    try:
        return readers[kind](name, k8s.namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def events_of(k8s: K8ApiHandler, name: str) -> list[Any]:
    return [e for e in k8s.list_events(name) if e.involved_object.kind == model.KIND]


def wait_event(k8s: K8ApiHandler, name: str, reason: str, event_type: str, timeout: float = 30) -> Any:
    def found() -> Any:
        return next((e for e in events_of(k8s, name) if e.reason == reason and e.type == event_type), None)

    return wait_for(found, timeout, f"a {event_type} Event {reason} on {name}")


def ensure_namespace(cluster: DevCluster, name: str) -> None:
    doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    service_accounts.apply(cluster, [doc])


# --- the API server rejects bad input, readably --------------------------------------------------


BAD_SPECS = [
    # (case, spec, words the error must contain)
    ("neither form", {"lifespan": 600}, ["spec", "exactly one form"]),
    (
        "both forms",
        {"owner": OWNER, "dataset": DATASET, "deployment": {"kind": "Deployment"}, "service": {"kind": "Service"},
         "ingress": {"kind": "Ingress"}},
        ["exactly one form", "not both"],
    ),  # fmt: skip
    ("lifespan under a minute", {"owner": OWNER, "dataset": DATASET, "lifespan": 30}, ["spec.lifespan", "60"]),
    ("dataset not s3 or https", {"owner": OWNER, "dataset": "ftp://x"}, ["spec.dataset", "ftp://x"]),
    ("unknown flavor", {"owner": OWNER, "dataset": DATASET, "flavor": "jupyter"}, ["spec.flavor", "jupyter"]),
    ("cpu not a quantity", {"owner": OWNER, "dataset": DATASET, "resources": {"cpu": "lots"}}, ["spec.resources.cpu"]),
    ("empty owner", {"owner": "", "dataset": DATASET}, ["spec.owner"]),
    # oauth2-proxy splits its allow lists on commas: a comma would let a second identity in.
    ("comma in owner", {"owner": "a@x.org,b@x.org", "dataset": DATASET}, ["spec.owner", model.OWNER_PATTERN]),
    (
        "comma in a group",
        {"owner": OWNER, "dataset": DATASET, "allowedGroups": ["lab-a,admins"]},
        ["spec.allowedGroups[0]", "^[^,]+$"],
    ),
]


@pytest.mark.parametrize(("spec", "words"), [c[1:] for c in BAD_SPECS], ids=[c[0] for c in BAD_SPECS])
def test_api_server_rejects_bad_input_naming_the_field(k8s: K8ApiHandler, spec: dict[str, Any], words: list[str]) -> None:
    body = raw_body(k8s.namespace, spec)
    with pytest.raises(ApiError) as caught:
        k8s.create_custom_resource(body)
    assert caught.value.status == 422
    message = str(caught.value)
    assert body["metadata"]["name"] in message
    for word in words:
        assert word in message, message
    assert k8s.list_instances() == []  # nothing was created


def test_owner_cannot_change_after_creation(k8s: K8ApiHandler) -> None:
    name = create(k8s, instance_body(k8s.namespace))
    with pytest.raises(ApiException) as caught:
        k8s.custom.patch_namespaced_custom_object(
            model.GROUP, model.VERSION, k8s.namespace, model.PLURAL, name, {"spec": {"owner": "mallory@example.org"}}
        )
    error = describe_api_exception(caught.value, f"updating {name}")
    assert error.status == 422
    assert "spec.owner is immutable" in str(error) and "create a new instance" in str(error)
    assert k8s.get_instance(name)["spec"]["owner"] == OWNER
    # other fields may change: the rule binds only the owner
    k8s.custom.patch_namespaced_custom_object(
        model.GROUP, model.VERSION, k8s.namespace, model.PLURAL, name, {"spec": {"lifespan": 900}}
    )
    assert k8s.get_instance(name)["spec"]["lifespan"] == 900


def test_unknown_spec_field_is_pruned_or_with_strict_validation_rejected(cluster: DevCluster, k8s: K8ApiHandler) -> None:
    body = raw_body(k8s.namespace, {"owner": OWNER, "dataset": DATASET, "colour": "blue"})
    strict = cluster.kubectl("create", "--validate=strict", "-f", "-", input=yaml.safe_dump(body), check=False)
    assert strict.returncode != 0
    assert 'unknown field "spec.colour"' in strict.stderr
    assert k8s.list_instances() == []
    # without strict field validation (the client library's default) the field is dropped, not kept
    name = create(k8s, body)
    assert "colour" not in k8s.get_instance(name)["spec"]
    assert k8s.get_instance(name)["spec"]["owner"] == OWNER


# --- portal form: children, status, events, printer columns ------------------------------------------


def test_portal_form_becomes_ready_with_owned_children_status_and_event(
    cluster: DevCluster, k8s: K8ApiHandler, start_operator: StartOperator
) -> None:
    start_operator()
    name = create(k8s, instance_body(k8s.namespace, lifespan=7200))
    body = wait_phase(k8s, name, model.Phase.READY)
    uid = body["metadata"]["uid"]

    for kind in PORTAL_CHILD_KINDS:
        child = read_child(k8s, kind, name)
        assert child is not None, f"{kind} {name} was not created"
        assert child.metadata.labels == {"app": "cellxgene", "instance": name}
        (owner,) = child.metadata.owner_references
        assert (owner.kind, owner.name, owner.uid, owner.controller) == (model.KIND, name, uid, True)
        assert owner.api_version == model.API_VERSION
    deployment = read_child(k8s, "Deployment", name)
    assert deployment.spec.selector.match_labels == {"instance": name}
    assert read_child(k8s, "NetworkPolicy", name) is None  # its pod listens on the sidecar's ports only

    status = body["status"]
    created = parse_time(body["metadata"]["creationTimestamp"])
    assert status["url"] == f"http://cxg.localtest/{name}/"
    assert parse_time(status["expiresAt"]) == created + dt.timedelta(seconds=7200)
    assert created <= parse_time(status["readyAt"]) <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    assert status["observedGeneration"] == body["metadata"]["generation"]
    ready = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True"
    assert "finalizers" not in body["metadata"]  # deletion never waits on the operator

    event = wait_event(k8s, name, "Ready", "Normal")
    assert event.involved_object.uid == uid

    table = cluster.kubectl("get", "sui", "-n", k8s.namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "OWNER", "PHASE", "URL", "EXPIRES", "AGE"]
    assert row.split()[:4] == [name, OWNER, "Ready", status["url"]]
    assert name in cluster.kubectl("get", "suis", "-n", k8s.namespace, "-o", "name").stdout
    assert name in cluster.kubectl("get", "singleuserinstances.cnag.eu", "-n", k8s.namespace, "-o", "name").stdout


def test_changing_the_lifespan_moves_expires_at(k8s: K8ApiHandler, start_operator: StartOperator) -> None:
    start_operator()
    name = create(k8s, instance_body(k8s.namespace, lifespan=600))
    body = wait_phase(k8s, name, model.Phase.READY)
    created = parse_time(body["metadata"]["creationTimestamp"])
    assert parse_time(body["status"]["expiresAt"]) == created + dt.timedelta(seconds=600)
    k8s.custom.patch_namespaced_custom_object(
        model.GROUP, model.VERSION, k8s.namespace, model.PLURAL, name, {"spec": {"lifespan": 2 * 86400}}
    )
    expected = created + dt.timedelta(days=2)  # days count (the PoC's timedelta.seconds dropped them)

    def moved() -> dict[str, Any] | None:
        status = k8s.get_instance(name)["status"]
        return status if parse_time(status["expiresAt"]) == expected else None

    status = wait_for(moved, 30, "expiresAt to follow the new lifespan")
    assert status["observedGeneration"] == 2
    assert status["phase"] == model.Phase.READY.value


def test_embedded_poc_form_gets_children_with_the_instance_selector(
    k8s: K8ApiHandler, start_operator: StartOperator
) -> None:
    """What the PoC's client rendered: app=cellxgene everywhere, so two instances shared pods."""
    start_operator()
    names = [viewer.new_instance_name() for _ in range(2)]
    for name in names:
        spec = {"lifespan": 600, **poc_manifests(name)}
        create(k8s, raw_body(k8s.namespace, spec, name))
    for name in names:
        wait_phase(k8s, name, model.Phase.READY)
        deployment = read_child(k8s, "Deployment", name)
        assert deployment.spec.selector.match_labels == {"instance": name}
        assert deployment.spec.template.metadata.labels == {"app": "cellxgene", "instance": name}
        assert deployment.spec.template.spec.containers[0].image == "cellxgene:1.1.2"
        service = read_child(k8s, "Service", name)
        assert service.spec.selector == {"instance": name}
        ingress = read_child(k8s, "Ingress", name)
        assert ingress.spec.rules[0].http.paths[0].backend.service.name == name
        policy = read_child(k8s, "NetworkPolicy", name)  # the sign-in cannot be walked around
        assert policy.spec.pod_selector.match_labels == {"instance": name}
        for child in (deployment, service, ingress, policy):
            assert child.metadata.owner_references[0].name == name
            assert child.metadata.labels["instance"] == name
        (pod,) = k8s.list_pods(f"instance={name}").items
        assert pod.metadata.labels["instance"] == name


# --- what only the operator can refuse ------------------------------------------------------------


def test_lifespan_over_the_operators_maximum_fails_with_the_fix_and_creates_nothing(
    k8s: K8ApiHandler, start_operator: StartOperator
) -> None:
    start_operator(max_lifespan=3600)
    name = create(k8s, instance_body(k8s.namespace, lifespan=7200))
    body = wait_phase(k8s, name, model.Phase.FAILED)
    message = body["status"]["message"]
    assert "spec.lifespan" in message and "7200" in message and "3600" in message
    assert "ask for less" in message
    event = wait_event(k8s, name, "Failed", "Warning")
    assert "spec.lifespan" in event.message
    for kind, items in list_children(k8s, f"instance={name}").items():
        assert items == [], f"a {kind} was created for a refused instance"


# --- idempotency and isolation ----------------------------------------------------------------------


def test_operator_killed_mid_creation_leaves_exactly_one_set_of_children(
    k8s: K8ApiHandler, start_operator: StartOperator
) -> None:
    first = start_operator()
    name = create(k8s, instance_body(k8s.namespace))
    first.stop(signal.SIGKILL)
    start_operator()
    wait_phase(k8s, name, model.Phase.READY)
    wait_for(lambda: len(list_children(k8s, f"instance={name}")["Pod"]) == 1, 30, "one viewer pod")
    counts = {kind: len(items) for kind, items in list_children(k8s, f"instance={name}").items()}
    assert counts == {"Deployment": 1, "Service": 1, "Ingress": 1, "NetworkPolicy": 0, "ReplicaSet": 1, "Pod": 1}


def test_children_left_by_a_crashed_attempt_are_kept_and_the_rest_created(
    k8s: K8ApiHandler, start_operator: StartOperator
) -> None:
    """Deterministic version of the crash: a previous attempt created the Deployment and died."""
    name = create(k8s, instance_body(k8s.namespace))
    body = k8s.get_instance(name)
    settings = Settings(namespace=k8s.namespace, url_scheme="http", host_name="cxg.localtest")
    parsed = model.SingleUserInstanceSpec.model_validate(body["spec"])
    deployment = viewer.deployment(name, k8s.namespace, parsed, settings, access.resolve(parsed, {}))
    deployment["metadata"]["ownerReferences"] = [
        {"apiVersion": model.API_VERSION, "kind": model.KIND, "name": name, "uid": body["metadata"]["uid"],
         "controller": True, "blockOwnerDeletion": True}
    ]  # fmt: skip
    assert k8s.create_if_absent(deployment) is True
    first_uid = read_child(k8s, "Deployment", name).metadata.uid
    start_operator()
    wait_phase(k8s, name, model.Phase.READY)
    assert read_child(k8s, "Deployment", name).metadata.uid == first_uid  # kept, not replaced
    wait_for(lambda: len(list_children(k8s, f"instance={name}")["Pod"]) == 1, 30, "one viewer pod")
    counts = {kind: len(items) for kind, items in list_children(k8s, f"instance={name}").items()}
    assert counts == {"Deployment": 1, "Service": 1, "Ingress": 1, "NetworkPolicy": 0, "ReplicaSet": 1, "Pod": 1}


def test_operator_restarted_after_ready_keeps_the_instance_ready(
    k8s: K8ApiHandler, start_operator: StartOperator
) -> None:
    first = start_operator()
    name = create(k8s, instance_body(k8s.namespace))
    ready_at = wait_phase(k8s, name, model.Phase.READY)["status"]["readyAt"]
    first.stop(signal.SIGKILL)
    second = start_operator()
    # the resume handler runs again; it must neither re-create nor step the phase back
    wait_for(lambda: "Handler 'spawn' succeeded" in second.text(), 30, "the resume handler")
    status = k8s.get_instance(name)["status"]
    assert status["phase"] == model.Phase.READY.value
    assert status["readyAt"] == ready_at
    counts = {kind: len(items) for kind, items in list_children(k8s, f"instance={name}").items()}
    assert counts == {"Deployment": 1, "Service": 1, "Ingress": 1, "NetworkPolicy": 0, "ReplicaSet": 1, "Pod": 1}


def test_a_viewer_pod_of_its_own_is_made_again_when_deleted_or_evicted(
    k8s: K8ApiHandler, start_operator: StartOperator
) -> None:
    """viewer_workload pod: the instance owns its viewer pod (no Deployment, no ReplicaSet); a pod
    deleted or evicted is made again, with an Event that says so; an operator restart makes none."""
    operator = start_operator(viewer_workload="pod")
    name = create(k8s, instance_body(k8s.namespace))
    uid = wait_phase(k8s, name, model.Phase.READY)["metadata"]["uid"]
    counts = {kind: len(items) for kind, items in list_children(k8s, f"instance={name}").items()}
    assert counts == {"Deployment": 0, "Service": 1, "Ingress": 1, "NetworkPolicy": 0, "ReplicaSet": 0, "Pod": 1}
    (first,) = k8s.list_pods(f"instance={name}").items
    assert first.metadata.name == name
    (owner,) = first.metadata.owner_references
    assert (owner.kind, owner.uid, owner.controller) == (model.KIND, uid, True)

    def replaced(old: str) -> Any:
        pods = [p for p in k8s.list_pods(f"instance={name}").items if p.metadata.uid != old]
        ready = [p for p in pods if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
        return ready[0] if ready else None

    k8s.core.delete_namespaced_pod(name, k8s.namespace, grace_period_seconds=0)
    second = wait_for(lambda: replaced(first.metadata.uid), 60, "a new viewer pod, ready")
    assert second.metadata.name == name
    assert wait_event(k8s, name, "PodReplaced", "Normal").message.startswith("the viewer pod was gone")

    # Evicted: the kubelet leaves the pod Failed; the operator deletes it and makes a new one.
    k8s.core.patch_namespaced_pod_status(
        name, k8s.namespace, {"status": {"phase": "Failed", "reason": "Evicted", "message": "low on memory"}}
    )
    third = wait_for(lambda: replaced(second.metadata.uid), 60, "a pod in place of the evicted one")
    assert k8s.get_instance(name)["status"]["phase"] == model.Phase.READY.value
    assert len(k8s.list_pods(f"instance={name}").items) == 1
    assert sorted(e.reason for e in events_of(k8s, name)) == ["PodReplaced", "PodReplaced", "Ready"]
    assert third.metadata.name == name

    operator.stop(signal.SIGKILL)
    again = start_operator(viewer_workload="pod")
    wait_for(lambda: "Handler 'spawn' succeeded" in again.text(), 30, "the resume handler")
    assert [p.metadata.uid for p in k8s.list_pods(f"instance={name}").items] == [third.metadata.uid]


def test_two_instances_never_share_pods(k8s: K8ApiHandler, start_operator: StartOperator) -> None:
    start_operator()
    names = [create(k8s, instance_body(k8s.namespace)) for _ in range(2)]
    for name in names:
        wait_phase(k8s, name, model.Phase.READY)
    pods = {name: k8s.list_pods(f"instance={name}").items for name in names}
    assert all(len(p) == 1 for p in pods.values())
    for name in names:
        service = read_child(k8s, "Service", name)
        selector = ",".join(f"{k}={v}" for k, v in service.spec.selector.items())
        selected = [p.metadata.name for p in k8s.list_pods(selector).items]
        assert selected == [pods[name][0].metadata.name]
        deployment = read_child(k8s, "Deployment", name)
        selector = ",".join(f"{k}={v}" for k, v in deployment.spec.selector.match_labels.items())
        assert [p.metadata.name for p in k8s.list_pods(selector).items] == selected

        # the endpoints the Service really routes to: this instance's pod IP and nothing else
        def endpoint_ips(name: str = name) -> set[str] | None:
            slices = k8s.discovery.list_namespaced_endpoint_slice(
                k8s.namespace, label_selector=f"kubernetes.io/service-name={name}"
            ).items
            ips = {a for s in slices for e in (s.endpoints or []) for a in e.addresses}
            return ips or None

        ips = wait_for(endpoint_ips, 30, f"EndpointSlices of {name}")
        assert ips == {pods[name][0].status.pod_ip}


# --- deletion never waits on the operator -------------------------------------------------------------


def test_deleting_an_instance_while_the_operator_is_down_is_immediate_and_gc_removes_children(
    k8s: K8ApiHandler, start_operator: StartOperator
) -> None:
    operator = start_operator()
    name = create(k8s, instance_body(k8s.namespace))
    wait_phase(k8s, name, model.Phase.READY)
    operator.stop()
    assert k8s.delete_instance(name) is True
    wait_for(lambda: get_or_none(k8s, name) is None, 5, f"{name} to be gone without the operator")

    def children_left() -> dict[str, int]:
        return {kind: len(items) for kind, items in list_children(k8s, f"instance={name}").items() if items}

    wait_for(lambda: not children_left(), 60, "the garbage collector to remove the children")
    assert k8s.delete_instance(name) is False


# --- a failed fetch reaches the instance -------------------------------------------------------------


def test_fetch_failure_reaches_status_and_a_warning_event(
    cluster: DevCluster, k8s: K8ApiHandler, start_operator: StartOperator
) -> None:
    """kwok runs no containers, so the kubelet's report of a failed init container is written
    through the real API (the pod status subresource), as a kubelet would. The viewer asks for
    more CPU than any node has, so the pod stays Pending and kwok never overwrites the status."""
    start_operator(max_cpu="5000")
    name = create(k8s, instance_body(k8s.namespace, resources={"cpu": "2000"}, dataset=DATASET))
    wait_phase(k8s, name, model.Phase.STARTING)
    (pod,) = wait_for(lambda: k8s.list_pods(f"instance={name}").items, 30, "the viewer pod")
    failure = f"dataset {DATASET} not found: check the key, or ask the data manager to upload it"
    status = {
        "status": {
            "initContainerStatuses": [
                {
                    "name": "fetch",
                    "image": "cxg-on-k8s:0.1.0",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": 1,
                            "reason": "Error",
                            "message": failure,
                            "startedAt": "2024-05-17T12:00:00Z",
                            "finishedAt": "2024-05-17T12:00:05Z",
                        }
                    },
                },
                {
                    "name": "save",
                    "image": "cxg-on-k8s:0.1.0",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "PodInitializing"}},
                },
            ]
        }
    }
    k8s.core.patch_namespaced_pod_status(pod.metadata.name, k8s.namespace, status)
    patched = k8s.core.read_namespaced_pod(pod.metadata.name, k8s.namespace)
    assert patched.status.init_container_statuses[0].state.terminated.message == failure

    body = wait_phase(k8s, name, model.Phase.FAILED)
    assert failure in body["status"]["message"]
    assert "fetch" in body["status"]["message"]
    ready = [c for c in body["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "False"
    event = wait_event(k8s, name, "Failed", "Warning")
    assert failure in event.message
    described = cluster.kubectl("describe", "sui", name, "-n", k8s.namespace).stdout
    assert failure in described


# --- RBAC: least privilege, and enough -------------------------------------------------------------------


@pytest.fixture
def rbac(cluster: DevCluster, namespace: str) -> Iterator[Settings]:
    """The operator's and the portal's RBAC for this namespace, with activity from ingress-nginx
    (the one setting that reaches beyond it) behind a metrics namespace of its own."""
    metrics_ns = f"m-{uuid.uuid4().hex[:10]}"
    ensure_namespace(cluster, metrics_ns)
    settings = Settings(namespace=namespace, activity="ingress-nginx", metrics_service=f"{metrics_ns}/metrics")
    objects = [*install.operator_rbac(settings), *install.portal_rbac(settings)]
    service_accounts.apply(cluster, objects)
    yield settings
    service_accounts.delete_cluster_scoped(cluster, objects)
    cluster.kubectl("delete", "namespace", metrics_ns, "--wait=false", check=False)


def test_rbac_is_least_privilege(cluster: DevCluster, rbac: Settings) -> None:
    ns = rbac.namespace
    metrics_ns = rbac.metrics_service.split("/")[0]
    operator = f"{ns}:{install.OPERATOR_NAME}"
    portal = f"{ns}:{install.PORTAL_ACCOUNT}"
    allowed = [
        (operator, ns, "create", "deployments.apps"),
        (operator, ns, "create", "services"),
        (operator, ns, "create", "ingresses.networking.k8s.io"),
        (operator, ns, "create", "networkpolicies.networking.k8s.io"),
        (operator, ns, "patch", "singleuserinstances.cnag.eu", "--subresource=status"),
        (operator, ns, "delete", "singleuserinstances.cnag.eu"),
        (operator, ns, "watch", "pods"),
        (operator, ns, "create", "events"),
        (operator, metrics_ns, "list", "endpointslices.discovery.k8s.io"),
        (portal, ns, "create", "singleuserinstances.cnag.eu"),
        (portal, ns, "delete", "singleuserinstances.cnag.eu"),
        (portal, ns, "list", "singleuserinstances.cnag.eu"),
    ]
    denied = [
        (operator, ns, "delete", "deployments.apps"),
        (operator, ns, "delete", "services"),
        (operator, ns, "get", "secrets"),
        (operator, ns, "list", "secrets"),
        (operator, ns, "create", "pods"),
        (operator, ns, "create", "pods", "--subresource=exec"),
        (operator, ns, "create", "roles.rbac.authorization.k8s.io"),
        (operator, ns, "create", "singleuserinstances.cnag.eu"),
        (operator, metrics_ns, "list", "pods"),
        (operator, "kube-system", "get", "pods"),
        (operator, "kube-system", "get", "secrets"),
        (operator, "kube-system", "create", "deployments.apps"),
        (operator, "kube-system", "list", "endpointslices.discovery.k8s.io"),
        (operator, "kube-system", "patch", "singleuserinstances.cnag.eu", "--subresource=status"),
        (operator, "default", "create", "deployments.apps"),
        (portal, ns, "create", "deployments.apps"),
        (portal, ns, "get", "secrets"),
        (portal, ns, "create", "pods"),
        (portal, ns, "patch", "singleuserinstances.cnag.eu", "--subresource=status"),
        (portal, "kube-system", "create", "singleuserinstances.cnag.eu"),
    ]
    wrong = [f"{a} {' '.join(r)} in {n}: expected yes" for a, n, *r in allowed if not can_i(cluster, a, n, *r)]
    wrong += [f"{a} {' '.join(r)} in {n}: expected no" for a, n, *r in denied if can_i(cluster, a, n, *r)]
    assert wrong == []
    # in kube-system the operator holds nothing namespaced: only the cluster-wide reads show up
    listing = cluster.kubectl("auth", "can-i", "--list", "-n", "kube-system", f"--as=system:serviceaccount:{operator}").stdout
    resources = {line.split()[0] for line in listing.splitlines()[1:] if line.strip() and not line.startswith(" ")}
    assert not resources & {"pods", "secrets", "deployments.apps", "services", "configmaps", "events"}, listing


def test_the_portals_long_lived_token_is_in_omicsdm_token_and_grants_only_its_role(
    cluster: DevCluster, rbac: Settings
) -> None:
    """The seed's step ``kubectl describe secrets omicsdm-token`` finds a token (filled in by the
    controller-manager), and that token, used as a static ACCOUNT_TOKEN, acts as the portal."""
    ns = rbac.namespace

    def filled() -> str | None:
        found = cluster.kubectl("get", "secret", install.PORTAL_TOKEN_SECRET, "-n", ns, "-o", "json", check=False)
        data = json.loads(found.stdout).get("data", {}) if found.returncode == 0 else {}
        return base64.b64decode(data["token"]).decode() if "token" in data else None

    token = wait_for(filled, 60, f"the controller-manager to fill {install.PORTAL_TOKEN_SECRET}")
    described = cluster.kubectl("describe", "secrets", install.PORTAL_TOKEN_SECRET, "-n", ns).stdout
    assert "token:" in described and "kubernetes.io/service-account.name: omicsdm" in described

    # As the PoC's clients use it: the handler with a static token and the cluster's CA.
    portal = K8ApiHandler(host=cluster.server, oidc_client=(install.PORTAL_ACCOUNT, token), cert=str(cluster.pki / "ca.crt"))
    portal.change_namespace(ns)
    assert portal.list_instances() == []
    with pytest.raises(ApiError) as refused:
        portal.list_pods("app=cellxgene")
    assert refused.value.status == 403


def test_operator_runs_with_its_own_rbac(
    cluster: DevCluster, k8s: K8ApiHandler, rbac: Settings, start_operator: StartOperator, tmp_path: Path
) -> None:
    """The RBAC is not only restrictive but sufficient: the operator, holding nothing but its
    service account's token, creates the children, moves the status and posts Events."""
    kubeconfig = service_accounts.kubeconfig(cluster, rbac.namespace, install.OPERATOR_NAME, tmp_path / "sa.kubeconfig")
    whoami = cluster.kubectl("--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert whoami.stdout == f"system:serviceaccount:{rbac.namespace}:{install.OPERATOR_NAME}"
    operator = start_operator(kubeconfig=kubeconfig, activity="ingress-nginx", metrics_service=rbac.metrics_service, tick=1)
    name = create(k8s, instance_body(k8s.namespace))
    body = wait_phase(k8s, name, model.Phase.READY)
    for kind in PORTAL_CHILD_KINDS:
        assert read_child(k8s, kind, name) is not None, kind
    event = wait_event(k8s, name, "Ready", "Normal")
    assert event.source.component == install.OPERATOR_NAME
    assert body["status"]["url"].endswith(f"/{name}/")
    # the culler lists the metrics EndpointSlices every tick: allowed, so no "could not list"
    wait_for(lambda: "activity unknown" in operator.text(), 20, "a culling pass")
    log = operator.text()
    assert "could not list the metrics endpoints" not in log, log[-3000:]
    assert "Forbidden" not in log and " 403" not in log, log[-3000:]


# --- Helm chart and kustomize install, checked by the real API server -------------------------------------


@pytest.fixture
def install_namespaces(cluster: DevCluster) -> None:
    for name in ("cellxgene", "ingress-nginx"):
        ensure_namespace(cluster, name)


def server_dry_run(cluster: DevCluster, rendered: str) -> str:
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered, check=False)
    assert result.returncode == 0, f"kubectl apply --dry-run=server failed:\n{result.stderr}"
    return result.stdout


def test_helm_chart_renders_objects_the_api_server_accepts(cluster: DevCluster, install_namespaces: None) -> None:
    helm = default_bin_dir() / "helm-v3.22.0"
    result = subprocess.run(
        [str(helm), "template", "cxg", str(REPO / "charts" / "cxg-on-k8s"), "--kube-version", K8S_VERSION,
         "--namespace", "cellxgene", "--include-crds"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "Role", "RoleBinding"} <= kinds
    out = server_dry_run(cluster, result.stdout)
    assert "deployment.apps/sui-operator" in out and "(server dry run)" in out


def test_kustomize_install_is_accepted_by_the_api_server(cluster: DevCluster, install_namespaces: None) -> None:
    rendered = cluster.kubectl("kustomize", str(REPO / "manifests")).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert sorted(d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition") == sorted([model.CRD_NAME, "kopfpeerings.kopf.dev"])
    out = server_dry_run(cluster, rendered)
    for expected in ("customresourcedefinition.apiextensions.k8s.io/singleuserinstances.cnag.eu",
                     "deployment.apps/sui-operator", "serviceaccount/omicsdm", "rolebinding.rbac.authorization.k8s.io/sui-operator"):  # fmt: skip
        assert expected in out, out


# --- the CLI against the real cluster --------------------------------------------------------------------


@pytest.fixture
def cli(cluster: DevCluster, namespace: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "CXG_NAMESPACE": namespace,
        "CXG_URL_SCHEME": "http",
        "CXG_HOST_NAME": "cxg.localtest",
        "COLUMNS": "300",
    }

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cxg_on_k8s", *args], env=env, capture_output=True, text=True, timeout=timeout
        )

    return run


def test_cli_deploy_list_describe_delete(
    cli: Callable[..., subprocess.CompletedProcess[str]], k8s: K8ApiHandler, start_operator: StartOperator
) -> None:
    start_operator()
    name = viewer.new_instance_name()
    deployed = cli("deploy", "--owner", OWNER, "--dataset", DATASET, "--name", name,
                   "--timeout", "60")  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    assert deployed.stdout.strip().splitlines()[-1] == f"http://cxg.localtest/{name}/"
    assert k8s.get_instance(name)["status"]["phase"] == "Ready"

    listed = cli("list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if name in line)
    assert OWNER in row and "Ready" in row

    described = cli("describe", name)
    assert described.returncode == 0, described.stderr
    assert f"owner: {OWNER}" in described.stdout and "phase: Ready" in described.stdout
    assert any(line.split()[:2] == ["Normal", "Ready"] for line in described.stdout.splitlines())

    deleted = cli("delete", name)
    assert deleted.returncode == 0, deleted.stderr
    assert name in deleted.stderr
    wait_for(lambda: get_or_none(k8s, name) is None, 10, f"{name} to be deleted")

    missing = cli("delete", name)
    assert missing.returncode == 4
    assert name in missing.stderr and "not found" in missing.stderr


def test_cli_deploy_with_a_bad_dataset_exits_2_and_names_the_field(
    cli: Callable[..., subprocess.CompletedProcess[str]], k8s: K8ApiHandler
) -> None:
    result = cli("deploy", "--owner", OWNER, "--dataset", "ftp://x", "--timeout", "5")
    assert result.returncode == 2
    assert "spec.dataset" in result.stderr
    assert k8s.list_instances() == []


def test_cli_deploy_shares_with_groups_and_refuses_a_comma(
    cli: Callable[..., subprocess.CompletedProcess[str]], k8s: K8ApiHandler
) -> None:
    name = viewer.new_instance_name()
    shared = cli("deploy", "--owner", OWNER, "--dataset", DATASET, "--name", name, "--allowed-group", "lab-a",
                 "--allowed-group", "lab-b", "--no-wait")  # fmt: skip
    assert shared.returncode == 0, shared.stderr
    assert k8s.get_instance(name)["spec"]["allowedGroups"] == ["lab-a", "lab-b"]
    refused = cli("deploy", "--owner", OWNER, "--dataset", DATASET, "--allowed-group", "lab-a,admins",
                  "--no-wait")  # fmt: skip
    assert refused.returncode == 2
    assert "spec.allowedGroups[0] = 'lab-a,admins'" in refused.stderr and "^[^,]+$" in refused.stderr
    assert [i["metadata"]["name"] for i in k8s.list_instances()] == [name]


def test_cli_describe_of_a_missing_instance_exits_4(cli: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    result = cli("describe", "cellxgene-nope")
    assert result.returncode == 4
    assert "cellxgene-nope" in result.stderr


def test_cli_cleanup_deletes_every_instance(
    cli: Callable[..., subprocess.CompletedProcess[str]], k8s: K8ApiHandler
) -> None:
    names = [create(k8s, instance_body(k8s.namespace)) for _ in range(3)]
    result = cli("cleanup", "--yes")
    assert result.returncode == 0, result.stderr
    assert "deleted 3 instance(s)" in result.stderr
    wait_for(lambda: all(get_or_none(k8s, n) is None for n in names), 10, "every instance deleted")
    again = cli("cleanup", "--yes")
    assert again.returncode == 0 and "nothing to clean up" in again.stderr


def test_pocs_deploy_script_still_answers_help() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "deploy_cellxgene.py"), "--help"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--owner" in result.stdout and "--dataset" in result.stdout


# --- the embedded form's policy: refused at the API server or by the operator, never created ------------


def embedded_spec(name: str, changes: dict[str, Any] | None = None, lifespan: int | None = 600) -> dict[str, Any]:
    """The PoC's manifests for ``name`` with fields set by path (``deployment.spec.replicas``)."""
    spec: dict[str, Any] = {**poc_manifests(name)}
    if lifespan is not None:
        spec["lifespan"] = lifespan
    for path, value in (changes or {}).items():
        set_path(spec, path, value)
    return spec


CONTAINER = "deployment.spec.template.spec.containers[0]"
POD = "spec.deployment.spec.template.spec"

INVALID = [
    # (case, no lifespan?, field changes, refused by, words the error must contain)
    ("embedded form without lifespan", True, {}, "api", ["spec.lifespan", "embedded form"]),
    ("lifespan under a minute", False, {"lifespan": 30}, "api", ["spec.lifespan", "60"]),
    ("a Pod in the deployment slot", False, {"deployment.kind": "Pod"}, "api",
     ["spec.deployment.kind", '"Pod"', '"Deployment"']),
    ("a Deployment in the service slot", False, {"service.kind": "Deployment"}, "api",
     ["spec.service.kind", '"Service"']),
    ("an old Ingress apiVersion", False, {"ingress.apiVersion": "extensions/v1beta1"}, "api",
     ["spec.ingress.apiVersion", "networking.k8s.io/v1"]),
    ("privileged container", False, {f"{CONTAINER}.securityContext.privileged": True}, "operator",
     [f"{POD}.containers[0].securityContext.privileged is true", "set it to false"]),
    ("privileged init container", False,
     {"deployment.spec.template.spec.initContainers": [{"name": "i", "image": "busybox", "securityContext": {"privileged": True}}]},
     "operator", [f"{POD}.initContainers[0].securityContext.privileged is true"]),
    ("privileged ephemeral container", False,
     {"deployment.spec.template.spec.ephemeralContainers": [{"name": "e", "image": "busybox", "securityContext": {"privileged": True}}]},
     "operator", [f"{POD}.ephemeralContainers[0].securityContext.privileged is true"]),
    ("privilege escalation", False, {f"{CONTAINER}.securityContext.allowPrivilegeEscalation": True}, "operator",
     [f"{POD}.containers[0].securityContext.allowPrivilegeEscalation is true"]),
    ("added capabilities", False, {f"{CONTAINER}.securityContext.capabilities": {"add": ["SYS_ADMIN"]}}, "operator",
     [f"{POD}.containers[0].securityContext.capabilities.add", "SYS_ADMIN", "remove capabilities.add"]),
    ("hostPath volume", False,
     {"deployment.spec.template.spec.volumes": [{"name": "root", "hostPath": {"path": "/"}}]}, "operator",
     [f"{POD}.volumes[0].hostPath", "emptyDir"]),
    ("hostNetwork", False, {"deployment.spec.template.spec.hostNetwork": True}, "operator",
     [f"{POD}.hostNetwork is true", "network namespace"]),
    ("hostPID", False, {"deployment.spec.template.spec.hostPID": True}, "operator", [f"{POD}.hostPID is true"]),
    ("hostIPC", False, {"deployment.spec.template.spec.hostIPC": True}, "operator", [f"{POD}.hostIPC is true"]),
    ("hostPort", False, {f"{CONTAINER}.ports[0].hostPort": 80}, "operator",
     [f"{POD}.containers[0].ports[0].hostPort is 80", "remove hostPort"]),
    ("another service account", False, {"deployment.spec.template.spec.serviceAccountName": "sui-operator"},
     "operator", [f"{POD}.serviceAccountName is 'sui-operator'", "remove serviceAccountName"]),
    ("token forced on", False, {"deployment.spec.template.spec.automountServiceAccountToken": True}, "operator",
     [f"{POD}.automountServiceAccountToken is true", "set it to false"]),
    ("deployment in another namespace", False, {"deployment.metadata.namespace": "kube-system"}, "operator",
     ["spec.deployment.metadata.namespace is 'kube-system'", "remove metadata.namespace"]),
    # The attacks the embedded form once accepted (issue 12): refused, nothing created.
    ("root user", False, {"deployment.spec.template.spec.securityContext.runAsUser": 0}, "operator",
     [f"{POD}.securityContext.runAsUser is 0"]),
    ("unconfined seccomp", False, {"deployment.spec.template.spec.securityContext.seccompProfile": {"type": "Unconfined"}},
     "operator", [f"{POD}.securityContext.seccompProfile.type is 'Unconfined'"]),
    ("nodeName", False, {"deployment.spec.template.spec.nodeName": "node-1"}, "operator", [f"{POD}.nodeName"]),
    ("toleration of every taint", False, {"deployment.spec.template.spec.tolerations": [{"operator": "Exists"}]},
     "operator", [f"{POD}.tolerations[0] has no key"]),
    ("system priority", False, {"deployment.spec.template.spec.priorityClassName": "system-node-critical"},
     "operator", [f"{POD}.priorityClassName is 'system-node-critical'"]),
    ("runtime class", False, {"deployment.spec.template.spec.runtimeClassName": "kata"}, "operator",
     [f"{POD}.runtimeClassName"]),
    ("secret volume", False, {"deployment.spec.template.spec.volumes": [{"name": "s", "secret": {"secretName": "x"}}]},
     "operator", [f"{POD}.volumes[0].secret"]),
    ("nfs volume", False, {"deployment.spec.template.spec.volumes": [{"name": "n", "nfs": {"server": "nas", "path": "/"}}]},
     "operator", [f"{POD}.volumes[0].nfs"]),
    ("envFrom another Secret", False, {f"{CONTAINER}.envFrom": [{"secretRef": {"name": "oauth2-proxy-cookie"}}]},
     "operator", [f"{POD}.containers[0].envFrom[0].secretRef.name is 'oauth2-proxy-cookie'"]),
    ("another Secret in env", False,
     {f"{CONTAINER}.env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "oauth2-proxy-client", "key": "k"}}}]},
     "operator", [f"{POD}.containers[0].env[0].valueFrom.secretKeyRef.name"]),
    ("unbounded memory", False, {f"{CONTAINER}.resources": {"limits": {"memory": "1Ti"}}}, "operator",
     [f"{POD}.containers[0].resources.limits.memory 1Ti exceeds the maximum"]),
    ("an auth-url naming nobody", False,
     {"ingress.metadata.annotations": {"nginx.ingress.kubernetes.io/auth-url": f"{POC_AUTH_ENDPOINT}?allowed_emails=,"}},
     "operator", ["names nobody", "CXG_REQUIRE_OWNER=false"]),
    ("the instance named oauth2", False, {"name": "oauth2"}, "api", ["metadata.name", "oauth2"]),
]  # fmt: skip


def nothing_created(k8s: K8ApiHandler) -> dict[str, list[str]]:
    """Every Deployment, Service, Ingress, NetworkPolicy and Pod in the namespace, by kind: {} when
    none (whatever their labels: a refused manifest might have carried other ones)."""
    ns = k8s.namespace
    found = {
        "Deployment": k8s.apps.list_namespaced_deployment(ns).items,
        "Service": k8s.core.list_namespaced_service(ns).items,
        "Ingress": k8s.networking.list_namespaced_ingress(ns).items,
        "NetworkPolicy": k8s.networking.list_namespaced_network_policy(ns).items,
        "Pod": k8s.core.list_namespaced_pod(ns).items,
    }
    return {kind: [i.metadata.name for i in items] for kind, items in found.items() if items}


@pytest.mark.parametrize(
    ("no_lifespan", "changes", "refused_by", "words"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_embedded_specs_are_refused_naming_the_field(
    k8s: K8ApiHandler,
    start_operator: StartOperator,
    no_lifespan: bool,
    changes: dict[str, Any],
    refused_by: str,
    words: list[str],
) -> None:
    name = changes.pop("name", None) or viewer.new_instance_name()
    body = raw_body(k8s.namespace, embedded_spec(name, changes, lifespan=None if no_lifespan else 600), name)
    if refused_by == "api":
        with pytest.raises(ApiError) as caught:
            k8s.create_custom_resource(body)
        assert caught.value.status == 422
        message = str(caught.value)
        assert k8s.list_instances() == []
    else:
        start_operator()
        create(k8s, body)
        message = wait_phase(k8s, name, model.Phase.FAILED)["status"]["message"]
        assert message.startswith(f"SingleUserInstance {k8s.namespace}/{name}: ")
        event = wait_event(k8s, name, "Failed", "Warning")
        assert words[0] in event.message
        assert nothing_created(k8s) == {}
    for word in words:
        assert word in message, message


def test_a_privileged_embedded_manifest_is_refused_and_nothing_is_created(
    k8s: K8ApiHandler, start_operator: StartOperator
) -> None:
    operator = start_operator()
    name = viewer.new_instance_name()
    spec = embedded_spec(name, {f"{CONTAINER}.securityContext": {"privileged": True}})
    create(k8s, raw_body(k8s.namespace, spec, name))
    body = wait_phase(k8s, name, model.Phase.FAILED)
    field = f"{POD}.containers[0].securityContext.privileged"
    assert body["status"]["message"] == (
        f"SingleUserInstance {k8s.namespace}/{name}: {field} is true: privileged containers are not allowed; "
        "remove it or set it to false"
    )
    event = wait_event(k8s, name, "Failed", "Warning")
    assert field in event.message
    wait_for(lambda: "Handler 'spawn' failed permanently" in operator.text(), 10, "spawn to give up")
    assert nothing_created(k8s) == {}
    assert [e.reason for e in events_of(k8s, name)] == ["Failed"]  # never Starting, never Ready


NEUTRALISED = [
    # (case, field set by path, how to read the created object, the operator's value)
    ("a NodePort Service", {"service.spec.type": "NodePort"}, lambda k8s, n: read_child(k8s, "Service", n).spec.type,
     "ClusterIP"),
    ("a LoadBalancer Service", {"service.spec.type": "LoadBalancer"},
     lambda k8s, n: read_child(k8s, "Service", n).spec.type, "ClusterIP"),
    ("an ExternalName Service", {"service.spec.type": "ExternalName", "service.spec.externalName": "evil.example"},
     lambda k8s, n: (read_child(k8s, "Service", n).spec.type, read_child(k8s, "Service", n).spec.external_name),
     ("ClusterIP", None)),
    ("externalIPs", {"service.spec.externalIPs": ["198.51.100.7"]},
     lambda k8s, n: read_child(k8s, "Service", n).spec.external_ips, None),
    ("a server-snippet", {"ingress.metadata.annotations": {"nginx.ingress.kubernetes.io/server-snippet": "return 200;",
                                                           "nginx.ingress.kubernetes.io/auth-url": POC_AUTH_URL}},
     lambda k8s, n: read_child(k8s, "Ingress", n).metadata.annotations, None),
    ("a rule for /oauth2", {"ingress.spec.rules[0].http.paths[0].path": "/oauth2"},
     lambda k8s, n: [(p.path, p.path_type) for r in read_child(k8s, "Ingress", n).spec.rules for p in r.http.paths],
     [("/{name}", "Prefix")]),
    ("a rule for another host", {"ingress.spec.rules[0].host": "portal.example.org"},
     lambda k8s, n: [r.host for r in read_child(k8s, "Ingress", n).spec.rules], ["cxg.localtest"]),
    ("a thousand replicas", {"deployment.spec.replicas": 1000},
     lambda k8s, n: read_child(k8s, "Deployment", n).spec.replicas, 1),
    ("runs as root by default", {},
     lambda k8s, n: read_child(k8s, "Deployment", n).spec.template.spec.security_context.run_as_non_root, True),
    ("a day of grace", {"deployment.spec.template.spec.terminationGracePeriodSeconds": 86400},
     lambda k8s, n: read_child(k8s, "Deployment", n).spec.template.spec.termination_grace_period_seconds, 120),
    ("no limits", {}, lambda k8s, n: read_child(k8s, "Deployment", n).spec.template.spec.containers[0].resources.limits,
     {"cpu": "1", "memory": "4Gi"}),
    ("no sizeLimit", {"deployment.spec.template.spec.volumes": [{"name": "data", "emptyDir": {}}]},
     lambda k8s, n: read_child(k8s, "Deployment", n).spec.template.spec.volumes[0].empty_dir.size_limit, "20Gi"),
    ("finalizers on the Deployment", {"deployment.metadata.finalizers": ["example.org/block"]},
     lambda k8s, n: read_child(k8s, "Deployment", n).metadata.finalizers, None),
    ("finalizers on the pods", {"deployment.spec.template.metadata.finalizers": ["example.org/block"]},
     lambda k8s, n: k8s.list_pods(f"instance={n}").items[0].metadata.finalizers, None),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "read", "ours"), [c[1:] for c in NEUTRALISED], ids=[c[0] for c in NEUTRALISED])
def test_what_an_embedded_client_may_not_choose_gets_the_operators_value(
    k8s: K8ApiHandler, start_operator: StartOperator, changes: dict[str, Any], read: Callable[[K8ApiHandler, str], Any], ours: Any
) -> None:
    start_operator()
    name = viewer.new_instance_name()
    create(k8s, raw_body(k8s.namespace, embedded_spec(name, changes), name))
    wait_phase(k8s, name, model.Phase.READY)
    def named(item: Any) -> Any:
        return tuple(named(i) for i in item) if isinstance(item, tuple) else item.replace("{name}", name)

    expected = [named(item) for item in ours] if isinstance(ours, list) else ours
    assert read(k8s, name) == expected


def test_the_ignored_parts_of_the_clients_manifests_are_named_in_an_event(
    k8s: K8ApiHandler, start_operator: StartOperator
) -> None:
    start_operator()
    name = viewer.new_instance_name()
    spec = embedded_spec(name, {"service.spec.type": "NodePort"})
    spec["ingress"]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/server-snippet"] = "return 200;"
    create(k8s, raw_body(k8s.namespace, spec, name))
    event = wait_event(k8s, name, "Ignored", "Warning")
    assert "spec.ingress annotation nginx.ingress.kubernetes.io/server-snippet" in event.message
    assert "spec.service.spec.type NodePort" in event.message


def test_the_pocs_test_instance_naming_nobody_is_refused_by_default(
    k8s: K8ApiHandler, start_operator: StartOperator
) -> None:
    start_operator()
    name = viewer.new_instance_name()
    create(k8s, client_shapes.poc_test_instance(name, k8s.namespace))
    message = wait_phase(k8s, name, model.Phase.FAILED)["status"]["message"]
    assert "names nobody who may open it" in message and "CXG_REQUIRE_OWNER=false" in message
    assert nothing_created(k8s) == {}


def test_a_second_live_instance_saving_to_the_same_place_is_refused_naming_the_first(
    k8s: K8ApiHandler, start_operator: StartOperator
) -> None:
    start_operator()
    first = create(k8s, instance_body(k8s.namespace, dataset=DATASET))
    wait_phase(k8s, first, model.Phase.READY)
    second = create(k8s, instance_body(k8s.namespace, dataset=DATASET))
    message = wait_phase(k8s, second, model.Phase.FAILED)["status"]["message"]
    assert f"in use by SingleUserInstance {k8s.namespace}/{first}" in message
    assert f"http://cxg.localtest/{first}/" in message
    # Another dataset of the same owner is another place: accepted.
    wait_phase(k8s, create(k8s, instance_body(k8s.namespace, dataset="s3://omics-data/other/pbmc3k.h5ad")), model.Phase.READY)
    # Once the first is gone, the place is free again.
    k8s.delete_instance(first)
    wait_for(lambda: get_or_none(k8s, first) is None, 30, f"{first} to be gone")
    wait_phase(k8s, create(k8s, instance_body(k8s.namespace, dataset=DATASET)), model.Phase.READY)


# --- children: used only if this instance owns them --------------------------------------------------


def squatter_service(name: str, namespace: str, owner: dict[str, Any] | None) -> dict[str, Any]:
    """A Service with the instance's name made by someone else (by hand, or owned by another object)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {"made-by": "hand"}}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {"ports": [{"port": 8080}]}}


@pytest.mark.parametrize("held_by", ["nothing", "a ConfigMap"])
def test_a_child_owned_by_something_else_fails_the_instance_without_takeover(
    k8s: K8ApiHandler, start_operator: StartOperator, held_by: str
) -> None:
    start_operator()
    name = viewer.new_instance_name()
    owner = None
    if held_by == "a ConfigMap":
        keeper = k8s.core.create_namespaced_config_map(k8s.namespace, {"metadata": {"name": "keeper"}})
        owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "keeper", "uid": keeper.metadata.uid}
    k8s.create_if_absent(squatter_service(name, k8s.namespace, owner))
    before = read_child(k8s, "Service", name)

    create(k8s, instance_body(k8s.namespace, name))
    body = wait_phase(k8s, name, model.Phase.FAILED)
    holder = "nothing" if owner is None else "ConfigMap keeper"
    expected = (
        f"SingleUserInstance {k8s.namespace}/{name}: Service {k8s.namespace}/{name} already exists and is owned "
        f"by {holder}, not by this instance, and is not taken over. Fix: delete it (kubectl -n {k8s.namespace} "
        f"delete service {name}) or rename this instance, then create the instance again"
    )
    assert body["status"]["message"] == expected
    event = wait_event(k8s, name, "Failed", "Warning")
    assert event.message == expected

    after = read_child(k8s, "Service", name)  # untouched: same object, same owners, same labels
    assert after.metadata.uid == before.metadata.uid
    assert after.metadata.resource_version == before.metadata.resource_version
    assert [r.uid for r in after.metadata.owner_references or []] == ([owner["uid"]] if owner else [])
    # checked before anything was created: nothing of the instance's own is left running
    assert nothing_created(k8s) == {"Service": [name]}


# --- events for every transition, and the time to Ready -------------------------------------------------


def test_one_ready_event_and_the_time_from_creation_to_ready(k8s: K8ApiHandler, start_operator: StartOperator) -> None:
    start_operator()
    name = create(k8s, instance_body(k8s.namespace))
    body = wait_phase(k8s, name, model.Phase.READY)
    ready = wait_event(k8s, name, "Ready", "Normal")

    status = body["status"]
    created = parse_time(body["metadata"]["creationTimestamp"])
    seconds = status["startupSeconds"]
    # readyAt and creationTimestamp are whole seconds; startupSeconds is measured in between.
    # How long it is depends on the machine: bench/spawn.py reports it (startup_seconds).
    assert seconds >= 0
    assert abs(seconds - (parse_time(status["readyAt"]) - created).total_seconds()) <= 1.0
    assert status["message"] == f"the viewer is ready {seconds:.1f} s after creation"
    assert ready.message == status["message"]
    (condition,) = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert condition["message"] == status["message"]
    # Events only for what a person reads: Starting is in the status (phase and message) at once
    assert [e.reason for e in events_of(k8s, name)] == ["Ready"]


# --- the operator's memory ---------------------------------------------------------------------


def test_a_deleted_instances_pod_record_is_forgotten_with_its_pod() -> None:
    """The pod's last updates after its instance is gone make a news record again; the pod's
    DELETED event must drop it, or an operator would keep one per instance it ever saw."""
    memo = kopf.Memo(instances={}, pod_records={}, pod_addresses=PodAddresses())
    key = ("ns", "cellxgene-gone")
    pod = {"metadata": {"namespace": key[0], "name": "viewer", "labels": {"instance": key[1]}}}
    memo.pod_records[key] = handlers.PodRecord(latest=(model.Phase.READY, "ready"))
    asyncio.run(handlers.pod_changed(event={"type": "DELETED"}, body=pod, memo=memo, logger=logging.getLogger()))
    assert key not in memo.pod_records
    # While the instance lives, the record (what was announced) stays; only the pod's news goes.
    memo.instances[key] = {"metadata": {}, "spec": {}, "status": {}}
    memo.pod_records[key] = handlers.PodRecord(latest=(model.Phase.READY, "ready"))
    asyncio.run(handlers.pod_changed(event={"type": "DELETED"}, body=pod, memo=memo, logger=logging.getLogger()))
    assert memo.pod_records[key].latest is None
