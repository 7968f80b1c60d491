"""``cxg-k8s`` as a user runs it (its own process, stdout through a pipe) against the real API
server: listings that can be copied whole, an install that applies on a cluster without
ingress-nginx, and owners the API server, the model and the CLI refuse alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from cxg_devcluster.cluster import DevCluster
from pydantic import ValidationError

from cxg_on_k8s.api import crd, model
from cxg_on_k8s.cli.main import install_objects
from cxg_on_k8s.k8s.client import ApiError, K8ApiHandler
from cxg_on_k8s.render import install, viewer
from cxg_on_k8s.settings import DEFAULT_OPERATOR_IMAGE, Settings
from tests.conftest import REPO, remove_peering_crd

MANIFESTS = REPO / "manifests"
OWNER = "alice@example.org"
DATASET = "s3://cellxgene/pbmc3k.h5ad"

Cli = Callable[..., subprocess.CompletedProcess[str]]


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, stdout a pipe (not a terminal) and a terminal width of 40."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CXG_", "FORCE_COLOR"))}
    return subprocess.run(
        [sys.executable, "-m", "cxg_on_k8s", *args],
        env={**clean, "COLUMNS": "40", "TERM": "xterm-256color", **env},
        check=False, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture
def cli(cluster: DevCluster, namespace: str) -> Cli:
    env = {"KUBECONFIG": str(cluster.kubeconfig), "CXG_NAMESPACE": namespace}
    return lambda *args, **kw: run_cli(env, *args, **kw)


# --- machine output and piped tables: whole values, never wrapped, cut or styled ----------------------


@pytest.fixture
def long_instance(k8s: K8ApiHandler) -> dict[str, str]:
    """An instance with a name of the longest a label allows (63), a long URL and a long message."""
    name = "cellxgene-" + "0b6f3c1e9d7a4c558f0e1a2b3c4d5e6f-long-name-for-copying"[:53]
    assert len(name) == 63
    body = viewer.instance_body(name, k8s.namespace, {"owner": OWNER, "dataset": DATASET})
    k8s.create_custom_resource(body)
    url = f"https://cellxgene.viewers.example.org/{name}/"
    message = "waiting for the viewer pod to become ready, " + "the dataset is large and takes a while " * 3
    k8s.patch_instance_status(name, {"phase": "Starting", "url": url, "message": message.strip()})
    return {"name": name, "url": url, "message": message.strip()}


def test_list_piped_into_a_narrow_terminal_prints_whole_values(cli: Cli, long_instance: dict[str, str]) -> None:
    result = cli("list")
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout  # not styled
    header, row = result.stdout.splitlines()
    assert header.split() == ["NAME", "OWNER", "PHASE", "URL", "AGE", "EXPIRES"]
    assert row.split()[:4] == [long_instance["name"], OWNER, "Starting", long_instance["url"]]
    # kubectl's layout: every column starts where its header does.
    assert row.index(long_instance["url"]) == header.index("URL")


def test_machine_output_is_never_wrapped_cut_or_styled(cli: Cli, long_instance: dict[str, str]) -> None:
    name = cli("list", "-o", "name")
    assert name.returncode == 0, name.stderr
    assert name.stdout == f"{model.SINGULAR}.{model.GROUP}/{long_instance['name']}\n"

    as_json = cli("list", "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert "\x1b[" not in as_json.stdout
    (item,) = json.loads(as_json.stdout)
    assert item["status"]["url"] == long_instance["url"]

    for args in (["list", "-o", "yaml"], ["describe", long_instance["name"]]):
        result = cli(*args)
        assert result.returncode == 0, result.stderr
        assert "\x1b[" not in result.stdout
        lines = result.stdout.splitlines()
        # a long string stays on one line (PyYAML folds at 80 columns unless told otherwise)
        assert f"message: {long_instance['message']}" in [line.strip() for line in lines]
        assert f"url: {long_instance['url']}" in [line.strip() for line in lines]


def test_an_empty_list_prints_the_header_only(cli: Cli) -> None:
    result = cli("list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["NAME", "OWNER", "PHASE", "URL", "AGE", "EXPIRES"]
    assert cli("list", "-o", "name").stdout == ""


# --- the plain-kubectl install on a cluster without ingress-nginx ------------------------------------------


def key(doc: dict[str, Any]) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", ""), doc["metadata"]["name"]


def kustomized(cluster: DevCluster) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(cluster.kubectl("kustomize", str(MANIFESTS)).stdout) if d]


def test_the_kustomization_needs_no_namespace_it_does_not_create(cluster: DevCluster) -> None:
    """`kubectl apply -k manifests/` on a bare cluster: nothing lands in a namespace someone else's
    install (ingress-nginx) would have to create first."""
    docs = kustomized(cluster)
    created = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    elsewhere = [key(d) for d in docs if d["metadata"].get("namespace") not in (None, *created)]
    assert elsewhere == []
    header = (MANIFESTS / "kustomization.yaml").read_text()
    assert "# Needs only a cluster: every object is cluster-scoped or in the namespace cellxgene," in header
    assert "ingress-nginx" not in header  # nothing left out for later: no file to apply once it is installed
    # A server-side dry run cannot create the namespace the rest goes into: apply it for real.
    cluster.kubectl("apply", "-f", str(MANIFESTS / "namespace_cellxgene.yaml"))
    result = cluster.kubectl("apply", "-k", str(MANIFESTS), "--dry-run=server", check=False)
    assert result.returncode == 0, result.stderr
    assert "deployment.apps/sui-operator" in result.stdout and "ingress-nginx" not in result.stdout


def test_the_kustomization_holds_what_the_builders_and_cxg_k8s_install_make(cluster: DevCluster) -> None:
    """Each object once, nothing missing: with activity from the sidecars there is nothing in
    ingress-nginx's namespace to keep in a file of its own."""
    settings = Settings()
    built = [install.namespace(settings.namespace), crd.definition(), install.kopf_peering_crd(),
             *install.operator_rbac(settings), *install.portal_rbac(settings),
             install.operator_deployment(settings, DEFAULT_OPERATOR_IMAGE)]  # fmt: skip
    docs = kustomized(cluster)
    assert sorted(map(key, docs)) == sorted(map(key, built))
    assert sorted(map(key, install_objects(settings, DEFAULT_OPERATOR_IMAGE))) == sorted(map(key, built))


