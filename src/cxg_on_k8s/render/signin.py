"""The sign-in sidecar of a viewer pod: oauth2-proxy in reverse-proxy mode in front of the viewer.

With every edge but ingress-nginx the pod signs its users in itself, so the edge needs nothing
but a plain route: the sidecar lets in the owner and ``allowedGroups`` alone, keeps its session
in a cookie of its own (path ``/<name>``, a key generated in the pod), strips the ``/<name>/``
prefix on the way to the viewer and counts every answer by status for the operator's activity.
"""

from __future__ import annotations

import json
from typing import Any

from cxg_on_k8s.api.access import Access
from cxg_on_k8s.render.security import container_security
from cxg_on_k8s.settings import OAUTH2_PROXY_NAME, Settings

SIGNIN_CONTAINER = "signin"
# oauth2-proxy's own default port; the Service and every route target it by the name below.
SIGNIN_PORT = 4180
SIGNIN_PORT_NAME = "signin"
SIGNIN_METRICS_PORT = 44180
SIGNIN_METRICS_PORT_NAME = "signin-metrics"
# Only the request counters: the sidecar's full page is mostly Go runtime series.
SIGNIN_METRICS_PATH = "/metrics?name[]=oauth2_proxy_requests_total"
SETUP_CONTAINER = "signin-setup"
FILES_VOLUME = "cxg-signin"
FILES_DIR = "/cxg-signin"
CLIENT_VOLUME = "cxg-signin-client"
CLIENT_DIR = "/cxg-signin-client"
# The files signin-setup writes (FILES_ENV names them and their text; the cookie secret it makes).
FILES_ENV = "CXG_SIGNIN_FILES"
ALPHA_CONFIG_FILE = "alpha-config.json"
EMAILS_FILE = "emails"
COOKIE_SECRET_FILE = "cookie-secret"
COOKIE_NAME = "_cxg_signin"
# Names a client's embedded pod template may not use: the operator adds these to every pod.
RESERVED_CONTAINERS = (SIGNIN_CONTAINER, SETUP_CONTAINER)
RESERVED_VOLUMES = (FILES_VOLUME, CLIENT_VOLUME)
RESERVED_PORTS = (SIGNIN_PORT, SIGNIN_METRICS_PORT)
# A cellxgene API call on a large dataset (differential expression) can run for minutes.
UPSTREAM_TIMEOUT = "300s"
SIGNIN_UID = 65532  # the oauth2-proxy image's nonroot user


def issuer_url(settings: Settings) -> str:
    return f"{settings.keycloak_endpoint.rstrip('/')}/realms/{settings.keycloak_realm}"


def alpha_config(name: str, viewer_port: int, access: Access, settings: Settings) -> dict[str, Any]:
    """oauth2-proxy's alpha configuration (the only form whose upstream can strip a prefix):
    ``/<name>/...`` goes to ``/...`` on the viewer, and ``/<name>`` is answered with a redirect to
    ``/<name>/`` by oauth2-proxy's trailing-slash rule, which cellxgene needs (it computes its API
    base from the page's URL). Groups are a provider field here; e-mails are a file (see
    :func:`files`). Written as JSON, which is YAML, so no value can change the structure."""
    issuer = issuer_url(settings)
    provider: dict[str, Any] = {
        "id": "keycloak",
        "provider": "keycloak-oidc",
        "clientID": settings.oidc_client_id,
        "clientSecretFile": f"{CLIENT_DIR}/client-secret",
        "code_challenge_method": "S256",
        # Not oauth2-proxy's default with allowedGroups, which adds a "groups" scope that
        # Keycloak has not got: keycloak-setup's mappers put the groups claim in anyway.
        "scope": "openid email profile",
        # Keycloak's endpoints are fixed by its realm: with them given, the sidecar starts without
        # asking Keycloak (no discovery call per pod; a viewer starts while Keycloak is down).
        "loginURL": f"{issuer}/protocol/openid-connect/auth",
        "redeemURL": f"{issuer}/protocol/openid-connect/token",
        "oidcConfig": {
            "issuerURL": issuer,
            "skipDiscovery": True,
            "jwksURL": f"{issuer}/protocol/openid-connect/certs",
            "emailClaim": "email",
            "groupsClaim": "groups",
            "audienceClaims": ["aud"],
        },
    }
    if access.groups:
        provider["allowedGroups"] = list(access.groups)
    return {
        "server": {"bindAddress": f"0.0.0.0:{SIGNIN_PORT}"},
        "metricsServer": {"bindAddress": f"0.0.0.0:{SIGNIN_METRICS_PORT}"},
        "upstreamConfig": {
            "upstreams": [
                {
                    "id": "viewer",
                    "path": f"^/{name}/(.*)$",
                    "rewriteTarget": "/$1",
                    "uri": f"http://127.0.0.1:{viewer_port}",
                    "passHostHeader": True,
                    "proxyWebSockets": True,
                    "timeout": UPSTREAM_TIMEOUT,
                }
            ]
        },
        "providers": [provider],
    }


