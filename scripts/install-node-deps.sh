#!/usr/bin/env bash
# Installs the Debian packages the dev cluster's real node runs, idempotently; a second run only
# checks (a second). containerd (and its ctr), runc, containernetworking-plugins (bridge,
# host-local, loopback in /usr/lib/cni), iptables (kube-proxy's and the kubelet's rules), iproute2
# (routes, the node's address on lo), gcc and libc6-dev (the static pause program), busybox-static
# (the tests' pod image: one static binary with a shell, httpd, wget and nslookup). The kubelet,
# kube-proxy, CoreDNS and the pause program itself: `devcluster/build.sh node`.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '== %s\n' "$*" >&2; }

packages=(containerd runc containernetworking-plugins iptables iproute2 gcc libc6-dev busybox-static)
scripts/apt-install-missing.sh "${packages[@]}"
step "real-node packages ready"
