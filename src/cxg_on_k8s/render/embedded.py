"""The embedded form: what the operator keeps of a client's manifests, and what it renders itself.

Kept: the pod template (policed by :mod:`cxg_on_k8s.policy`, then hardened), the viewer's
container port, and the labels the client looks its objects up by. Rendered by the operator, with
the portal form's builders: the Deployment's envelope (named after the instance, one replica, a
per-instance selector), the sign-in sidecar in front of the client's port, the Service (ClusterIP,
to the sidecar) and the route (an Ingress or HTTPRoute without annotations). So nothing a client
writes into the Service or the Ingress reaches the cluster.
"""

from __future__ import annotations

import copy
from typing import Any

from cxg_on_k8s.api import model, policy
from cxg_on_k8s.api.access import Access
from cxg_on_k8s.render import signin, viewer
from cxg_on_k8s.settings import Settings

# Template metadata that a pod may carry from its template; the rest (finalizers, owners, names)
# would block deletion or confuse the garbage collector.
TEMPLATE_METADATA = ("labels", "annotations")
# Deployment metadata a client may set; finalizers and ownerReferences are the operator's.
DEPLOYMENT_METADATA = ("labels", "annotations")


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def viewer_port(spec: model.SingleUserInstanceSpec) -> int | None:
    """The container port the viewer listens on: the client Service's targetPort (a number, or
    the name of a container port), else its port, else the first container's first port; None
    when the manifests name none."""
    containers = [_mapping(c) for c in _mapping(policy.pod_template(spec).get("spec")).get("containers") or []]
    ports = [_mapping(p) for c in containers for p in c.get("ports") or []]
    numbers = {p["containerPort"] for p in ports if isinstance(p.get("containerPort"), int)}
    named = {p["name"]: p["containerPort"] for p in ports if p.get("name") and isinstance(p.get("containerPort"), int)}
    service_ports = [_mapping(p) for p in _mapping(_mapping(spec.service).get("spec")).get("ports") or []]
    first = service_ports[0] if service_ports else {}
    target = first.get("targetPort", first.get("port"))
    if isinstance(target, int) and (target in numbers or not numbers):
        return target
    if isinstance(target, str) and target in named:
        return int(named[target])
    return int(ports[0]["containerPort"]) if ports and isinstance(ports[0].get("containerPort"), int) else None


NO_PORT = (
    f"{policy.POD}.containers[0].ports is empty and spec.service.spec.ports[0] names no port: the "
    "operator routes to the viewer's container port; add ports: [{containerPort: <port>}]"
)


def service_port(spec: model.SingleUserInstanceSpec) -> int:
    """The port the client's Service exposed (clients may port-forward to it), else 80."""
    ports = _mapping(_mapping(spec.service).get("spec")).get("ports") or []
    port = _mapping(ports[0]).get("port") if ports else None
    return port if isinstance(port, int) else 80


def deployment(
    name: str,
    namespace: str,
    spec: model.SingleUserInstanceSpec,
    settings: Settings,
    access: Access,
    port: int,
) -> viewer.Manifest:
    """The client's pod template in the operator's Deployment: named after the instance (so
    ``kubectl rollout status deploy/<name>`` and ``read_deployment(name)`` find it), one replica,
    Recreate (two viewers saving to one prefix would race), selected by the instance label only;
    with the sign-in sidecar in front of the client's ``port``."""
    client = _mapping(spec.deployment)
    client_meta = _mapping(client.get("metadata"))
    template = copy.deepcopy(policy.pod_template(spec))
    template_meta = {k: v for k, v in _mapping(template.get("metadata")).items() if k in TEMPLATE_METADATA}
    template_meta["labels"] = {**_mapping(template_meta.get("labels")), **viewer.labels(name)}
    meta = {k: copy.deepcopy(v) for k, v in client_meta.items() if k in DEPLOYMENT_METADATA}
    meta.update(name=name, namespace=namespace, labels={**_mapping(meta.get("labels")), **viewer.labels(name)})
    pod = policy.harden_pod(_mapping(template.get("spec")), settings, viewer.NONROOT_UID)
    signin.add_to_pod(pod, name, port, access, settings)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"instance": name}},
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": template_meta,
                "spec": pod,
            },
        },
    }


def ignored(spec: model.SingleUserInstanceSpec) -> list[str]:
    """What of the client's Service and Ingress the operator did not apply, for the Event that
    tells the client so: every annotation of its Ingress (the operator's route carries none: the
    viewer's sidecar does what they did), and a Service type other than ClusterIP."""
    theirs = _mapping(_mapping(_mapping(spec.ingress).get("metadata")).get("annotations"))
    found = [f"spec.ingress annotation {key}" for key in theirs]
    service_type = _mapping(_mapping(spec.service).get("spec")).get("type")
    if service_type not in (None, "ClusterIP"):
        found.append(f"spec.service.spec.type {service_type} (viewers get a ClusterIP Service)")
    for field in ("externalIPs", "externalName", "loadBalancerIP", "loadBalancerSourceRanges"):
        if field in _mapping(_mapping(spec.service).get("spec")):
            found.append(f"spec.service.spec.{field}")
    return found
