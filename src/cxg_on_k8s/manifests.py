"""Every Kubernetes object this project creates, built by pure functions of (input, settings).

Nothing here talks to a cluster, so each builder is checked against literal expected dicts in
tests, and ``cxg-k8s render`` prints exactly what the operator would create.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any
from urllib.parse import quote, urlsplit

from cxg_on_k8s import spec as api
from cxg_on_k8s.access import Access, auth_url, owner_access
from cxg_on_k8s.settings import OAUTH2_PROXY_NAME, Settings

Manifest = dict[str, Any]

APP_LABEL = "cellxgene"
VIEWER_PORT = 5005
DATA_DIR = "/data"
DATASET_FILE = f"{DATA_DIR}/dataset.h5ad"
ANNOTATIONS_FILE = f"{DATA_DIR}/annotations.csv"
GENE_SETS_FILE = f"{DATA_DIR}/gene_sets.csv"
OAUTH2_PROXY_METRICS_PORT = 9091
OPERATOR_NAME = "sui-operator"
PORTAL_ACCOUNT = "omicsdm"
NONROOT_UID = 1000
# kopf's peering: the KopfPeering object the operators of one namespace meet in.
PEERING_NAME = "cxg-on-k8s"
KOPF_GROUP = "kopf.dev"
KOPF_PEERING_PLURAL = "kopfpeerings"
KOPF_PEERING_CRD_NAME = f"{KOPF_PEERING_PLURAL}.{KOPF_GROUP}"
# The ingress-nginx controller's pods (the labels its official manifests and chart set) and the
# port of its Prometheus metrics.
INGRESS_CONTROLLER_LABELS = {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"}
INGRESS_METRICS_PORT = 10254
PLACEHOLDER = "REPLACE_ME"

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


def user_data_url(spec: api.SingleUserInstanceSpec, settings: Settings) -> str:
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
    return f"s3://{settings.s3_bucket}/{settings.user_data_prefix}/{owner}/{api.dataset_id(dataset)}-{digest}/"


def legacy_user_data_url(spec: api.SingleUserInstanceSpec, settings: Settings) -> str | None:
    """Where earlier versions saved the owner's data by default (``<owner>/<dataset id>/``, the
    owner with other characters as ``_``): the fetch step reads it once when the new prefix holds
    nothing yet, so nobody's saved work is left behind. None when the spec names its prefix."""
    if spec.user_data:
        return None
    owner = re.sub(r"[^A-Za-z0-9@._-]", "_", spec.owner or "anonymous")
    return f"s3://{settings.s3_bucket}/{settings.user_data_prefix}/{owner}/{api.dataset_id(spec.dataset or '')}/"


def _aws_env(settings: Settings) -> list[dict[str, Any]]:
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


def _container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def resources(spec: api.SingleUserInstanceSpec, settings: Settings) -> dict[str, Any]:
    """Requests equal limits (Guaranteed QoS): a viewer is never evicted first under pressure."""
    asked = spec.resources or api.Resources()
    amount = {"cpu": asked.cpu or settings.default_cpu, "memory": asked.memory or settings.default_memory}
    return {"requests": dict(amount), "limits": dict(amount)}


def _data_container(name: str, args: list[str], settings: Settings, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": settings.userdata_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "cxg_on_k8s.userdata"],
        "args": args,
        "env": _aws_env(settings),
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
        "resources": {
            "requests": {"cpu": "50m", "memory": "128Mi"},
            "limits": {"cpu": "500m", "memory": "512Mi"},
        },
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **extra,
    }


def viewer_command(spec: api.SingleUserInstanceSpec) -> list[str]:
    """The PoC's launch line, on the files the fetch step wrote; without cellxgene's upgrade check,
    an HTTPS call to a code host that fails in a pod without internet (many hospital and research
    clusters) and took half the start time. The flag belongs to ``cellxgene``, not ``launch``."""
    command = [
        "cellxgene", "--no-upgrade-check", "launch", "--verbose", "-p", str(VIEWER_PORT), "--host", "0.0.0.0",
        DATASET_FILE, "--annotations-file", ANNOTATIONS_FILE, "--gene-sets-file", GENE_SETS_FILE,
    ]  # fmt: skip
    if spec.title:
        command += ["--title", spec.title]
    return command


