#!/usr/bin/env bash
# Installs everything the demo and the tests need, idempotently; a second run takes seconds.
#   scripts/setup.sh          the demo's needs: the Python venv (.venv), the Go-built control plane
#                             and real node (kubelet, kube-proxy, CoreDNS, the pause program; Debian's
#                             containerd, runc, CNI plugins and iptables by install-node-deps.sh), the
#                             cellxgene venv (the demo's dataset is generated with it) and the
#                             container images (podman, FROM a debootstrapped stand-in base)
#   scripts/setup.sh --all    plus what the full test suite needs: Debian's nginx and chromium,
#                             Keycloak, oauth2-proxy, helm, hadolint and the browser test's npm
#                             packages (by install-signin-deps.sh)
# Caches: ~/.cache/cxg-on-k8s (binaries keyed by version, venvs, Keycloak, images), Go's and pip's caches.
set -euo pipefail
cd "$(dirname "$0")/.."
all=false
[ "${1:-}" = "--all" ] && all=true
step() { printf '\n== %s\n' "$*" >&2; }

stamp=.venv/.installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  step "creating the Python venv .venv (about 2 minutes the first time)"
  python3 -m venv .venv
  # pipefail makes a failed pip stop the script; only grep's "nothing left to print" is forgiven
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | { grep -v "is ignored" || true; }
  echo "$want" > "$stamp"
fi

# before the build: the pause program (devcluster/build.sh pause) needs gcc
step "the real node's Debian packages: containerd, runc, CNI plugins, iptables, gcc"
scripts/install-node-deps.sh
step "building the control plane and the real node from Go modules (15-25 min the first time, seconds after)"
if $all; then devcluster/build.sh; else devcluster/build.sh kubernetes etcd kwok node; fi
step "cellxgene 1.3.0 venv (a few minutes the first time)"
scripts/cellxgene-venv.sh >/dev/null
step "container images with podman, FROM a debootstrapped stand-in base (7-9 min the first time, under a minute after)"
scripts/build-images.sh
if $all; then
  step "Keycloak, oauth2-proxy, browser test packages"
  scripts/install-signin-deps.sh
fi
