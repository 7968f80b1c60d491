"""Viewer pods for real: the operator's Deployment on the dev cluster's real node (issue 13).

Everything is real: the kubelet, containerd and runc run the project's own images (built by
scripts/build-images.sh FROM a debootstrapped stand-in of the official Python base: the one
stand-in, said in the README), the fetch init container reads from moto's S3 server, cellxgene
serves a generated .h5ad and answers through its Service's ClusterIP (kube-proxy), the save
sidecar writes to S3 when the pod is told to stop. moto listens on the real node's own address,
which its pods reach over their bridge; no traffic leaves the machine.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

pytest.register_assert_rewrite("tests.fixtures_node", "tests.fixtures_s3")  # before their import: their asserts explain

from cxg_devcluster.cluster import DevCluster, free_port
from cxg_devcluster.node import NODE_IP, NODE_NAME, RealNode

from cxg_on_k8s.api import model
from cxg_on_k8s.k8s.client import K8ApiHandler, load_client
from cxg_on_k8s.render import samples, signin, viewer
from cxg_on_k8s.settings import Settings
from tests import client_shapes
from tests.conftest import OperatorProcess, launch_operator, operator_env, wait_for
from tests.fixtures_node import create_real_namespace
from tests.fixtures_s3 import MotoS3, moto_with_keys
from tests.instances import create, get_or_none, wait_phase

pytest_plugins = ["tests.fixtures_node", "tests.fixtures_s3"]

OWNER = "ada@example.org"
GRACE = 30  # the viewers' terminationGracePeriodSeconds here: long enough to tell a kill from a stop
READY_TIMEOUT = 240  # a first pod start on 2 busy cores: image unpacking, fetch, cellxgene's load


@dataclass(frozen=True)
class Viewers:
    """The namespace on the real node, its operator, the S3 store and a dataset in it."""

    k8s: K8ApiHandler
    cluster: DevCluster
    s3: MotoS3
    bucket: str
    dataset: str  # s3://bucket/key of the generated .h5ad
    operator: OperatorProcess
    forwards: list[subprocess.Popen[bytes]] = field(default_factory=list)  # stopped by the fixture


@contextmanager
def namespace_with_operator(
    cluster: DevCluster, s3: MotoS3, bucket: str, workdir: Path, **settings: Any
) -> Iterator[tuple[K8ApiHandler, OperatorProcess]]:
    """A namespace on the real node with the AWS and sign-in Secrets, and its operator
    (``settings`` as CXG_* overrides); both go at the end."""
    namespace = create_real_namespace(cluster)
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    secret = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "aws-cred-secret", "namespace": namespace},
        "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
                       "AWS_DEFAULT_REGION": "us-east-1"},
    }  # fmt: skip
    # The sign-in sidecars mount the OIDC client's Secret; nobody signs in here (no Keycloak:
    # tests/test_signin_on_node.py does that), so its secret is a placeholder.
    client = signin.client_secret(Settings(namespace=namespace), "cellxgene", "not-used-here")
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([secret, client]))
    env = operator_env(
        cluster.kubeconfig, namespace, s3_endpoint_url=s3.endpoint, s3_bucket=bucket, image_pull_policy="Never",
        default_cpu="250m", default_memory="1Gi", termination_grace_period=GRACE, save_interval=10, tick=2, **settings,
    )  # fmt: skip
    started: list[OperatorProcess] = []
    try:
        operator = launch_operator(env, workdir / f"operator-{namespace}.log", started=started)
        yield K8ApiHandler(client=load_client(str(cluster.kubeconfig)), namespace=namespace), operator
    finally:
        for proc in started:
            proc.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def viewers(
    cluster: DevCluster,
    real_node: RealNode,
    project_images: list[str],
    small_h5ad: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Viewers]:
    workdir = tmp_path_factory.mktemp("viewers")
    with moto_with_keys(workdir / "moto.log", host=NODE_IP) as s3:
        bucket = f"cxg-e2e-{uuid.uuid4().hex[:8]}"
        client = s3.client()
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="datasets/pbmc-small.h5ad", Body=small_h5ad.read_bytes())
        forwards: list[subprocess.Popen[bytes]] = []
        try:
            with namespace_with_operator(cluster, s3, bucket, workdir) as (k8s, operator):
                yield Viewers(k8s, cluster, s3, bucket, f"s3://{bucket}/datasets/pbmc-small.h5ad", operator, forwards)
        finally:
            for forward in forwards:
                forward.terminate()
                forward.wait(timeout=10)


def cluster_ip_url(viewers: Viewers, name: str) -> str:
    """The viewer's Service, once it answers: kube-proxy programs a new Service's ClusterIP a
    moment after the pod is Ready. Behind it is the sign-in sidecar."""
    service = viewers.k8s.core.read_namespaced_service(name, viewers.k8s.namespace)
    url = f"http://{service.spec.cluster_ip}:{service.spec.ports[0].port}"
    wait_for(lambda: http(f"{url}/ping")[0] == 200, 60, f"{name}'s ClusterIP to answer")
    return url


def cellxgene_url(viewers: Viewers, name: str) -> str:
    """cellxgene itself, past its sign-in sidecar: a ``kubectl port-forward`` to the pod's own
    port, which reaches the pod's loopback, where cellxgene listens (the fixture stops it).
    kubectl ends a port-forward whose connection was refused, which happens while an embedded
    client's cellxgene (Ready without a probe) still loads: then a new one is started."""
    port = free_port()
    pod = viewer_pod(viewers, name).metadata.name
    url = f"http://127.0.0.1:{port}"
    mine: list[subprocess.Popen[bytes]] = []

    def answers() -> bool:
        if not mine or mine[-1].poll() is not None:
            mine.append(subprocess.Popen(
                [str(viewers.cluster.kubectl_path()), f"--kubeconfig={viewers.cluster.kubeconfig}", "port-forward", "-n",
                 viewers.k8s.namespace, "--address", "127.0.0.1", f"pod/{pod}", f"{port}:{viewer.VIEWER_PORT}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
            viewers.forwards.append(mine[-1])
            time.sleep(1)
        return http(f"{url}/api/v0.2/schema")[0] == 200

    wait_for(answers, 120, f"{name}'s cellxgene through a port-forward")
    return url


def http(url: str, data: bytes | None = None, method: str = "GET") -> tuple[int, bytes]:
    """One request (cellxgene 1.3.0 with Werkzeug 3 wants gzip accepted on its binary endpoints)."""
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Accept-Encoding": "gzip", "Content-Type": "application/json", "Accept": "application/json, text/html",
    })  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            body = response.read()
            return response.status, gzip.decompress(body) if response.headers.get("Content-Encoding") == "gzip" else body
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def gene_sets_of(url: str) -> list[str]:
    status, body = http(f"{url}/api/v0.2/genesets")
    assert status == 200, body[:300]
    return [g["geneset_name"] for g in json.loads(body)["genesets"]]


def add_gene_set(url: str, name: str) -> None:
    """What cellxgene's client sends when the user saves a gene set: the whole list, a new tid."""
    current = json.loads(http(f"{url}/api/v0.2/genesets")[1])
    sets = [*current["genesets"], {"geneset_name": name, "geneset_description": "", "genes": []}]
    status, body = http(f"{url}/api/v0.2/genesets", json.dumps({"genesets": sets, "tid": current["tid"] + 1}).encode(), "PUT")
    assert status == 200, body[:300]


def viewer_pod(viewers: Viewers, name: str) -> Any:
    (pod,) = viewers.k8s.list_pods(f"instance={name}").items
    return pod


class Stops:
    """The viewer containers' last terminated states, as a watch sees them while a pod stops:
    exit 137 would mean the kubelet killed cellxgene at the end of the grace period."""

    def __init__(self, viewers: Viewers, name: str) -> None:
        self.exit_codes: dict[str, int] = {}
        self._args = [str(viewers.cluster.kubectl_path()), f"--kubeconfig={viewers.cluster.kubeconfig}", "get", "pods",
                      "-n", viewers.k8s.namespace, "-l", f"instance={name}", "--watch", "-o", "json"]  # fmt: skip
        self._proc = subprocess.Popen(self._args, stdout=subprocess.PIPE, text=True)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        decoder, buffer = json.JSONDecoder(), ""
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            buffer += line
            try:
                pod, end = decoder.raw_decode(buffer.lstrip())
            except ValueError:
                continue
            buffer = buffer.lstrip()[end:]
            statuses = pod.get("status", {}).get("containerStatuses", []) + pod.get("status", {}).get("initContainerStatuses", [])
            for status in statuses:
                terminated = status.get("state", {}).get("terminated")
                if terminated:
                    self.exit_codes[status["name"]] = terminated["exitCode"]

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)