def deployment(name: str, namespace: str, spec: api.SingleUserInstanceSpec, settings: Settings) -> Manifest:
    """One viewer pod: fetch (init), save (native sidecar, outlives the viewer), cellxgene."""
    user_data = user_data_url(spec, settings)
    image = settings.cellxgene_vip_image if spec.flavor == api.Flavor.CELLXGENE_VIP else settings.cellxgene_image
    legacy = legacy_user_data_url(spec, settings)
    fetch = _data_container(
        "fetch",
        ["fetch", "--dataset", spec.dataset or "", "--user-data", user_data, "--dest", DATA_DIR,
         "--max-size", settings.max_dataset_size, *(["--legacy-user-data", legacy] if legacy else [])],
        settings,
    )  # fmt: skip
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
        "args": viewer_command(spec)[1:],
        "ports": [{"name": "http", "containerPort": VIEWER_PORT}],
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "resources": resources(spec, settings),
        "volumeMounts": [{"name": "data", "mountPath": DATA_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
        "securityContext": _container_security(),
        # cellxgene's last log lines become the status message of a viewer that keeps exiting
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(name, namespace),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"instance": name}},
            # Recreate: two viewers saving to one prefix at once would race each other.
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {"labels": labels(name)},
                "spec": {
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
                },
            },
        },
    }


def service(name: str, namespace: str, port: int = 80, target_port: int | str = "http") -> Manifest:
    """ClusterIP only, whatever a client asked: a viewer is reached through its Ingress alone."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, namespace),
        "spec": {
            "type": "ClusterIP",
            "selector": {"instance": name},
            "ports": [{"name": "http", "port": port, "targetPort": target_port}],
        },
    }


def ingress_annotations(access: Access, settings: Settings) -> dict[str, str]:
    """The PoC's annotations, with who may pass carried into the auth check."""
    return {
        "nginx.ingress.kubernetes.io/use-regex": "true",
        "nginx.ingress.kubernetes.io/rewrite-target": "/$2",
        api.AUTH_URL_ANNOTATION: auth_url(access, settings),
        "nginx.ingress.kubernetes.io/auth-signin": (
            f"{settings.base_url}/oauth2/sign_in?rd=$escaped_request_uri"
        ),
        "nginx.ingress.kubernetes.io/auth-response-headers": "Authorization",
        "nginx.ingress.kubernetes.io/proxy-buffer-size": "64k",
    }


def ingress(name: str, namespace: str, access: Access, settings: Settings) -> Manifest:
    """Path ``/<name>(/|$)(.*)`` rewritten to ``/$2``; ``/<name>`` is redirected to ``/<name>/``
    because cellxgene computes its API base from the page URL, which must end with a slash (the
    controller must allow snippet annotations, as the PoC's did)."""
    annotations = ingress_annotations(access, settings)
    annotations["nginx.ingress.kubernetes.io/configuration-snippet"] = (
        # Relative redirect: ingress-nginx drops a non-standard port from absolute ones.
        f"absolute_redirect off; rewrite ^/{name}$ /{name}/ redirect;"
    )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": _metadata(name, namespace, annotations=annotations),
        "spec": _ingress_spec(settings, f"/{name}(/|$)(.*)", "ImplementationSpecific", name),
    }


def _ingress_spec(settings: Settings, path: str, path_type: str, service_name: str) -> dict[str, Any]:
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


