"""One viewer's objects, as pure functions of the instance's name, spec and settings: its
Deployment (fetch init container, cellxgene, save sidecar, sign-in sidecar), Service, route
(Ingress or HTTPRoute), and the NetworkPolicy the embedded form needs.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any
from urllib.parse import quote, urlsplit

from cxg_on_k8s.api import model
from cxg_on_k8s.api.access import Access
from cxg_on_k8s.render import signin
from cxg_on_k8s.render.security import NONROOT_UID, container_security
from cxg_on_k8s.settings import Settings

Manifest = dict[str, Any]


APP_LABEL = "cellxgene"


VIEWER_PORT = 5005


DATA_DIR = "/data"


DATASET_FILE = f"{DATA_DIR}/dataset.h5ad"


ANNOTATIONS_FILE = f"{DATA_DIR}/annotations.csv"


GENE_SETS_FILE = f"{DATA_DIR}/gene_sets.csv"


NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def new_instance_name() -> str:
    """``cellxgene-<uuid4>``, the proof of concept's naming: unique without coordination."""
    return f"cellxgene-{uuid.uuid4()}"


def labels(name: str) -> dict[str, str]:
    """``app`` groups everything for ``kubectl delete all,ing,sui -l app=cellxgene``; ``instance``
    alone selects one instance's pods (the PoC's shared ``app`` selector mixed all instances)."""
    return {"app": APP_LABEL, "instance": name}


def _metadata(name: str, namespace: str, **extra: Any) -> dict[str, Any]:
    """An instance's child is named after the instance and carries its labels."""
    return {"name": name, "namespace": namespace, "labels": labels(name), **extra}


def instance_path(name: str) -> str:
    return f"/{name}/"


def instance_url(name: str, settings: Settings) -> str:
    return f"{settings.base_url}{instance_path(name)}"


def user_data_url(spec: model.SingleUserInstanceSpec, settings: Settings) -> str:
    """Where the owner's annotations live: the spec's prefix, else
    ``s3://<bucket>/<prefix>/<owner>/<dataset id>-<hash>/``, which no two owners or datasets share.

    The owner is kept exactly, percent-encoded where it holds more than letters, digits and
    ``@._-`` (an injective encoding: ``alice+lab`` and ``alice_lab`` stay apart). The dataset keeps
    the proof of concept's readable id (its file name) followed by 12 hex digits of the SHA-256 of
    its full URL, so ``s3://b/projA/pbmc.h5ad`` and ``s3://c/projB/pbmc.h5ad`` stay apart too, and
    the prefix stays flat (no prefix is another one's parent)."""
    if spec.user_data:
        return spec.user_data if spec.user_data.endswith("/") else spec.user_data + "/"
    owner = quote(spec.owner or "anonymous", safe="@._-")
    dataset = spec.dataset or ""
    digest = hashlib.sha256(dataset.encode()).hexdigest()[:12]
    return f"s3://{settings.s3_bucket}/{settings.user_data_prefix}/{owner}/{model.dataset_id(dataset)}-{digest}/"


def legacy_user_data_url(spec: model.SingleUserInstanceSpec, settings: Settings) -> str | None:
    """Where earlier versions saved the owner's data by default (``<owner>/<dataset id>/``, the
    owner with other characters as ``_``): the fetch step reads it once when the new prefix holds
    nothing yet, so nobody's saved work is left behind. None when the spec names its prefix."""
    if spec.user_data:
        return None
    owner = re.sub(r"[^A-Za-z0-9@._-]", "_", spec.owner or "anonymous")
    return f"s3://{settings.s3_bucket}/{settings.user_data_prefix}/{owner}/{model.dataset_id(spec.dataset or '')}/"


def aws_env(settings: Settings) -> list[dict[str, Any]]:
    """Credentials from the PoC's secret; the region key is optional, an endpoint only for non-AWS."""

    def key(var: str, optional: bool = False) -> dict[str, Any]:
        ref: dict[str, Any] = {"name": settings.aws_secret, "key": var}
        if optional:
            ref["optional"] = True
        return {"name": var, "valueFrom": {"secretKeyRef": ref}}

    env = [
        key("AWS_ACCESS_KEY_ID"),
        key("AWS_SECRET_ACCESS_KEY"),
        key("AWS_DEFAULT_REGION", optional=True),
    ]
    if settings.s3_endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": settings.s3_endpoint_url})
    return env


def resources(spec: model.SingleUserInstanceSpec, settings: Settings) -> dict[str, Any]:
    """Requests equal limits (Guaranteed QoS): a viewer is never evicted first under pressure."""
    asked = spec.resources or model.Resources()
    amount = {"cpu": asked.cpu or settings.default_cpu, "memory": asked.memory or settings.default_memory}
    return {"requests": dict(amount), "limits": dict(amount)}


