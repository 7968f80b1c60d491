"""The proof of concept's manifest converters: YAML to a Python dict literal and back."""

from __future__ import annotations

import ast
import pprint
from typing import Any

import yaml


def yaml_to_py(text: str) -> str:
    """A YAML document (or several) as Python literals, for pasting into code."""
    docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    value: Any = docs[0] if len(docs) == 1 else docs
    return pprint.pformat(value, sort_dicts=False, width=100)


def py_to_yaml(value: Any) -> str:
    """A dict (or the text of a Python literal) as YAML; literals only, nothing is executed."""
    if isinstance(value, str):
        value = ast.literal_eval(value)
    if isinstance(value, list):
        return yaml.safe_dump_all(value, sort_keys=False)
    return yaml.safe_dump(value, sort_keys=False)