def test_a_portal_viewer_runs_on_the_real_node_and_answers_through_its_service(viewers: Viewers) -> None:
    name = create(viewers.k8s, viewer.instance(viewer.new_instance_name(), viewers.k8s.namespace, OWNER, viewers.dataset))
    body = wait_phase(viewers.k8s, name, model.Phase.READY, timeout=READY_TIMEOUT)
    pod = viewer_pod(viewers, name)
    assert pod.spec.node_name == NODE_NAME
    # Ready because the real readiness probe passed, after the fetch step ran to its end.
    (fetch,) = [s for s in pod.status.init_container_statuses if s.name == "fetch"]
    assert fetch.state.terminated.exit_code == 0
    assert body["status"]["startupSeconds"] > 0
    # Through the Service (kube-proxy) the sidecar answers: the page needs a sign-in first.
    service = urlsplit(cluster_ip_url(viewers, name))
    connection = HTTPConnection(service.hostname or "", service.port, timeout=20)
    connection.request("GET", f"/{name}/")
    assert connection.getresponse().status == 302
    connection.close()
    url = cellxgene_url(viewers, name)
    status, page = http(f"{url}/")
    assert status == 200 and b"CELLXGENE" in page.upper(), page[:300]
    status, schema = http(f"{url}/api/v0.2/schema")
    assert status == 200 and json.loads(schema)["schema"]["dataframe"]["nObs"] == 300
    logs = viewers.cluster.kubectl("logs", "-n", viewers.k8s.namespace, pod.metadata.name, "-c", "fetch").stdout
    assert "fetched dataset" in logs  # kubectl logs reaches the real kubelet
    viewers.k8s.delete_instance(name)
    wait_for(lambda: not viewers.k8s.list_pods(f"instance={name}").items, GRACE + 30, "the viewer pod to go")


