"""The main job, for real, on this machine: a local control plane with a real node, the CRD, the
operator, an S3 store holding a generated dataset, and a viewer for a demo user, ending with a URL
on 127.0.0.1 that a browser opens.

Run through ``bash scripts/demo.sh`` (which installs what is missing first; needs root, as the
real node does). The viewer's pod runs the project's own images (built by scripts/build-images.sh)
on the dev cluster's real node; the S3 store is moto's server on the node's address, which the
pod reaches; the URL is a ``kubectl port-forward`` to the viewer's own port in its pod, past its
sign-in sidecar (a cluster's edge and Keycloak are not part of the demo; tests/test_signin_on_node.py
signs in through a real gateway). Without ``--keep`` it checks that the URL
answers and stops everything; with ``--keep`` it waits for Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import yaml
from cxg_devcluster.cluster import REPO_ROOT, DevCluster, free_port, stop_process
from cxg_devcluster.node import NODE_IP, namespace_annotations

DEMO_OWNER = "demo.user@example.org"
NAMESPACE = "cellxgene"
BUCKET = "cellxgene-demo"
DEMO_KEYS = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def step(message: str) -> None:
    print(f"\n== {message}", flush=True)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept-Encoding": "gzip"}), timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def generated_dataset(workdir: Path, cells: int) -> Path:
    """A real .h5ad made by scripts/make_h5ad.py in cellxgene's own venv."""
    venv = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "cellxgene-venv.sh")], check=True, capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]  # fmt: skip
    out = workdir / f"pbmc-demo-{cells}.h5ad"
    subprocess.run([f"{venv}/bin/python", str(REPO_ROOT / "scripts" / "make_h5ad.py"), str(out), "--cells", str(cells),
                    "--genes", "500"], check=True)  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    parser.add_argument("--owner", default=DEMO_OWNER)
    parser.add_argument("--cells", type=int, default=3000, help="cells of the generated dataset (default 3000)")
    parser.add_argument("--port", type=int, default=0, help="local port of the viewer's URL (default: a free one)")
    args = parser.parse_args()
    started = time.monotonic()
    workdir = REPO_ROOT / ".devcluster"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir()
    processes: list[subprocess.Popen[bytes]] = []
    with DevCluster(workdir=workdir / "cluster", real_node=True) as cluster:
        try:
            step("importing the project's images into the real node's containerd")
            node = cluster.start_real_node()
            node.import_built_images()
            node.import_oauth2_proxy()
            step(f"S3: moto's server on the real node's address {NODE_IP}, with a generated {args.cells}-cell dataset")
            s3_port = free_port()
            endpoint = f"http://{NODE_IP}:{s3_port}"
            moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", NODE_IP, "-p", str(s3_port)],
                                    stdout=(workdir / "moto.log").open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
            processes.append(moto)
            wait(lambda: answers(f"{endpoint}/moto-api/"), 60, "moto")
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="demo",
                              aws_secret_access_key="demo-secret")  # fmt: skip
            s3.create_bucket(Bucket=BUCKET)
            dataset = generated_dataset(workdir, args.cells)
            s3.upload_file(str(dataset), BUCKET, f"datasets/{dataset.name}")
            step(f"namespace {NAMESPACE} (its pods run on the real node), the AWS secret, the CRD, the operator")
            namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": NAMESPACE, "annotations": namespace_annotations(),
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}  # fmt: skip
            cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(namespace))
            wait(lambda: cluster.kubectl("get", "sa", "default", "-n", NAMESPACE, check=False).returncode == 0, 30,
                 "the namespace's default ServiceAccount")  # fmt: skip
            cluster.kubectl("create", "secret", "generic", "aws-cred-secret", "-n", NAMESPACE,
                            *[f"--from-literal={k}={v}" for k, v in DEMO_KEYS.items()])  # fmt: skip
            # The sign-in sidecar mounts the OIDC client's Secret; nobody signs in here, so a placeholder.
            cluster.kubectl("create", "secret", "generic", "oauth2-proxy-client", "-n", NAMESPACE,
                            "--from-literal=client-id=cellxgene", "--from-literal=client-secret=demo-has-no-keycloak")
            env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "CXG_URL_SCHEME": "http",
                   "CXG_HOST_NAME": "cellxgene.localtest", "CXG_METRICS_SERVICE": "", "CXG_S3_BUCKET": BUCKET,
                   "CXG_S3_ENDPOINT_URL": endpoint, "CXG_IMAGE_PULL_POLICY": "Never", "CXG_DEFAULT_CPU": "1",
                   "CXG_DEFAULT_MEMORY": "2Gi", "CXG_OPERATOR_METRICS_PORT": "0"}  # fmt: skip
            cxg = [sys.executable, "-m", "cxg_on_k8s"]
            subprocess.run([*cxg, "install", "--crd-only"], env=env, check=True)
            operator = subprocess.Popen([*cxg, "operator", "--standalone"], env=env, stderr=subprocess.STDOUT,
                                        stdout=(workdir / "operator.log").open("wb"))  # fmt: skip
            processes.append(operator)
            name = f"cellxgene-demo-{os.getpid()}"
            step(f"a viewer of s3://{BUCKET}/datasets/{dataset.name} for {args.owner}")
            deploy = subprocess.run([*cxg, "deploy", "--owner", args.owner, "--dataset", f"s3://{BUCKET}/datasets/{dataset.name}",
                                     "--name", name, "--timeout", "300"], env=env)  # fmt: skip
            if deploy.returncode != 0:
                return deploy.returncode
            print(cluster.kubectl("get", "sui,deploy,svc,pods", "-n", NAMESPACE, "-o", "wide").stdout)
            port = args.port or free_port()
            forward = subprocess.Popen([str(cluster.kubectl_path()), f"--kubeconfig={cluster.kubeconfig}", "port-forward",
                                        "-n", NAMESPACE, "--address", "127.0.0.1", f"deploy/{name}", f"{port}:5005"],
                                       stdout=(workdir / "port-forward.log").open("wb"), stderr=subprocess.STDOUT)  # fmt: skip
            processes.append(forward)
            url = f"http://127.0.0.1:{port}/"
            wait(lambda: answers(f"{url}api/v0.2/schema"), 60, f"cellxgene at {url}")
            print(f"\nThe viewer answers at {url}  (a port-forward to cellxgene in its pod, past the sign-in sidecar)")
            print(f"It took {time.monotonic() - started:.0f} s from the start of this script.")
            if args.keep:
                print(f"export KUBECONFIG={cluster.kubeconfig}   # to look around; Ctrl-C stops everything", flush=True)
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
            else:
                print("Stopping it all (run `bash scripts/demo.sh --keep` to keep it, Ctrl-C to stop).")
            return 0
        finally:
            for process in reversed(processes):
                stop_process(process, timeout=30)


if __name__ == "__main__":
    sys.exit(main())
