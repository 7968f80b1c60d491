"""What an installation consists of besides the CRD: the operator's RBAC and Deployment, the
portal's account, the namespace, templates of the Secrets a user fills in, and kopf's peering.
``cxg-k8s install``, ``manifests/`` and the Helm chart are all made from these.
"""

from __future__ import annotations

from typing import Any

from cxg_on_k8s.api import model
from cxg_on_k8s.render.security import NONROOT_UID, container_security
from cxg_on_k8s.render.viewer import APP_LABEL, Manifest
from cxg_on_k8s.settings import Settings

OPERATOR_NAME = "sui-operator"


PORTAL_ACCOUNT = "omicsdm"


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
        {"apiGroups": [model.GROUP], "resources": [model.PLURAL], "verbs": ["list", "watch", "patch", "delete"]},
        {"apiGroups": [model.GROUP], "resources": [f"{model.PLURAL}/status"], "verbs": ["patch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "create"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "create"]},
        # viewer_workload pod: the viewer pods are the instances' own children, made again (and
        # an evicted one deleted first) by the operator
        {
            "apiGroups": [""],
            "resources": ["pods"],
            "verbs": ["get", "list", "watch", "create", "delete"]
            if settings.viewer_workload == "pod"
            else ["list", "watch"],
        },
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "create"]},
        # the instance's route: an HTTPRoute with edge gateway, else an Ingress
        (
            {"apiGroups": ["gateway.networking.k8s.io"], "resources": ["httproutes"], "verbs": ["get", "create"]}
            if settings.edge == "gateway"
            else {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses"], "verbs": ["get", "create"]}
        ),
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
        {
            "apiGroups": [KOPF_GROUP],
            "resources": [KOPF_PEERING_PLURAL],
            "verbs": ["get", "list", "watch", "patch", "create"],
        },
    ]
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
                {
                    "apiGroups": ["apiextensions.k8s.io"],
                    "resources": ["customresourcedefinitions"],
                    "verbs": ["get", "list", "watch"],
                },
                {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
            ],
        },
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
    if uses_ingress_nginx_metrics(settings) and metrics_ns:
        metrics_meta = {"name": f"{OPERATOR_NAME}-metrics", "namespace": metrics_ns, "labels": {"app": OPERATOR_NAME}}
        objects += [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": metrics_meta,
                "rules": [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]}],
            },
            _binding("RoleBinding", metrics_meta, "Role", f"{OPERATOR_NAME}-metrics", OPERATOR_NAME, ns),
        ]
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
                    "apiGroups": [model.GROUP],
                    "resources": [model.PLURAL],
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
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": NONROOT_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "operator",
                            "image": image,
                            "imagePullPolicy": settings.image_pull_policy,
                            "args": ["operator", "--liveness", "http://0.0.0.0:8080/healthz"],
                            "env": env,
                            "ports": [{"name": "probe", "containerPort": 8080}],
                            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "probe"}, "periodSeconds": 20},
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "128Mi"},
                                "limits": {"cpu": "1", "memory": "512Mi"},
                            },
                            "securityContext": container_security(),
                        }
                    ],
                },
            },
        },
    }


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


def uses_ingress_nginx_metrics(settings: Settings) -> bool:
    """Whether the installation reads activity from ingress-nginx through a metrics Service."""
    return settings.activity == "ingress-nginx" and bool(settings.metrics_service)


def ingress_metrics_service(settings: Settings) -> Manifest:
    """A Service in front of the ingress-nginx controllers' Prometheus port (activity
    ingress-nginx), so that the operator finds every replica (its EndpointSlices) and a
    port-forward reaches one: ``kubectl -n ingress-nginx port-forward svc/metrics 10254:80``. Its
    namespace/name is the setting metrics_service (default ``ingress-nginx/metrics``)."""
    ns, _, name = (settings.metrics_service or "ingress-nginx/metrics").partition("/")
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
                            "properties": {"status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
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