def test_the_last_change_before_a_delete_is_saved_and_the_next_viewer_shows_it(viewers: Viewers) -> None:
    name = create(viewers.k8s, viewer.instance(viewer.new_instance_name(), viewers.k8s.namespace, OWNER, viewers.dataset))
    wait_phase(viewers.k8s, name, model.Phase.READY, timeout=READY_TIMEOUT)
    url = cellxgene_url(viewers, name)
    gene_set = f"made-just-before-delete-{uuid.uuid4().hex[:6]}"
    stops = Stops(viewers, name)
    try:
        add_gene_set(url, gene_set)  # the save interval is 10 s: only the save on SIGTERM can have it
        viewers.k8s.delete_instance(name)
        deleted = time.monotonic()
        wait_for(lambda: not viewers.k8s.list_pods(f"instance={name}").items, GRACE + 30, "the viewer pod to go")
        gone_after = time.monotonic() - deleted
    finally:
        stops.stop()
    assert gene_set in saved_gene_sets_for(viewers, OWNER, viewers.dataset)
    # cellxgene stopped on SIGTERM (tini passes it on), not killed when the grace period ran out
    assert stops.exit_codes.get("cellxgene") != 137, (stops.exit_codes, gone_after)
    assert stops.exit_codes.get("save") == 0, stops.exit_codes
    again = create(viewers.k8s, viewer.instance(viewer.new_instance_name(), viewers.k8s.namespace, OWNER, viewers.dataset))
    wait_phase(viewers.k8s, again, model.Phase.READY, timeout=READY_TIMEOUT)
    assert gene_set in gene_sets_of(cellxgene_url(viewers, again))
    viewers.k8s.delete_instance(again)
    wait_for(lambda: get_or_none(viewers.k8s, again) is None, 30, f"{again} to go")


