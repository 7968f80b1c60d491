"""The SingleUserInstance API: its spec and status model, and the CRD generated from it.

The pydantic model is the single source of truth. ``crd()`` turns its JSON schema into the
structural OpenAPI schema the API server wants, with the CEL rules that reject bad input before
the operator ever sees it; ``manifests/crd_single-user-instance.yaml`` is its committed output and
a test fails when the two drift.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Any, Literal, NamedTuple

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

EMBEDDED_ANY = "has(self.deployment) || has(self.service) || has(self.ingress)"
EMBEDDED_ALL = "has(self.deployment) && has(self.service) && has(self.ingress)"
FORM_RULE = f"({EMBEDDED_ANY}) ? ({EMBEDDED_ALL} && !has(self.dataset)) : (has(self.owner) && has(self.dataset))"
FORM_MESSAGE = (
    "spec needs exactly one form: the portal form (spec.owner and spec.dataset) or the embedded "
    "form (spec.deployment, spec.service and spec.ingress, optionally spec.owner), not both and not neither"
)
# Instance names that would shadow a path of the shared edge (/oauth2 is the sign-in) or collide
# with an object of the installation in the instances' namespace.
RESERVED_NAMES = ("oauth2", "oauth2-proxy", "sui-operator")
NAME_RULE = "!(self.metadata.name in [" + ", ".join(f"'{n}'" for n in RESERVED_NAMES) + "])"
NAME_MESSAGE = (
    f"metadata.name may not be {', '.join(RESERVED_NAMES)}: /<name>/ would shadow the sign-in or the "
    "name is the installation's own; use cellxgene-<uuid4>"
)
# The proof of concept required a lifespan with the embedded form; the portal form has a default.
LIFESPAN_RULE = "!has(self.deployment) || has(self.lifespan)"
LIFESPAN_MESSAGE = (
    "the embedded form needs spec.lifespan (seconds the instance may live, at least 60): add it"
)

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


class Phase(str, Enum):
    """Where an instance is in its life; the operator moves it forward, never back."""

    PENDING = "Pending"
    STARTING = "Starting"
    READY = "Ready"
    FAILED = "Failed"
    TERMINATING = "Terminating"


class Flavor(str, Enum):
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
        pattern=NO_COMMA_PATTERN,
        description="The user's identity as the OIDC provider gives it (e-mail, no commas); only they "
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

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = Field(None, alias="lastTransitionTime")


class SingleUserInstanceStatus(BaseModel):
    """What the operator reports. Times are RFC 3339 UTC strings."""

    model_config = ConfigDict(populate_by_name=True)

    phase: Phase | None = Field(None, description="Pending, Starting, Ready, Failed or Terminating.")
    url: str | None = Field(None, description="Where the owner opens the viewer.")
    ready_at: str | None = Field(None, alias="readyAt", description="When the viewer first became Ready.")
    expires_at: str | None = Field(None, alias="expiresAt", description="When the lifespan ends.")
    last_activity: str | None = Field(
        None, alias="lastActivity", description="Last time the owner's requests reached the viewer."
    )
    cull_reason: str | None = Field(
        None, alias="cullReason", description="lifespan-exceeded, never-visited or idle."
    )
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


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Rewrite pydantic's JSON schema into a Kubernetes structural schema.

    Structural schemas forbid $ref, anyOf-for-nullability, titles and null defaults; free-form
    objects (the embedded manifests) must say x-kubernetes-preserve-unknown-fields instead.
    """
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = dict(defs[node["$ref"].rsplit("/", 1)[-1]])
        target.update({k: v for k, v in node.items() if k != "$ref"})
        return _structural(target, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        merged = dict(_structural(options[0], defs)) if len(options) == 1 else {"anyOf": options}
        merged.update({k: _structural(v, defs) for k, v in node.items() if k != "anyOf"})
        node = merged
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs") or (key == "default" and value is None):
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "additionalProperties":
            # dict[str, Any] comes as True or {}: a free-form object. False (extra="forbid") is
            # what a structural schema does anyway, by pruning.
            if value is True or value == {}:
                out["type"] = "object"
                out["x-kubernetes-preserve-unknown-fields"] = True
        elif key == "enum" and "type" not in node:
            out.update(enum=value, type="string")
        else:
            out[key] = _structural(value, defs)
    return out


def _schema_of(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True)
    return _structural(schema, schema.get("$defs", {}))


def openapi_schema() -> dict[str, Any]:
    """The CRD's openAPIV3Schema for v1."""
    spec = _schema_of(SingleUserInstanceSpec)
    spec["x-kubernetes-validations"] = [
        {"rule": FORM_RULE, "message": FORM_MESSAGE},
        {"rule": LIFESPAN_RULE, "message": LIFESPAN_MESSAGE},
    ]
    status = _schema_of(SingleUserInstanceStatus)
    return {
        "type": "object",
        "description": "A private cellxgene viewer for one user, removed when done.",
        "required": ["spec"],
        "x-kubernetes-validations": [{"rule": NAME_RULE, "message": NAME_MESSAGE}],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }


def crd() -> dict[str, Any]:
    """The CustomResourceDefinition manifest, generated from the model above."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app": "cellxgene"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["cellxgene"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": openapi_schema()},
                    "additionalPrinterColumns": [
                        {"name": "Owner", "type": "string", "jsonPath": ".spec.owner"},
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "URL", "type": "string", "jsonPath": ".status.url"},
                        {"name": "Expires", "type": "string", "jsonPath": ".status.expiresAt"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                }
            ],
        },
    }


def dataset_id(dataset: str) -> str:
    """A stable, key-safe name for a dataset URL: its file name without the .h5ad/.cxg suffix."""
    last = dataset.rstrip("/").rsplit("/", 1)[-1]
    stem = re.sub(r"\.(h5ad|cxg)$", "", last)
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem) or "dataset"


_SUFFIX = {
    "m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip


def quantity(text: str) -> float:
    """A Kubernetes quantity (the subset QUANTITY_PATTERN admits) as a number."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)", text)
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"{text!r} is not a quantity such as 500m, 2, 512Mi or 4Gi")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


