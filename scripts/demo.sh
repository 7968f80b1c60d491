#!/usr/bin/env bash
# Installs what the demo needs (scripts/setup.sh: venv, control plane, real node, images;
# idempotent) and runs scripts/demo.py; root, as the real node needs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
