"""The Kubernetes API handler: one place that knows how to talk to the cluster.

It keeps the proof of concept's ``K8ApiHandler(host=..., oidc_client=(SERVICE_ACCOUNT, TOKEN),
cert=CA_PATH)`` and method names so the portal's code keeps working, and adds the calls the
operator and CLI need. Connection comes from the kubeconfig (or in-cluster config) by default.
A little over 400 lines because the PoC's method names and the operator's calls share one error
translation (``call``) and one client: split, a call could bypass it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import kubernetes.client as k8s
import kubernetes.config as k8s_config
import urllib3
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from cxg_on_k8s.api import model

GATEWAY_GROUP = "gateway.networking.k8s.io"  # Gateway API: an instance's HTTPRoute (edge gateway)
NAMESPACE_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
T = TypeVar("T")


class ApiError(RuntimeError):
    """A Kubernetes call failed; the message names the object and what to do about it.

    ``status`` and ``reason`` are the API's (e.g. 403, "Forbidden"); both are None when the API
    server could not be reached or the call was refused before it was sent."""

    def __init__(self, message: str, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason

    @property
    def transient(self) -> bool:
        """Worth retrying unchanged: throttling, a server error, or an API server still starting
        (its admission answers 403 "not yet ready to handle request" until its caches are filled)."""
        if self.status == 403:
            return "not yet ready to handle request" in str(self)
        return self.status in (429, 500, 502, 503, 504)


def describe_api_exception(exc: ApiException, what: str) -> ApiError:
    """Turn the client's raw exception into one readable line with a hint."""
    hints = {
        401: "the credentials were refused: check the token (it may have expired) or the kubeconfig user",
        403: "the account lacks RBAC permission for this: check with `kubectl auth can-i`, and ask an "
        "administrator to grant it or to install the RBAC (`cxg-k8s install`); the portal's account "
        "may only manage SingleUserInstances",
        404: "it does not exist (or the CRD is not installed: `cxg-k8s install`)",
        409: "it already exists",
        422: "the API server rejected the content",
    }
    reason = exc.reason or ""
    detail = ""
    if exc.body:
        try:
            import json

            detail = json.loads(exc.body).get("message", "")
        except (ValueError, AttributeError):
            detail = str(exc.body)[:300]
    hint = hints.get(exc.status or 0, "")
    return ApiError(f"{what}: {exc.status} {reason}: {detail or hint}. {hint}".strip(), exc.status, reason or None)


def call(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one client call; any failure becomes an :class:`ApiError` naming ``what``."""
    try:
        return fn(*args, **kwargs)
    except ApiException as exc:
        raise describe_api_exception(exc, what) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        host = getattr(getattr(fn, "__self__", None), "api_client", None)
        where = getattr(getattr(host, "configuration", None), "host", "the API server")
        raise ApiError(
            f"{what}: cannot reach {where}: {exc}. Check the address (K8_IP/K8_PORT or the kubeconfig's "
            "server), the network, and that the API server is running"
        ) from None


def load_client(
    kubeconfig: str | None = None,
    context: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> k8s.ApiClient:
    """kubeconfig/context first; the PoC's .env variables if they are set; in-cluster last."""
    env = os.environ if environ is None else environ
    if kubeconfig or context or env.get("KUBECONFIG") or os.path.exists(os.path.expanduser("~/.kube/config")):
        return k8s_config.new_client_from_config(config_file=kubeconfig, context=context)
    if all(env.get(var) for var in ("K8_IP", "ACCOUNT_TOKEN")):
        return token_client(host=poc_host(env), token=env["ACCOUNT_TOKEN"], cert=env.get("CLUSTER_ROOT_CERTIFICATE"))
    k8s_config.load_incluster_config()
    return k8s.ApiClient()


def poc_host(env: Mapping[str, str]) -> str:
    """The API server's URL from the PoC's K8_IP (an address, or a URL) and K8_PORT (6443)."""
    address = env["K8_IP"].strip().rstrip("/")
    if "://" not in address:
        address = f"https://{address}"
    if env.get("K8_PORT") and address.count(":") < 2:
        address = f"{address}:{env['K8_PORT']}"
    elif address.count(":") < 2:
        address = f"{address}:6443"
    return address


def with_pool(client: k8s.ApiClient, size: int) -> k8s.ApiClient:
    """``client`` keeping up to ``size`` connections open, for as many threads sharing it.

    The default is 5 × CPUs; beyond it urllib3 opens a connection per request and drops it after
    ("Connection pool is full, discarding connection"), so every such request pays a TLS handshake.
    """
    client.configuration.connection_pool_maxsize = size
    client.rest_client = k8s.rest.RESTClientObject(client.configuration)
    return client


def token_client(host: str, token: str, cert: str | None) -> k8s.ApiClient:
    config = k8s.Configuration()
    config.host = host
    # The whole header value under the old key, no prefix: kubernetes-client 36 looks the key up
    # as "BearerToken" with "authorization" as an alias but the prefix only under "BearerToken", so
    # a prefix kept under "authorization" is dropped and the request goes out anonymous.
    config.api_key = {"authorization": f"Bearer {token}"}
    if cert:
        config.ssl_ca_cert = cert
    return k8s.ApiClient(config)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> dt.datetime | None:
    """An API timestamp (RFC 3339, "Z" for UTC) as a datetime, None when absent: status
    times such as ``lastActivity`` are missing until they happen. One parser for every reader, so
    the operator, the culler and the CLI cannot disagree about a time."""
    if not value:
        return None
    return dt.datetime.fromisoformat(value)


def event_body(obj: Mapping[str, Any], event_type: str, reason: str, message: str) -> dict[str, Any]:
    """A core/v1 Event on ``obj`` (an instance as the API server returned it: its uid ties the
    Event to this object, not to a later one of the same name)."""
    meta = obj["metadata"]
    now = utcnow()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion", model.API_VERSION),
            "kind": obj.get("kind", model.KIND),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": event_type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "sui-operator"},
        "firstTimestamp": rfc3339(now),
        "lastTimestamp": rfc3339(now),
        "count": 1,
    }


