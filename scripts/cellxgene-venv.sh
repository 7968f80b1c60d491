#!/usr/bin/env bash
# Create (once) the virtual environment that holds cellxgene 1.3.0 and print its path.
#
# Why a venv of its own: cellxgene pins Flask, numpy, pandas and s3fs versions that must not
# leak into the operator's environment; in production it lives in its own image too, so the
# tests mirror that. Idempotent: a venv is only trusted once the stamp file, written after a
# successful install of exactly these requirements, is there; a half-made one is rebuilt.
#
# Env: PYTHON (default python3.11, else python3) picks the interpreter;
#      XDG_CACHE_HOME (default ~/.cache) picks where the venv lives.
set -euo pipefail

VERSION=1.3.0
REQUIREMENTS=("cellxgene==${VERSION}" "anndata" "numpy")
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/cxg-on-k8s/cellxgene-${VERSION}"
STAMP="${VENV}/.cxg-on-k8s-complete"
WANT="${REQUIREMENTS[*]}"

# The viewer images patch cellxgene's web client so that it stays under the instance's prefix;
# the venv gets the same patch (idempotent, so it runs every time), and the tests see what the
# images serve.
PATCH="$(cd "$(dirname "$0")/.." && pwd)/docker/cellxgene/prefix-patch.py"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/cellxgene" ]]; then
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
mkdir -p "$(dirname "$VENV")"
"$PY" -m venv "$VENV"
# pip's chatter goes to stderr so that stdout is only the path, for $(scripts/cellxgene-venv.sh).
"$VENV/bin/pip" install --disable-pip-version-check --quiet "${REQUIREMENTS[@]}" >&2
"$VENV/bin/cellxgene" --help >/dev/null
"$VENV/bin/python" "$PATCH"
echo "$WANT" >"$STAMP"
echo "$VENV"
