"""The floor under bench/spawn.py: a plain client creating each instance's objects, no operator.

What N viewers at once cost the control plane when nothing but the objects themselves is done:
for each object set and each N (``--sizes``, default 500,1000), on a fresh local control plane
(etcd, kube-apiserver with its default limits, controller-manager, scheduler, kwok fake nodes,
as bench/spawn.py), a client with T threads (``--threads``, several tried: the best is the floor)
creates every instance's objects, one request each, and the time is taken from the first create
to the moment the watch shows every Deployment with a ready replica (the pod behind it is made
by the controller-manager's ReplicaSet and turned Ready by kwok). The API server's and etcd's CPU
seconds over that time are printed too: what the objects alone cost the control plane, to set
against bench/spawn.py's same figure for the operator. Object sets:

* ``five``: what the operator created per instance until 2026-12: the instance, NetworkPolicy,
  Deployment, Service, Ingress;
* ``four``: what it creates now for the portal form: the instance, Service, Ingress, Deployment;
* ``pod``: the instance, Service, Ingress and a Pod from the Deployment's template, as KubeSpawner
  does it (no Deployment, so no ReplicaSet: the pod is the client's own object; ready is the
  pod's Ready condition);
* ``pod-written``: the ``pod`` set and what the operator writes beside it, as it writes it: the
  children owned by the instance (ownerReferences, which the garbage collector tracks), a
  Starting status patch before the children, kopf's annotation patch after them, and once the
  watch shows the pod Ready a Ready status patch and a Ready Event (done then is the instance's
  ``status.phase`` Ready, as bench/spawn.py counts it). Not a floor: what the operator would cost
  if its own work (kopf, the client) took no time, to tell its cost from the writes' cost.

Nothing else is written in the floors (no ownerReferences, no status, no Events): that is what
makes them floors.
The load average before each run is printed, since absolute seconds differ between machines
and runs; compare ratios measured in one run.

Usage::

    .venv/bin/python bench/floor.py [--sizes 500,1000] [--sets five,four] [--threads 16,48] [--json out.json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import kopf
import requests
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from cxg_devcluster.cluster import DevCluster

from bench.spawn import Observer, cpu_seconds, ours_instance
from cxg_on_k8s.api import crd, model
from cxg_on_k8s.k8s.client import event_body
from cxg_on_k8s.render import viewer
from cxg_on_k8s.render.plan import plan_instance
from cxg_on_k8s.settings import Settings

NAMESPACE = "cellxgene"
PATHS = {
    "SingleUserInstance": f"/apis/{model.GROUP}/{model.VERSION}/namespaces/{{ns}}/{model.PLURAL}",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Ingress": "/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses",
    "Pod": "/api/v1/namespaces/{ns}/pods",
}
SETS = {
    "five": ("SingleUserInstance", "NetworkPolicy", "Deployment", "Service", "Ingress"),
    "four": ("SingleUserInstance", "Service", "Ingress", "Deployment"),
    "pod": ("SingleUserInstance", "Service", "Ingress", "Pod"),
    "pod-written": ("SingleUserInstance", "Service", "Ingress", "Pod"),
}
WRITTEN = {"pod-written"}  # the sets that write what the operator writes beside the objects


def objects(name: str, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
    """One instance's objects of ``kinds``, rendered as the operator renders them."""
    body = ours_instance(name, NAMESPACE)
    spec = model.SingleUserInstanceSpec.model_validate(body["spec"])
    plan = plan_instance(name, NAMESPACE, {}, spec, Settings(namespace=NAMESPACE, host_name="cxg.localtest"))
    by_kind = {c["kind"]: c for c in plan.children}
    template = by_kind["Deployment"]["spec"]["template"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "name": name},
        "spec": template["spec"],
    }
    by_kind |= {"SingleUserInstance": body, "NetworkPolicy": viewer.network_policy(name, NAMESPACE), "Pod": pod}
    return [by_kind[kind] for kind in kinds]


class Writer:
    """What the operator writes beside an instance's objects (the ``pod-written`` set), with the
    bodies it sends: status patches, kopf's annotation patch, the Ready Event, owners."""

    def __init__(self, session: requests.Session, server: str) -> None:
        self.session, self.server = session, server
        self.instances: dict[str, dict[str, Any]] = {}  # as the API server returned them (uid)

    def _send(self, method: str, path: str, body: dict[str, Any], what: str) -> dict[str, Any]:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        resp = self.session.request(method, self.server + path, json=body, headers=headers, timeout=60)
        if resp.status_code not in (200, 201):
            raise RuntimeError(f"{what}: {resp.status_code} {resp.text[:300]}")
        return dict(resp.json())

    def instance_path(self, name: str) -> str:
        return PATHS["SingleUserInstance"].format(ns=NAMESPACE) + f"/{name}"

    def starting(self, name: str, created: dict[str, Any]) -> None:
        self.instances[name] = created
        status = {"phase": "Starting", "message": "creating the viewer; waiting for it to become ready",
                  "url": f"https://cxg.localtest/{name}/", "expiresAt": "2099-01-01T00:00:00Z",
                  "observedGeneration": 1, "conditions": [{"type": "Restricted", "status": "True",
                  "reason": "Named", "message": "only its owner may open it",
                  "lastTransitionTime": "2026-12-01T00:00:00Z"}]}  # fmt: skip
        self._send("PATCH", self.instance_path(name) + "/status", {"status": status}, f"Starting of {name}")

    def adopt(self, name: str, children: list[dict[str, Any]]) -> None:
        kopf.adopt(children, owner=kopf.Body(self.instances[name]))  # as the operator does

    def handled(self, name: str, spec: dict[str, Any]) -> None:
        essence = json.dumps({"spec": spec, "metadata": {"labels": {}}}, separators=(",", ":"))
        annotation = {"metadata": {"annotations": {f"{model.GROUP}/last-handled-configuration": essence}}}
        self._send("PATCH", self.instance_path(name), annotation, f"kopf's annotation on {name}")

    def ready(self, name: str) -> None:
        status = {"phase": "Ready", "message": "the viewer is ready", "startupSeconds": 1.0,
                  "podStartedAt": "2026-12-01T00:00:00Z"}  # fmt: skip
        self._send("PATCH", self.instance_path(name) + "/status", {"status": status}, f"Ready of {name}")
        event = event_body(self.instances[name], "Normal", "Ready", "the viewer is ready")
        self._send("POST", f"/api/v1/namespaces/{NAMESPACE}/events", event, f"the Ready Event of {name}")