class K8ApiHandler:
    """Thin, typed wrapper over the official client with the PoC's method names."""

    def __init__(
        self,
        host: str | None = None,
        oidc_client: tuple[str, str] | None = None,
        cert: str | None = None,
        namespace: str = "cellxgene",
        client: k8s.ApiClient | None = None,
    ) -> None:
        if client is None:
            client = token_client(host, oidc_client[1], cert) if host and oidc_client else load_client()
        self.client = client
        self.namespace = namespace
        self.core = k8s.CoreV1Api(client)
        self.apps = k8s.AppsV1Api(client)
        self.networking = k8s.NetworkingV1Api(client)
        self.custom = k8s.CustomObjectsApi(client)
        self.extensions = k8s.ApiextensionsV1Api(client)
        self.discovery = k8s.DiscoveryV1Api(client)

    def change_namespace(self, namespace: str) -> None:
        """Work in another namespace from now on (the PoC's call); the name is checked, not the
        namespace's existence, which the portal's account may not be allowed to read."""
        if not isinstance(namespace, str) or not NAMESPACE_PATTERN.match(namespace):
            raise ApiError(
                f"changing namespace to {namespace!r}: not a valid namespace name (lower-case letters, "
                "digits and '-', at most 63 characters); give the namespace's name"
            )
        self.namespace = namespace

    # --- the PoC's calls: create, read and delete the children and custom resources ----------------
    # Every one raises ApiError (status, reason, the object, what to do), never the client's own.

    def create_deployment(self, body: dict[str, Any]) -> Any:
        return call(
            self._what("creating", "Deployment", body), self.apps.create_namespaced_deployment, self._ns(body), body
        )

    def create_service(self, body: dict[str, Any]) -> Any:
        return call(self._what("creating", "Service", body), self.core.create_namespaced_service, self._ns(body), body)

    def create_ingress(self, body: dict[str, Any]) -> Any:
        return call(
            self._what("creating", "Ingress", body), self.networking.create_namespaced_ingress, self._ns(body), body
        )

    def create_custom_resource(
        self, body: dict[str, Any], group: str = model.GROUP, version: str = model.VERSION, plural: str = model.PLURAL
    ) -> dict[str, Any]:
        """Create a custom resource (a SingleUserInstance unless told otherwise); the API server's
        schema and CEL errors come back readable."""
        what = self._what("creating", body.get("kind") or model.KIND, body)
        return call(what, self.custom.create_namespaced_custom_object, group, version, self._ns(body), plural, body)

    def read_deployment(self, name: str) -> Any:
        return call(
            f"reading Deployment {self.namespace}/{name}", self.apps.read_namespaced_deployment, name, self.namespace
        )

    def read_service(self, name: str) -> Any:
        return call(f"reading Service {self.namespace}/{name}", self.core.read_namespaced_service, name, self.namespace)

    def read_ingress(self, name: str) -> Any:
        return call(
            f"reading Ingress {self.namespace}/{name}", self.networking.read_namespaced_ingress, name, self.namespace
        )

    def read_custom_resource(
        self, name: str, group: str = model.GROUP, version: str = model.VERSION, plural: str = model.PLURAL
    ) -> dict[str, Any]:
        what = f"reading {plural}.{group} {self.namespace}/{name}"
        return call(what, self.custom.get_namespaced_custom_object, group, version, self.namespace, plural, name)

    def delete_deployment(self, name: str) -> Any:
        return call(
            f"deleting Deployment {self.namespace}/{name}",
            self.apps.delete_namespaced_deployment,
            name,
            self.namespace,
            propagation_policy="Background",
        )

    def delete_service(self, name: str) -> Any:
        return call(
            f"deleting Service {self.namespace}/{name}", self.core.delete_namespaced_service, name, self.namespace
        )

    def delete_ingress(self, name: str) -> Any:
        return call(
            f"deleting Ingress {self.namespace}/{name}", self.networking.delete_namespaced_ingress, name, self.namespace
        )

    def delete_custom_resource(
        self, name: str, group: str = model.GROUP, version: str = model.VERSION, plural: str = model.PLURAL
    ) -> dict[str, Any]:
        """Delete; an instance's children follow by garbage collection, its pod saves the user's
        data first. A missing object is an ApiError 404 (``delete_instance`` tolerates it)."""
        what = f"deleting {plural}.{group} {self.namespace}/{name}"
        return call(
            what,
            self.custom.delete_namespaced_custom_object,
            group,
            version,
            self.namespace,
            plural,
            name,
            propagation_policy="Background",
        )

    def list_pods(self, label_selector: str = "app=cellxgene") -> Any:
        what = f"listing pods ({label_selector or 'all'}) in namespace {self.namespace}"
        return call(what, self.core.list_namespaced_pod, self.namespace, label_selector=label_selector)

    def list_services(self, label_selector: str = "app=cellxgene") -> Any:
        what = f"listing services ({label_selector or 'all'}) in namespace {self.namespace}"
        return call(what, self.core.list_namespaced_service, self.namespace, label_selector=label_selector)

    def _what(self, verb: str, kind: str, body: Mapping[str, Any]) -> str:
        return f"{verb} {kind} {self._ns(body)}/{body.get('metadata', {}).get('name') or '(no name)'}"

    # --- instances -----------------------------------------------------------------------------

    def get_instance(self, name: str) -> dict[str, Any]:
        what = f"SingleUserInstance {self.namespace}/{name}"
        args = (model.GROUP, model.VERSION, self.namespace, model.PLURAL, name)
        return call(what, self.custom.get_namespaced_custom_object, *args)

    def list_instances(self) -> list[dict[str, Any]]:
        what = f"SingleUserInstances in namespace {self.namespace}"
        args = (model.GROUP, model.VERSION, self.namespace, model.PLURAL)
        return list(call(what, self.custom.list_namespaced_custom_object, *args).get("items", []))

    def watch_instance(self, name: str, timeout: float) -> Iterator[dict[str, Any]]:
        """The instance's body now and after every change, for ``timeout`` seconds: a watch, so a
        waiting client costs the API server one request, not one per second. Its deletion, or its
        absence at the start, is the ApiError 404 of ``get_instance``."""
        what = f"watching SingleUserInstance {self.namespace}/{name}"
        stream = watch.Watch().stream(
            self.custom.list_namespaced_custom_object,
            model.GROUP,
            model.VERSION,
            self.namespace,
            model.PLURAL,
            field_selector=f"metadata.name={name}",
            timeout_seconds=max(1, round(timeout)),
        )
        seen = False
        while True:
            event = call(what, next, stream, None)
            if event is None:
                if not seen:
                    self.get_instance(name)  # absent: its 404 names it
                return
            if event["type"] == "DELETED":
                raise ApiError(f"SingleUserInstance {self.namespace}/{name} was deleted", 404, "NotFound")
            if event["type"] in ("ADDED", "MODIFIED"):
                seen = True
                yield event["object"]

    def delete_instance(self, name: str, namespace: str | None = None) -> bool:
        """Delete; False when it was already gone. Children follow by garbage collection."""
        namespace = namespace or self.namespace
        what = f"deleting SingleUserInstance {namespace}/{name}"
        args = (model.GROUP, model.VERSION, namespace, model.PLURAL, name)
        try:
            call(what, self.custom.delete_namespaced_custom_object, *args, propagation_policy="Background")
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def delete_pod(self, name: str, namespace: str, uid: str) -> bool:
        """Delete the pod ``name`` if it is still the one with ``uid`` (a precondition: never a
        newer pod of the same name); False when it was gone already."""
        body = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=uid))
        try:
            call(f"deleting Pod {namespace}/{name}", self.core.delete_namespaced_pod, name, namespace, body=body)
        except ApiError as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    def patch_instance_status(self, name: str, status: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        namespace = namespace or self.namespace
        what = f"updating the status of SingleUserInstance {namespace}/{name}"
        args = (model.GROUP, model.VERSION, namespace, model.PLURAL, name, {"status": model.status_patch(status)})
        return call(what, self.custom.patch_namespaced_custom_object_status, *args)

    def list_events(self, name: str) -> list[Any]:
        what = f"listing the Events of {self.namespace}/{name}"
        selector = f"involvedObject.name={name}"
        found = call(what, self.core.list_namespaced_event, self.namespace, field_selector=selector)
        return sorted(found.items, key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp)

    def post_event(self, obj: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
        """A core/v1 Event on an object, as ``kubectl describe`` shows them."""
        meta = obj["metadata"]
        what = f"posting a {reason} Event on {meta['namespace']}/{meta['name']}"
        call(what, self.core.create_namespaced_event, meta["namespace"], event_body(obj, event_type, reason, message))

    # --- generic create-if-absent ----------------------------------------------------------------

    def create_if_absent(self, body: dict[str, Any]) -> bool:
        """Create one object; True if created, False if it already existed (idempotent retries)."""
        creators = {
            "Deployment": self.apps.create_namespaced_deployment,
            "Pod": self.core.create_namespaced_pod,
            "Service": self.core.create_namespaced_service,
            "Ingress": self.networking.create_namespaced_ingress,
            "NetworkPolicy": self.networking.create_namespaced_network_policy,
            "HTTPRoute": lambda ns, body, **kw: self.custom.create_namespaced_custom_object(
                GATEWAY_GROUP, "v1", ns, "httproutes", body, **kw
            ),
            "Secret": self.core.create_namespaced_secret,
            "ServiceAccount": self.core.create_namespaced_service_account,
        }
        kind = body.get("kind", "")
        if kind not in creators:
            raise ApiError(f"{kind or 'an object without kind'} cannot be created by this handler")
        try:
            # The answer's bytes are read, not turned into the client's models: that costs more
            # operator CPU than the request (~5 ms for a Pod), and nobody reads it.
            answer = call(
                f"creating {kind} {self._ns(body)}/{body['metadata'].get('name')}",
                creators[kind],
                self._ns(body),
                body,
                _preload_content=False,
            )
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        answer.drain_conn()
        answer.release_conn()  # read to the end first: the connection goes back to the pool
        return True

    def _ns(self, body: Mapping[str, Any]) -> str:
        return body.get("metadata", {}).get("namespace") or self.namespace

    def read_owner_references(self, kind: str, namespace: str, name: str) -> list[dict[str, Any]] | None:
        """An instance child's ownerReferences as dicts (kind, name, uid); [] when nobody owns it,
        None when it does not exist. The operator takes over nothing it does not own."""
        readers = {
            "Deployment": self.apps.read_namespaced_deployment,
            "Pod": self.core.read_namespaced_pod,
            "Service": self.core.read_namespaced_service,
            "Ingress": self.networking.read_namespaced_ingress,
            "NetworkPolicy": self.networking.read_namespaced_network_policy,
            "HTTPRoute": lambda name, ns, **kw: self.custom.get_namespaced_custom_object(
                GATEWAY_GROUP, "v1", ns, "httproutes", name, **kw
            ),
        }
        if kind not in readers:
            raise ApiError(f"{kind or 'an object without kind'} cannot be read by this handler")
        try:
            # Plain JSON, not the client's models (see create_if_absent): a resume reads every child.
            answer = call(f"reading {kind} {namespace}/{name}", readers[kind], name, namespace, _preload_content=False)
            found = json.loads(answer.data)
            answer.release_conn()
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        refs = found.get("metadata", {}).get("ownerReferences") or []
        return [{"kind": ref.get("kind"), "name": ref.get("name"), "uid": ref.get("uid")} for ref in refs]
