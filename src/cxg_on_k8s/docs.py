"""The README's generated tables (``scripts/render-docs.py``): written from the model and the
settings so that the documentation cannot drift from the code.
"""

from __future__ import annotations

import ast
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cxg_on_k8s.api.crd import openapi_schema
from cxg_on_k8s.api.model import SingleUserInstanceSpec
from cxg_on_k8s.settings import ENV_PREFIX, LEGACY_ENV, Settings


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


def settings_table() -> str:
    """The README's settings table, generated so that docs and code cannot drift."""
    legacy = {name: var for var, name in LEGACY_ENV.items()}
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        var = f"`{ENV_PREFIX}{name.upper()}`"
        if name in legacy:
            var += f" (or `{legacy[name]}`)"
        default = field.default
        shown = f"`{default}`" if default not in ("", None) else "(empty)"
        rows.append(f"| {var} | {shown} | {markdown_cell(field.description or '')} |")
    return "\n".join(rows)


SOURCE_ROOTS = (Path(__file__).resolve().parent, Path(__file__).resolve().parents[2] / "devcluster" / "cxg_devcluster")


def module_table() -> str:
    """The README's module map: every module of the package and of the dev cluster with the first
    line of its docstring, so that the map always matches the tree."""
    rows = ["| module | owns |", "| --- | --- |"]
    repo = SOURCE_ROOTS[0].parents[1]
    for root in SOURCE_ROOTS:
        for path in sorted(root.rglob("*.py")):
            if path.name == "__main__.py" or "__pycache__" in path.parts:
                continue
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            first = doc.split("\n\n", 1)[0].replace("\n", " ").strip().split(". ", 1)[0].rstrip(".") + "."
            shown = path.parent if path.name == "__init__.py" else path
            rows.append(
                f"| `{shown.relative_to(repo)}{'/' if path.name == '__init__.py' else ''}` | {markdown_cell(first)} |"
            )
    return "\n".join(rows)
