"""The proof of concept's documented commands keep working, as thin entry points over the package:

* ``python3 yaml_to_py.py FILE`` and ``from yaml_to_py import py_to_yaml``;
* ``kopf run -n NAMESPACE operator/operator_single-user-instances.py``;
* its ``.env`` (``K8_IP``, ``K8_PORT``, ``CLUSTER_ROOT_CERTIFICATE``, ``SERVICE_ACCOUNT``,
  ``ACCOUNT_TOKEN``, ``HOST_NAME``, ...) read by ``cxg-k8s`` from the current directory.

The operator and the CLI run as their own processes against the real control plane.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from cxg_devcluster.cluster import DevCluster, stop_process

from cxg_on_k8s import envfile
from cxg_on_k8s.api import model
from cxg_on_k8s.k8s.client import K8ApiHandler
from cxg_on_k8s.render import install, viewer
from cxg_on_k8s.settings import Settings
from tests import client_shapes, service_accounts
from tests.conftest import REPO, operator_env, wait_for
from tests.instances import DATASET, OWNER, create, instance_body, wait_phase

KOPF = Path(sys.executable).parent / "kopf"


# --- yaml_to_py.py ---------------------------------------------------------------------------------


def test_yaml_to_py_prints_a_manifest_as_a_python_dict() -> None:
    manifest = REPO / "manifests" / "deployment_sui_operator.yaml"
    result = subprocess.run([sys.executable, "yaml_to_py.py", str(manifest)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert ast.literal_eval(result.stdout) == yaml.safe_load(manifest.read_text())


def test_yaml_to_py_names_a_missing_file_and_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = subprocess.run([sys.executable, str(REPO / "yaml_to_py.py"), str(missing)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and str(missing) in result.stderr


def test_py_to_yaml_imports_from_the_repository_root() -> None:
    code = "from yaml_to_py import py_to_yaml; print(py_to_yaml({'kind': 'Service', 'spec': {'ports': [{'port': 80}]}}), end='')"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout) == {"kind": "Service", "spec": {"ports": [{"port": 80}]}}


# --- kopf run -n NS operator/operator_single-user-instances.py ---------------------------------------


@contextmanager
def seed_operator(cluster: DevCluster, namespace: str, log: Path, **settings: str) -> Iterator[None]:
    """The operator as the seed starts it, ``kopf run -n NS operator/operator_single-user-instances.py``,
    until the block ends; then it must stop cleanly on SIGINT."""
    with log.open("wb") as handle:
        proc = subprocess.Popen(
            [str(KOPF), "run", "-n", namespace, "operator/operator_single-user-instances.py"],
            cwd=REPO, env=operator_env(cluster.kubeconfig, namespace, **settings), stdout=handle,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for(lambda: "operator configured for namespace" in log.read_text() or proc.poll() is not None, 60, "the operator to start")
        assert proc.poll() is None, log.read_text()[-3000:]
        yield
    finally:
        stop_process(proc, timeout=30, sig=signal.SIGINT)
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_kopf_run_on_the_pocs_operator_file_makes_an_instance_ready(
    cluster: DevCluster, k8s: K8ApiHandler, namespace: str, tmp_path: Path
) -> None:
    log = tmp_path / "kopf-run.log"
    with seed_operator(cluster, namespace, log):
        name = create(k8s, instance_body(namespace))
        body = wait_phase(k8s, name, model.Phase.READY)
        assert body["status"]["url"] == f"http://cxg.localtest/{name}/"
        assert k8s.read_deployment(name).metadata.owner_references[0].name == name
    assert "Handler 'spawn' succeeded" in log.read_text()


def test_the_clients_of_today_become_ready_through_the_seeds_start_command(
    cluster: DevCluster, k8s: K8ApiHandler, namespace: str, tmp_path: Path
) -> None:
    """Both shapes clients render today (tests/client_shapes.py), unchanged, in a namespace that
    enforces Pod Security ``restricted`` (as the installed one does): each gets a Deployment
    named after the instance with a per-instance selector, and its pod is admitted. The operator
    is started as the seed starts it, with CXG_REQUIRE_OWNER=false, which the PoC's own test
    instance (it names nobody) needs; the portal's shape names its user and is restricted."""
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    settings = Settings(namespace=namespace)
    poc, portal = viewer.new_instance_name(), viewer.new_instance_name()
    with seed_operator(cluster, namespace, tmp_path / "kopf-run.log", require_owner="false"):
        create(k8s, client_shapes.poc_test_instance(poc, namespace))
        create(k8s, client_shapes.portal_instance(portal, namespace, "bob", "pbmc.h5ad", settings))
        restricted = {}
        for name in (poc, portal):
            body = wait_phase(k8s, name, model.Phase.READY)
            restricted[name] = {c["type"]: c for c in body["status"]["conditions"]}["Restricted"]
            deployment = k8s.read_deployment(name)  # what a client waiting on read_deployment(name) finds
            assert deployment.spec.selector.match_labels == {"instance": name}
            assert deployment.spec.replicas == 1
            (pod,) = k8s.list_pods(f"instance={name}").items
            assert pod.spec.security_context.run_as_non_root is True
        assert restricted[portal]["status"] == "True" and "bob" in restricted[portal]["message"]
        assert restricted[poc]["status"] == "False" and "every signed-in user" in restricted[poc]["message"]
        assert k8s.read_deployment(portal).metadata.labels["user"] == "bob"
        warnings = {(e.involved_object.name, e.reason) for e in k8s.list_events(poc) if e.type == "Warning"}
        assert (poc, "OpenAccess") in warnings
        # The portal form's own pods pass the enforced standard too.
        portal_form = create(k8s, instance_body(namespace))
        wait_phase(k8s, portal_form, model.Phase.READY)
        assert len(k8s.list_pods(f"instance={portal_form}").items) == 1


