#!/usr/bin/env bash
# Installs what the demo needs (venv, control plane; idempotent) and runs scripts/demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
