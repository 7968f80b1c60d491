#!/usr/bin/env bash
# Create (once) the virtual environment that holds cellxgene 1.3.0 and print its path.
#
# Why a venv of its own: cellxgene pins Flask, numpy, pandas and s3fs versions that must not
# leak into the operator's environment; in production it lives in its own image too, so the
# tests mirror that. It is installed as the images install it: `pip install --constraint
# docker/cellxgene/constraints.txt cellxgene==1.3.0`, and then checked to hold exactly the
# versions that file pins, no more and no fewer, so the tests run what the images serve.
#
# The venv's directory carries the constraints file's hash (cellxgene-1.3.0-<hash>): a change to
# the file builds a new venv beside the old one (a test run still using the old one is not cut
# off; old ones can be deleted by hand). Idempotent: a venv is only trusted once the stamp file,
# written after a successful install and check, is there; a half-made one is rebuilt.
#
# Env: PYTHON (default python3.11, else python3) picks the interpreter;
#      XDG_CACHE_HOME (default ~/.cache) picks where the venv lives.
set -euo pipefail

VERSION=1.3.0
REPO="$(cd "$(dirname "$0")/.." && pwd)"
CONSTRAINTS="${REPO}/docker/cellxgene/constraints.txt"
HASH="$(sha256sum "$CONSTRAINTS" | cut -c1-12)"
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/cxg-on-k8s/cellxgene-${VERSION}-${HASH}"
STAMP="${VENV}/.cxg-on-k8s-complete"
WANT="cellxgene==${VERSION} --constraint constraints.txt sha256:${HASH}"

# The viewer images patch cellxgene's web client so that it stays under the instance's prefix;
# the venv gets the same patch (idempotent, so it runs every time), and the tests see what the
# images serve.
PATCH="${REPO}/docker/cellxgene/prefix-patch.py"

ready() { [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/cellxgene" ]]; }
if ready; then
    "$VENV/bin/python" "$PATCH"
    echo "$VENV"
    exit 0
fi

# One build at a time: test sessions that start together wait for the first one's build
# instead of deleting it half-made. The lock is released when this script exits.
mkdir -p "$(dirname "$VENV")"
exec 9>"${VENV}.lock"
flock 9
if ready; then  # built by another caller while this one waited
    "$VENV/bin/python" "$PATCH"
    echo "$VENV"
    exit 0
fi

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi

echo "creating cellxgene ${VERSION} venv at ${VENV} with ${PY} (takes a few minutes once)" >&2
rm -rf "$VENV"
"$PY" -m venv "$VENV"
# pip's chatter goes to stderr so that stdout is only the path, for $(scripts/cellxgene-venv.sh).
# The same command as docker/cellxgene/Dockerfile.slim's.
"$VENV/bin/pip" install --disable-pip-version-check --quiet --prefer-binary --constraint "$CONSTRAINTS" \
    "cellxgene==${VERSION}" >&2

# Exactly the pinned set: a package the constraints file does not pin (pip installs it at
# whatever version it finds) or a pin nothing needed would make the tests and the image differ.
"$VENV/bin/python" - "$CONSTRAINTS" "$VENV" >&2 <<'PY'
import re
import subprocess
import sys


def pins(lines):
    """name==version with the name normalised as pip compares names (PEP 503)."""
    out = set()
    for line in lines:
        line = line.strip()
        if line and not line.startswith(("#", "-e ")):
            name, _, version = line.partition("==")
            out.add(f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}")
    return out


with open(sys.argv[1]) as constraints:
    pinned = pins(constraints)
frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--disable-pip-version-check"],
                        check=True, capture_output=True, text=True).stdout
installed = pins(frozen.splitlines())
if pinned != installed:
    print(f"the cellxgene venv at {sys.argv[2]} does not hold exactly the versions of {sys.argv[1]}:")
    for pin in sorted(pinned - installed):
        print(f"  pinned, not installed: {pin}")
    for pin in sorted(installed - pinned):
        print(f"  installed, not pinned: {pin}")
    print("Fix: regenerate the file as its header says (or pin what is missing).")
    sys.exit(1)
PY

"$VENV/bin/cellxgene" --help >/dev/null
"$VENV/bin/python" "$PATCH"
echo "$WANT" >"$STAMP"
echo "$VENV"