def files(name: str, viewer_port: int, access: Access, settings: Settings) -> dict[str, str]:
    """What signin-setup writes besides the cookie secret: the alpha configuration and, when the
    instance names e-mails, the list oauth2-proxy checks them against (it has no flag for one)."""
    written = {ALPHA_CONFIG_FILE: json.dumps(alpha_config(name, viewer_port, access, settings), sort_keys=True)}
    if access.emails:
        # One per line: an entry with whitespace (a client's auth-url may decode to one) matched
        # nobody in oauth2-proxy's auth-url check and would be two lines here, so it is left out.
        kept = [email for email in access.emails if not any(c.isspace() for c in email)]
        written[EMAILS_FILE] = "".join(f"{email}\n" for email in kept)
    return written


def signin_args(name: str, access: Access, settings: Settings) -> list[str]:
    """The flags that stay flags beside the alpha configuration. The cookie is the instance's
    own: its path is ``/<name>`` and its key was made in this pod, so no other viewer can read
    or mint it."""
    args = [
        f"--alpha-config={FILES_DIR}/{ALPHA_CONFIG_FILE}",
        f"--cookie-secret-file={FILES_DIR}/{COOKIE_SECRET_FILE}",
        f"--cookie-name={COOKIE_NAME}",
        # /<name>, not /<name>/: a browser sends it with /<name> too (no sign-in loop there), and
        # path matching stops at a "/", so /<name>x never gets it.
        f"--cookie-path=/{name}",
        f"--cookie-secure={'true' if settings.url_scheme == 'https' else 'false'}",
        f"--cookie-expire={settings.sign_in_lifetime}s",
        f"--proxy-prefix=/{name}/oauth2",
        f"--redirect-url={settings.base_url}/{name}/oauth2/callback",
        "--reverse-proxy=true",
        "--skip-provider-button=true",
        "--silence-ping-logging=true",
    ]
    if access.emails:
        args.append(f"--authenticated-emails-file={FILES_DIR}/{EMAILS_FILE}")
    else:
        args.append("--email-domain=*")
    if settings.oidc_insecure_skip_verify:
        args.append("--ssl-insecure-skip-verify=true")
    return args


