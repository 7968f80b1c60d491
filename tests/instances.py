"""SingleUserInstances in tests: one body, one way to create, wait for and look up an instance,
shared by every module that talks to a real API server (so a change to the instance's shape or
to how readiness shows is made once, not in each test module)."""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from cxg_on_k8s.api import model
from cxg_on_k8s.k8s.client import ApiError, K8ApiHandler, load_client
from cxg_on_k8s.render import viewer
from tests.conftest import wait_for

OWNER = "alice@example.org"
DATASET = "s3://omics-data/projects/p1/pbmc3k.h5ad"
CHILD_KINDS = ("Deployment", "Service", "Ingress", "NetworkPolicy")  # what either form may own
PORTAL_CHILD_KINDS = ("Service", "Ingress", "Deployment")  # what a portal-form instance owns


def dataset_of(name: str) -> str:
    """A dataset of the instance's own: two live instances of one owner and one dataset would
    save to one place, which the operator refuses, and most tests run several side by side."""
    return DATASET.replace("/pbmc3k.h5ad", f"/{name}/pbmc3k.h5ad")


def instance_body(namespace: str, name: str | None = None, **fields: Any) -> dict[str, Any]:
    """A portal-form instance of OWNER and its own dataset (:func:`dataset_of`) unless
    ``owner``/``dataset`` say otherwise."""
    name = name or viewer.new_instance_name()
    return viewer.instance(name, namespace, fields.pop("owner", OWNER), fields.pop("dataset", dataset_of(name)), **fields)


def create(k8s: K8ApiHandler, body: dict[str, Any]) -> str:
    """Create the instance; its name, for the waits that follow."""
    k8s.create_custom_resource(body)
    return body["metadata"]["name"]


def create_all(
    kubeconfig: str | os.PathLike[str], bodies: list[dict[str, Any]], threads: int = 16, deadline: float = 120
) -> list[str]:
    """Create every instance from ``threads`` threads, as a portal would: retry what fails (API
    server down, 5xx, 429), and take 409 Already Exists as done (the first attempt got through,
    its answer did not). The names, in the order of ``bodies``."""
    local = threading.local()

    def one(item: dict[str, Any]) -> str:
        if not hasattr(local, "k8s"):
            local.k8s = K8ApiHandler(client=load_client(str(kubeconfig)), namespace=item["metadata"]["namespace"])
        give_up = time.monotonic() + deadline
        while True:
            try:
                local.k8s.create_custom_resource(item)
                return str(item["metadata"]["name"])
            except Exception as exc:  # ApiError or a connection error while the API server is away
                if getattr(exc, "status", None) == 409:
                    return str(item["metadata"]["name"])
                permanent = getattr(exc, "status", None) in (400, 403, 404, 422) and not getattr(exc, "transient", False)
                if permanent or time.monotonic() > give_up:
                    raise
                time.sleep(0.5)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, bodies))


def get_or_none(k8s: K8ApiHandler, name: str) -> dict[str, Any] | None:
    """The instance, or None once it is gone: 404 is an answer here, not an error."""
    try:
        return k8s.get_instance(name)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def wait_phase(k8s: K8ApiHandler, name: str, phase: model.Phase, timeout: float = 60) -> dict[str, Any]:
    """The instance's body once ``status.phase`` is ``phase``; on timeout the error shows its last status."""

    def reached() -> dict[str, Any] | None:
        body = k8s.get_instance(name)
        return body if body.get("status", {}).get("phase") == phase.value else None

    try:
        return wait_for(reached, timeout, f"SingleUserInstance {k8s.namespace}/{name} to be {phase.value}")
    except AssertionError as exc:
        last = get_or_none(k8s, name)
        raise AssertionError(f"{exc}; its status: {(last or {}).get('status')}") from None


def list_children(
    k8s: K8ApiHandler, selector: str, kinds: Sequence[str] = (*CHILD_KINDS, "ReplicaSet", "Pod")
) -> dict[str, list[Any]]:
    """Per kind, the namespace's objects matching ``selector``; ``kinds`` narrows the listing
    (a thousand instances' pods are not worth listing when only the children are counted)."""
    ns = k8s.namespace
    listers = {
        "Deployment": k8s.apps.list_namespaced_deployment,
        "Service": k8s.core.list_namespaced_service,
        "Ingress": k8s.networking.list_namespaced_ingress,
        "NetworkPolicy": k8s.networking.list_namespaced_network_policy,
        "ReplicaSet": k8s.apps.list_namespaced_replica_set,
        "Pod": k8s.core.list_namespaced_pod,
    }
    return {kind: listers[kind](ns, label_selector=selector).items for kind in kinds}
