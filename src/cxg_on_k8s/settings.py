"""The one home of configuration: every option, its default and why, read from the environment.

Each option is read from ``CXG_<NAME>`` (upper case). The proof of concept's variable names keep
working where it had one (``K8_SUI_OP_TICK``, ``K8_SUI_OP_TO_UNVIS``, ``HOST_NAME``,
``KEYCLOAK_ENDPOINT``, ``KEYCLOAK_REALM``), so existing ``.env`` files need no edit. A value that
does not parse is an error naming the variable, never a silent fallback to the default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "CXG_"

# Variables of the proof of concept that still set an option, mapped to the option's name.
LEGACY_ENV = {
    "K8_SUI_OP_TICK": "tick",
    "K8_SUI_OP_TO_UNVIS": "unvisited_timeout",
    "HOST_NAME": "host_name",
    "KEYCLOAK_ENDPOINT": "keycloak_endpoint",
    "KEYCLOAK_REALM": "keycloak_realm",
}

IN_CLUSTER_METRICS_URL = "http://metrics.ingress-nginx.svc.cluster.local/metrics"
LOCAL_METRICS_URL = "http://localhost:10254/metrics"
OAUTH2_PROXY_NAME = "oauth2-proxy"  # the label of the client Secret (the PoC's proxy's name)
# This package's image: the operator runs it, and its data containers are it too by default.
DEFAULT_OPERATOR_IMAGE = "cxg-on-k8s:0.1.0"
# kopf peering priorities: the higher one works, the lower one pauses.
IN_CLUSTER_PEERING_PRIORITY = 100
LOCAL_PEERING_PRIORITY = 0


def _in_cluster(environ: Mapping[str, str] | None) -> bool:
    """Whether this process runs in a pod (the kubelet sets KUBERNETES_SERVICE_HOST there), which
    decides the defaults that differ between a cluster and a laptop; ``environ`` default: os.environ."""
    env = os.environ if environ is None else environ
    return bool(env.get("KUBERNETES_SERVICE_HOST"))


class SettingsError(ValueError):
    """A setting from the environment is malformed; the message names the variable and the fix."""


class Settings(BaseModel):
    """Operator, renderer and CLI configuration. Field descriptions are the documentation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- where instances live and how they are reached -------------------------------------
    namespace: str = Field("cellxgene", description="Namespace of the SingleUserInstances and their children.")
    host_name: str = Field(
        "localhost",
        description="Public host name of the ingress; instance URLs are <scheme>://<host_name>/<name>/.",
    )
    url_scheme: str = Field(
        "https",
        pattern=r"^https?$",
        description="Scheme of instance URLs and of the sign-in redirect (http only for local tests).",
    )
    edge: str = Field(
        "ingress",
        pattern=r"^(ingress|gateway)$",
        description="The object that routes /<name> to a viewer, with no annotation (each viewer "
        "pod signs its users in itself, in an oauth2-proxy sidecar): ingress, an Ingress of "
        "ingress_class with one Prefix path; gateway, an HTTPRoute (Gateway API v1) attached to "
        "the Gateway named by gateway. Default ingress: every cluster with an Ingress controller "
        "serves it, ingress-nginx of an existing installation included, with no CRDs to add.",
    )
    viewer_workload: str = Field(
        "deployment",
        pattern=r"^(deployment|pod)$",
        description="What runs a portal-form viewer: deployment, a Deployment (its ReplicaSet "
        "makes the pod and makes it again if it goes); pod, a Pod the instance owns, which the "
        "operator makes again if it is deleted or evicted, as KubeSpawner does: no Deployment and "
        "ReplicaSet per viewer, which bench/floor.py measured at 2.2x the time to a thousand ready "
        "viewers. The embedded form always has its Deployment (its clients wait on it).",
    )
    gateway: str = Field(
        "cellxgene/cellxgene",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="namespace/name of the Gateway that every HTTPRoute attaches to (edge "
        "gateway). The default is a Gateway beside the instances, which accepts their routes "
        "without any allowedRoutes setting.",
    )
    ingress_class: str = Field(
        "nginx", description="IngressClass of every instance Ingress (edge ingress); nginx, as in the PoC."
    )

    # --- culling ---------------------------------------------------------------------------
    tick: float = Field(60.0, gt=0, description="Seconds between culling passes (PoC: K8_SUI_OP_TICK).")
    unvisited_timeout: int = Field(
        300,
        ge=0,
        description="Default seconds an instance may stay unvisited once Ready (the clock starts "
        "at status.readyAt, not at creation) before it is culled; 0 = never (PoC: "
        "K8_SUI_OP_TO_UNVIS). spec.unvisitedTimeout overrides it.",
    )
    idle_timeout: int = Field(
        3600,
        ge=0,
        description="Default seconds without user requests before an instance is culled; 0 = "
        "never. spec.idleTimeout overrides it.",
    )
    default_lifespan: int = Field(
        28800, ge=60, description="Lifespan in seconds of an instance whose spec gives none (8 h)."
    )
    max_lifespan: int = Field(
        604800,
        ge=60,
        description="Largest spec.lifespan accepted (7 days); longer requests are refused in "
        "status and an Event, not silently shortened.",
    )
    metrics_url: str = Field(
        "",
        description="ingress-nginx metrics URL (activity ingress-nginx). Empty: the in-cluster Service "
        f"({IN_CLUSTER_METRICS_URL}) when running in a pod, else {LOCAL_METRICS_URL}.",
    )
    metrics_service: str = Field(
        "ingress-nginx/metrics",
        description="namespace/name of the Service in front of the controller's metrics; when "
        "its EndpointSlices list endpoints, every one is scraped and the counters added up "
        "(through the Service you see one replica at a time). Empty: scrape metrics_url only.",
    )
    metrics_timeout: float = Field(
        5.0, gt=0, description="Seconds to wait for one metrics endpoint before the scrape fails."
    )
    activity: str = Field(
        "sidecar",
        pattern=r"^(sidecar|ingress-nginx)$",
        description="Where activity is read: sidecar, each viewer pod's sign-in sidecar (its "
        "request counters), whatever the edge; ingress-nginx, that controller's metrics page "
        "(metrics_url, metrics_service), for an installation that still runs it.",
    )
    activity_concurrency: int = Field(
        64,
        ge=1,
        description="Viewer pods whose sign-in sidecar is read at once per tick (activity "
        "sidecar); each read waits at most metrics_timeout seconds.",
    )
    delete_rate: float = Field(
        20.0,
        gt=0,
        description="Most instance deletions per second, so a mass expiry does not flood the API server.",
    )
    operator_metrics_port: int = Field(
        9090,
        ge=0,
        le=65535,
        description="Port of the operator's Prometheus /metrics (e.g. cxg_metrics_scrape_failures_total); 0 = off.",
    )
    peering_priority: int | None = Field(
        None,
        description="kopf peering priority of this operator: of two operators for one namespace "
        "only the higher-priority one works, the other pauses until it is gone (two with the same "
        "priority both pause). Empty: 100 when running in a pod (KUBERNETES_SERVICE_HOST set), "
        "else 0, so an in-cluster operator has priority over one run from a laptop.",
    )
    termination_grace_period: int = Field(
        120,
        ge=10,
        description="Seconds a viewer pod gets to save the user's data after it is told to stop.",
    )

    # --- the viewer pod --------------------------------------------------------------------
    cellxgene_image: str = Field(
        "cellxgene:1.3.0-slim", description="Image of the cellxgene flavor (docker/cellxgene)."
    )
    cellxgene_vip_image: str = Field(
        "cellxgene-vip:1.3.0-c022834", description="Image of the cellxgene-vip flavor (docker/cellxgene-vip)."
    )
    userdata_image: str = Field(
        DEFAULT_OPERATOR_IMAGE,
        description="Image that fetches and saves user data (this package; docker/operator).",
    )
    image_pull_policy: str = Field(
        "IfNotPresent", description="imagePullPolicy of every container (IfNotPresent suits minikube image load)."
    )
    default_cpu: str = Field("1", description="CPU request and limit when the spec gives none.")
    default_memory: str = Field("4Gi", description="Memory request and limit when the spec gives none.")
    max_cpu: str = Field("4", description="Largest CPU a spec may ask for.")
    max_memory: str = Field("32Gi", description="Largest memory a spec may ask for.")
    data_volume_limit: str = Field(
        "20Gi",
        description="sizeLimit of every emptyDir of a viewer pod (the kubelet evicts a pod that "
        "writes more, so one viewer cannot fill its node's disk); also the largest one an embedded "
        "manifest may ask for.",
    )
    max_dataset_size: str = Field(
        "16Gi",
        description="Largest dataset the fetch step downloads (https or S3); a larger one fails the "
        "instance with its size. Keep it below data_volume_limit.",
    )
    require_owner: bool = Field(
        True,
        description="Refuse an embedded-form instance that names nobody (no spec.owner, no user "
        "label, no allowed_emails/allowed_groups in its auth-url). Off: it is accepted as the proof "
        "of concept accepted it, open to every signed-in user, with a Warning Event and the "
        "condition Restricted=False. On by default: in a shared portal such a viewer shows one "
        "user's data to everyone in the realm.",
    )

    # --- user data -------------------------------------------------------------------------
    s3_bucket: str = Field(
        "cellxgene",
        description="Bucket of the default userData prefix s3://<bucket>/<prefix>/<owner>/<dataset id>-<hash>/.",
    )
    user_data_prefix: str = Field("cxg_on_k8", description="Key prefix of users' saved data (PoC: cxg_on_k8).")
    s3_endpoint_url: str = Field("", description="S3 endpoint for a non-AWS store (MinIO, moto); empty = AWS.")
    aws_secret: str = Field(
        "aws-cred-secret",
        description="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and optional "
        "AWS_DEFAULT_REGION) for the data containers.",
    )
    save_interval: int = Field(
        120, ge=10, description="Seconds between periodic saves of the user's annotations and gene sets."
    )

    # --- sign-in -----------------------------------------------------------------------------
    keycloak_endpoint: str = Field("http://localhost:8080", description="Keycloak base URL (PoC: KEYCLOAK_ENDPOINT).")
    keycloak_realm: str = Field("cellxgene", description="Keycloak realm (PoC: KEYCLOAK_REALM).")
    oidc_client_id: str = Field("cellxgene", description="OIDC client id oauth2-proxy signs in with.")
    oauth2_proxy_image: str = Field(
        "quay.io/oauth2-proxy/oauth2-proxy:v7.15.6", description="Image of every viewer's sign-in sidecar."
    )
    oauth2_proxy_client_secret: str = Field(
        "oauth2-proxy-client",
        description="Secret in namespace (keys client-id, client-secret) that keycloak-setup writes and "
        "every sign-in sidecar mounts.",
    )
    sign_in_lifetime: int = Field(
        7 * 24 * 3600,
        ge=60,
        description="Seconds a sign-in lasts before the user must sign in again (oauth2-proxy's "
        "--cookie-expire). Default 7 days: oauth2-proxy's own, and the longest lifespan.",
    )
    oidc_insecure_skip_verify: bool = Field(
        False,
        description="Development only: skip TLS verification towards Keycloak. Off by default.",
    )

    def effective_metrics_url(self, environ: Mapping[str, str] | None = None) -> str:
        """The PoC's two defaults: the Service inside a cluster, a port-forward outside."""
        if self.metrics_url:
            return self.metrics_url
        return IN_CLUSTER_METRICS_URL if _in_cluster(environ) else LOCAL_METRICS_URL

    @field_validator("peering_priority", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """An empty CXG_PEERING_PRIORITY (as the chart passes the default) means "unset"."""
        return None if value == "" else value

    def effective_peering_priority(self, environ: Mapping[str, str] | None = None) -> int:
        """The setting, else 100 in a pod and 0 elsewhere (a laptop yields to the cluster)."""
        if self.peering_priority is not None:
            return self.peering_priority
        return IN_CLUSTER_PEERING_PRIORITY if _in_cluster(environ) else LOCAL_PEERING_PRIORITY

    @property
    def base_url(self) -> str:
        return f"{self.url_scheme}://{self.host_name}"

    def as_env(self, changed_only: bool = False) -> dict[str, str]:
        """The CXG_* variables that make :meth:`from_env` give these settings back; unset
        options (None) are left out, as an empty string would not parse as a number."""
        return {
            ENV_PREFIX + name.upper(): str(value)
            for name, value in self.model_dump().items()
            if value is not None and not (changed_only and value == type(self).model_fields[name].default)
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from CXG_* (and the PoC's) variables; explicit overrides win."""
        env = os.environ if environ is None else environ
        reader = _reader(cls, env)
        try:
            return cls(**reader(**overrides).model_dump())
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                name = str(err["loc"][0]) if err["loc"] else "?"
                var = next((v for v in _variables(name) if v in env), _variables(name)[0])
                value = overrides.get(name, env.get(var))
                problems.append(f"{var}={value!r}: {err['msg']}")
            raise SettingsError("invalid settings: " + "; ".join(problems) + ". Fix or unset the variable.") from None


def _variables(name: str) -> list[str]:
    """The variables that set option ``name``, the one that wins first."""
    return [ENV_PREFIX + name.upper(), *(var for var, option in LEGACY_ENV.items() if option == name)]


class _Variables(EnvSettingsSource):
    """The CXG_* variables of ``environ``, which is os.environ only by default (tests and the
    CLI pass their own); pydantic-settings does the lookup and the parsing."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls, case_sensitive=False, env_prefix=ENV_PREFIX)
        self.env_vars = {key.lower(): value for key, value in environ.items()}


class _LegacyVariables(PydanticBaseSettingsSource):
    """The proof of concept's names (LEGACY_ENV). A source of its own, below the CXG_* one, and
    not as field aliases: an alias would also rename the option for ``Settings(tick=...)``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        var = next((v for v, option in LEGACY_ENV.items() if option == field_name and v in self.environ), None)
        return (self.environ[var] if var else None), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {option: self.environ[var] for var, option in LEGACY_ENV.items() if var in self.environ}


def _reader(settings: type[Settings], environ: Mapping[str, str]) -> type[BaseSettings]:
    """``settings`` read by pydantic-settings from ``environ``: keyword arguments first, then CXG_*
    variables, then the PoC's. The result is turned back into a plain ``Settings``, so that
    ``Settings()`` stays the documented defaults, whatever the environment holds."""

    class FromEnvironment(BaseSettings, settings):  # type: ignore[misc,valid-type]
        model_config = SettingsConfigDict(frozen=True, extra="forbid")

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return init_settings, _Variables(settings_cls, environ), _LegacyVariables(settings_cls, environ)

    return FromEnvironment
