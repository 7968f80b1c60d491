#!/usr/bin/env python3
"""The proof of concept's converter, kept so that its documented commands still work:

    python3 yaml_to_py.py FILE            # print a YAML manifest as a Python dict
    from yaml_to_py import py_to_yaml     # a dict (or a Python literal's text) back to YAML

Both are ``cxg_on_k8s.yaml_convert`` (also ``cxg-k8s yaml-to-py FILE`` / ``py-to-yaml FILE``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from cxg_on_k8s.render.yaml_text import py_to_yaml, yaml_to_py

__all__ = ["main", "py_to_yaml", "yaml_to_py"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python3 yaml_to_py.py FILE   (prints the YAML manifest FILE as a Python dict)", file=sys.stderr)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    try:
        print(yaml_to_py(Path(args[0]).read_text()))
    except (OSError, yaml.YAMLError) as exc:
        print(f"error: cannot convert {args[0]}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
