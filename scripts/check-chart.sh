#!/usr/bin/env bash
# Check the Helm chart charts/cxg-on-k8s: `helm lint --strict`, then `helm template` with the
# default values and with a values set that switches every option, and compare what it renders
# with what the Python builders (cxg_on_k8s.render, cxg_on_k8s.api.crd) make for the same
# settings. Exits non-zero on any lint finding, template error or difference.
#
# Usage: scripts/check-chart.sh [OUTDIR]
#   OUTDIR (default: a temporary directory, removed afterwards) receives the rendered manifests
#   (default.yaml, all-options.yaml), e.g. for `kubectl apply --dry-run=server -f OUTDIR/...`.
# Env: HELM   helm binary (default: the one devcluster/build.sh builds; built if absent)
#      PYTHON python with cxg_on_k8s importable (default: the project's .venv/bin/python)
#      KUBE_VERSION the Kubernetes version `helm template` assumes (default: the dev cluster's,
#             v1.36.3; a helm built from source otherwise assumes v1.20, below the chart's kubeVersion)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
chart="$root/charts/cxg-on-k8s"
HELM_VERSION=v3.22.0
bin_dir=${CXG_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cxg-on-k8s/bin}
helm=${HELM:-$bin_dir/helm-$HELM_VERSION}
python=${PYTHON:-$root/.venv/bin/python}
kube_version=${KUBE_VERSION:-v1.36.3}

if [[ ! -x "$helm" ]]; then
    echo "helm not found at $helm: building it with devcluster/build.sh helm" >&2
    "$root/devcluster/build.sh" helm
fi

if [[ $# -gt 0 ]]; then
    out=$1
    mkdir -p "$out"
else
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi

# A values set that turns every switch the other way and moves every name a template derives.
cat >"$out/all-options.values.yaml" <<'EOF'
namespace: viewers
createNamespace: true
image:
  repository: registry.example.org/cxg-on-k8s
  tag: 1.2.3
portal:
  enabled: false
settings:
  host_name: cellxgene.example.org
  url_scheme: http
  edge: gateway
  viewer_workload: pod
  gateway: edge/public
  activity: ingress-nginx
  metrics_service: monitoring/nginx-metrics
  oidc_insecure_skip_verify: true
  keycloak_endpoint: https://keycloak.example.org//
  keycloak_realm: omics
  ingress_class: public
  tick: 15.5
  max_lifespan: 1209600
  s3_endpoint_url: http://127.0.0.1:5000
  image_pull_policy: Always
EOF

echo "--- helm lint" >&2
"$helm" lint --strict "$chart"
"$helm" lint --strict "$chart" -f "$out/all-options.values.yaml"

echo "--- helm template" >&2
"$helm" template cxg "$chart" --kube-version "$kube_version" --namespace cellxgene --include-crds \
    >"$out/default.yaml"
"$helm" template cxg "$chart" --kube-version "$kube_version" --namespace viewers --include-crds \
    -f "$out/all-options.values.yaml" >"$out/all-options.yaml"

echo "--- compare with the Python builders" >&2
"$python" - "$out" <<'EOF'
"""The chart must render exactly the builders' objects; Helm's own labels aside."""

import sys
from pathlib import Path

import yaml

from cxg_on_k8s.api.crd import definition
from cxg_on_k8s.render import install
from cxg_on_k8s.settings import Settings

out = Path(sys.argv[1])
HELM_LABEL_PREFIXES = ("app.kubernetes.io/", "helm.sh/")


def load(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def normalise(doc, settings, problems):
    meta = doc.get("metadata", {})
    labels = {k: v for k, v in meta.get("labels", {}).items() if not k.startswith(HELM_LABEL_PREFIXES)}
    if "labels" in meta:
        meta["labels"] = labels
    if doc["kind"] == "Deployment" and meta["name"] == install.OPERATOR_NAME:
        # The builder passes only non-default settings, the chart passes all of them: compare
        # what the operator would read, not the list.
        container = doc["spec"]["template"]["spec"]["containers"][0]
        entries = container.pop("env")
        # Settings (CXG_*) are compared as the operator reads them; the rest (POD_ID) as they are.
        env = {e["name"]: e.get("value") or "" for e in entries if e["name"].startswith("CXG_")}
        container["otherEnv"] = sorted((e for e in entries if not e["name"].startswith("CXG_")), key=lambda e: e["name"])
        try:
            read = Settings.from_env(env)
        except Exception as exc:  # noqa: BLE001 - report, do not crash
            problems.append(f"operator env does not parse: {exc}")
        else:
            if read != settings:
                diff = {k: (getattr(read, k), getattr(settings, k)) for k in Settings.model_fields
                        if getattr(read, k) != getattr(settings, k)}
                problems.append(f"operator env reads as different settings (got, want): {diff}")
    return doc


def key(doc):
    return (doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"])


def compare(name, rendered, expected, settings):
    problems = []
    got = {key(d): normalise(d, settings, problems) for d in rendered}
    want = {key(d): normalise(d, settings, problems) for d in expected}
    for k in sorted(set(got) | set(want)):
        if k not in got:
            problems.append(f"missing from the chart: {k}")
        elif k not in want:
            problems.append(f"rendered by the chart only: {k}")
        elif got[k] != want[k]:
            problems.append(
                f"{k} differs:\n--- chart\n{yaml.safe_dump(got[k], sort_keys=True)}"
                f"--- builder\n{yaml.safe_dump(want[k], sort_keys=True)}"
            )
    for p in problems:
        print(f"{name}: {p}", file=sys.stderr)
    print(f"{name}: {len(got)} objects, {'OK' if not problems else f'{len(problems)} problems'}", file=sys.stderr)
    return not problems


# Default values: what manifests/ holds, plus the CRD.
s = Settings()
ok = compare(
    "default",
    load(out / "default.yaml"),
    [definition(), install.kopf_peering_crd(), *install.operator_rbac(s), *install.portal_rbac(s),
     install.operator_deployment(s, "cxg-on-k8s:0.1.0")],
    s,
)  # fmt: skip

# Every option switched.
image = "registry.example.org/cxg-on-k8s:1.2.3"
s = Settings(
    namespace="viewers", host_name="cellxgene.example.org", url_scheme="http", edge="gateway",
    viewer_workload="pod", gateway="edge/public", activity="ingress-nginx", metrics_service="monitoring/nginx-metrics",
    oidc_insecure_skip_verify=True,
    keycloak_endpoint="https://keycloak.example.org//", keycloak_realm="omics", ingress_class="public",
    tick=15.5, max_lifespan=1209600, s3_endpoint_url="http://127.0.0.1:5000", userdata_image=image,
    image_pull_policy="Always",
)  # fmt: skip
deploy = install.operator_deployment(s, image)
ok &= compare(
    "all-options",
    load(out / "all-options.yaml"),
    [definition(), install.kopf_peering_crd(), install.namespace(s.namespace), *install.operator_rbac(s), deploy,
     install.ingress_metrics_service(s)],
    s,
)
sys.exit(0 if ok else 1)
EOF
echo "chart OK: lint, template and builder comparison passed" >&2
