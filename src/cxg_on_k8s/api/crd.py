"""The CustomResourceDefinition, generated from the model: ``definition()`` turns its JSON schema into the
structural OpenAPI schema the API server wants, with the CEL rules that reject bad input before
the operator ever sees it; ``manifests/crd_single-user-instance.yaml`` is its committed output and
a test fails when the two drift.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from cxg_on_k8s.api.model import (
    CRD_NAME,
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    SingleUserInstanceSpec,
    SingleUserInstanceStatus,
)

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


LIFESPAN_MESSAGE = "the embedded form needs spec.lifespan (seconds the instance may live, at least 60): add it"


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


def definition() -> dict[str, Any]:
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