def network_policy(name: str, namespace: str, settings: Settings, port: int = VIEWER_PORT) -> Manifest:
    """Only the ingress controller's namespace reaches the viewer, on its port alone, so nobody
    skips the sign-in."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(name, namespace),
        "spec": {
            "podSelector": {"matchLabels": {"instance": name}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [
                        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": settings.ingress_namespace}}}
                    ],
                    "ports": [{"protocol": "TCP", "port": port}],
                }
            ],
        },
    }


def children(
    name: str, namespace: str, spec: api.SingleUserInstanceSpec, access: Access, settings: Settings
) -> list[Manifest]:
    """What a portal-form instance owns, in creation order: the NetworkPolicy first, so the
    viewer never runs, even briefly, reachable around the sign-in. (The embedded form's are
    built by :func:`cxg_on_k8s.plan.plan`.)"""
    return [
        network_policy(name, namespace, settings),
        deployment(name, namespace, spec, settings),
        service(name, namespace),
        ingress(name, namespace, access, settings),
    ]


def instance(
    name: str,
    namespace: str,
    owner: str,
    dataset: str,
    **fields: Any,
) -> Manifest:
    """A portal-form SingleUserInstance, as the CLI and the portal create it."""
    spec = api.SingleUserInstanceSpec(owner=owner, dataset=dataset, **fields)
    return instance_body(name, namespace, spec.model_dump(by_alias=True, exclude_none=True, mode="json"))


def instance_body(name: str, namespace: str, spec: dict[str, Any]) -> Manifest:
    """The SingleUserInstance object around a spec, labelled like its children, so that every
    instance (portal form, embedded form, sample) is selected by ``app=cellxgene`` alike."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": labels(name)},
        "spec": spec,
    }


# --- oauth2-proxy -------------------------------------------------------------------------------


def oauth2_proxy_args(settings: Settings) -> list[str]:
    """oauth2-proxy's command line. Secrets come from env (secretKeyRef), never from args."""
    args = [
        "--provider=keycloak-oidc",
        f"--oidc-issuer-url={settings.keycloak_endpoint.rstrip('/')}/realms/{settings.keycloak_realm}",
        f"--http-address=0.0.0.0:{settings.oauth2_proxy_port}",
        f"--metrics-address=0.0.0.0:{OAUTH2_PROXY_METRICS_PORT}",
        f"--redirect-url={settings.base_url}/oauth2/callback",
        "--code-challenge-method=S256",
        "--email-domain=*",
        "--upstream=static://202",
        "--reverse-proxy=true",
        "--skip-provider-button=true",
        "--set-authorization-header=true",
        # A cookie's Domain carries no port (RFC 6265): with host_name "localhost:8080" the
        # cookie domain is "localhost"; the whitelist keeps the port, oauth2-proxy matches it.
        f"--cookie-domain={urlsplit(settings.base_url).hostname}",
        f"--whitelist-domain={settings.host_name}",
        f"--cookie-secure={'true' if settings.url_scheme == 'https' else 'false'}",
        f"--cookie-expire={settings.sign_in_lifetime}s",
    ]
    if settings.oidc_insecure_skip_verify:
        args.append("--ssl-insecure-skip-verify=true")
    return args


def oauth2_proxy_env(settings: Settings) -> list[dict[str, Any]]:
    def secret(var: str, name: str, key: str) -> dict[str, Any]:
        return {"name": var, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}

    return [
        secret("OAUTH2_PROXY_CLIENT_ID", settings.oauth2_proxy_client_secret, "client-id"),
        secret("OAUTH2_PROXY_CLIENT_SECRET", settings.oauth2_proxy_client_secret, "client-secret"),
        secret("OAUTH2_PROXY_COOKIE_SECRET", settings.oauth2_proxy_cookie_secret, "cookie-secret"),
    ]


def _oauth2_proxy_labels() -> dict[str, str]:
    return {"app": OAUTH2_PROXY_NAME}


