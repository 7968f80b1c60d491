"""The dev cluster's real node for tests: the node itself, a test image, the project's images, a
namespace whose pods run on it.

Loaded with ``pytest_plugins = ["tests.fixtures_node"]``. The node starts on the session's
cluster the first time a test asks for it and stops before the control plane does. Pods go to kwok
unless their namespace is opted in (``real_namespace`` here, or
:func:`cxg_devcluster.node.namespace_annotations` on any namespace): an end-to-end test of
the operator uses such a namespace and leaves the rendered manifests as they are.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cxg_devcluster.cluster import DevCluster
from cxg_devcluster.node import RealNode, namespace_annotations, write_oci_archive

from tests.conftest import wait_for

BUSYBOX = Path("/bin/busybox")
  # Debian's busybox-static (scripts/install-node-deps.sh)
PAGE = b"served by busybox httpd on the real node\n"


@pytest.fixture(scope="session")
def real_node(cluster: DevCluster) -> Iterator[RealNode]:
    """The real node, Ready, on the session's cluster."""
    node = cluster.start_real_node()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def busybox_image(real_node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An image made of Debian's static busybox (a shell, httpd, wget, nslookup) and one page in
    /www, imported into the node; pods use it with ``imagePullPolicy: Never``."""
    if not BUSYBOX.is_file():
        raise FileNotFoundError(f"{BUSYBOX} is missing: run `bash scripts/install-node-deps.sh` (busybox-static)")
    program = BUSYBOX.read_bytes()
    name = f"localhost/cxg-test-busybox:{hashlib.sha256(program + PAGE).hexdigest()[:12]}"
    archive = tmp_path_factory.mktemp("images") / "busybox.oci.tar"
    write_oci_archive(
        archive, name, {"bin/busybox": (program, 0o755), "www/index.html": (PAGE, 0o644)}, entrypoint=["/bin/busybox"]
    )
    assert real_node.import_image(archive) == [name]
    return name


@pytest.fixture(scope="session")
def project_images(real_node: RealNode) -> list[str]:
    """The project's images (scripts/build-images.sh, run by scripts/setup.sh --all) and the
    oauth2-proxy stand-in (RealNode.import_oauth2_proxy) imported into the node, under the names
    the settings' defaults give pods; about 25 s the first time."""
    return [*real_node.import_built_images(), real_node.import_oauth2_proxy()]


def create_real_namespace(cluster: DevCluster) -> str:
    """A namespace whose pods all go to the real node (and none to kwok)."""
    name = f"real-{uuid.uuid4().hex[:10]}"
    metadata = {"name": name, "annotations": namespace_annotations()}
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(namespace))
    return name


@pytest.fixture(scope="module")
def real_namespace(cluster: DevCluster, real_node: RealNode) -> Iterator[str]:
    name = create_real_namespace(cluster)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def on_real_node(cluster: DevCluster, real_node: RealNode, namespace: str) -> str:
    """conftest's per-test ``namespace``, opted in: every pod created in it from now on (the
    operator's viewer pods included) runs on the real node."""
    cluster.kubectl("annotate", "namespace", namespace, *[f"{k}={v}" for k, v in namespace_annotations().items()])
    return namespace


def busybox_pod(name: str, image: str, args: list[str], **spec: Any) -> dict[str, Any]:
    """A one-container pod of the busybox image; ``spec`` adds pod or container fields
    (``readinessProbe``, ``ports`` go to the container, the rest to the pod)."""
    container: dict[str, Any] = {"name": "main", "image": image, "imagePullPolicy": "Never", "args": args}
    for key in ("readinessProbe", "ports"):
        if key in spec:
            container[key] = spec.pop(key)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        # busybox as PID 1 does not act on SIGTERM: a short grace keeps deletions quick
        "spec": {"containers": [container], "terminationGracePeriodSeconds": 1, **spec},
    }


def apply(cluster: DevCluster, namespace: str, *objects: dict[str, Any]) -> None:
    """Create objects in a namespace; first wait for its ``default`` ServiceAccount, without
    which the API server refuses pods (a new namespace gets it a moment later)."""
    wait_for(
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode == 0,
        30, f"the default ServiceAccount of {namespace}",
    )  # fmt: skip
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))


def pod(cluster: DevCluster, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(cluster.kubectl("get", "pod", "-n", namespace, name, "-o", "json").stdout)
    return result
