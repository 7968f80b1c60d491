"""The main job on an embedded default, on a local control plane: start the cluster, install the
CRD, run the operator, open a viewer for a demo user and show it with ``kubectl get sui``.

Run through ``bash scripts/demo.sh`` (which installs what is missing first). ``--keep`` leaves
everything running until Ctrl-C, with the KUBECONFIG to use printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from cxg_on_k8s.devcluster import REPO_ROOT, DevCluster

DEMO_OWNER = "demo.user@example.org"
DEMO_DATASET = "s3://cellxgene-demo/datasets/pbmc3k.h5ad"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep cluster and operator running until Ctrl-C")
    parser.add_argument("--owner", default=DEMO_OWNER)
    parser.add_argument("--dataset", default=DEMO_DATASET)
    args = parser.parse_args()
    workdir = REPO_ROOT / ".devcluster"
    shutil.rmtree(workdir, ignore_errors=True)
    with DevCluster(workdir=workdir) as cluster:
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "CXG_URL_SCHEME": "http",
               "CXG_HOST_NAME": "cellxgene.localtest", "CXG_METRICS_SERVICE": ""}  # fmt: skip
        cxg = [sys.executable, "-m", "cxg_on_k8s"]
        for ns in ("cellxgene", "ingress-nginx"):
            cluster.kubectl("create", "namespace", ns)
        subprocess.run([*cxg, "install", "--crd-only"], env=env, check=True)
        log = (workdir / "operator.log").open("wb")
        operator = subprocess.Popen([*cxg, "operator"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            time.sleep(1)
            deploy = subprocess.run(
                [*cxg, "deploy", "--owner", args.owner, "--dataset", args.dataset, "--timeout", "60"], env=env
            )
            print("\n$ kubectl get sui -n cellxgene", flush=True)
            print(cluster.kubectl("get", "sui", "-n", "cellxgene").stdout)
            print("$ kubectl get deploy,svc,ing,networkpolicy,pods -n cellxgene -l app=cellxgene", flush=True)
            print(cluster.kubectl("get", "deploy,svc,ing,networkpolicy,pods", "-n", "cellxgene",
                                  "-l", "app=cellxgene").stdout)  # fmt: skip
            print("(pods run on kwok's fake nodes: Running and Ready without images; the operator log is "
                  f"{workdir / 'operator.log'})")  # fmt: skip
            if args.keep:
                print(f"\nexport KUBECONFIG={cluster.kubeconfig}   # Ctrl-C stops everything", flush=True)
                signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
            return deploy.returncode
        finally:
            operator.terminate()
            operator.wait(20)


if __name__ == "__main__":
    sys.exit(main())
