"""The SingleUserInstance resource: its spec and status model, the single source of truth that the
CRD (``api.crd``), the admission policy and the README's reference are generated from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

GROUP = "cnag.eu"


VERSION = "v1"


API_VERSION = f"{GROUP}/{VERSION}"


KIND = "SingleUserInstance"


PLURAL = "singleuserinstances"


SINGULAR = "singleuserinstance"


SHORT_NAMES = ["sui", "suis"]


CRD_NAME = f"{PLURAL}.{GROUP}"


DATASET_PATTERN = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+|https://[^\s/]+/.+)$"


USER_DATA_PATTERN = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.*$"


QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"


# oauth2-proxy splits allowed_emails and allowed_groups on commas after decoding the query, so a
# comma in an owner or a group name would let a second identity in.
NO_COMMA_PATTERN = r"^[^,]+$"


GroupName = Annotated[str, Field(min_length=1, max_length=255, pattern=NO_COMMA_PATTERN)]


# An owner is one identity: no comma (see above), no whitespace and no control character, so that
# "alice@example.org\n" is not a second spelling of alice that passes the schema (``[^,]`` alone
# matches a newline). Written for every engine that reads it alike: Go's RE2 (the API server),
# Rust's regex (pydantic) and ECMA-262 (JSON-schema tools); ``$`` is the end of the text in the
# first two. ``\s`` is ASCII in RE2 and Unicode in the others, so the C0/C1 ranges are spelt out.
OWNER_PATTERN = r"^[^,\s\x00-\x1f\x7f-\x9f]+$"


# The embedded form's three slots: (apiVersion, kind) each one takes, and nothing else.
AUTH_URL_ANNOTATION = "nginx.ingress.kubernetes.io/auth-url"


EMBEDDED_SLOTS = {
    "deployment": ("apps/v1", "Deployment"),
    "service": ("v1", "Service"),
    "ingress": ("networking.k8s.io/v1", "Ingress"),
}


def _slot_schema(schema: dict[str, Any], slot: str) -> None:
    """An embedded manifest stays free-form, but its kind (and apiVersion, when given) is declared
    so that the API server refuses a Pod in the deployment slot before the operator sees it."""
    version, kind = EMBEDDED_SLOTS[slot]
    schema["properties"] = {
        "apiVersion": {"type": "string", "enum": [version]},
        "kind": {"type": "string", "enum": [kind]},
    }
    schema["required"] = ["kind"]


class Phase(StrEnum):
    """Where an instance is in its life; the operator moves it forward, never back."""

    PENDING = "Pending"
    STARTING = "Starting"
    READY = "Ready"
    FAILED = "Failed"
    TERMINATING = "Terminating"


class Flavor(StrEnum):
    CELLXGENE = "cellxgene"
    CELLXGENE_VIP = "cellxgene-vip"


class Resources(BaseModel):
    """CPU and memory of the viewer; requests equal limits so an instance's share is predictable."""

    model_config = ConfigDict(extra="forbid")

    cpu: str | None = Field(None, pattern=QUANTITY_PATTERN, description="CPU, e.g. 500m or 2.")
    memory: str | None = Field(None, pattern=QUANTITY_PATTERN, description="Memory, e.g. 4Gi.")