class Conflict(NamedTuple):
    """Why an existing object cannot serve as an instance's child; transient: it belongs to an
    earlier instance of the same name and the garbage collector is about to remove it."""

    message: str
    transient: bool = False


def child_conflict(
    kind: str,
    namespace: str,
    name: str,
    owners: list[dict[str, Any]] | None,
    instance_uid: str,
    instance_name: str,
) -> Conflict | None:
    """Whether an instance may use the existing ``kind namespace/name`` whose ownerReferences are
    ``owners`` (None: it does not exist). Only what the instance owns is used: nothing is taken
    over, so an instance can never capture another's (or a hand-made) Deployment or Ingress."""
    if owners is None or any(ref.get("uid") == instance_uid for ref in owners):
        return None
    what = f"{kind} {namespace}/{name}"
    if any(ref.get("kind") == KIND and ref.get("name") == instance_name for ref in owners):
        return Conflict(
            f"{what} belongs to an earlier SingleUserInstance of the same name and waits for the "
            "garbage collector; if it stays, delete it or give the instance another name",
            transient=True,
        )
    holders = ", ".join(f"{ref.get('kind')} {ref.get('name')}" for ref in owners) or "nothing"
    return Conflict(
        f"{what} already exists and is owned by {holders}, not by this instance, and is not taken "
        f"over. Fix: delete it (kubectl -n {namespace} delete {kind.lower()} {name}) or rename this "
        "instance, then create the instance again"
    )


def markdown_cell(text: str) -> str:
    """Text safe inside a Markdown table cell: no column breaks, and ``<owner>`` stays visible
    (a renderer would take it for an HTML tag and drop it)."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def spec_reference_table() -> str:
    """The README's SingleUserInstance reference: one row per spec field (nested ones too), from
    the model, so that the documentation and the CRD cannot drift."""
    rows = ["| field | type | default | meaning |", "| --- | --- | --- | --- |"]

    def add(model: type[BaseModel], properties: dict[str, Any], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = field.alias or name
            schema = properties[key]
            kind = schema.get("type", "")
            if kind == "array":
                kind = f"array of {schema.get('items', {}).get('type', 'object')}"
            if "enum" in schema:
                kind += " (" + ", ".join(f"`{v}`" for v in schema["enum"]) + ")"
            default = field.default.value if isinstance(field.default, Enum) else field.default
            shown = f"`{default}`" if default is not None else "—"
            rows.append(f"| `{prefix}{key}` | {kind} | {shown} | {markdown_cell(field.description or '')} |")
            nested = field.annotation if isinstance(field.annotation, type) else None
            for arg in getattr(field.annotation, "__args__", ()):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    nested = arg
            if nested is not None and issubclass(nested, BaseModel) and "properties" in schema:
                add(nested, schema["properties"], f"{prefix}{key}.")

    add(SingleUserInstanceSpec, openapi_schema()["properties"]["spec"]["properties"], "spec.")
    return "\n".join(rows)
