"""The proof of concept's ``.env`` file: ``KEY=VALUE`` lines read into the environment.

The PoC kept its connection and sign-in settings (``K8_IP``, ``K8_PORT``, ``HOST_NAME``,
``CLUSTER_ROOT_CERTIFICATE``, ``SERVICE_ACCOUNT``, ``ACCOUNT_TOKEN``, ``KEYCLOAK_ENDPOINT``,
``KEYCLOAK_REALM``) in a ``.env`` file next to its scripts; ``cxg-k8s`` reads the one in the
current directory the same way, parsed by python-dotenv. The format is the usual one: ``KEY=VALUE`` per line, an optional
``export`` in front, ``#`` comments (whole lines, or after an unquoted value), values optionally in
single or double quotes. Variables already set in the environment win: the file never overrides.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import MutableMapping
from pathlib import Path

from dotenv.parser import parse_stream

# python-dotenv parses; what it cannot parse it only logs, so its errors are turned into ours here
_QUOTED = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(['\"])")


class EnvFileError(ValueError):
    """A line of the file is not KEY=VALUE; the message names the file and the line."""


def parse(text: str, source: str = ".env") -> dict[str, str]:
    """The file's variables, in order; a malformed line is an error naming it."""
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        raw = binding.original.string.rstrip("\n")
        line = binding.original.line
        if binding.error:
            quoted = _QUOTED.match(raw)
            if quoted:
                raise EnvFileError(f"{source}, line {line}: the value of {quoted[1]} has no closing {quoted[2]}")
            raise EnvFileError(f"{source}, line {line}: expected KEY=VALUE, got {raw!r}")
        if binding.key is None:
            continue  # a blank line or a comment
        if binding.value is None:
            raise EnvFileError(f"{source}, line {line}: expected KEY=VALUE, got {raw!r}")
        values[binding.key] = binding.value
    return values


def load(path: str | os.PathLike[str] = ".env", environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Set the file's variables that are not set yet; returns their names. No file, no change."""
    env = os.environ if environ is None else environ
    file = Path(path)
    if not file.is_file():
        return []
    added = []
    for key, value in parse(file.read_text(), str(file)).items():
        if key not in env:
            env[key] = value
            added.append(key)
    return added