# --- the PoC's .env ---------------------------------------------------------------------------------


def test_env_file_parsing() -> None:
    text = (
        "# the PoC's .env\n"
        "\n"
        "K8_IP=192.168.49.2\n"
        "export K8_PORT = 8443\n"
        "HOST_NAME='cellxgene.local'\n"
        'ACCOUNT_TOKEN="eyJ # not a comment"\n'
        "KEYCLOAK_REALM=cellxgene   # a comment\n"
        "EMPTY=\n"
    )
    assert envfile.parse(text) == {
        "K8_IP": "192.168.49.2", "K8_PORT": "8443", "HOST_NAME": "cellxgene.local",
        "ACCOUNT_TOKEN": "eyJ # not a comment", "KEYCLOAK_REALM": "cellxgene", "EMPTY": "",
    }  # fmt: skip
    with pytest.raises(envfile.EnvFileError, match=r"\.env, line 2: expected KEY=VALUE"):
        envfile.parse("A=1\nnot a line\n")
    with pytest.raises(envfile.EnvFileError, match="no closing"):
        envfile.parse("A='open\n")


def test_env_file_never_overrides_the_environment(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("HOST_NAME=from-file\nKEYCLOAK_REALM=omics\n")
    environ = {"HOST_NAME": "from-environment"}
    assert envfile.load(tmp_path / ".env", environ) == ["KEYCLOAK_REALM"]
    assert environ == {"HOST_NAME": "from-environment", "KEYCLOAK_REALM": "omics"}
    assert envfile.load(tmp_path / "absent.env", environ) == []


@pytest.fixture
def poc_env_dir(cluster: DevCluster, namespace: str, tmp_path: Path) -> Iterator[Path]:
    """A directory holding a PoC-style .env: the portal's service-account token, the API server's
    address and CA, no kubeconfig anywhere."""
    rbac = install.portal_rbac(Settings(namespace=namespace))
    service_accounts.apply(cluster, rbac)
    server = urlsplit(cluster.server)
    token = service_accounts.token(cluster, namespace, install.PORTAL_ACCOUNT)
    workdir = tmp_path / "portal"
    workdir.mkdir()
    (workdir / ".env").write_text(
        "# as in the proof of concept\n"
        f"K8_IP={server.hostname}\n"
        f"K8_PORT={server.port}\n"
        f"CLUSTER_ROOT_CERTIFICATE={cluster.pki / 'ca.crt'}\n"
        f"SERVICE_ACCOUNT={install.PORTAL_ACCOUNT}\n"
        f'ACCOUNT_TOKEN="{token}"\n'
        "HOST_NAME=cellxgene.example.org\n"
        "KEYCLOAK_ENDPOINT=https://keycloak.example.org\n"
        "KEYCLOAK_REALM=omics\n"
        f"CXG_NAMESPACE={namespace}\n"
    )
    yield workdir
    service_accounts.delete_cluster_scoped(cluster, rbac)


def run_cli(workdir: Path, *args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """``cxg-k8s`` in ``workdir`` with no kubeconfig: HOME is empty, KUBECONFIG unset."""
    home = workdir.parent / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "HOST_NAME", "CXG_NAMESPACE", "CXG_HOST_NAME")}
    env.update(HOME=str(home), COLUMNS="300", **extra_env)
    return subprocess.run([sys.executable, "-m", "cxg_on_k8s", *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=120)


def test_the_cli_reads_the_pocs_env_file_and_connects_with_its_token(
    poc_env_dir: Path, k8s: K8ApiHandler
) -> None:
    name = viewer.new_instance_name()
    deployed = run_cli(poc_env_dir, "deploy", "--owner", OWNER, "--dataset", DATASET, "--name", name, "--no-wait")
    assert deployed.returncode == 0, deployed.stderr
    assert deployed.stdout.strip().splitlines()[-1] == f"https://cellxgene.example.org/{name}/"  # HOST_NAME from .env
    assert k8s.get_instance(name)["spec"]["owner"] == OWNER

    listed = run_cli(poc_env_dir, "list")
    assert listed.returncode == 0, listed.stderr
    assert any(name in line and OWNER in line for line in listed.stdout.splitlines()), listed.stdout

    # a variable set in the environment wins over the file
    rendered = run_cli(poc_env_dir, "render", "--owner", OWNER, "--dataset", DATASET, "--name", name, HOST_NAME="other.example.org")
    assert rendered.returncode == 0, rendered.stderr
    ingress = next(d for d in yaml.safe_load_all(rendered.stdout) if d["kind"] == "Ingress")
    assert ingress["spec"]["rules"][0]["host"] == "other.example.org"

    deleted = run_cli(poc_env_dir, "delete", name)
    assert deleted.returncode == 0, deleted.stderr
    wait_for(lambda: not k8s.list_instances(), 10, f"{name} to be deleted")


def test_the_pocs_token_cannot_do_more_than_the_portals_role(poc_env_dir: Path) -> None:
    """The CLI with the portal's token may not install: a readable 403, exit 1."""
    result = run_cli(poc_env_dir, "describe", "cellxgene-nope")
    assert result.returncode == 4 and "cellxgene-nope" in result.stderr
    result = run_cli(poc_env_dir, "install", "--crd-only")
    assert result.returncode == 1
    assert "cannot patch" in result.stderr and "system:serviceaccount:" in result.stderr


def test_without_env_file_or_kubeconfig_the_cli_says_how_to_connect(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_cli(tmp_path / "empty", "list")
    assert result.returncode == 2
    assert "K8_IP" in result.stderr and "KUBECONFIG" in result.stderr