def oauth2_proxy(settings: Settings) -> list[Manifest]:
    """Deployment, Service and the ``/oauth2`` Ingress of the shared sign-in proxy."""
    ns = settings.oauth2_proxy_namespace
    meta = {"name": OAUTH2_PROXY_NAME, "namespace": ns, "labels": _oauth2_proxy_labels()}
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": _oauth2_proxy_labels()},
            "template": {
                "metadata": {"labels": _oauth2_proxy_labels()},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": OAUTH2_PROXY_NAME,
                            "image": settings.oauth2_proxy_image,
                            "args": oauth2_proxy_args(settings),
                            "env": oauth2_proxy_env(settings),
                            "ports": [
                                {"name": "http", "containerPort": settings.oauth2_proxy_port},
                                {"name": "metrics", "containerPort": OAUTH2_PROXY_METRICS_PORT},
                            ],
                            "readinessProbe": {"httpGet": {"path": "/ping", "port": "http"}},
                            "livenessProbe": {"httpGet": {"path": "/ping", "port": "http"}},
                            "resources": {
                                "requests": {"cpu": "50m", "memory": "64Mi"},
                                "limits": {"cpu": "500m", "memory": "256Mi"},
                            },
                            "securityContext": {
                                **_container_security(),
                                "runAsUser": 65532,
                            },
                        }
                    ],
                },
            },
        },
    }
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "selector": _oauth2_proxy_labels(),
            "ports": [
                {"name": "http", "port": settings.oauth2_proxy_port, "targetPort": "http"},
                {"name": "metrics", "port": OAUTH2_PROXY_METRICS_PORT, "targetPort": "metrics"},
            ],
        },
    }
    ing = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {**meta, "annotations": {"nginx.ingress.kubernetes.io/proxy-buffer-size": "64k"}},
        "spec": _ingress_spec(settings, "/oauth2", "Prefix", OAUTH2_PROXY_NAME),
    }
    return [deploy, svc, ing]


def oauth2_proxy_cookie_secret(settings: Settings, cookie_secret: str) -> Manifest:
    """The Secret holding the cookie secret the deploy command generated once."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": settings.oauth2_proxy_cookie_secret,
            "namespace": settings.oauth2_proxy_namespace,
            "labels": _oauth2_proxy_labels(),
        },
        "type": "Opaque",
        "stringData": {"cookie-secret": cookie_secret},
    }


def oauth2_proxy_client_secret_manifest(settings: Settings, client_id: str, client_secret: str) -> Manifest:
    """The Secret oauth2-proxy reads its OIDC client from; keycloak-setup writes it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": settings.oauth2_proxy_client_secret,
            "namespace": settings.oauth2_proxy_namespace,
            "labels": _oauth2_proxy_labels(),
        },
        "type": "Opaque",
        "stringData": {"client-id": client_id, "client-secret": client_secret},
    }


# --- operator, RBAC -----------------------------------------------------------------------------


