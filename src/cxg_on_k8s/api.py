"""The Kubernetes API handler: one place that knows how to talk to the cluster.

It keeps the proof of concept's ``K8ApiHandler(host=..., oidc_client=(SERVICE_ACCOUNT, TOKEN),
cert=CA_PATH)`` and method names so the portal's code keeps working, and adds the calls the
operator and CLI need. Connection comes from the kubeconfig (or in-cluster config) by default.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Mapping
from typing import Any

import kubernetes.client as k8s
import kubernetes.config as k8s_config
from kubernetes.client.exceptions import ApiException

from cxg_on_k8s import spec as api

POC_ENV = ("K8_IP", "K8_PORT", "CLUSTER_ROOT_CERTIFICATE", "SERVICE_ACCOUNT", "ACCOUNT_TOKEN")


class ApiError(RuntimeError):
    """A Kubernetes call failed; the message names the object and what to do about it."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

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
        401: "the credentials were refused: check the token or kubeconfig user",
        403: "the account lacks RBAC permission: install the RBAC with `cxg-k8s install`",
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
    return ApiError(f"{what}: {exc.status} {reason}: {detail or hint}. {hint}".strip(), exc.status)


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
        return token_client(
            host=f"https://{env['K8_IP']}:{env.get('K8_PORT', '6443')}",
            token=env["ACCOUNT_TOKEN"],
            cert=env.get("CLUSTER_ROOT_CERTIFICATE"),
        )
    k8s_config.load_incluster_config()
    return k8s.ApiClient()


def token_client(host: str, token: str, cert: str | None) -> k8s.ApiClient:
    config = k8s.Configuration()
    config.host = host
    config.api_key = {"authorization": token}
    config.api_key_prefix = {"authorization": "Bearer"}
    if cert:
        config.ssl_ca_cert = cert
    return k8s.ApiClient(config)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
        self.namespace = namespace

    # --- the PoC's calls -----------------------------------------------------------------------

    def create_deployment(self, body: dict[str, Any]) -> Any:
        return self.apps.create_namespaced_deployment(self._ns(body), body)

    def create_service(self, body: dict[str, Any]) -> Any:
        return self.core.create_namespaced_service(self._ns(body), body)

    def create_ingress(self, body: dict[str, Any]) -> Any:
        return self.networking.create_namespaced_ingress(self._ns(body), body)

    def create_custom_resource(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a SingleUserInstance; the API server's schema and CEL errors come back readable."""
        try:
            return self.custom.create_namespaced_custom_object(api.GROUP, api.VERSION, self._ns(body), api.PLURAL, body)
        except ApiException as exc:
            what = f"creating SingleUserInstance {self._ns(body)}/{body.get('metadata', {}).get('name')}"
            raise describe_api_exception(exc, what) from None

    def read_deployment(self, name: str) -> Any:
        return self.apps.read_namespaced_deployment(name, self.namespace)

    def list_pods(self, label_selector: str = "app=cellxgene") -> Any:
        return self.core.list_namespaced_pod(self.namespace, label_selector=label_selector)

    # --- instances -----------------------------------------------------------------------------

    def get_instance(self, name: str) -> dict[str, Any]:
        try:
            return self.custom.get_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.PLURAL, name)
        except ApiException as exc:
            raise describe_api_exception(exc, f"SingleUserInstance {self.namespace}/{name}") from None

    def list_instances(self) -> list[dict[str, Any]]:
        try:
            found = self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, self.namespace, api.PLURAL)
        except ApiException as exc:
            raise describe_api_exception(exc, f"SingleUserInstances in namespace {self.namespace}") from None
        return list(found.get("items", []))

    def delete_instance(self, name: str, namespace: str | None = None) -> bool:
        """Delete; False when it was already gone. Children follow by garbage collection."""
        namespace = namespace or self.namespace
        try:
            self.custom.delete_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.PLURAL, name, propagation_policy="Background"
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise describe_api_exception(exc, f"deleting SingleUserInstance {namespace}/{name}") from None
        return True

    def patch_instance_status(self, name: str, status: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, namespace or self.namespace, api.PLURAL, name, {"status": status}
        )

    def list_events(self, name: str) -> list[Any]:
        found = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}")
        return sorted(found.items, key=lambda e: (e.last_timestamp or e.event_time or e.metadata.creation_timestamp))

    def post_event(self, obj: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
        """A core/v1 Event on an object, as ``kubectl describe`` shows them."""
        meta = obj["metadata"]
        now = utcnow()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", api.API_VERSION),
                "kind": obj.get("kind", api.KIND),
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
        self.core.create_namespaced_event(meta["namespace"], event)

    # --- generic create-if-absent ----------------------------------------------------------------

    def create_if_absent(self, body: dict[str, Any]) -> bool:
        """Create one object; True if created, False if it already existed (idempotent retries)."""
        creators = {
            "Deployment": self.apps.create_namespaced_deployment,
            "Service": self.core.create_namespaced_service,
            "Ingress": self.networking.create_namespaced_ingress,
            "NetworkPolicy": self.networking.create_namespaced_network_policy,
            "Secret": self.core.create_namespaced_secret,
            "ServiceAccount": self.core.create_namespaced_service_account,
        }
        kind = body.get("kind", "")
        if kind not in creators:
            raise ApiError(f"{kind or 'an object without kind'} cannot be created by this handler")
        try:
            creators[kind](self._ns(body), body)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise describe_api_exception(exc, f"creating {kind} {self._ns(body)}/{body['metadata'].get('name')}") from None
        return True

    def _ns(self, body: Mapping[str, Any]) -> str:
        return body.get("metadata", {}).get("namespace") or self.namespace
