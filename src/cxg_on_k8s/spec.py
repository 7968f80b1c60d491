"""The SingleUserInstance API: its spec and status model, and the CRD generated from it.

The pydantic model is the single source of truth. ``crd()`` turns its JSON schema into the
structural OpenAPI schema the API server wants, with the CEL rules that reject bad input before
the operator ever sees it; ``manifests/crd_single-user-instance.yaml`` is its committed output and
a test fails when the two drift.
"""

from __future__ import annotations

import re
from enum import Enum
from urllib.parse import parse_qs
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

FORM_RULE = (
    "(has(self.owner) && has(self.dataset)) != "
    "(has(self.deployment) && has(self.service) && has(self.ingress))"
)
FORM_MESSAGE = (
    "spec needs exactly one form: the portal form (spec.owner and spec.dataset) or the embedded "
    "form (spec.deployment, spec.service and spec.ingress), not both and not neither"
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
# Service accounts an embedded viewer may run as: the namespace's default (or none given, which
# is the same). Any other account could carry RBAC that a client must not be able to borrow.
ALLOWED_SERVICE_ACCOUNTS = ("", "default")


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
        "get in.",
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
        "s3://<bucket>/cxg_on_k8/<owner>/<dataset id>/ from settings.",
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
        description="Embedded form: the Deployment manifest the client rendered (kind Deployment; "
        "refused if privileged, with host access or another service account: see the embedded-form "
        "policy below).",
        json_schema_extra=lambda schema: _slot_schema(schema, "deployment"),
    )
    service: dict[str, Any] | None = Field(
        None,
        description="Embedded form: the Service manifest the client rendered (kind Service).",
        json_schema_extra=lambda schema: _slot_schema(schema, "service"),
    )
    ingress: dict[str, Any] | None = Field(
        None,
        description="Embedded form: the Ingress manifest the client rendered (kind Ingress; its "
        "auth-url must ask this installation's oauth2-proxy and name the owner: see the embedded-form "
        "policy below).",
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


def problems(spec: SingleUserInstanceSpec, settings: Any, namespace: str | None = None) -> list[str]:
    """What the API server's schema cannot know: limits that are operator settings, and the
    embedded form's policy (:func:`embedded_problems`) for an instance in ``namespace`` (default:
    the settings' namespace).

    Each problem names the field, the limit and the fix; an empty list means acceptable.
    """
    found: list[str] = embedded_problems(spec, namespace or settings.namespace, settings.oauth2_proxy_auth_endpoint)
    lifespan = lifespan_problem(spec.lifespan, settings)
    if lifespan is not None:
        found.append(lifespan)
    if spec.resources:
        for field, limit in (("cpu", settings.max_cpu), ("memory", settings.max_memory)):
            asked = getattr(spec.resources, field)
            if asked and quantity(asked) > quantity(limit):
                found.append(
                    f"spec.resources.{field} {asked} exceeds the maximum {limit} "
                    f"(setting CXG_MAX_{field.upper()}); ask for less"
                )
    return found


def lifespan_problem(lifespan: int | None, settings: Any) -> str | None:
    """Why ``lifespan`` (None: the default) exceeds the operator's max_lifespan, or None: on its
    own so that a changed lifespan is judged by the same rule, and words, as a new instance."""
    if lifespan is None or lifespan <= settings.max_lifespan:
        return None
    return (
        f"spec.lifespan {lifespan} s exceeds the maximum {settings.max_lifespan} s "
        "(setting CXG_MAX_LIFESPAN); ask for less"
    )


def embedded_problems(spec: SingleUserInstanceSpec, namespace: str, auth_endpoint: str) -> list[str]:
    """The embedded form's policy: refuse manifests that would raise privilege, leave the
    instance's namespace or skip the sign-in. Pure; each problem names the exact field path and
    the fix.

    Refused: a slot holding another kind (or apiVersion) than its own; a ``metadata.namespace``
    other than the instance's; in the pod template, ``hostNetwork``/``hostPID``/``hostIPC``,
    ``hostPath`` volumes, a service account other than the namespace's ``default``,
    ``automountServiceAccountToken: true``, and in any container (``containers``,
    ``initContainers``, ``ephemeralContainers``) ``privileged``, ``allowPrivilegeEscalation: true``,
    ``capabilities.add``, ``hostPort`` and Windows ``hostProcess``; an Ingress whose ``auth-url``
    is missing, asks another server than ``auth_endpoint`` (this installation's oauth2-proxy), or
    names nobody (no ``allowed_emails``/``allowed_groups``, so any signed-in user would get in).

    ``automountServiceAccountToken`` left out is accepted: the proof of concept's clients never set
    it, and the token is then the ``default`` account's, which this project binds to nothing. Set
    to true it is refused: a viewer never talks to the API server, so asking for a token is asking
    for access it does not need.
    """
    found: list[str] = []
    for slot, (version, kind) in EMBEDDED_SLOTS.items():
        doc = getattr(spec, slot)
        if doc is None:
            continue
        where = f"spec.{slot}"
        if doc.get("kind") != kind:
            found.append(f"{where}.kind is {doc.get('kind')!r}: the {slot} slot takes a {kind} only; set kind: {kind}")
        if "apiVersion" in doc and doc["apiVersion"] != version:
            found.append(
                f"{where}.apiVersion is {doc['apiVersion']!r}: the {slot} slot takes {version} {kind}; "
                f"set apiVersion: {version}"
            )
        other = _mapping(doc.get("metadata")).get("namespace")
        if other not in (None, "", namespace):
            found.append(
                f"{where}.metadata.namespace is {other!r}, not the instance's namespace {namespace!r}: "
                f"children live next to their instance; remove metadata.namespace or set it to {namespace}"
            )
    template = _mapping(_mapping(_mapping(spec.deployment).get("spec")).get("template")).get("spec")
    found += _pod_problems(_mapping(template), "spec.deployment.spec.template.spec")
    if spec.ingress is not None:
        found += _sign_in_problems(spec.ingress, auth_endpoint)
    return found


def _sign_in_problems(ingress: dict[str, Any], auth_endpoint: str) -> list[str]:
    """An embedded Ingress must send every request through this installation's oauth2-proxy and
    name who may pass, as the portal form's Ingress does (the embedded form has no spec.owner)."""
    where = f'spec.ingress.metadata.annotations["{AUTH_URL_ANNOTATION}"]'
    fix = f"set it to {auth_endpoint}?allowed_emails=<the owner's e-mail>"
    url = _mapping(_mapping(ingress.get("metadata")).get("annotations")).get(AUTH_URL_ANNOTATION)
    if not isinstance(url, str) or not url:
        return [f"{where} is missing: a viewer is reachable only through the sign-in; {fix}"]
    base, _, query = url.partition("?")
    if base != auth_endpoint:
        return [f"{where} is {url!r}, which does not ask this installation's oauth2-proxy; {fix}"]
    allowed = parse_qs(query)
    if not any(value.strip() for key in ("allowed_emails", "allowed_groups") for value in allowed.get(key, [])):
        return [f"{where} is {url!r}, which names nobody, so every signed-in user would get in; {fix}"]
    return []


_HOST_NAMESPACES = {"hostNetwork": "network", "hostPID": "process", "hostIPC": "IPC"}


def _mapping(value: Any) -> dict[str, Any]:
    """A manifest's sub-object, or {} where the client put nothing (or something malformed, which
    the API server refuses with its own message when the child is created)."""
    return value if isinstance(value, dict) else {}


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _pod_problems(pod: dict[str, Any], where: str) -> list[str]:
    found: list[str] = []
    for field, shared in _HOST_NAMESPACES.items():
        if pod.get(field) is True:
            found.append(
                f"{where}.{field} is true: a viewer must not share the node's {shared} namespace; "
                "remove it or set it to false"
            )
    for field in ("serviceAccountName", "serviceAccount"):  # serviceAccount: the deprecated alias
        account = pod.get(field)
        if account is not None and account not in ALLOWED_SERVICE_ACCOUNTS:
            found.append(
                f"{where}.{field} is {account!r}: an embedded viewer runs as the namespace's default "
                f"service account only; remove {field}"
            )
    if pod.get("automountServiceAccountToken") is True:
        found.append(
            f"{where}.automountServiceAccountToken is true: a viewer never talks to the Kubernetes "
            "API; remove it or set it to false"
        )
    if _mapping(_mapping(pod.get("securityContext")).get("windowsOptions")).get("hostProcess") is True:
        found.append(
            f"{where}.securityContext.windowsOptions.hostProcess is true: host processes are not "
            "allowed; remove it"
        )
    for i, volume in enumerate(_listed(pod.get("volumes"))):
        if "hostPath" in _mapping(volume):
            found.append(
                f"{where}.volumes[{i}].hostPath: directories of the node are not allowed; use an "
                "emptyDir (the pod fetches its data from S3) instead"
            )
    for group in ("containers", "initContainers", "ephemeralContainers"):
        for i, container in enumerate(_listed(pod.get(group))):
            found += _container_problems(_mapping(container), f"{where}.{group}[{i}]")
    return found


def _container_problems(container: dict[str, Any], where: str) -> list[str]:
    found: list[str] = []
    security = _mapping(container.get("securityContext"))
    if security.get("privileged") is True:
        found.append(
            f"{where}.securityContext.privileged is true: privileged containers are not allowed; "
            "remove it or set it to false"
        )
    if security.get("allowPrivilegeEscalation") is True:
        found.append(
            f"{where}.securityContext.allowPrivilegeEscalation is true: a viewer must not gain "
            "privileges; remove it or set it to false"
        )
    added = _mapping(security.get("capabilities")).get("add")
    if added:
        found.append(
            f"{where}.securityContext.capabilities.add is {added!r}: added capabilities are not "
            "allowed; remove capabilities.add (drop: [ALL] is what a viewer needs)"
        )
    if _mapping(security.get("windowsOptions")).get("hostProcess") is True:
        found.append(
            f"{where}.securityContext.windowsOptions.hostProcess is true: host processes are not "
            "allowed; remove it"
        )
    for j, port in enumerate(_listed(container.get("ports"))):
        if _mapping(port).get("hostPort"):
            found.append(
                f"{where}.ports[{j}].hostPort is {_mapping(port)['hostPort']}: ports of the node are "
                "not allowed (the viewer is reached through its Service and Ingress); remove hostPort"
            )
    return found


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