def _binding(
    kind: str, metadata: dict[str, Any], role_kind: str, role_name: str, account: str, namespace: str
) -> Manifest:
    """A (Cluster)RoleBinding of one role to one ServiceAccount: every grant this project makes
    has this one shape, so the operator's and the portal's cannot drift apart."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": metadata,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    }


def operator_rbac(settings: Settings) -> list[Manifest]:
    """Least privilege: exactly the verbs the operator uses, in one namespace, plus listing the
    metrics Service's EndpointSlices. Nothing cluster-wide but the CRD and Namespace reads.

    Instances: kopf lists and watches them and patches its annotations and the status, the culler
    deletes. Children are read (whose are they? no takeover) and created when absent; garbage
    collection deletes them. Pods
    are watched for their readiness. Events are created. kopf's KopfPeering object is created at
    start-up when absent, then listed, watched and patched (keep-alives) by kopf, and read by the
    culling loop, which kopf's pause does not stop."""
    ns = settings.namespace
    meta = {"name": OPERATOR_NAME, "namespace": ns, "labels": {"app": OPERATOR_NAME}}
    rules = [
        {"apiGroups": [api.GROUP], "resources": [api.PLURAL], "verbs": ["list", "watch", "patch", "delete"]},
        {"apiGroups": [api.GROUP], "resources": [f"{api.PLURAL}/status"], "verbs": ["patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "create"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "create"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "networkpolicies"], "verbs": ["get", "create"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": [KOPF_GROUP], "resources": [KOPF_PEERING_PLURAL], "verbs": ["get", "list", "watch", "patch", "create"]},
    ]  # fmt: skip
    objects: list[Manifest] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta, "rules": rules},
        _binding("RoleBinding", meta, "Role", OPERATOR_NAME, OPERATOR_NAME, ns),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            # Named per namespace: two installs (say cellxgene and testing) must not share one.
            "metadata": {"name": f"{OPERATOR_NAME}-{ns}", "labels": {"app": OPERATOR_NAME}},
            "rules": [
                # kopf lists and watches CRDs and namespaces to know what it may watch; the operator
                # reads kopf's peering CRD at start-up.
                {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
            ],
        },  # fmt: skip
        _binding(
            "ClusterRoleBinding",
            {"name": f"{OPERATOR_NAME}-{ns}", "labels": {"app": OPERATOR_NAME}},
            "ClusterRole",
            f"{OPERATOR_NAME}-{ns}",
            OPERATOR_NAME,
            ns,
        ),
    ]
    metrics_ns, _, _ = settings.metrics_service.partition("/")
    if metrics_ns:
        metrics_meta = {"name": f"{OPERATOR_NAME}-metrics", "namespace": metrics_ns, "labels": {"app": OPERATOR_NAME}}
        objects += [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": metrics_meta,
                "rules": [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]}],
            },
            _binding("RoleBinding", metrics_meta, "Role", f"{OPERATOR_NAME}-metrics", OPERATOR_NAME, ns),
        ]  # fmt: skip
    return objects


def portal_rbac(settings: Settings) -> list[Manifest]:
    """The portal's account may manage SingleUserInstances and nothing else."""
    ns = settings.namespace
    meta = {"name": PORTAL_ACCOUNT, "namespace": ns, "labels": {"app": APP_LABEL}}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [
                {
                    "apiGroups": [api.GROUP],
                    "resources": [api.PLURAL],
                    "verbs": ["get", "list", "watch", "create", "delete"],
                }
            ],
        },
        _binding("RoleBinding", meta, "Role", PORTAL_ACCOUNT, PORTAL_ACCOUNT, ns),
        portal_token_secret(settings),
    ]


PORTAL_TOKEN_SECRET = f"{PORTAL_ACCOUNT}-token"