def setup_container(name: str, viewer_port: int, access: Access, settings: Settings) -> dict[str, Any]:
    """The pod's first init container: writes the sidecar's files into a memory volume, the
    cookie secret among them, made here and never stored anywhere else."""
    return {
        "name": SETUP_CONTAINER,
        "image": settings.userdata_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "cxg_on_k8s.signin_files", FILES_DIR],
        # "$$" because the kubelet expands $(VAR) in values and reads "$$" as "$".
        "env": [
            {"name": FILES_ENV, "value": json.dumps(files(name, viewer_port, access, settings)).replace("$", "$$")}
        ],
        "volumeMounts": [{"name": FILES_VOLUME, "mountPath": FILES_DIR}],
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"cpu": "500m", "memory": "64Mi"},
        },
        "securityContext": {**container_security(), "runAsUser": SIGNIN_UID, "runAsGroup": SIGNIN_UID},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def sidecar(name: str, access: Access, settings: Settings) -> dict[str, Any]:
    """oauth2-proxy in front of the viewer; ready once it answers its own /ready."""
    return {
        "name": SIGNIN_CONTAINER,
        "image": settings.oauth2_proxy_image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": signin_args(name, access, settings),
        "ports": [
            {"name": SIGNIN_PORT_NAME, "containerPort": SIGNIN_PORT},
            {"name": SIGNIN_METRICS_PORT_NAME, "containerPort": SIGNIN_METRICS_PORT},
        ],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": SIGNIN_PORT_NAME}, "periodSeconds": 10},
        "resources": {
            "requests": {"cpu": "10m", "memory": "32Mi"},
            "limits": {"cpu": "500m", "memory": "128Mi"},
        },
        "volumeMounts": [
            {"name": FILES_VOLUME, "mountPath": FILES_DIR, "readOnly": True},
            {"name": CLIENT_VOLUME, "mountPath": CLIENT_DIR, "readOnly": True},
        ],
        "securityContext": {**container_security(), "runAsUser": SIGNIN_UID, "runAsGroup": SIGNIN_UID},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def volumes(settings: Settings) -> list[dict[str, Any]]:
    """The sidecar's files (memory-backed: the cookie secret never touches the node's disk) and
    the OIDC client's secret, which only the sidecar mounts."""
    return [
        {"name": FILES_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        {
            "name": CLIENT_VOLUME,
            "secret": {
                "secretName": settings.oauth2_proxy_client_secret,
                "items": [{"key": "client-secret", "path": "client-secret"}],
            },
        },
    ]


def add_to_pod(pod: dict[str, Any], name: str, viewer_port: int, access: Access, settings: Settings) -> None:
    """Put the sign-in into a pod spec: signin-setup runs first, the sidecar beside the viewer."""
    pod["initContainers"] = [setup_container(name, viewer_port, access, settings), *pod.get("initContainers", [])]
    pod["containers"] = [*pod.get("containers", []), sidecar(name, access, settings)]
    pod["volumes"] = [*pod.get("volumes", []), *volumes(settings)]


def conflicts(pod: dict[str, Any], where: str) -> list[str]:
    """What of a client's pod spec would collide with the sign-in the operator adds: a container
    or volume of the same name (the API server refuses the Deployment) or a container port of the
    sidecar (the sidecar could not listen, or the client would answer in its place)."""
    found: list[str] = []
    for group in ("initContainers", "containers"):
        for i, container in enumerate(pod.get(group) or []):
            if not isinstance(container, dict):
                continue
            if container.get("name") in RESERVED_CONTAINERS:
                found.append(
                    f"{where}.{group}[{i}].name is {container['name']!r}, the name of a container the "
                    f"operator adds ({', '.join(RESERVED_CONTAINERS)}); rename it"
                )
            for j, port in enumerate(container.get("ports") or []):
                if isinstance(port, dict) and port.get("containerPort") in RESERVED_PORTS:
                    found.append(
                        f"{where}.{group}[{i}].ports[{j}].containerPort is {port['containerPort']}, a port "
                        f"of the sign-in sidecar ({', '.join(map(str, RESERVED_PORTS))}); use another port"
                    )
    for i, volume in enumerate(pod.get("volumes") or []):
        if isinstance(volume, dict) and volume.get("name") in RESERVED_VOLUMES:
            found.append(
                f"{where}.volumes[{i}].name is {volume['name']!r}, the name of a volume the operator "
                f"adds ({', '.join(RESERVED_VOLUMES)}); rename it"
            )
    return found


def client_secret(settings: Settings, client_id: str, secret: str) -> dict[str, Any]:
    """The Secret that holds the OIDC client (keycloak-setup writes it), beside the viewers: a
    pod mounts Secrets of its own namespace only."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": settings.oauth2_proxy_client_secret,
            "namespace": settings.namespace,
            "labels": {"app": OAUTH2_PROXY_NAME},
        },
        "type": "Opaque",
        "stringData": {"client-id": client_id, "client-secret": secret},
    }