def run_one(set_name: str, n: int, threads: int, workdir: Path, timeout: float) -> dict[str, Any]:
    kinds, written = SETS[set_name], set_name in WRITTEN
    cluster = DevCluster(workdir=workdir, quiet=True)
    try:
        cluster.start()
        cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(crd.definition()))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{model.CRD_NAME}", "--timeout=60s")
        cluster.kubectl("create", "namespace", NAMESPACE)
        session = requests.Session()
        session.trust_env = False
        session.cert = (str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))
        session.verify = str(cluster.pki / "ca.crt")
        session.mount("https://", requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=2 * threads + 8))
        observer = Observer(session, cluster.server, NAMESPACE, ("Pod",) if "Pod" in kinds else ("Deployment",))
        observer.start()
        writer = Writer(session, cluster.server)
        names = [viewer.new_instance_name() for _ in range(n)]
        bodies = {name: objects(name, kinds) for name in names}
        finished: dict[str, float] = {}

        def post(body: dict[str, Any], name: str) -> dict[str, Any]:
            url = cluster.server + PATHS[body["kind"]].format(ns=NAMESPACE)
            resp = session.post(url, json=body, timeout=60)
            if resp.status_code != 201:
                raise RuntimeError(f"creating {body['kind']} {name}: {resp.status_code} {resp.text[:300]}")
            return dict(resp.json())

        def create(name: str) -> None:
            observer.created[name] = time.monotonic()
            instance, *children = bodies[name]
            made = post(instance, name)
            if written:
                writer.starting(name, made)
                writer.adopt(name, children)
            for body in children:
                post(body, name)
            if written:
                writer.handled(name, instance["spec"])
            finished[name] = time.monotonic()

        load = os.getloadavg()[0]
        server_pids = [cluster.processes[name].popen.pid for name in ("kube-apiserver", "etcd")]
        server_cpu0 = sum(cpu_seconds(pid) for pid in server_pids)
        started = time.monotonic()
        done = observer.ready if written else observer.pod_ready
        with (
            concurrent.futures.ThreadPoolExecutor(threads) as pool,
            concurrent.futures.ThreadPoolExecutor(threads) as readies,
        ):
            futures = [pool.submit(create, name) for name in names]
            told: set[str] = set()  # the instances whose pod was seen Ready, and written Ready
            while len(done) < n and time.monotonic() - started < timeout:
                if written:
                    for name in set(observer.pod_ready) - told:
                        told.add(name)
                        futures.append(readies.submit(writer.ready, name))
                for future in futures:
                    if future.done() and future.exception():
                        future.result()  # a refused write ends the run, naming the object
                time.sleep(0.05)
        created = max(finished.values()) - started
        observer.stopped = True
        server_cpu = sum(cpu_seconds(pid) for pid in server_pids) - server_cpu0
        ready = len(done)
        wall = max(done.values()) - started if ready == n else None
        return {"set": set_name, "n": n, "threads": threads, "created_s": created, "all_ready_s": wall,
                "ready": ready, "load_before": load, "server_cpu_s": server_cpu}  # fmt: skip
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="500,1000", help="instance counts, comma-separated")
    parser.add_argument("--sets", default="five,four", help=f"object sets, comma-separated: {', '.join(SETS)}")
    parser.add_argument("--threads", default="16,48", help="client threads to try, comma-separated")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for every Deployment")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cxg-bench-floor-"))
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        for name in args.sets.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                result = run_one(name, n, threads, base / f"{name}-{n}-{threads}", args.timeout)
                results.append(result)
                wall = "unfinished" if result["all_ready_s"] is None else f"{result['all_ready_s']:.1f} s"
                print(f"{name} N={n} threads={threads}: all ready {wall} (created in "
                      f"{result['created_s']:.1f} s); API server + etcd CPU {result['server_cpu_s']:.1f} s; "
                      f"load before {result['load_before']:.2f}", flush=True)  # fmt: skip
    for n in sorted({r["n"] for r in results}):
        for name in args.sets.split(","):
            done = [r for r in results if r["n"] == n and r["set"] == name and r["all_ready_s"]]
            if done:
                best = min(done, key=lambda r: r["all_ready_s"])
                print(f"floor {name} N={n}: {best['all_ready_s']:.1f} s ({best['threads']} threads)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
