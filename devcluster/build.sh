#!/usr/bin/env bash
# Builds the Go programs the tests run (control plane, etcd, kwok, oauth2-proxy, helm, Traefik,
# and the real node's kubelet, kube-proxy and CoreDNS) from the module proxy, and the real node's
# pause program (devcluster/pause/pause.c, gcc -static). Each binary lands in $CXG_BIN_DIR under
# a name that carries its version, so a second run finds it and builds nothing; Go's own build and
# module caches make a rebuild after a version bump incremental.
# Usage: devcluster/build.sh [component ...]   (default: all; `node` = kubelet coredns pause)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin_dir=${CXG_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cxg-on-k8s/bin}
mkdir -p "$bin_dir"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
OAUTH2_PROXY_VERSION=v7.15.6
HELM_VERSION=v3.22.0
TRAEFIK_VERSION=v3.6.12
# The Gateway API that Traefik's go.mod requires: its CRDs must be the ones its client speaks.
GATEWAY_API_VERSION=v1.4.0
COREDNS_VERSION=v1.15.0
# The pause program's "version" is its source's digest, so an edit builds a new binary.
PAUSE_VERSION=$(sha256sum "$here/pause/pause.c" | cut -c1-12)

k8s_ldflags="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=36 -X k8s.io/component-base/version.gitTreeState=clean"

# build MODULE_DIR VERSION LDFLAGS NAME=PACKAGE... : builds each package's command as NAME-VERSION.
# (Packages are built one by one: `go build -o DIR/` would name a `/v3` module's command `server`.)
build() {
  local dir=$1 version=$2 ldflags=$3; shift 3
  local item name pkg start
  for item in "$@"; do
    name=${item%%=*} pkg=${item#*=}
    [ -x "$bin_dir/$name-$version" ] && continue
    echo "building $name $version (the first build of the control plane takes 15-25 min on 2 cores)" >&2
    start=$SECONDS
    # -s -w: no symbol table or DWARF, which the tests never read and which slow the link
    (cd "$here/go/$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$bin_dir/.$name-$version.tmp" "$pkg")
    mv "$bin_dir/.$name-$version.tmp" "$bin_dir/$name-$version"
    echo "built $name in $((SECONDS - start)) s" >&2
  done
}

# kwok only acts through Stage objects; its module ships the "fast" set (nodes turn Ready, pods
# Running and Ready, deleted pods go), which kwokctl uses too. Collect them from the module cache.
kwok_stages() {
  local out="$bin_dir/kwok-stages-$KWOK_VERSION.yaml"
  [ -s "$out" ] && return 0
  local src
  src=$(cd "$here/go/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage
  for f in node/fast/node-initialize.yaml node/heartbeat/node-heartbeat.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    echo "---"; cat "$src/$f"
  done > "$out.tmp"
  mv "$out.tmp" "$out"
}

# Traefik's Gateway provider watches the Gateway API's kinds, which a cluster only has once their
# CRDs are installed. The standard channel's CRDs ship inside the module Traefik is built with;
# collect them from the module cache, so the tests apply exactly the version Traefik speaks.
gateway_api_crds() {
  local out="$bin_dir/gateway-api-crds-$GATEWAY_API_VERSION.yaml"
  [ -s "$out" ] && return 0
  local dir version
  read -r dir version < <(cd "$here/go/traefik" && go list -m -f '{{.Dir}} {{.Version}}' sigs.k8s.io/gateway-api)
  if [ "$version" != "$GATEWAY_API_VERSION" ]; then
    echo "devcluster/go/traefik requires sigs.k8s.io/gateway-api $version, not $GATEWAY_API_VERSION:" \
         "set GATEWAY_API_VERSION in devcluster/build.sh (and in tests/fixtures_edge.py)" >&2
    exit 1
  fi
  for f in "$dir"/config/crd/standard/*.yaml; do
    echo "---"; cat "$f"
  done > "$out.tmp"
  mv "$out.tmp" "$out"
}

# The pause program: static, so its image holds this one file and nothing else.
build_pause() {
  local out="$bin_dir/pause-$PAUSE_VERSION"
  [ -x "$out" ] && return 0
  gcc -static -O2 -s -Wall -Wextra -Werror -o "$out.tmp" "$here/pause/pause.c"
  mv "$out.tmp" "$out"
  echo "built pause $PAUSE_VERSION" >&2
}

components="kubernetes etcd kwok oauth2-proxy helm traefik kubelet coredns pause (node = kubelet coredns pause)"
want=()
for c in "$@"; do
  if [ "$c" = node ]; then want+=(kubelet coredns pause); else want+=("$c"); fi
done
[ ${#want[@]} -eq 0 ] && want=(kubernetes etcd kwok oauth2-proxy helm traefik kubelet coredns pause)
for c in "${want[@]}"; do
  case $c in
    kubernetes) build kubernetes "$K8S_VERSION" "$k8s_ldflags" \
      kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
      kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
      kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler kubectl=k8s.io/kubernetes/cmd/kubectl ;;
    etcd) build etcd "$ETCD_VERSION" "" etcd=go.etcd.io/etcd/server/v3 ;;
    kwok) build kwok "$KWOK_VERSION" "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" kwok=sigs.k8s.io/kwok/cmd/kwok
      kwok_stages ;;
    oauth2-proxy) build oauth2-proxy "$OAUTH2_PROXY_VERSION" "-X github.com/oauth2-proxy/oauth2-proxy/v7/pkg/version.VERSION=$OAUTH2_PROXY_VERSION" oauth2-proxy=github.com/oauth2-proxy/oauth2-proxy/v7 ;;
    kubelet) build kubernetes "$K8S_VERSION" "$k8s_ldflags" \
      kubelet=k8s.io/kubernetes/cmd/kubelet kube-proxy=k8s.io/kubernetes/cmd/kube-proxy ;;
    coredns) build coredns "$COREDNS_VERSION" "" coredns=. ;;  # main.go: only the plugins we use
    pause) build_pause ;;
    helm) build helm "$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" helm=helm.sh/helm/v3/cmd/helm ;;
    traefik) build traefik "$TRAEFIK_VERSION" "-X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" \
      traefik=github.com/traefik/traefik/v3/cmd/traefik
      gateway_api_crds ;;
    *) echo "unknown component '$c': choose from $components" >&2; exit 2 ;;
  esac
done