def _data_container(name: str, args: list[str], settings: Settings, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": settings.userdata_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "cxg_on_k8s.userdata"],
        "args": args,
        "env": aws_env(settings),
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
        "resources": {
            "requests": {"cpu": "50m", "memory": "128Mi"},
            "limits": {"cpu": "500m", "memory": "512Mi"},
        },
        "securityContext": container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **extra,
    }


def viewer_command(spec: model.SingleUserInstanceSpec) -> list[str]:
    """The PoC's launch line, on the files the fetch step wrote; without cellxgene's upgrade check,
    an HTTPS call to a code host that fails in a pod without internet (many hospital and research
    clusters) and took half the start time. The flag belongs to ``cellxgene``, not ``launch``.
    On 127.0.0.1: behind the sign-in sidecar, so nothing reaches cellxgene around it."""
    command = [
        "cellxgene",
        "--no-upgrade-check",
        "launch",
        "--verbose",
        "-p",
        str(VIEWER_PORT),
        "--host",
        "127.0.0.1",
        DATASET_FILE,
        "--annotations-file",
        ANNOTATIONS_FILE,
        "--gene-sets-file",
        GENE_SETS_FILE,
    ]
    if spec.title:
        command += ["--title", spec.title]
    return command


def viewer_probes() -> dict[str, Any]:
    """cellxgene's /health. Behind the sign-in sidecar cellxgene listens on 127.0.0.1, which the
    kubelet cannot reach, so the probe runs in the container; a probe through the sidecar would
    count as the owner's activity. Frequent while cellxgene loads, rare once it answers."""
    check = [
        "python",
        "-c",
        f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{VIEWER_PORT}/health', timeout=4)",
    ]
    return {
        "startupProbe": {"exec": {"command": check}, "periodSeconds": 2, "timeoutSeconds": 5, "failureThreshold": 1800},
        "readinessProbe": {"exec": {"command": check}, "periodSeconds": 30, "timeoutSeconds": 5, "failureThreshold": 3},
    }


def deployment(
    name: str, namespace: str, spec: model.SingleUserInstanceSpec, settings: Settings, access: Access
) -> Manifest:
    """The Deployment of one viewer pod (setting viewer_workload deployment)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, namespace),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"instance": name}},
            # Recreate: two viewers saving to one prefix at once would race each other.
            "strategy": {"type": "Recreate"},
            "template": {"metadata": {"labels": labels(name)}, "spec": pod_spec(name, spec, settings, access)},
        },
    }


def pod(name: str, namespace: str, spec: model.SingleUserInstanceSpec, settings: Settings, access: Access) -> Manifest:
    """The viewer pod as the instance's own child (setting viewer_workload pod), named after it;
    the operator makes it again when it goes (``controller.handlers.pod_changed``)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(name, namespace),
        "spec": {**pod_spec(name, spec, settings, access), "restartPolicy": "Always"},
    }


