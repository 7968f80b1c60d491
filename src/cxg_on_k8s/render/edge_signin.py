"""The shared oauth2-proxy that ingress-nginx asks, through ``auth-url``, whether a request may pass."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from cxg_on_k8s.render.security import container_security
from cxg_on_k8s.render.viewer import Manifest, ingress_spec
from cxg_on_k8s.settings import OAUTH2_PROXY_NAME, Settings

OAUTH2_PROXY_METRICS_PORT = 9091


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
                                **container_security(),
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
        "spec": ingress_spec(settings, "/oauth2", "Prefix", OAUTH2_PROXY_NAME),
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