class SingleUserInstanceSpec(BaseModel):
    """What a portal asks for. Portal form: owner + dataset. Embedded form: three manifests."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    owner: str | None = Field(
        None,
        min_length=1,
        max_length=254,
        pattern=OWNER_PATTERN,
        description="The user's identity as the OIDC provider gives it (e-mail; no commas, spaces or control "
        "characters); only they "
        "get in. Also allowed in the embedded form, where it wins over a user label.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "spec.owner is immutable; create a new instance"}
            ]
        },
    )
    dataset: str | None = Field(
        None,
        pattern=DATASET_PATTERN,
        max_length=1024,
        description="The .h5ad (or .cxg) to open: s3://bucket/key or https://host/path.",
    )
    user_data: str | None = Field(
        None,
        alias="userData",
        pattern=USER_DATA_PATTERN,
        max_length=1024,
        description="S3 prefix holding the user's annotations.csv and gene_sets.csv. Default: "
        "s3://<bucket>/cxg_on_k8/<owner>/<dataset id>-<hash of the dataset URL>/ from settings, "
        "never shared by two owners or two datasets.",
    )
    flavor: Flavor = Field(Flavor.CELLXGENE, description="Viewer: cellxgene or cellxgene-vip.")
    title: str | None = Field(None, max_length=200, description="Title shown by the viewer.")
    lifespan: int | None = Field(
        None,
        ge=60,
        description="Seconds the instance may live at most (at least 60; at most the operator's "
        "max_lifespan). Default from settings.",
    )
    idle_timeout: int | None = Field(
        None,
        alias="idleTimeout",
        ge=0,
        description="Seconds without user requests before the instance is removed; 0 = never.",
    )
    unvisited_timeout: int | None = Field(
        None,
        alias="unvisitedTimeout",
        ge=0,
        description="Seconds the instance may stay unvisited once Ready before it is removed; 0 = never.",
    )
    resources: Resources | None = Field(None, description="CPU and memory, capped by settings.")
    allowed_groups: list[GroupName] | None = Field(
        None,
        alias="allowedGroups",
        max_length=20,
        description="OIDC groups (plain names, no commas) whose members may open the instance besides "
        "its owner; needs keycloak-setup's groups mappers.",
    )
    deployment: dict[str, Any] | None = Field(
        None,
        description="Embedded form: the Deployment manifest the client rendered (kind Deployment); "
        "its pod template is kept, policed and hardened: see the embedded form below.",
        json_schema_extra=lambda schema: _slot_schema(schema, "deployment"),
    )
    service: dict[str, Any] | None = Field(
        None,
        description="Embedded form: the Service manifest the client rendered (kind Service); only its "
        "port is kept, the operator renders a ClusterIP Service.",
        json_schema_extra=lambda schema: _slot_schema(schema, "service"),
    )
    ingress: dict[str, Any] | None = Field(
        None,
        description="Embedded form: the Ingress manifest the client rendered (kind Ingress); only who "
        "its auth-url names is kept, the operator renders the Ingress.",
        json_schema_extra=lambda schema: _slot_schema(schema, "ingress"),
    )

    @property
    def embedded(self) -> bool:
        return self.deployment is not None


class Condition(BaseModel):
    """A Kubernetes-style condition (type Ready, Culled, ...)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = Field(None, alias="lastTransitionTime")


class SingleUserInstanceStatus(BaseModel):
    """What the operator reports. Times are RFC 3339 UTC strings."""

    # Every status write goes through this model (status_patch): a misspelt field fails in the
    # operator instead of being pruned away by the API server without a word.
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    phase: Phase | None = Field(None, description="Pending, Starting, Ready, Failed or Terminating.")
    url: str | None = Field(None, description="Where the owner opens the viewer.")
    ready_at: str | None = Field(None, alias="readyAt", description="When the viewer first became Ready.")
    expires_at: str | None = Field(None, alias="expiresAt", description="When the lifespan ends.")
    last_activity: str | None = Field(
        None, alias="lastActivity", description="Last time the owner's requests reached the viewer."
    )
    cull_reason: str | None = Field(None, alias="cullReason", description="lifespan-exceeded, never-visited or idle.")
    startup_seconds: float | None = Field(
        None,
        alias="startupSeconds",
        description="Seconds from creation to the first Ready (creationTimestamp has one-second "
        "resolution: this may read up to a second more than it took).",
    )
    message: str | None = Field(None, description="Human-readable detail, e.g. why it failed.")
    conditions: list[Condition] | None = Field(None, description="Ready and Culled conditions.")
    observed_generation: int | None = Field(
        None, alias="observedGeneration", description="The spec generation this status describes."
    )


def dataset_id(dataset: str) -> str:
    """A stable, key-safe name for a dataset URL: its file name without the .h5ad/.cxg suffix."""
    last = dataset.rstrip("/").rsplit("/", 1)[-1]
    stem = re.sub(r"\.(h5ad|cxg)$", "", last)
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "dataset"


def status_patch(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A status merge patch of ``fields`` (API names or Python names), checked by the model; only
    the fields given are in it, so an explicit None still removes a field."""
    checked = SingleUserInstanceStatus.model_validate(dict(fields))
    return checked.model_dump(by_alias=True, exclude_unset=True, mode="json")