def pod_spec(name: str, spec: model.SingleUserInstanceSpec, settings: Settings, access: Access) -> Manifest:
    """One viewer pod: fetch (init), save (native sidecar, outlives the viewer), cellxgene, and
    the sign-in in front of it (:mod:`cxg_on_k8s.render.signin`)."""
    user_data = user_data_url(spec, settings)
    image = settings.cellxgene_vip_image if spec.flavor == model.Flavor.CELLXGENE_VIP else settings.cellxgene_image
    legacy = legacy_user_data_url(spec, settings)
    fetch = _data_container(
        "fetch",
        [
            "fetch",
            "--dataset",
            spec.dataset or "",
            "--user-data",
            user_data,
            "--dest",
            DATA_DIR,
            "--max-size",
            settings.max_dataset_size,
            *(["--legacy-user-data", legacy] if legacy else []),
        ],
        settings,
    )
    # A native sidecar (restartPolicy Always) is stopped after the viewer, so its final save on
    # SIGTERM sees the viewer's last write; it also saves every save_interval seconds.
    save = _data_container(
        "save",
        ["sync", "--user-data", user_data, "--src", DATA_DIR, "--interval", str(settings.save_interval)],
        settings,
        restartPolicy="Always",
    )
    viewer = {
        "name": "cellxgene",
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        # args, not command: the image's entrypoint is tini, which passes SIGTERM on to cellxgene
        # (as PID 1 cellxgene ignores it, so every stop waited the whole grace period).
        # No port: behind the sidecar it is the pod's own business, nothing outside may name it.
        "args": viewer_command(spec)[1:],
        **viewer_probes(),
        "resources": resources(spec, settings),
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": container_security(),
        # cellxgene's last log lines become the status message of a viewer that keeps exiting
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    body: dict[str, Any] = {
        # A viewer never talks to the API server: no token to steal.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": settings.termination_grace_period,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": NONROOT_UID,
            "runAsGroup": NONROOT_UID,
            "fsGroup": NONROOT_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [fetch, save],
        "containers": [viewer],
        "volumes": [
            {"name": "data", "emptyDir": {"sizeLimit": settings.data_volume_limit}},
            {"name": "tmp", "emptyDir": {"sizeLimit": settings.data_volume_limit}},
        ],
    }
    signin.add_to_pod(body, name, VIEWER_PORT, access, settings)
    return body


def service(name: str, namespace: str, port: int = 80) -> Manifest:
    """ClusterIP only, whatever a client asked, to the sign-in sidecar: a viewer is reached
    through its route alone, and the route reaches the sidecar alone."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace),
        "spec": {
            "type": "ClusterIP",
            "selector": {"instance": name},
            "ports": [{"name": "http", "port": port, "targetPort": signin.SIGNIN_PORT_NAME}],
        },
    }


def route(name: str, namespace: str, settings: Settings, service_port: int = 80) -> Manifest:
    """The edge's object for the instance: an Ingress (edge ingress) or an HTTPRoute (edge
    gateway), with no annotation: the viewer's sidecar signs users in, strips the prefix and
    redirects ``/<name>`` to ``/<name>/``, so any controller that knows a Prefix path will do."""
    if settings.edge == "gateway":
        return http_route(name, namespace, settings, service_port)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _metadata(name, namespace),
        "spec": ingress_spec(settings, f"/{name}", "Prefix", name),
    }


def http_route(name: str, namespace: str, settings: Settings, service_port: int = 80) -> Manifest:
    """One PathPrefix rule to the Service's ``service_port`` (a backendRef names a port by
    number), attached to the Gateway the settings name. A PathPrefix matches whole path
    elements: ``/<name>`` and ``/<name>/...``, not ``/<name>x``."""
    gateway_namespace, gateway_name = settings.gateway.split("/", 1)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": _metadata(name, namespace),
        "spec": {
            "parentRefs": [
                {
                    "group": "gateway.networking.k8s.io",
                    "kind": "Gateway",
                    "namespace": gateway_namespace,
                    "name": gateway_name,
                }
            ],
            "hostnames": [ingress_host(settings)],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": f"/{name}"}}],
                    "backendRefs": [{"name": name, "port": service_port}],
                }
            ],
        },
    }


def ingress_spec(settings: Settings, path: str, path_type: str, service_name: str) -> dict[str, Any]:
    """One host, one path, to a Service's port named http: every Ingress this project makes."""
    backend = {"service": {"name": service_name, "port": {"name": "http"}}}
    return {
        "ingressClassName": settings.ingress_class,
        "rules": [
            {
                "host": ingress_host(settings),
                "http": {"paths": [{"path": path, "pathType": path_type, "backend": backend}]},
            }
        ],
    }


def ingress_host(settings: Settings) -> str:
    """An Ingress rule's host is a bare DNS name: no port, which HOST_NAME may carry."""
    return urlsplit(settings.base_url).hostname or settings.host_name


def network_policy(name: str, namespace: str) -> Manifest:
    """Only the sidecar's two ports are open (to everyone: the sidecar is the check, and the
    operator reads its counters): this closes an embedded client's own port, which may listen on
    every address, wherever the CNI enforces NetworkPolicies. Created first, so that the client's
    container never runs, even briefly, reachable around the sign-in."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(name, namespace),
        "spec": {
            "podSelector": {"matchLabels": {"instance": name}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "ports": [
                        {"protocol": "TCP", "port": signin.SIGNIN_PORT},
                        {"protocol": "TCP", "port": signin.SIGNIN_METRICS_PORT},
                    ]
                }
            ],
        },
    }


def children(
    name: str, namespace: str, spec: model.SingleUserInstanceSpec, access: Access, settings: Settings
) -> list[Manifest]:
    """What a portal-form instance owns, in creation order: the Deployment last, so that an
    instance refused on a name clash (the operator creates first and reads only on a 409) has
    nothing running. No NetworkPolicy: its pod listens on the sidecar's two ports only (cellxgene
    on 127.0.0.1), which one would open to everyone anyway; the embedded form's own container
    port is what needs one (:func:`cxg_on_k8s.render.plan.plan_instance`)."""
    workload = pod if settings.viewer_workload == "pod" else deployment
    return [
        service(name, namespace),
        route(name, namespace, settings),
        workload(name, namespace, spec, settings, access),
    ]


def instance(
    name: str,
    namespace: str,
    owner: str,
    dataset: str,
    **fields: Any,
) -> Manifest:
    """A portal-form SingleUserInstance, as the CLI and the portal create it."""
    spec = model.SingleUserInstanceSpec(owner=owner, dataset=dataset, **fields)
    return instance_body(name, namespace, spec.model_dump(by_alias=True, exclude_none=True, mode="json"))


def instance_body(name: str, namespace: str, spec: dict[str, Any]) -> Manifest:
    """The SingleUserInstance object around a spec, labelled like its children, so that every
    instance (portal form, embedded form, sample) is selected by ``app=cellxgene`` alike."""
    return {
        "apiVersion": model.API_VERSION,
        "kind": model.KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": labels(name)},
        "spec": spec,
    }
