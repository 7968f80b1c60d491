"""Service-account credentials for tests: a real token from the API server (``kubectl create
token``), as a bare token (the PoC's ACCOUNT_TOKEN) or in a kubeconfig of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from cxg_devcluster.cluster import DevCluster


def apply(cluster: DevCluster, objects: list[dict[str, Any]]) -> None:
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))


def delete_cluster_scoped(cluster: DevCluster, objects: list[dict[str, Any]]) -> None:
    """Namespaced objects go with their namespace; the cluster-scoped ones are deleted here."""
    scoped = [o for o in objects if "namespace" not in o["metadata"]]
    if scoped:
        cluster.kubectl("delete", "-f", "-", "--wait=false", "--ignore-not-found", input=yaml.safe_dump_all(scoped), check=False)


def token(cluster: DevCluster, namespace: str, account: str) -> str:
    return cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").stdout.strip()


def kubeconfig(cluster: DevCluster, namespace: str, account: str, path: Path) -> Path:
    """A kubeconfig holding nothing but the account's token."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "devcluster", "cluster": {"server": cluster.server, "certificate-authority": str(cluster.pki / "ca.crt")}}],
        "users": [{"name": account, "user": {"token": token(cluster, namespace, account)}}],
        "contexts": [{"name": account, "context": {"cluster": "devcluster", "user": account, "namespace": namespace}}],
        "current-context": account,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def can_i(cluster: DevCluster, account: str, namespace: str, *request: str) -> bool:
    """What the API server says the account (``namespace:name``) may do, by ``kubectl auth can-i``:
    the RBAC as it is enforced, not as the manifests read."""
    result = cluster.kubectl(
        "auth", "can-i", *request, "-n", namespace, f"--as=system:serviceaccount:{account}", check=False
    )
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl auth can-i {' '.join(request)}: {result.stdout}{result.stderr}"
    return answer == "yes"
