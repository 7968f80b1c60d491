"""The two shapes of SingleUserInstance that clients render today (issue 12's test vectors).

Written from the facts the issue lists, not copied from any client:

* :func:`poc_test_instance`: the proof of concept's own test instance: embedded form, an nginx
  container, an Ingress with no auth annotations at all, a Deployment named apart from the instance.
* :func:`portal_instance`: what a data portal renders for "open file F for user U": embedded form,
  ``lifespan: 999``, a ``user: <username>`` label on every object, the shared ``app=cellxgene``
  selector, an aws-cli init container, a preStop upload, and an auth-url of this installation's
  oauth2-proxy that names nobody (no ``allowed_emails``).
"""

from __future__ import annotations

from typing import Any

from cxg_on_k8s.api import model
from cxg_on_k8s.settings import Settings
from tests.poc_form import POC_AUTH_ENDPOINT

APP = {"app": "cellxgene"}


def body(name: str, namespace: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": model.API_VERSION,
        "kind": model.KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": {**APP, **(labels or {})}},
        "spec": spec,
    }


def deployment(name: str, labels: dict[str, str], pod: dict[str, Any]) -> dict[str, Any]:
    """A Deployment as both clients render it: one replica, the shared ``app=cellxgene`` selector."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": dict(APP)},
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
        },
    }


def poc_test_instance(name: str, namespace: str) -> dict[str, Any]:
    """nginx on port 80 behind a Service and an Ingress that asks nobody to sign in."""
    deployment_name = f"{name}-deployment"
    return body(name, namespace, {
        "lifespan": 600,
        "deployment": deployment(
            deployment_name, APP, {"containers": [{"name": "nginx", "image": "nginx:1.25", "ports": [{"containerPort": 80}]}]}
        ),
        "service": {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": f"{name}-service", "labels": dict(APP)},
            "spec": {"selector": dict(APP), "ports": [{"port": 80, "targetPort": 80}]},
        },
        "ingress": {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": f"{name}-ingress", "labels": dict(APP)},
            "spec": {
                "ingressClassName": "nginx",
                "rules": [{"http": {"paths": [{
                    "path": f"/{name}", "pathType": "Prefix",
                    "backend": {"service": {"name": f"{name}-service", "port": {"number": 80}}},
                }]}}],
            },
        },
    })  # fmt: skip


def portal_instance(
    name: str, namespace: str, username: str, dataset_key: str, settings: Settings, aws_cli_image: str = "amazon/aws-cli:2.15.0"
) -> dict[str, Any]:
    """aws-cli fetches ``s3://<bucket>/cxg_on_k8/<username>/<dataset>/``, cellxgene serves it on
    5005, a preStop hook uploads the annotations; every object carries ``user: <username>``. A
    portal on a non-AWS store (settings.s3_endpoint_url) passes its endpoint, as MinIO users do."""
    user = {**APP, "user": username}
    prefix = f"s3://{settings.s3_bucket}/cxg_on_k8/{username}/{dataset_key}/"
    aws: list[dict[str, Any]] = [
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": settings.aws_secret, "key": "AWS_ACCESS_KEY_ID"}}},
        {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": settings.aws_secret, "key": "AWS_SECRET_ACCESS_KEY"}}},
        {"name": "AWS_DEFAULT_REGION", "value": "us-east-1"},
    ]  # fmt: skip
    if settings.s3_endpoint_url:
        aws.append({"name": "AWS_ENDPOINT_URL", "value": settings.s3_endpoint_url})
    data = [{"name": "data", "mountPath": "/data"}]
    return body(name, namespace, {
        "lifespan": 999,
        "deployment": deployment(name, user, {
            "initContainers": [{
                "name": "download", "image": aws_cli_image,
                "command": ["aws", "s3", "sync", prefix, "/data/"], "env": aws, "volumeMounts": data,
            }],
            "containers": [{
                "name": "cellxgene", "image": settings.cellxgene_image,
                "command": ["cellxgene", "launch", "--host", "0.0.0.0", "-p", "5005", f"/data/{dataset_key}",
                            "--annotations-file", "/data/annotations.csv"],
                "ports": [{"containerPort": 5005}], "env": aws, "volumeMounts": data,
                "lifecycle": {"preStop": {"exec": {"command": [
                    "sh", "-c", f"aws s3 cp /data/annotations.csv {prefix}annotations.csv"]}}},
            }],
            "volumes": [{"name": "data", "emptyDir": {}}],
        }),
        "service": {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "labels": dict(user)},
            "spec": {"selector": dict(APP), "ports": [{"port": 5005, "targetPort": 5005}]},
        },
        "ingress": {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "name": name,
                "labels": dict(user),
                "annotations": {
                    "nginx.ingress.kubernetes.io/auth-url": POC_AUTH_ENDPOINT,
                    "nginx.ingress.kubernetes.io/auth-signin": f"{settings.base_url}/oauth2/start?rd=$escaped_request_uri",
                    "nginx.ingress.kubernetes.io/rewrite-target": "/$2",
                },
            },
            "spec": {
                "ingressClassName": "nginx",
                "rules": [{"host": settings.host_name.split(":")[0], "http": {"paths": [{
                    "path": f"/{name}(/|$)(.*)", "pathType": "ImplementationSpecific",
                    "backend": {"service": {"name": name, "port": {"number": 5005}}},
                }]}}],
            },
        },
    }, labels={"user": username})  # fmt: skip