def saved_gene_sets_for(viewers: Viewers, owner: str, dataset: str) -> str:
    spec = model.SingleUserInstanceSpec(owner=owner, dataset=dataset)
    prefix = viewer.user_data_url(spec, Settings(s3_bucket=viewers.bucket))
    key = prefix.split("/", 3)[3] + "gene_sets.csv"
    client = viewers.s3.client()
    try:
        return str(client.get_object(Bucket=viewers.bucket, Key=key)["Body"].read().decode())
    except client.exceptions.NoSuchKey:
        return ""


def test_a_viewer_culled_for_its_lifespan_saves_first(viewers: Viewers) -> None:
    owner = "grace@example.org"  # a place of its own
    name = create(viewers.k8s, viewer.instance(viewer.new_instance_name(), viewers.k8s.namespace, owner,
                                                 viewers.dataset, lifespan=READY_TIMEOUT))  # fmt: skip
    wait_phase(viewers.k8s, name, model.Phase.READY, timeout=READY_TIMEOUT)
    gene_set = f"made-before-the-cull-{uuid.uuid4().hex[:6]}"
    add_gene_set(cellxgene_url(viewers, name), gene_set)
    # a lifespan of READY_TIMEOUT: Ready comes before it ends (on a slow machine 60 s did not)
    wait_for(lambda: get_or_none(viewers.k8s, name) is None, READY_TIMEOUT + 60, f"{name} to be culled at the end of its lifespan")
    wait_for(lambda: not viewers.k8s.list_pods(f"instance={name}").items, GRACE + 30, "the viewer pod to go")
    assert gene_set in saved_gene_sets_for(viewers, owner, viewers.dataset)


def test_a_missing_dataset_fails_the_instance_naming_it(viewers: Viewers) -> None:
    missing = f"s3://{viewers.bucket}/datasets/not-there.h5ad"
    name = create(viewers.k8s, viewer.instance(viewer.new_instance_name(), viewers.k8s.namespace, OWNER, missing))
    message = wait_phase(viewers.k8s, name, model.Phase.FAILED, timeout=READY_TIMEOUT)["status"]["message"]
    assert missing in message and "no such object" in message, message
    events = [e for e in viewers.k8s.list_events(name) if e.reason == "Failed" and e.type == "Warning"]
    assert events and missing in events[0].message
    viewers.k8s.delete_instance(name)


def test_wrong_credentials_fail_the_instance_saying_so(viewers: Viewers) -> None:
    """The namespace's AWS secret with a key the store does not know, for one instance; then the
    right one back for the tests after it."""
    def secret(access_key: str) -> str:
        return yaml.safe_dump({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "aws-cred-secret", "namespace": viewers.k8s.namespace},
            "stringData": {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": viewers.s3.secret_key,
                           "AWS_DEFAULT_REGION": "us-east-1"},
        })  # fmt: skip

    viewers.cluster.kubectl("apply", "-f", "-", input=secret("AKIAWRONGWRONGWRONG0"))
    try:
        name = create(viewers.k8s, viewer.instance(viewer.new_instance_name(), viewers.k8s.namespace,
                                                     "ida@example.org", viewers.dataset))  # fmt: skip
        message = wait_phase(viewers.k8s, name, model.Phase.FAILED, timeout=READY_TIMEOUT)["status"]["message"]
    finally:
        viewers.cluster.kubectl("apply", "-f", "-", input=secret(viewers.s3.access_key))
    assert "access denied" in message and "AWS_ACCESS_KEY_ID" in message, message
    viewers.k8s.delete_instance(name)


def test_the_portals_embedded_form_runs_on_the_real_node(viewers: Viewers) -> None:
    """The data portal's shape (tests/client_shapes.py) with the images this machine has: its
    aws-cli init container syncs the user's prefix, its cellxgene command runs as the client
    wrote it, hardened to pass the namespace's Pod Security ``restricted``."""
    settings = Settings(namespace=viewers.k8s.namespace, s3_bucket=viewers.bucket, s3_endpoint_url=viewers.s3.endpoint)
    name = viewer.new_instance_name()
    body = client_shapes.portal_instance(name, viewers.k8s.namespace, "bob", "pbmc.h5ad", settings,
                                         aws_cli_image=samples.POC_AWS_CLI_IMAGE)  # fmt: skip
    data = Path(viewers.dataset.split("/", 3)[3])
    client = viewers.s3.client()
    small = client.get_object(Bucket=viewers.bucket, Key=str(data))["Body"].read()
    client.put_object(Bucket=viewers.bucket, Key="cxg_on_k8/bob/pbmc.h5ad/pbmc.h5ad", Body=small)
    create(viewers.k8s, body)
    wait_phase(viewers.k8s, name, model.Phase.READY, timeout=READY_TIMEOUT)
    assert viewer_pod(viewers, name).spec.node_name == NODE_NAME
    url = cellxgene_url(viewers, name)
    assert b"CELLXGENE" in http(f"{url}/")[1].upper()
    viewers.k8s.delete_instance(name)