def portal_token_secret(settings: Settings) -> Manifest:
    """A long-lived token of the portal's account, which the controller-manager fills in: the
    proof of concept's clients are configured with a static ``ACCOUNT_TOKEN`` read by
    ``kubectl describe secrets omicsdm-token``, and a ``kubectl create token`` one expires within
    hours. The token never expires; it stops working when this Secret is deleted (rotation:
    delete it, apply it again, give the portal the new token). It grants only the portal's Role."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/service-account-token",
        "metadata": {
            "name": PORTAL_TOKEN_SECRET,
            "namespace": settings.namespace,
            "labels": {"app": APP_LABEL},
            "annotations": {"kubernetes.io/service-account.name": PORTAL_ACCOUNT},
        },
    }


def operator_deployment(settings: Settings, image: str) -> Manifest:
    """The operator itself: one replica, non-root, with a liveness probe and bounded resources.

    kopf peering (the KopfPeering object :data:`PEERING_NAME`) keeps a second operator for the
    namespace (a laptop's, or a stray replica) paused while this one runs; POD_ID makes the pod's
    name its identity there, so ``kubectl get kopfpeering -o yaml`` says which pod holds it."""
    env: list[dict[str, Any]] = [
        {"name": name, "value": value} for name, value in settings.as_env(changed_only=True).items()
    ]
    env.append({"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": OPERATOR_NAME, "namespace": settings.namespace, "labels": {"app": OPERATOR_NAME}},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app": OPERATOR_NAME}},
            "template": {
                "metadata": {"labels": {"app": OPERATOR_NAME}},
                "spec": {
                    "serviceAccountName": OPERATOR_NAME,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": NONROOT_UID, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "operator",
                            "image": image,
                            "imagePullPolicy": settings.image_pull_policy,
                            "args": ["operator", "--liveness", "http://0.0.0.0:8080/healthz"],
                            "env": env,
                            "ports": [{"name": "probe", "containerPort": 8080}],
                            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "probe"}, "periodSeconds": 20},
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
                            "securityContext": _container_security(),
                        }
                    ],
                },
            },
        },
    }  # fmt: skip


# --- the install's other objects -----------------------------------------------------------------


def namespace(name: str) -> Manifest:
    """A namespace of this project (``cellxgene`` for instances, ``testing`` for tests). The API
    server enforces the restricted Pod Security Standard on every pod in it: viewer and operator
    pods are rendered to meet it, and an embedded-form pod is hardened to meet it
    (``policy.harden_pod``), so the PoC's clients still start while nothing a client writes can
    run a pod outside that box, even past the operator."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {
                "app": APP_LABEL,
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/warn": "restricted",
                "pod-security.kubernetes.io/audit": "restricted",
            },
        },
    }


def aws_secret_template(namespace: str, settings: Settings) -> Manifest:
    """The Secret the viewer pods read S3 credentials from, with placeholder values: a template
    to fill in, never to apply as it is (it would replace real credentials with REPLACE_ME)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": settings.aws_secret, "namespace": namespace, "labels": {"app": APP_LABEL}},
        "type": "Opaque",
        "stringData": {
            "AWS_ACCESS_KEY_ID": PLACEHOLDER,
            "AWS_SECRET_ACCESS_KEY": PLACEHOLDER,
            # Optional; e.g. eu-west-1. Delete the line to use the AWS default.
            "AWS_DEFAULT_REGION": PLACEHOLDER,
        },
    }


def ingress_metrics_service(settings: Settings) -> Manifest:
    """A Service in front of the ingress-nginx controllers' Prometheus port, so that the operator
    finds every replica (its EndpointSlices) and a port-forward reaches one:
    ``kubectl -n ingress-nginx port-forward svc/metrics 10254:80``. Its namespace/name is the
    setting metrics_service (default ``ingress-nginx/metrics``); when that is empty, ``metrics``
    in ingress_namespace."""
    ns, _, name = settings.metrics_service.partition("/")
    if not name:
        ns, name = settings.ingress_namespace, "metrics"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": OPERATOR_NAME}},
        "spec": {
            "type": "ClusterIP",
            "selector": dict(INGRESS_CONTROLLER_LABELS),
            "ports": [{"name": "metrics", "protocol": "TCP", "port": 80, "targetPort": INGRESS_METRICS_PORT}],
        },
    }


def kopf_peering_crd() -> Manifest:
    """kopf's namespaced peering CRD (``KopfPeering``, kopf.dev/v1), as kopf's own peering.yaml
    defines it: a free-form status where every operator writes its keep-alive and priority."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": KOPF_PEERING_CRD_NAME},
        "spec": {
            "scope": "Namespaced",
            "group": KOPF_GROUP,
            "names": {"kind": "KopfPeering", "plural": KOPF_PEERING_PLURAL, "singular": "kopfpeering"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                            },
                        }
                    },
                }
            ],
        },
    }


def kopf_peering(settings: Settings) -> Manifest:
    """The KopfPeering object the operators of the namespace meet in; the operator creates it at
    start-up when the CRD exists and it does not."""
    return {
        "apiVersion": f"{KOPF_GROUP}/v1",
        "kind": "KopfPeering",
        "metadata": {"name": PEERING_NAME, "namespace": settings.namespace, "labels": {"app": OPERATOR_NAME}},
    }


