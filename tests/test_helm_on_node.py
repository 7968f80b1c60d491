"""Installed the way the README tells a user to: ``helm install`` of the chart with the operator
image built here, so the operator runs in a pod on the real node under its own ServiceAccount
(its RBAC exercised for real, its API calls through the ``kubernetes`` Service), and a viewer it
starts becomes Ready (issue 13). moto on the real node's address is the S3 store.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

pytest.register_assert_rewrite("tests.fixtures_node", "tests.fixtures_s3")  # before their import: their asserts explain

from cxg_devcluster.cluster import DevCluster, default_bin_dir  # noqa: E402
from cxg_devcluster.node import NODE_IP, NODE_NAME, RealNode  # noqa: E402

from cxg_on_k8s.api import model  # noqa: E402
from cxg_on_k8s.k8s.client import K8ApiHandler, load_client  # noqa: E402
from cxg_on_k8s.render import install, signin, viewer  # noqa: E402
from cxg_on_k8s.settings import DEFAULT_OPERATOR_IMAGE, Settings  # noqa: E402
from tests.conftest import REPO, remove_peering_crd, wait_for  # noqa: E402
from tests.fixtures_node import create_real_namespace  # noqa: E402
from tests.fixtures_s3 import moto_with_keys  # noqa: E402
from tests.instances import create, wait_phase  # noqa: E402

pytest_plugins = ["tests.fixtures_node", "tests.fixtures_s3"]

HELM = default_bin_dir() / "helm-v3.22.0"


@pytest.fixture
def helm_release(
    cluster: DevCluster, real_node: RealNode, project_images: list[str], small_h5ad: Path, tmp_path: Path
) -> Iterator[tuple[K8ApiHandler, str]]:
    """The chart installed into a namespace on the real node; yields the handler and the dataset."""
    namespace = create_real_namespace(cluster)
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    with moto_with_keys(tmp_path / "moto.log", host=NODE_IP) as s3:
        bucket = f"cxg-helm-{uuid.uuid4().hex[:8]}"
        s3.client().create_bucket(Bucket=bucket)
        s3.client().put_object(Bucket=bucket, Key="pbmc-small.h5ad", Body=small_h5ad.read_bytes())
        secret = {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "aws-cred-secret", "namespace": namespace},
            "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key},
        }  # fmt: skip
        # The sign-in sidecar mounts the OIDC client's Secret; nobody signs in here: a placeholder.
        client = signin.client_secret(Settings(namespace=namespace), "cellxgene", "not-used-here")
        cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([secret, client]))
        repository, _, tag = DEFAULT_OPERATOR_IMAGE.partition(":")
        values = {
            "namespace": namespace,
            "image": {"repository": repository, "tag": tag},
            "metricsService": {"create": False},
            "settings": {"metrics_service": "", "image_pull_policy": "Never", "s3_endpoint_url": s3.endpoint, "s3_bucket": bucket,
                         "default_cpu": "250m", "default_memory": "1Gi", "url_scheme": "http"},
        }  # fmt: skip
        (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
        env = {"KUBECONFIG": str(cluster.kubeconfig), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
        installed = subprocess.run(
            [str(HELM), "install", "cxg", str(REPO / "charts" / "cxg-on-k8s"), "-n", namespace, "-f", str(tmp_path / "values.yaml")],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert installed.returncode == 0, installed.stderr
        try:
            yield K8ApiHandler(client=load_client(str(cluster.kubeconfig)), namespace=namespace), f"s3://{bucket}/pbmc-small.h5ad"
        finally:
            subprocess.run([str(HELM), "uninstall", "cxg", "-n", namespace, "--wait", "--timeout", "60s"],
                           capture_output=True, text=True, timeout=120, env=env, check=False)  # fmt: skip
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
            # The chart brings kopf's peering CRD; the rest of the session runs as a cluster without it.
            remove_peering_crd(cluster)


def test_the_chart_runs_the_operator_in_a_pod_that_starts_a_viewer(cluster: DevCluster, helm_release: tuple[K8ApiHandler, str]) -> None:
    k8s, dataset = helm_release
    operator = wait_for(
        lambda: [p for p in k8s.list_pods("app=sui-operator").items if p.status.phase == "Running"
                 and all(c.ready for c in p.status.container_statuses or [])],
        240, "the operator pod to be Running and Ready",
    )[0]  # fmt: skip
    assert operator.spec.node_name == NODE_NAME
    assert operator.spec.service_account_name == install.OPERATOR_NAME
    name = create(k8s, viewer.instance(viewer.new_instance_name(), k8s.namespace, "ada@example.org", dataset))
    wait_phase(k8s, name, model.Phase.READY, timeout=300)
    (viewer_pod,) = k8s.list_pods(f"instance={name}").items
    assert viewer_pod.spec.node_name == NODE_NAME
    logs = cluster.kubectl("logs", "-n", k8s.namespace, operator.metadata.name).stdout
    assert "peering" in logs and f"operator configured for namespace {k8s.namespace}" in logs
