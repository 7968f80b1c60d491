#!/usr/bin/env bash
# Installs the Debian packages the dev cluster's real node runs, idempotently; a second run only
# checks (a second). containerd (and its ctr), runc, containernetworking-plugins (bridge,
# host-local, loopback in /usr/lib/cni), iptables (kube-proxy's and the kubelet's rules), iproute2
# (routes, the node's address on lo), gcc and libc6-dev (the static pause program), busybox-static
# (the tests' pod image: one static binary with a shell, httpd, wget and nslookup). The kubelet,
# kube-proxy, CoreDNS and the pause program itself: `devcluster/build.sh node`.
# apt-get update runs only when a missing package has no install candidate yet.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '== %s\n' "$*" >&2; }

packages=(containerd runc containernetworking-plugins iptables iproute2 gcc libc6-dev busybox-static)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  for pkg in "${missing[@]}"; do
    if ! apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
      step "apt-get update ($pkg has no install candidate yet)"
      $SUDO apt-get update -qq
      break
    fi
  done
  step "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "${missing[@]}" >/dev/null
fi
step "real-node packages ready"
