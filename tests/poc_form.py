"""The proof of concept's client-rendered manifests (the embedded form of a SingleUserInstance)
and a way to edit them by path: shared by the unit tests of the embedded form (test_manifests,
test_policy) and the operator tests that send it to a real API server (test_operator)."""

from __future__ import annotations

import re
from typing import Any

# The shared oauth2-proxy's auth endpoint that the proof of concept's clients write into their
# Ingress (the operator no longer runs that proxy; it reads the lists from the query).
POC_AUTH_ENDPOINT = "http://oauth2-proxy.ingress-nginx.svc.cluster.local:8091/oauth2/auth"
POC_AUTH_URL = f"{POC_AUTH_ENDPOINT}?allowed_emails=alice@example.org"


def poc_manifests(name: str) -> dict[str, dict[str, Any]]:
    """What the proof of concept's client rendered: every object selected by app=cellxgene, the
    owner's e-mail in the auth-url (for an operator with default settings)."""
    return {
        "deployment": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": name,
                "labels": {"app": "cellxgene"},
                "resourceVersion": "42",
                "uid": "x",
            },
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "cellxgene"}},
                "template": {
                    "metadata": {"labels": {"app": "cellxgene"}},
                    "spec": {"containers": [{"name": "cellxgene", "image": "cellxgene:1.1.2"}]},
                },
            },
        },
        "service": {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "labels": {"app": "cellxgene"}},
            "spec": {
                "selector": {"app": "cellxgene"},
                "ports": [{"port": 5005, "targetPort": 5005}],
            },
        },
        "ingress": {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "name": name,
                "labels": {"app": "cellxgene"},
                "annotations": {"nginx.ingress.kubernetes.io/auth-url": POC_AUTH_URL},
            },
            "spec": {
                "ingressClassName": "nginx",
                "rules": [
                    {
                        "http": {
                            "paths": [
                                {
                                    "path": f"/{name}(/|$)(.*)",
                                    "pathType": "ImplementationSpecific",
                                    "backend": {"service": {"name": name, "port": {"number": 5005}}},
                                }
                            ]
                        }
                    }
                ],
            },
        },
    }


def set_path(doc: Any, path: str, value: Any) -> None:
    """Set ``a.b[0].c`` in nested dicts and lists, creating dicts (and list slots) on the way."""
    keys: list[str | int] = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    for key, following in zip(keys, keys[1:], strict=False):
        if isinstance(key, int):
            while len(doc) <= key:
                doc.append({})
            doc = doc[key]
        else:
            doc = doc.setdefault(key, [] if isinstance(following, int) else {})
    doc[keys[-1]] = value
