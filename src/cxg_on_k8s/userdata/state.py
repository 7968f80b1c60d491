"""A pod restart must neither lose nor overwrite work that was not saved yet. The hashes of what
S3 holds, kept beside the user's files, tell a re-run ``fetch`` which local files are newer than
S3's and a restarted ``sync`` what is still to be saved; files are replaced whole, so that
cellxgene and ``sync`` never read half of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger("cxg_on_k8s.userdata")

USER_FILES = ("annotations.csv", "gene_sets.csv")
STATE_FILE = ".userdata-state.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomically(path: Path, data: bytes) -> None:
    """Write whole or not at all: readers (cellxgene, sync) never see a partial file."""
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_state(directory: Path) -> dict[str, str]:
    """Hashes of the user files as last fetched from or saved to S3 (empty if none recorded)."""
    try:
        state = json.loads((directory / STATE_FILE).read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        state = None
    if not isinstance(state, dict):
        log.warning("%s is not a JSON object; every present user file counts as unsaved", STATE_FILE)
        return {}
    return {k: v for k, v in state.items() if k in USER_FILES and isinstance(v, str)}


def save_state(directory: Path, state: dict[str, str]) -> None:
    write_atomically(directory / STATE_FILE, json.dumps(state, sort_keys=True).encode())
