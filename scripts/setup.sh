#!/usr/bin/env bash
# Installs everything the demo and the tests need, idempotently; a second run takes seconds.
#   scripts/setup.sh          the demo's needs: the Python venv (.venv), the Go-built control plane
#                             and real node (kubelet, kube-proxy, CoreDNS, the pause program, and
#                             oauth2-proxy for the viewers' sign-in sidecar image; Debian's
#                             containerd, runc, CNI plugins and iptables by install-node-deps.sh), the
#                             cellxgene venv (the demo's dataset is generated with it) and the
#                             container images (podman, FROM a debootstrapped stand-in base)
#   scripts/setup.sh --all    plus what the full test suite needs: Debian's chromium,
#                             Keycloak, helm, Traefik (the Gateway API and Ingress
#                             edge), hadolint and the browser test's npm packages (by
#                             install-signin-deps.sh)
# The Go builds use both cores; everything that mostly waits on downloads (Debian packages, the
# debootstrap base, pip in the cellxgene venv and in the images, Keycloak, npm) runs beside them.
# Measured cold on 2 cores: the Go builds 19 min, the background steps 12 min, all hidden behind
# the builds; the whole setup about 21 min instead of about 33 one after the other.
# --all's Traefik adds about 10 min to the Go builds (612 s with empty Go caches, downloads included).
# Caches: ~/.cache/cxg-on-k8s (binaries keyed by version, venvs, Keycloak, images), Go's and pip's caches.
set -euo pipefail
cd "$(dirname "$0")/.."
all=false
[ "${1:-}" = "--all" ] && all=true
step() { printf '\n== %s\n' "$*" >&2; }

stamp=.venv/.installed
want=$(cat pyproject.toml devcluster/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  step "creating the Python venv .venv (about 2 minutes the first time)"
  python3 -m venv .venv
  # pipefail makes a failed pip stop the script; only grep's "nothing left to print" is forgiven
  # the dev cluster is a package of its own (devcluster/pyproject.toml), outside the wheel
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' -e ./devcluster 2>&1 | { grep -v "is ignored" || true; }
  echo "$want" > "$stamp"
fi

log=$(mktemp -t cxg-setup-background.XXXXXX.log)
step "in the background (log: $log): Debian packages, cellxgene 1.3.0 venv, the images (podman, FROM a debootstrapped stand-in base)$($all && echo ', Keycloak, npm packages')"
(
  set -e
  t=$SECONDS
  scripts/install-node-deps.sh
  if $all; then scripts/install-signin-deps.sh --no-go; fi
  echo "[background] Debian packages$($all && echo ', Keycloak, npm'): $((SECONDS - t)) s"
  t=$SECONDS
  scripts/cellxgene-venv.sh >/dev/null
  echo "[background] cellxgene venv: $((SECONDS - t)) s"
  scripts/build-images.sh
) >"$log" 2>&1 &
background=$!
trap 'kill $background 2>/dev/null || true' EXIT

step "building the control plane and the real node from Go modules (15-25 min the first time, seconds after)"
if $all; then
  devcluster/build.sh kubernetes etcd kwok kubelet coredns oauth2-proxy helm traefik
else
  devcluster/build.sh kubernetes etcd kwok kubelet coredns oauth2-proxy  # the viewers' sign-in sidecar
fi

step "waiting for the background steps (log: $log)"
t=$SECONDS
if ! wait $background; then
  cat "$log" >&2
  echo "a background step failed: its output is above (and in $log)" >&2
  exit 1
fi
trap - EXIT
cat "$log" >&2
echo "waited $((SECONDS - t)) s for them" >&2
rm -f "$log"
# the pause program needs gcc, which install-node-deps.sh brought
devcluster/build.sh pause
if $all; then scripts/install-signin-deps.sh; fi
