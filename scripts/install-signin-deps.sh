#!/usr/bin/env bash
# Installs what the sign-in tests run (tests/test_keycloak_setup.py, tests/test_signin_on_node.py),
# idempotently; a second run only checks and takes seconds.
#   - Keycloak 26.7.3 (Maven Central org.keycloak:keycloak-quarkus-dist zip), unpacked under
#     ${XDG_CACHE_HOME:-~/.cache}/cxg-on-k8s/keycloak-26.7.3/ (a stamp marks a complete unpack);
#   - oauth2-proxy v7.15.6 (the viewers' sign-in sidecar), built from its Go module by
#     devcluster/build.sh if the binary is absent;
#   - the browser test's npm packages (playwright-core, no browser download) by `npm ci`;
#   - Debian packages, only those missing: chromium, chromium-driver, unzip, iptables (the
#     activity test makes one pod's sidecar unreachable with a rule of this host).
# Installs mvn and node/npm from Debian when missing. Needs a JDK 21+ under /usr/lib/jvm (or
# CXG_JAVA_HOME; scripts/find-jdk.sh) to run Keycloak.
# Usage: scripts/install-signin-deps.sh [--no-go]   (--no-go: leave oauth2-proxy to a
#        devcluster/build.sh running beside it, as scripts/setup.sh does)
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '== %s\n' "$*" >&2; }

KEYCLOAK_VERSION=26.7.3
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/cxg-on-k8s
KEYCLOAK_DIR=$CACHE/keycloak-$KEYCLOAK_VERSION
KEYCLOAK_ZIP=$KEYCLOAK_DIR/keycloak-quarkus-dist-$KEYCLOAK_VERSION.zip
KEYCLOAK_STAMP=$KEYCLOAK_DIR/.unpacked
OAUTH2_PROXY=${CXG_BIN_DIR:-$CACHE/bin}/oauth2-proxy-v7.15.6

packages=(chromium chromium-driver unzip iptables)
command -v mvn >/dev/null || packages+=(maven)        # fetches the Keycloak zip from Maven Central
command -v npm >/dev/null || packages+=(nodejs npm)   # the browser test's packages
scripts/apt-install-missing.sh "${packages[@]}"

if [ ! -f "$KEYCLOAK_STAMP" ]; then
  mkdir -p "$KEYCLOAK_DIR"
  if [ ! -f "$KEYCLOAK_ZIP" ]; then
    step "downloading Keycloak $KEYCLOAK_VERSION from Maven Central (about 170 MB)"
    mvn -q -B dependency:copy \
      -Dartifact="org.keycloak:keycloak-quarkus-dist:$KEYCLOAK_VERSION:zip" \
      -DoutputDirectory="$KEYCLOAK_DIR"
  fi
  step "unpacking Keycloak into $KEYCLOAK_DIR"
  rm -rf "$KEYCLOAK_DIR/keycloak-$KEYCLOAK_VERSION"
  (cd "$KEYCLOAK_DIR" && unzip -q "$KEYCLOAK_ZIP")
  echo "$KEYCLOAK_VERSION" >"$KEYCLOAK_STAMP"
fi
scripts/find-jdk.sh >/dev/null  # says what is missing and fails when no JDK can run Keycloak

if [ "${1:-}" != --no-go ] && [ ! -x "$OAUTH2_PROXY" ]; then
  step "building oauth2-proxy (devcluster/build.sh oauth2-proxy)"
  devcluster/build.sh oauth2-proxy
fi

# npm ci wipes and reinstalls node_modules; skip it while the installed tree matches the lock.
lock=tests/browser/package-lock.json
if ! cmp -s "$lock" tests/browser/node_modules/.package-lock.json.installed 2>/dev/null; then
  step "installing the browser test's npm packages (npm ci in tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  cp "$lock" tests/browser/node_modules/.package-lock.json.installed
fi
step "sign-in test dependencies ready"
