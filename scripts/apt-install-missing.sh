#!/usr/bin/env bash
# Installs those of the named Debian packages that are not installed yet; installs nothing and
# takes a second when all are. apt-get update runs only when a missing package has no install
# candidate yet (a fresh machine's empty lists). Every setup script installs through this one.
# Usage: scripts/apt-install-missing.sh PACKAGE...
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
for pkg in "${missing[@]}"; do
  if ! apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    echo "== apt-get update ($pkg has no install candidate yet)" >&2
    $SUDO apt-get update -qq -o DPkg::Lock::Timeout=600
    break
  fi
done
echo "== installing Debian packages: ${missing[*]}" >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
  --no-install-recommends "${missing[@]}" >/dev/null