# --- sample instances (manifests/templates/) -------------------------------------------------------


SAMPLE_OWNER = "alice@example.org"
SAMPLE_DATASET = "s3://cellxgene/datasets/pbmc3k.h5ad"
POC_AWS_CLI_IMAGE = "aws-cli:1.46.3"


def sample_portal_instance(settings: Settings, name: str = "cellxgene-example-portal") -> Manifest:
    """What the portal creates: the owner and the dataset; the operator renders the rest."""
    return instance(name, settings.namespace, SAMPLE_OWNER, SAMPLE_DATASET, lifespan=3600, title="PBMC 3k")


def poc_embedded_spec(name: str, namespace: str, owner: str, dataset_id: str, settings: Settings, lifespan: int = 3600) -> dict[str, Any]:
    """The embedded form as the proof of concept's client rendered it: an aws-cli init container
    syncs ``s3://<bucket>/cxg_on_k8/<user>/<dataset>/`` to /data, cellxgene serves it on 5005, a
    preStop hook uploads the annotations and gene sets back; the Ingress carries the sign-in
    annotations. The operator relabels the three so that each instance selects only its own pods."""
    prefix = f"s3://{settings.s3_bucket}/{settings.user_data_prefix}/{owner}/{dataset_id}/"

    def poc_labels() -> dict[str, str]:  # the PoC's one shared label (fresh dicts: no YAML anchors)
        return {"app": APP_LABEL}

    def data() -> list[dict[str, str]]:
        return [{"name": "data", "mountPath": DATA_DIR}]

    upload = (
        f"aws s3 cp {ANNOTATIONS_FILE} {prefix}annotations.csv; "
        f"aws s3 cp {GENE_SETS_FILE} {prefix}gene_sets.csv"
    )
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": poc_labels()},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": poc_labels()},
            "template": {
                "metadata": {"labels": poc_labels()},
                "spec": {
                    "initContainers": [
                        {
                            "name": "fetch",
                            "image": POC_AWS_CLI_IMAGE,
                            "command": ["aws", "s3", "sync", prefix, f"{DATA_DIR}/"],
                            "env": _aws_env(settings),
                            "volumeMounts": data(),
                        }
                    ],
                    "containers": [
                        {
                            "name": "cellxgene",
                            "image": settings.cellxgene_image,
                            "command": [
                                "cellxgene", "launch", "--verbose", "-p", str(VIEWER_PORT), "--host", "0.0.0.0",
                                f"{DATA_DIR}/{dataset_id}", "--annotations-file", ANNOTATIONS_FILE,
                                "--gene-sets-file", GENE_SETS_FILE,
                            ],  # fmt: skip
                            "ports": [{"containerPort": VIEWER_PORT}],
                            "env": _aws_env(settings),
                            "volumeMounts": data(),
                            "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", upload]}}},
                        }
                    ],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": poc_labels()},
        "spec": {"selector": poc_labels(), "ports": [{"port": VIEWER_PORT, "targetPort": VIEWER_PORT}]},
    }
    ingress_doc = ingress(name, namespace, owner_access(owner, None, "spec.owner"), settings)
    ingress_doc["metadata"]["labels"] = poc_labels()
    ingress_doc["spec"]["rules"][0]["http"]["paths"][0]["backend"] = {
        "service": {"name": name, "port": {"number": VIEWER_PORT}}
    }
    return {"lifespan": lifespan, "deployment": deployment, "service": service, "ingress": ingress_doc}


def sample_embedded_instance(settings: Settings, name: str = "cellxgene-example-embedded") -> Manifest:
    """An embedded-form instance as the proof of concept's clients created them."""
    spec = poc_embedded_spec(name, settings.namespace, SAMPLE_OWNER, "pbmc3k.h5ad", settings)
    return instance_body(name, settings.namespace, spec)