def test_pods_hold_only_the_aws_secret(viewers: Viewers) -> None:
    """What a viewer pod can read: the AWS keys in its data containers' environment, no
    service-account token (none is mounted), nothing else."""
    name = create(viewers.k8s, viewer.instance(viewer.new_instance_name(), viewers.k8s.namespace,
                                                 "hedy@example.org", viewers.dataset))  # fmt: skip
    wait_phase(viewers.k8s, name, model.Phase.READY, timeout=READY_TIMEOUT)
    pod = viewer_pod(viewers, name)
    mounted = viewers.cluster.kubectl("exec", "-n", viewers.k8s.namespace, pod.metadata.name, "-c", "cellxgene", "--",
                                      "ls", "/var/run/secrets", check=False)  # fmt: skip
    assert mounted.returncode != 0 and "No such file" in mounted.stderr, mounted
    env = viewers.cluster.kubectl("exec", "-n", viewers.k8s.namespace, pod.metadata.name, "-c", "cellxgene", "--",
                                  "env").stdout  # fmt: skip
    assert "AWS_SECRET_ACCESS_KEY" not in env  # the viewer itself holds no S3 key either
    viewers.k8s.delete_instance(name)


def test_a_viewer_pod_of_its_own_runs_and_comes_back_with_the_work_saved(
    viewers: Viewers, tmp_path: Path
) -> None:
    """viewer_workload pod on the real node: the instance owns its pod (no Deployment); a pod
    deleted by hand stops as a viewer does (its save sidecar writes the last change), and the
    operator's new pod of the same name starts with that change."""
    with namespace_with_operator(viewers.cluster, viewers.s3, viewers.bucket, tmp_path, viewer_workload="pod") as made:
        k8s, operator = made
        pods = replace(viewers, k8s=k8s, operator=operator)
        owner = "katherine@example.org"  # a place of its own
        name = create(k8s, viewer.instance(viewer.new_instance_name(), k8s.namespace, owner, viewers.dataset))
        uid = wait_phase(k8s, name, model.Phase.READY, timeout=READY_TIMEOUT)["metadata"]["uid"]
        first = viewer_pod(pods, name)
        assert first.metadata.name == name and first.spec.node_name == NODE_NAME
        (ref,) = first.metadata.owner_references
        assert (ref.kind, ref.uid, ref.controller) == (model.KIND, uid, True)
        assert not k8s.apps.list_namespaced_deployment(k8s.namespace).items
        gene_set = f"made-before-the-pod-went-{uuid.uuid4().hex[:6]}"
        add_gene_set(cellxgene_url(pods, name), gene_set)
        k8s.core.delete_namespaced_pod(name, k8s.namespace)  # graceful: the save sidecar runs

        def replaced() -> Any:
            found = [p for p in k8s.list_pods(f"instance={name}").items if p.metadata.uid != first.metadata.uid]
            ready = [p for p in found if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
            return ready[0] if ready else None

        second = wait_for(replaced, GRACE + READY_TIMEOUT, "a new viewer pod, ready")
        assert second.metadata.name == name
        assert gene_set in saved_gene_sets_for(viewers, owner, viewers.dataset)
        assert gene_set in gene_sets_of(cellxgene_url(pods, name))
        assert "PodReplaced" in [e.reason for e in k8s.list_events(name)]
        assert k8s.get_instance(name)["status"]["phase"] == model.Phase.READY.value
        k8s.delete_instance(name)
        wait_for(lambda: not k8s.list_pods(f"instance={name}").items, GRACE + 30, "the viewer pod to go")
