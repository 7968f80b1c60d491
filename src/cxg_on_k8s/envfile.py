"""The proof of concept's ``.env`` file: ``KEY=VALUE`` lines read into the environment.

The PoC kept its connection and sign-in settings (``K8_IP``, ``K8_PORT``, ``HOST_NAME``,
``CLUSTER_ROOT_CERTIFICATE``, ``SERVICE_ACCOUNT``, ``ACCOUNT_TOKEN``, ``KEYCLOAK_ENDPOINT``,
``KEYCLOAK_REALM``) in a ``.env`` file next to its scripts; ``cxg-k8s`` reads the one in the
current directory the same way. The format is the simple one: ``KEY=VALUE`` per line, an optional
``export`` in front, ``#`` comments (whole lines, or after an unquoted value), values optionally in
single or double quotes. Variables already set in the environment win: the file never overrides.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from pathlib import Path

_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


class EnvFileError(ValueError):
    """A line of the file is not KEY=VALUE; the message names the file and the line."""


def parse(text: str, source: str = ".env") -> dict[str, str]:
    """The file's variables, in order; a malformed line is an error naming it."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        found = _LINE.match(line)
        if not found:
            raise EnvFileError(f"{source}, line {number}: expected KEY=VALUE, got {raw!r}")
        key, value = found.group(1), found.group(2).strip()
        if value[:1] in ("'", '"'):
            quote = value[0]
            end = value.find(quote, 1)
            if end == -1:
                raise EnvFileError(f"{source}, line {number}: the value of {key} has no closing {quote}")
            value = value[1:end]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        values[key] = value
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