def test_cxg_k8s_install_skips_what_belongs_in_a_missing_namespace(cluster: DevCluster, namespace: str) -> None:
    """`cxg-k8s install` goes through to the operator's Deployment and names what it left out
    (with activity ingress-nginx; by default nothing of ingress-nginx is installed at all)."""
    env = {
        "KUBECONFIG": str(cluster.kubeconfig),
        "CXG_NAMESPACE": namespace,
        "CXG_METRICS_SERVICE": "no-ingress-here/metrics",
    }
    try:
        sidecars = run_cli(env, "install")
        assert sidecars.returncode == 0, sidecars.stderr
        assert f"applied Deployment {namespace}/sui-operator" in sidecars.stderr
        assert "no-ingress-here" not in sidecars.stderr and "skipped" not in sidecars.stderr
        result = run_cli({**env, "CXG_ACTIVITY": "ingress-nginx"}, "install")
        assert result.returncode == 0, result.stderr
        assert f"applied Deployment {namespace}/sui-operator" in result.stderr
        assert "skipped Service no-ingress-here/metrics" in result.stderr
        assert "skipped Role no-ingress-here/sui-operator-metrics" in result.stderr
        assert "namespace no-ingress-here not found" in result.stderr
        cluster.kubectl("get", "-n", namespace, "deployment/sui-operator")
    finally:
        cluster.kubectl("delete", "clusterrolebinding,clusterrole", f"sui-operator-{namespace}", "--ignore-not-found")
        remove_peering_crd(cluster)


# --- owners: no whitespace or control characters, refused alike by the API server and the model -------


BAD_OWNERS = [
    f"{OWNER}\n", f"{OWNER}\r\n", f"\n{OWNER}", f"{OWNER}\nbob@example.org", "alice smith", "alice\t", "alice\x00",
    "alice\x7f", "alice\x85",
]  # fmt: skip


@pytest.mark.parametrize("owner", BAD_OWNERS, ids=repr)
def test_the_api_server_refuses_whitespace_or_control_characters_in_owner(k8s: K8ApiHandler, owner: str) -> None:
    body = viewer.instance_body("cellxgene-bad-owner", k8s.namespace, {"owner": owner, "dataset": DATASET})
    with pytest.raises(ApiError) as caught:
        k8s.create_custom_resource(body)
    assert caught.value.status == 422
    assert "spec.owner" in str(caught.value)
    assert k8s.list_instances() == []


@pytest.mark.parametrize("owner", BAD_OWNERS, ids=repr)
def test_the_model_refuses_what_the_api_server_refuses(owner: str) -> None:
    with pytest.raises(ValidationError) as caught:
        model.SingleUserInstanceSpec.model_validate({"owner": owner, "dataset": DATASET})
    assert [e["loc"] for e in caught.value.errors()] == [("owner",)]


@pytest.mark.parametrize("owner", [OWNER, "bob", "josé@example.org", "a.b+tag@example.org"])
def test_ordinary_owners_are_still_accepted(k8s: K8ApiHandler, owner: str) -> None:
    model.SingleUserInstanceSpec.model_validate({"owner": owner, "dataset": DATASET})
    name = viewer.new_instance_name()
    k8s.create_custom_resource(viewer.instance_body(name, k8s.namespace, {"owner": owner, "dataset": DATASET}))
    assert k8s.get_instance(name)["spec"]["owner"] == owner


def test_deploy_refuses_a_newline_in_owner_naming_the_field(cli: Cli, k8s: K8ApiHandler) -> None:
    result = cli("deploy", "--owner", f"{OWNER}\n", "--dataset", DATASET, "--no-wait")
    assert result.returncode == 2
    assert "spec.owner = 'alice@example.org\\n'" in result.stderr
    assert k8s.list_instances() == []
