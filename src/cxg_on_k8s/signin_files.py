"""The first init container of a viewer pod with a sign-in sidecar: writes the sidecar's files.

The operator renders their text into the container's environment (``CXG_SIGNIN_FILES``, a JSON
object of file name to text); this program adds the cookie secret, made here from the kernel's
random source, so the key that signs the instance's sessions exists only in this pod's memory
volume: nobody who can read the Deployment, and no other viewer, can mint a session for it. A
restarted pod makes a new key, which signs the owner out of that viewer only; Keycloak's own
session brings them back without a password.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

from cxg_on_k8s.render.signin import COOKIE_SECRET_FILE, FILES_ENV


def write_files(directory: Path, files: dict[str, str]) -> None:
    """Each file readable by its owner alone (the sidecar runs as the same user)."""
    for name, text in {**files, COOKIE_SECRET_FILE: secrets.token_urlsafe(24)}.items():
        path = directory / name
        path.write_text(text)
        path.chmod(0o400)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(f"usage: python -m cxg_on_k8s.signin_files DIR (with {FILES_ENV} set)", file=sys.stderr)
        return 2
    try:
        files = json.loads(os.environ[FILES_ENV])
    except (KeyError, json.JSONDecodeError) as exc:
        print(f"{FILES_ENV} must hold a JSON object of file name to text: {exc}", file=sys.stderr)
        return 2
    write_files(Path(args[0]), files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
