"""Objects of any kind, for ``cxg-k8s install``/``uninstall``: server-side apply, delete, and
waiting until a CRD is Established.

The operator's own calls go through the typed handler (``k8s.client``): it needs no discovery and
keeps the proof of concept's method names. The install applies a dozen kinds, kopf's CRD among
them, and the dynamic client is the library's way to do that without a table per kind; its
errors become the same ``ApiError`` as every other call.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError, NotFoundError, ResourceNotFoundError

from cxg_on_k8s.k8s.client import ApiError, call

FIELD_MANAGER = "cxg-k8s"


def _name(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']} {meta['namespace'] + '/' if meta.get('namespace') else ''}{meta['name']}"


@contextmanager
def _api_errors(what: str) -> Iterator[None]:
    """The dynamic client's errors as ``ApiError``, with the API's status and its message."""
    try:
        yield
    except DynamicApiError as exc:
        raise ApiError(f"{what}: {exc.summary()}", exc.status, exc.reason) from None


class Installer:
    """Applies and deletes whole objects through one dynamic client (one discovery per run)."""

    def __init__(self, client: k8s.ApiClient) -> None:
        self.client = client
        self.dynamic = DynamicClient(client)

    def missing_namespaces(self, objects: Iterable[dict[str, Any]], created: str) -> set[str]:
        """The namespaces ``objects`` go into that do not exist, ``created`` (the install's own)
        aside: the ingress controller's, before ingress-nginx is installed. One this account may
        not read counts as present, so that applying into it says what is wrong."""
        namespaces = self.dynamic.resources.get(api_version="v1", kind="Namespace")
        wanted = {ns for obj in objects if (ns := obj["metadata"].get("namespace")) and ns != created}
        missing = set()
        for name in sorted(wanted):
            try:
                namespaces.get(name=name)
            except NotFoundError:
                missing.add(name)
            except DynamicApiError:
                pass
        return missing

    def apply(self, obj: dict[str, Any]) -> None:
        """Server-side apply, taking over fields from earlier managers (an upgrade)."""
        meta = obj["metadata"]
        with _api_errors(f"applying {_name(obj)}"):
            resource = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
            resource.server_side_apply(
                body=obj,
                name=meta["name"],
                namespace=meta.get("namespace"),
                field_manager=FIELD_MANAGER,
                force_conflicts=True,
            )

    def delete(self, obj: dict[str, Any]) -> bool:
        """Delete; False when it (or its kind) is not there."""
        meta = obj["metadata"]
        with _api_errors(f"deleting {_name(obj)}"):
            try:
                resource = self.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
                resource.delete(name=meta["name"], namespace=meta.get("namespace"))
            except (NotFoundError, ResourceNotFoundError):
                return False
        return True

    def wait_established(self, name: str, timeout: float) -> bool:
        """Whether CRD ``name`` is Established within ``timeout`` seconds, by a watch of it (its
        first event is its current state). A just-created CRD's conditions may be null."""
        api = k8s.ApiextensionsV1Api(self.client)
        stream = watch.Watch().stream(
            api.list_custom_resource_definition,
            field_selector=f"metadata.name={name}",
            timeout_seconds=max(1, round(timeout)),
        )
        return call(f"watching CustomResourceDefinition {name}", any, (_established(e["object"]) for e in stream))


def _established(crd: Any) -> bool:
    conditions = (crd.status.conditions if crd.status else None) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)
