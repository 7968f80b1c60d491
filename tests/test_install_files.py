"""The install under the proof of concept's file names: the builders behind manifests/ (checked
against literal dicts), the files themselves, the kustomization, the sample instances, and the
RBAC as the real API server judges it (``kubectl auth can-i``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cxg_devcluster.cluster import DevCluster

from cxg_on_k8s.api import model
from cxg_on_k8s.cli.main import crd_objects, install_objects
from cxg_on_k8s.k8s.client import K8ApiHandler
from cxg_on_k8s.render import install, signin
from cxg_on_k8s.render.plan import plan_instance
from cxg_on_k8s.settings import Settings
from tests import service_accounts
from tests.conftest import REPO, StartOperator, install_crd, remove_peering_crd
from tests.instances import wait_phase
from tests.service_accounts import can_i

MANIFESTS = REPO / "manifests"


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- builders, against literal expected dicts ---------------------------------------------------------


def test_namespace() -> None:
    assert install.namespace("testing") == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "testing",
            "labels": {
                "app": "cellxgene",
                # enforced by the API server: no pod outside the box runs, even past the operator
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/warn": "restricted",
                "pod-security.kubernetes.io/audit": "restricted",
            },
        },
    }


def test_ingress_metrics_service() -> None:
    assert install.ingress_metrics_service(Settings(activity="ingress-nginx")) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "metrics", "namespace": "ingress-nginx", "labels": {"app": "sui-operator"}},
        "spec": {
            "type": "ClusterIP",
            "selector": {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"},
            "ports": [{"name": "metrics", "protocol": "TCP", "port": 80, "targetPort": 10254}],
        },
    }
    moved = install.ingress_metrics_service(Settings(activity="ingress-nginx", metrics_service="edge/nginx-metrics"))
    assert (moved["metadata"]["namespace"], moved["metadata"]["name"]) == ("edge", "nginx-metrics")
    # only an installation that reads activity from ingress-nginx, through a Service it names
    assert install.uses_ingress_nginx_metrics(Settings(activity="ingress-nginx")) is True
    assert install.uses_ingress_nginx_metrics(Settings()) is False  # default: the sidecars count
    assert install.uses_ingress_nginx_metrics(Settings(activity="ingress-nginx", metrics_service="")) is False


def test_kopf_peering_crd_is_kopfs_namespaced_one() -> None:
    assert install.kopf_peering_crd() == {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "kopfpeerings.kopf.dev"},
        "spec": {
            "scope": "Namespaced",
            "group": "kopf.dev",
            "names": {"kind": "KopfPeering", "plural": "kopfpeerings", "singular": "kopfpeering"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                        }
                    },
                }
            ],
        },
    }
    assert install.kopf_peering(Settings(namespace="ns1")) == {
        "apiVersion": "kopf.dev/v1",
        "kind": "KopfPeering",
        "metadata": {"name": "cxg-on-k8s", "namespace": "ns1", "labels": {"app": "sui-operator"}},
    }


def test_aws_secret_template_holds_placeholders_only() -> None:
    assert install.aws_secret_template("testing", Settings()) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "aws-cred-secret", "namespace": "testing", "labels": {"app": "cellxgene"}},
        "type": "Opaque",
        "stringData": {"AWS_ACCESS_KEY_ID": "REPLACE_ME", "AWS_SECRET_ACCESS_KEY": "REPLACE_ME", "AWS_DEFAULT_REGION": "REPLACE_ME"},
    }


def rules_of(objects: list[dict[str, Any]], kind: str, name: str) -> dict[tuple[str, str], list[str]]:
    role = next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)
    return {(group, resource): rule["verbs"] for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]}


def test_operator_rbac_is_exactly_the_verbs_it_uses() -> None:
    objects = install.operator_rbac(Settings())
    assert rules_of(objects, "Role", "sui-operator") == {
        ("cnag.eu", "singleuserinstances"): ["list", "watch", "patch", "delete"],
        ("cnag.eu", "singleuserinstances/status"): ["patch"],
        ("apps", "deployments"): ["get", "create"],
        ("", "services"): ["get", "create"],
        ("", "pods"): ["list", "watch"],
        ("networking.k8s.io", "ingresses"): ["get", "create"],
        ("networking.k8s.io", "networkpolicies"): ["get", "create"],
        ("", "events"): ["create"],
        ("events.k8s.io", "events"): ["create"],
        ("kopf.dev", "kopfpeerings"): ["get", "list", "watch", "patch", "create"],
    }
    assert rules_of(objects, "ClusterRole", "sui-operator-cellxgene") == {
        ("apiextensions.k8s.io", "customresourcedefinitions"): ["get", "list", "watch"],
        ("", "namespaces"): ["list", "watch"],
    }
    # activity from the sidecars: nothing outside the operator's namespace
    assert [o["metadata"].get("namespace") for o in objects] == ["cellxgene"] * 3 + [None] * 2
    assert all(o["metadata"]["name"] != "sui-operator-metrics" for o in objects)
    # activity from ingress-nginx: listing the metrics Service's EndpointSlices, in its namespace
    nginx = install.operator_rbac(Settings(activity="ingress-nginx"))
    assert rules_of(nginx, "Role", "sui-operator-metrics") == {("discovery.k8s.io", "endpointslices"): ["list"]}
    metrics_rbac = [o for o in nginx if o["metadata"]["name"] == "sui-operator-metrics"]
    assert [o["metadata"]["namespace"] for o in metrics_rbac] == ["ingress-nginx"] * 2
    assert nginx[:5] == objects


def test_portal_rbac_is_singleuserinstances_only() -> None:
    assert rules_of(install.portal_rbac(Settings()), "Role", "omicsdm") == {
        ("cnag.eu", "singleuserinstances"): ["get", "list", "watch", "create", "delete"],
    }


def test_operator_deployment_is_probed_bounded_non_root_and_named_in_the_peering() -> None:
    deploy = install.operator_deployment(Settings(), "cxg-on-k8s:0.1.0")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"] == {"httpGet": {"path": "/healthz", "port": "probe"}, "periodSeconds": 20}
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["env"] == [{"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    assert pod["serviceAccountName"] == "sui-operator"


def test_the_cli_installs_both_crds_the_namespace_and_the_metrics_service_only_for_ingress_nginx() -> None:
    settings = Settings()
    objects = install_objects(settings, "cxg-on-k8s:0.1.0")
    assert objects[0] == install.namespace("cellxgene")
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "CustomResourceDefinition"] == [
        model.CRD_NAME, install.KOPF_PEERING_CRD_NAME,
    ]  # fmt: skip
    assert objects[-1]["kind"] == "Deployment"
    assert all(o["kind"] != "Service" for o in objects)  # activity from the sidecars by default
    nginx = Settings(activity="ingress-nginx")
    assert install.ingress_metrics_service(nginx) in install_objects(nginx, "x")
    unnamed = Settings(activity="ingress-nginx", metrics_service="")
    assert all(o["kind"] != "Service" for o in install_objects(unnamed, "x"))
    assert [o["metadata"]["name"] for o in crd_objects()] == [model.CRD_NAME, install.KOPF_PEERING_CRD_NAME]


# --- the committed files -----------------------------------------------------------------------------------


def test_manifests_carry_the_proof_of_concepts_file_names() -> None:
    names = sorted(str(p.relative_to(MANIFESTS)) for p in MANIFESTS.rglob("*.yaml"))
    assert names == sorted([
        "crd_kopf-peering.yaml", "crd_single-user-instance.yaml", "deployment_sui_operator.yaml", "kustomization.yaml",
        "namespace_cellxgene.yaml", "namespace_testing.yaml", "secret_aws-cred.yaml", "serviceaccount_omicsdm.yaml",
        "serviceaccount_sui-operator.yaml", "templates/sui_embedded-form.yaml", "templates/sui_portal-form.yaml",
    ])  # fmt: skip
    by_file = {name: [(d["kind"], d["metadata"]["name"]) for d in load(MANIFESTS / name)] for name in names if name != "kustomization.yaml"}
    assert by_file["namespace_testing.yaml"] == [("Namespace", "testing")]
    assert by_file["serviceaccount_omicsdm.yaml"] == [
        ("ServiceAccount", "omicsdm"), ("Role", "omicsdm"), ("RoleBinding", "omicsdm"), ("Secret", "omicsdm-token"),
    ]  # fmt: skip
    assert by_file["secret_aws-cred.yaml"] == [("Secret", "aws-cred-secret")] * 2
    assert [d["metadata"]["namespace"] for d in load(MANIFESTS / "secret_aws-cred.yaml")] == ["cellxgene", "testing"]
    assert by_file["crd_kopf-peering.yaml"] == [("CustomResourceDefinition", "kopfpeerings.kopf.dev")]
    assert by_file["deployment_sui_operator.yaml"] == [("Deployment", "sui-operator")]
    # the operator's accounts and rights, none in ingress-nginx's namespace (activity from the sidecars)
    assert by_file["serviceaccount_sui-operator.yaml"] == [
        ("ServiceAccount", "sui-operator"), ("Role", "sui-operator"), ("RoleBinding", "sui-operator"),
        ("ClusterRole", "sui-operator-cellxgene"), ("ClusterRoleBinding", "sui-operator-cellxgene"),
    ]  # fmt: skip
    namespaces = {d["metadata"].get("namespace") for name in by_file for d in load(MANIFESTS / name)}
    assert namespaces == {None, "cellxgene", "testing"}
    assert (REPO / "charts" / "cxg-on-k8s" / "crds" / "crd_kopf-peering.yaml").read_text() == (MANIFESTS / "crd_kopf-peering.yaml").read_text()


def test_the_secret_template_is_clearly_a_template_and_never_installed() -> None:
    text = (MANIFESTS / "secret_aws-cred.yaml").read_text()
    assert text.startswith("# A TEMPLATE: replace every REPLACE_ME")
    for secret in load(MANIFESTS / "secret_aws-cred.yaml"):
        assert set(secret["stringData"].values()) == {"REPLACE_ME"}
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert "secret_aws-cred.yaml" not in kustomization["resources"]
    assert "namespace_testing.yaml" not in kustomization["resources"]


def test_sample_instances_are_valid_specs_of_both_forms() -> None:
    (portal,) = load(MANIFESTS / "templates" / "sui_portal-form.yaml")
    (embedded,) = load(MANIFESTS / "templates" / "sui_embedded-form.yaml")
    assert not model.SingleUserInstanceSpec.model_validate(portal["spec"]).embedded
    parsed = model.SingleUserInstanceSpec.model_validate(embedded["spec"])
    assert parsed.embedded
    deployment = embedded["spec"]["deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["selector"] == {"matchLabels": {"app": "cellxgene"}}  # as the PoC rendered it
    assert pod["initContainers"][0]["command"][:3] == ["aws", "s3", "sync"]
    assert pod["initContainers"][0]["command"][3] == "s3://cellxgene/cxg_on_k8/alice@example.org/pbmc3k.h5ad/"
    main = pod["containers"][0]
    assert main["command"][:8] == ["cellxgene", "launch", "--verbose", "-p", "5005", "--host", "0.0.0.0", "/data/pbmc3k.h5ad"]
    assert "aws s3 cp /data/annotations.csv" in main["lifecycle"]["preStop"]["exec"]["command"][2]
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for e in main["env"] if "valueFrom" in e}
    assert secrets == {"aws-cred-secret"}
    # the owner in spec.owner and a plain Ingress: nothing the operator would report as not applied
    assert embedded["spec"]["owner"] == "alice@example.org"
    ingress = embedded["spec"]["ingress"]
    assert "annotations" not in ingress["metadata"]
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["path"] == "/cellxgene-example-embedded"
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["pathType"] == "Prefix"
    meta = embedded["metadata"]
    plan = plan_instance(meta["name"], meta["namespace"], meta["labels"], parsed, Settings())
    assert plan.ignored == [] and plan.open_access is None
    deployment = next(c for c in plan.children if c["kind"] == "Deployment")
    setup = deployment["spec"]["template"]["spec"]["initContainers"][0]
    assert setup["name"] == signin.SETUP_CONTAINER
    (files,) = setup["env"]
    # the sidecar lets the owner in, and only her
    assert json.loads(files["value"].replace("$$", "$"))[signin.EMAILS_FILE] == "alice@example.org\n"


def test_kustomize_builds_the_install(cluster: DevCluster) -> None:
    rendered = cluster.kubectl("kustomize", str(MANIFESTS)).stdout
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(rendered) if d)
    assert ("CustomResourceDefinition", model.CRD_NAME) in kinds
    assert ("CustomResourceDefinition", install.KOPF_PEERING_CRD_NAME) in kinds
    assert ("Deployment", "sui-operator") in kinds and ("Namespace", "cellxgene") in kinds
    assert ("Service", "metrics") not in kinds  # activity from the sidecars: no ingress-nginx metrics
    # No credentials that applying it again could overwrite: the only Secret is the portal's
    # token, which the controller-manager fills in.
    assert [name for kind, name in kinds if kind == "Secret"] == [install.PORTAL_TOKEN_SECRET]


def test_the_api_server_accepts_the_install(cluster: DevCluster) -> None:
    """The kustomization, and the namespace and secret files applied one by one as in the PoC."""
    for name in ("namespace_cellxgene.yaml", "namespace_testing.yaml"):
        cluster.kubectl("apply", "-f", str(MANIFESTS / name))
    rendered = cluster.kubectl("kustomize", str(MANIFESTS)).stdout
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered, check=False)
    assert result.returncode == 0, result.stderr
    for expected in ("customresourcedefinition.apiextensions.k8s.io/kopfpeerings.kopf.dev",
                     "deployment.apps/sui-operator", "serviceaccount/omicsdm"):  # fmt: skip
        assert expected in result.stdout, result.stdout
    secrets = cluster.kubectl("apply", "--dry-run=server", "-f", str(MANIFESTS / "secret_aws-cred.yaml"), check=False)
    assert secrets.returncode == 0, secrets.stderr
    assert secrets.stdout.count("secret/aws-cred-secret") == 2


# --- the RBAC as the API server judges it ----------------------------------------------------------------


@pytest.fixture
def installed_rbac(cluster: DevCluster, namespace: str) -> Iterator[Settings]:
    """The RBAC of both accounts, and kopf's CRD (kubectl resolves kopfpeerings.kopf.dev through
    discovery), removed afterwards so that the rest of the session runs without peering."""
    settings = Settings(namespace=namespace)
    objects = [*install.operator_rbac(settings), *install.portal_rbac(settings)]
    install_crd(cluster, install.kopf_peering_crd())
    service_accounts.apply(cluster, objects)
    yield settings
    service_accounts.delete_cluster_scoped(cluster, objects)
    remove_peering_crd(cluster)


def test_peering_and_portal_permissions_per_kubectl_auth_can_i(cluster: DevCluster, installed_rbac: Settings) -> None:
    ns = installed_rbac.namespace
    operator, portal = f"{ns}:sui-operator", f"{ns}:omicsdm"
    peerings = "kopfpeerings.kopf.dev"
    checks = [
        *[(operator, ns, verb, peerings, True) for verb in ("get", "list", "watch", "patch", "create")],
        (operator, ns, "delete", peerings, False),
        (operator, ns, "update", peerings, False),
        (operator, "default", "patch", peerings, False),
        (operator, ns, "get", "namespaces", False),
        *[(portal, ns, verb, "singleuserinstances.cnag.eu", True) for verb in ("create", "get", "list", "watch", "delete")],
        *[(portal, ns, verb, "singleuserinstances.cnag.eu", False) for verb in ("patch", "update", "deletecollection")],
        (portal, ns, "list", peerings, False),
        (portal, ns, "list", "pods", False),
        (portal, ns, "create", "deployments.apps", False),
        (portal, "default", "create", "singleuserinstances.cnag.eu", False),
    ]
    wrong = [f"{a} {v} {r} in {n}: expected {'yes' if e else 'no'}" for a, n, v, r, e in checks if can_i(cluster, a, n, v, r) != e]
    assert wrong == []


# --- the sample instances, created as they are (in a test namespace) ---------------------------------------


@pytest.mark.parametrize("template", ["sui_portal-form.yaml", "sui_embedded-form.yaml"])
def test_a_sample_instance_becomes_ready(k8s: K8ApiHandler, start_operator: StartOperator, template: str) -> None:
    (body,) = load(MANIFESTS / "templates" / template)
    body["metadata"]["namespace"] = k8s.namespace
    for child in ("deployment", "service", "ingress"):
        if child in body["spec"]:
            body["spec"][child]["metadata"]["namespace"] = k8s.namespace
    start_operator()
    k8s.create_custom_resource(body)
    name = body["metadata"]["name"]
    wait_phase(k8s, name, model.Phase.READY)
    deployment = k8s.read_deployment(name)
    assert deployment.spec.selector.match_labels == {"instance": name}


def test_cxg_k8s_install_crd_only_installs_both_crds(cluster: DevCluster, tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    try:
        result = subprocess.run([sys.executable, "-m", "cxg_on_k8s", "install", "--crd-only"], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"applied CustomResourceDefinition {install.KOPF_PEERING_CRD_NAME}" in result.stderr
        established = cluster.kubectl("wait", "--for=condition=Established", f"crd/{install.KOPF_PEERING_CRD_NAME}", "--timeout=30s")
        assert "condition met" in established.stdout
    finally:
        remove_peering_crd(cluster)
