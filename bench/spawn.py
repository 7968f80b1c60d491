"""How fast N viewers come up at once, and what that costs the operator: measured, not asserted.

For each size N (``--sizes 1,100,500``) and each operator, on a fresh local control plane
(etcd, kube-apiserver, controller-manager, scheduler, kwok fake nodes: pods turn Running and
Ready without images, so this measures the control path, not image pulls or cellxgene):

* ``ours``: ``python -m cxg_on_k8s operator`` (portal-form instances: owner + dataset; three
  children: Service, Ingress, Deployment, or with ``--viewer-workload pod`` a Pod of its own; ``status.phase`` Ready from pod events;
  one culling loop per tick, reading activity from the ingress-nginx page below, since kwok's
  pods run no sign-in sidecar to read);
* ``poc``: the proof of concept's operator as ``bench/poc_operator.py`` rebuilds it
  (client-rendered embedded form with the shared ``app=cellxgene`` selector; three children; two
  timers per instance, the second fetching and parsing the whole metrics page every tick on the
  event loop; kopf defaults).

The bench creates the N instances at once (32 client threads) and, from watches it opened
beforehand, records per instance the time from its create request to

* ``children``: every child (3) seen by the watch;
* ``pod ready``: its Deployment reports ``readyReplicas >= 1``;
* ``Ready``: for ``ours``, ``status.phase == Ready`` (what the portal waits for); the PoC had no
  status, so its Ready is its pod ready;
* ``startup``: for ``ours``, the operator's own ``status.startupSeconds`` (creationTimestamp to
  the moment it saw the pod Ready; tests/test_operator.py checks it is there and consistent with
  ``readyAt``, this is where its size is read);

and reports p50, p95 and max, the wall time from the first create to the last Ready, the
operator process's CPU seconds (utime + stime from ``/proc/PID/stat``) during that time and
the API server's and etcd's together (what the operator's requests cost the control plane,
along with the controller-manager's, scheduler's and kwok's work for the same pods), and its
peak RSS (``VmHWM``). Then it waits ``--steady-ticks`` ticks with all N running and reports
CPU seconds, API requests and status writes per tick: the steady cost of culling (our single
scrape vs the PoC's N scrapes), with every owner at work.

API requests are counted exactly, from the API server's audit log: the operator runs with a
client certificate of its own (user ``bench-operator``) and an audit policy logs only that
user's requests at Metadata level. Every request counts once (watches included), split by verb
and resource; requests of the controller-manager, scheduler, kwok and the bench's own client are
not counted. The audit log costs the API server a little, equally for both operators.

The metrics page is what ingress-nginx serves after every instance was visited: per Ingress
four request series and a request-duration and a response-size histogram (~38 lines), served
from a thread of the bench (:class:`MetricsPage`); for ``ours`` every answer counts one more
request per Ingress, so every instance is active at every tick.

Usage::

    .venv/bin/python bench/spawn.py [--sizes 1,100,500] [--tick 10] [--operators ours,poc]
        [--unlimited-apiserver] [--restart] [--json out.json]

``--restart`` (ours): after the steady state the operator is stopped and started again; printed:
how long its requests take to settle, what it sent (children created again, status writes) and
how many instances the watch saw step back from Ready.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.server
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from cxg_devcluster.cluster import DevCluster, _cert, _key, _name, _pem_key, free_port, peak_rss_mib, stop_process

from cxg_on_k8s.api import (
    crd,
    model,
)
from cxg_on_k8s.render import viewer

OPERATOR_USER = "bench-operator"
UNLIMITED_APISERVER = ["--max-requests-inflight=0", "--max-mutating-requests-inflight=0",
                       "--enable-priority-and-fairness=false"]  # fmt: skip
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "users": [OPERATOR_USER]}, {"level": "None"}],
}
CLIENT_THREADS = 32
CHILD_KINDS = {"ours": ("Deployment", "Service", "Ingress"), "poc": ("Deployment", "Service", "Ingress")}
WATCHED = {
    "SingleUserInstance": f"/apis/{model.GROUP}/{model.VERSION}/namespaces/{{ns}}/{model.PLURAL}",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Service": "/api/v1/namespaces/{ns}/services",
    "Ingress": "/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    "Pod": "/api/v1/namespaces/{ns}/pods",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the process under test ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def start_operator(kind: str, workdir: Path, kubeconfig: Path, namespace: str, metrics_url: str, tick: float,
                   viewer_workload: str = "deployment") -> subprocess.Popen[bytes]:  # fmt: skip
    port = free_port()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "CXG_METRICS_URL": metrics_url, "PYTHONUNBUFFERED": "1"}
    if kind == "ours":
        # Activity from the ingress-nginx page: kwok's pods run no sidecar to read.
        env.update(CXG_NAMESPACE=namespace, CXG_ACTIVITY="ingress-nginx", CXG_METRICS_SERVICE="", CXG_TICK=str(tick),
                   CXG_URL_SCHEME="http", CXG_VIEWER_WORKLOAD=viewer_workload,
                   CXG_HOST_NAME="cxg.localtest")  # fmt: skip
        args = [sys.executable, "-m", "cxg_on_k8s", "operator"]
    else:
        env.update(K8_SUI_OP_TICK=str(tick))
        args = [sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", namespace,
                str(REPO / "bench" / "poc_operator.py")]  # fmt: skip
    log = (workdir / f"operator-{kind}.log").open("wb")
    proc = subprocess.Popen([*args, "--liveness", f"http://127.0.0.1:{port}/healthz"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    log.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{kind} operator exited {proc.returncode}: see {workdir}/operator-{kind}.log")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{kind} operator did not answer its liveness endpoint within 60 s")


# --- the cluster ----------------------------------------------------------------------------------


def operator_kubeconfig(cluster: DevCluster) -> Path:
    """A kubeconfig for user ``bench-operator`` (system:masters): its requests are the audited ones."""
    pki = cluster.pki
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = _key()
    cert = _cert(_name(OPERATOR_USER, "system:masters"), key, ca.subject, ca_key, client=True)  # type: ignore[arg-type]
    (pki / "operator.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (pki / "operator.key").write_bytes(_pem_key(key))
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["users"][0]["user"] = {"client-certificate": str(pki / "operator.crt"), "client-key": str(pki / "operator.key")}
    path = cluster.workdir / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def audited_requests(audit_log: Path) -> Counter[str]:
    """Requests of the operator so far, keyed 'verb resource[/subresource]' (each auditID once)."""
    seen: dict[str, str] = {}
    if audit_log.exists():
        for line in audit_log.read_text().splitlines():
            event = json.loads(line)
            if event.get("user", {}).get("username") != OPERATOR_USER:
                continue
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", event.get("requestURI", "?").split("?")[0])
            if ref.get("subresource"):
                resource += "/" + ref["subresource"]
            seen[event["auditID"]] = f"{event['verb']} {resource}"
    return Counter(seen.values())


# --- the metrics page -----------------------------------------------------------------------------

BUCKETS = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"]
SIZE_BUCKETS = ["10", "100", "1000", "10000", "100000", "1e+06", "1e+07", "+Inf"]


def metrics_page(namespace: str, names: list[str], visits: int = 42) -> str:
    """ingress-nginx's exposition after each instance's Ingress served some requests: ``visits``
    200s each (and some 304s when there were any), a sign-in redirect and a 401 either way."""
    lines = [
        "# HELP nginx_ingress_controller_config_hash Running configuration hash actually running",
        "# TYPE nginx_ingress_controller_config_hash gauge",
        'nginx_ingress_controller_config_hash{controller_class="k8s.io/ingress-nginx",controller_namespace="ingress-nginx",controller_pod="ingress-nginx-controller-0"} 1.2345e+18',
        "# TYPE nginx_ingress_controller_requests counter",
    ]
    common = 'controller_class="k8s.io/ingress-nginx",controller_namespace="ingress-nginx",controller_pod="ingress-nginx-controller-0"'
    duration, size = [], []
    for name in names:
        base = f'{common},host="cxg.localtest",ingress="{name}",method="GET",namespace="{namespace}",path="/{name}(/|$)(.*)",service="{name}"'
        for status, count in (("200", visits), ("304", 3 if visits else 0), ("302", 1), ("401", 1)):
            lines.append(f'nginx_ingress_controller_requests{{{base},status="{status}",canary=""}} {count}')
        for bucket in BUCKETS:
            duration.append(f'nginx_ingress_controller_request_duration_seconds_bucket{{{base},status="200",le="{bucket}"}} 42')
        duration += [f'nginx_ingress_controller_request_duration_seconds_sum{{{base},status="200"}} 1.5',
                     f'nginx_ingress_controller_request_duration_seconds_count{{{base},status="200"}} 42']  # fmt: skip
        for bucket in SIZE_BUCKETS:
            size.append(f'nginx_ingress_controller_response_size_bucket{{{base},status="200",le="{bucket}"}} 42')
        size += [f'nginx_ingress_controller_response_size_sum{{{base},status="200"}} 123456',
                 f'nginx_ingress_controller_response_size_count{{{base},status="200"}} 42']  # fmt: skip
    lines += ["# TYPE nginx_ingress_controller_request_duration_seconds histogram", *duration,
              "# TYPE nginx_ingress_controller_response_size histogram", *size]  # fmt: skip
    return "\n".join(lines) + "\n"


class MetricsPage:
    """ingress-nginx's metrics page on 127.0.0.1, served from a thread of the bench. ``growing``
    (ours): until :meth:`visit`, every Ingress shows only a sign-in redirect and a 401 (nobody has
    used a viewer while they start: the requests up to Ready are the spawn's own); from then on
    every answer counts one more 200 of every Ingress, every owner at work (the steady state in
    which status writes per tick are measured). Else (the PoC, whose timers only ask whether
    anyone came) the same page of visited Ingresses every time."""

    def __init__(self, namespace: str, names: list[str], growing: bool) -> None:
        self.answers, self.visiting = 0, False
        fixed = metrics_page(namespace, names).encode()
        unvisited = metrics_page(namespace, names, 0).encode()
        page = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if not growing:
                    body = fixed
                elif page.visiting:
                    page.answers += 1
                    body = metrics_page(namespace, names, page.answers).encode()
                else:
                    body = unvisited
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.size = len(fixed)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def visit(self) -> None:
        self.visiting = True

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the instances --------------------------------------------------------------------------------


def ours_instance(name: str, namespace: str) -> dict[str, Any]:
    """A user of their own per instance, as a portal has them: one owner's second viewer of one
    dataset would be refused (it would save to the first one's place)."""
    return viewer.instance(name, namespace, owner=f"user-{name[-12:]}@example.org",
                              dataset="s3://bench-data/pbmc3k.h5ad", lifespan=3600)  # fmt: skip


def poc_instance(name: str, namespace: str) -> dict[str, Any]:
    """What the PoC's client rendered: three manifests in the spec, every pod ``app=cellxgene``."""
    labels = {"app": "cellxgene", "instance": name}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "cellxgene"}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "initContainers": [{"name": "s3-sync", "image": "amazon/aws-cli",
                                        "command": ["aws", "s3", "sync", f"s3://bench-data/cxg_on_k8/user/{name}/", "/data/"],
                                        "envFrom": [{"secretRef": {"name": "aws-cred-secret"}}],
                                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                    "containers": [{"name": "cellxgene", "image": "cellxgene:1.1.2",
                                    "command": ["cellxgene", "launch", "--verbose", "-p", "5005", "--host", "0.0.0.0",
                                                "/data/pbmc3k.h5ad", "--annotations-file", "/data/annotations.csv",
                                                "--gene-sets-file", "/data/gene_sets.csv"],
                                    "ports": [{"containerPort": 5005}],
                                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                },
            },
        },
    }  # fmt: skip
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"selector": {"app": "cellxgene"}, "ports": [{"port": 5005, "targetPort": 5005}]},
    }  # fmt: skip
    ingress = {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": namespace, "labels": labels,
                     "annotations": {"nginx.ingress.kubernetes.io/rewrite-target": "/$2"}},
        "spec": {"ingressClassName": "nginx", "rules": [{"host": "cxg.localtest", "http": {"paths": [
            {"path": f"/{name}(/|$)(.*)", "pathType": "ImplementationSpecific",
             "backend": {"service": {"name": name, "port": {"number": 5005}}}}]}}]},
    }  # fmt: skip
    return {
        "apiVersion": model.API_VERSION, "kind": model.KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"lifespan": 3600, "deployment": deployment, "service": service, "ingress": ingress},
    }  # fmt: skip


# --- observing ------------------------------------------------------------------------------------


class Observer:
    """Watches opened before the first create; records when each instance reached each stage."""

    def __init__(self, session: requests.Session, server: str, namespace: str, child_kinds: tuple[str, ...]) -> None:
        self.session, self.server, self.namespace, self.child_kinds = session, server, namespace, child_kinds
        self.created: dict[str, float] = {}
        self.children: dict[str, dict[str, float]] = {}
        self.pod_ready: dict[str, float] = {}
        self.ready: dict[str, float] = {}
        self.startup_seconds: dict[str, float] = {}
        self.regressed: set[str] = set()
        self.visited: set[str] = set()  # instances whose first visit is in their status
        self.stopped = False
        self._versions: dict[str, str] = {}
        self._threads = [
            threading.Thread(target=self._watch, args=(kind,), daemon=True)
            for kind in ("SingleUserInstance", *child_kinds)
        ]

    def start(self) -> None:
        """List each kind once (its resourceVersion), then watch from there: no event is missed."""
        for thread in self._threads:
            kind = thread._args[0]  # type: ignore[attr-defined]
            for _ in range(50):  # a fresh API server answers 429 until its flow control is set up
                resp = self.session.get(self.server + WATCHED[kind].format(ns=self.namespace), timeout=30)
                if resp.status_code != 429:
                    break
                time.sleep(float(resp.headers.get("Retry-After", "1")))
            resp.raise_for_status()
            self._versions[kind] = resp.json()["metadata"]["resourceVersion"]
            thread.start()

    def _watch(self, kind: str) -> None:
        url = self.server + WATCHED[kind].format(ns=self.namespace)
        while not self.stopped:
            params = {"watch": "1", "timeoutSeconds": "3600", "resourceVersion": self._versions[kind],
                      "allowWatchBookmarks": "true"}  # fmt: skip
            try:
                with self.session.get(url, params=params, stream=True, timeout=(10, 600)) as resp:
                    resp.raise_for_status()
                    for line in resp.iter_lines():
                        if line:
                            event = json.loads(line)
                            if event.get("type") == "ERROR":  # e.g. 410 Gone: too old a version
                                raise ValueError(str(event))
                            self._versions[kind] = event["object"]["metadata"]["resourceVersion"]
                            self._seen(kind, event, time.monotonic())
            except (requests.RequestException, ValueError) as exc:
                if self.stopped:
                    return
                print(f"watch of {kind} broke ({exc}); resuming", file=sys.stderr, flush=True)
                time.sleep(0.5)

    def _seen(self, kind: str, event: dict[str, Any], now: float) -> None:
        if event.get("type") not in ("ADDED", "MODIFIED"):
            return
        obj = event["object"]
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        if kind == "SingleUserInstance":
            if status.get("phase") == "Ready":
                self.ready.setdefault(name, now)
            elif name in self.ready:
                self.regressed.add(name)  # Ready before, something else now
            if status.get("lastActivity"):
                self.visited.add(name)
            if isinstance(status.get("startupSeconds"), (int, float)):
                self.startup_seconds.setdefault(name, float(status["startupSeconds"]))
            return
        self.children.setdefault(name, {}).setdefault(kind, now)
        # a pod of its own (viewer_workload pod, bench/floor.py), named after its instance
        if kind == "Pod" and any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        ):
            self.pod_ready.setdefault(name, now)
        if kind == "Deployment" and (status.get("readyReplicas") or 0) >= 1:
            self.pod_ready.setdefault(name, now)

    def children_done(self, name: str) -> float | None:
        seen = self.children.get(name, {})
        return max(seen.values()) if all(k in seen for k in self.child_kinds) else None


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": float("nan"), "p95": float("nan"), "max": float("nan")}

    def rank(q: float) -> float:  # nearest rank
        return ordered[max(0, min(len(ordered) - 1, int(-(-q * len(ordered) // 1)) - 1))]

    return {"p50": rank(0.50), "p95": rank(0.95), "max": ordered[-1]}


# --- one run --------------------------------------------------------------------------------------


def run_one(kind: str, n: int, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    workdir = base / f"{kind}-{n}"
    workdir.mkdir(parents=True)
    policy = workdir / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    audit_log = workdir / "audit.log"
    extra = [f"--audit-policy-file={policy}", f"--audit-log-path={audit_log}", "--audit-log-maxsize=0"]
    if args.unlimited_apiserver:
        extra += UNLIMITED_APISERVER
    namespace = "cellxgene"
    names = [viewer.new_instance_name() for _ in range(n)]
    page = MetricsPage(namespace, names, growing=kind == "ours")
    cluster = DevCluster(workdir=workdir / "cluster", quiet=True, apiserver_extra_args=extra)
    operator = None
    try:
        cluster.start()
        cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(crd.definition()))
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{model.CRD_NAME}", "--timeout=60s")
        cluster.kubectl("create", "namespace", namespace)
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE or a proxy must not override the cluster's CA
        session.cert = (str(cluster.pki / "admin.crt"), str(cluster.pki / "admin.key"))
        session.verify = str(cluster.pki / "ca.crt")
        adapter = requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=CLIENT_THREADS + 8)
        session.mount("https://", adapter)
        child_kinds = ("Service", "Ingress", "Pod") if kind == "ours" and args.viewer_workload == "pod" else CHILD_KINDS[kind]
        observer = Observer(session, cluster.server, namespace, child_kinds)
        observer.start()
        operator = start_operator(kind, workdir, operator_kubeconfig(cluster), namespace, page.url, args.tick,
                                  args.viewer_workload)  # fmt: skip
        time.sleep(2)  # the operator's first list/watch and first culling pass settle
        server_pids = [cluster.processes[name].popen.pid for name in ("kube-apiserver", "etcd")]
        cpu0, requests0 = cpu_seconds(operator.pid), audited_requests(audit_log)
        server_cpu0 = sum(cpu_seconds(pid) for pid in server_pids)
        render = ours_instance if kind == "ours" else poc_instance
        bodies = [render(name, namespace) for name in names]
        url = f"{cluster.server}/apis/{model.GROUP}/{model.VERSION}/namespaces/{namespace}/{model.PLURAL}"

        def create(body: dict[str, Any]) -> None:
            observer.created[body["metadata"]["name"]] = time.monotonic()
            resp = session.post(url, json=body, timeout=60)
            if resp.status_code != 201:
                raise RuntimeError(f"create failed: {resp.status_code} {resp.text[:300]}")

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
            list(pool.map(create, bodies))
        client_done = time.monotonic() - started
        done = observer.ready if kind == "ours" else observer.pod_ready
        deadline = started + args.timeout
        while len(done) < n and time.monotonic() < deadline and operator.poll() is None:
            time.sleep(0.1)
        cpu_spawn = cpu_seconds(operator.pid) - cpu0
        server_cpu = sum(cpu_seconds(pid) for pid in server_pids) - server_cpu0
        rss_spawn = peak_rss_mib(operator.pid) or float("nan")  # NaN: the table prints a dash
        all_ready = max(done.values()) - started if len(done) == n else None
        time.sleep(1)  # let the audit log catch up with the last responses
        spawn_requests = audited_requests(audit_log) - requests0
        # Steady state: N instances up, nobody new, every owner at work: the culling cost per tick.
        # First our culler writes each instance's first visit (a thousand writes take more than
        # a tick): the steady ticks start one tick after the last of them.
        page.visit()
        if kind == "ours":
            deadline = time.monotonic() + 300
            while len(observer.visited) < n and time.monotonic() < deadline:
                time.sleep(0.5)
        time.sleep(args.tick)
        steady_cpu0, steady_req0, steady_t0 = cpu_seconds(operator.pid), audited_requests(audit_log), time.monotonic()
        time.sleep(args.steady_ticks * args.tick)
        steady_ticks = (time.monotonic() - steady_t0) / args.tick
        steady_cpu = (cpu_seconds(operator.pid) - steady_cpu0) / steady_ticks
        steady_counts = audited_requests(audit_log) - steady_req0
        steady_requests = sum(steady_counts.values()) / steady_ticks
        steady_status_writes = steady_counts[f"patch {model.PLURAL}/status"] / steady_ticks
        rss_end = peak_rss_mib(operator.pid) or float("nan")
        restart = None
        if args.restart and kind == "ours":
            stop_process(operator, timeout=20)
            before, restarted_at = audited_requests(audit_log), time.monotonic()
            operator = start_operator(kind, workdir, operator_kubeconfig(cluster), namespace, page.url, args.tick,
                                      args.viewer_workload)  # fmt: skip
            restart = resumed(operator, audit_log, observer, before, restarted_at)
        observer.stopped = True

        def durations(stage: dict[str, float] | None, fn: Any = None) -> dict[str, float]:
            values = []
            for name in names:
                at = fn(name) if fn else (stage or {}).get(name)
                if at is not None:
                    values.append(at - observer.created[name])
            return {**percentiles(values), "count": len(values)}

        return {
            "operator": kind,
            "n": n,
            "client_create_s": client_done,
            "children": durations(None, observer.children_done),
            "pod_ready": durations(observer.pod_ready),
            "ready": durations(done),
            "startup_seconds": {
                **percentiles(list(observer.startup_seconds.values())),
                "count": len(observer.startup_seconds),
            },
            "all_ready_wall_s": all_ready,
            "operator_cpu_s": cpu_spawn,
            "server_cpu_s": server_cpu,
            "operator_peak_rss_mib": max(rss_spawn, rss_end),
            "api_requests": dict(spawn_requests),
            "api_requests_per_instance": sum(spawn_requests.values()) / n,
            "steady_cpu_s_per_tick": steady_cpu,
            "steady_requests_per_tick": steady_requests,
            "steady_status_writes_per_tick": steady_status_writes,
            "metrics_page_bytes": page.size,
            "operator_alive": operator.poll() is None,
            "restart": restart,
        }
    finally:
        if operator is not None:
            stop_process(operator, timeout=20)
        page.stop()
        cluster.stop()
        if not args.keep:
            shutil.rmtree(workdir / "cluster", ignore_errors=True)


def resuming(counts: Counter[str]) -> dict[str, int]:
    """The requests that resuming makes: not watches, nor the peering check every tick."""
    return {k: v for k, v in counts.items() if not k.startswith("watch ") and k != "get kopfpeerings"}


def resumed(
    operator: subprocess.Popen[bytes], audit_log: Path, observer: Observer, before: Counter[str], started: float
) -> dict[str, Any]:
    """After a restart: how long until the new operator's burst of requests ends (none for 5 s
    but watches and the peering check), what it sent (creates would be children made again), and how many instances
    stepped back from Ready meanwhile (the watch saw another phase). Times from the new process's
    start."""
    last_change, last = started, audited_requests(audit_log)
    while time.monotonic() - last_change < 5 and time.monotonic() - started < 300:
        time.sleep(0.5)
        now = audited_requests(audit_log)
        if resuming(now) != resuming(last):
            last_change, last = time.monotonic(), now
    sent = last - before
    return {
        "resume_s": last_change - started,
        "requests": dict(sent),
        "creates": sum(v for k, v in sent.items() if k.startswith("create ") and k != "create events"),
        "status_writes": sent[f"patch {model.PLURAL}/status"],
        "regressed": len(observer.regressed),
        "operator_alive": operator.poll() is None,
    }


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def table(results: list[dict[str, Any]]) -> str:
    head = ("| operator | N | client create s | children p50/p95/max s | pod ready p50/p95/max s | Ready p50/p95/max s "
            "| all Ready (wall) s | CPU s | peak RSS MiB | API req/instance | API server + etcd CPU s "
            "| steady CPU s/tick | steady req/tick | steady status writes/tick | load before |")
    rows = [head, "|" + " --- |" * 15]
    for r in results:
        def ppm(key: str, r: dict[str, Any] = r) -> str:
            d = r[key]
            missing = f" ({r['n'] - d['count']} missing)" if d["count"] < r["n"] else ""
            return f"{fmt(d['p50'])} / {fmt(d['p95'])} / {fmt(d['max'])}{missing}"

        rows.append(
            f"| {r['operator']}{' (pod)' if r.get('viewer_workload') == 'pod' else ''} | {r['n']} "
            f"| {fmt(r['client_create_s'])} | {ppm('children')} | {ppm('pod_ready')} "
            f"| {ppm('ready')} | {fmt(r['all_ready_wall_s'])} | {fmt(r['operator_cpu_s'])} "
            f"| {fmt(r['operator_peak_rss_mib'], 0)} | {fmt(r['api_requests_per_instance'])}"
            f"{'' if r['ready']['count'] == r['n'] else ' (unfinished)'} "
            f"| {fmt(r.get('server_cpu_s'))} | {fmt(r['steady_cpu_s_per_tick'], 2)} | {fmt(r['steady_requests_per_tick'])} "
            f"| {fmt(r.get('steady_status_writes_per_tick'))} | {fmt(r.get('load_before'), 2)} |"
        )
    return "\n".join(rows)


def ratios(results: list[dict[str, Any]]) -> str:
    """ours / poc for each size measured with both; < 1 means ours is cheaper or faster."""
    by = {(r["operator"], r["n"]): r for r in results}
    rows = ["| N | all Ready wall | Ready p95 | CPU s | peak RSS | API req/instance | steady CPU/tick |",
            "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for n in sorted({r["n"] for r in results}):
        ours, poc = by.get(("ours", n)), by.get(("poc", n))
        if not ours or not poc:
            continue

        def ratio(a: float | None, b: float | None) -> str:
            return "—" if not a or not b else f"{a / b:.2g}"

        rows.append(
            f"| {n} | {ratio(ours['all_ready_wall_s'], poc['all_ready_wall_s'])} "
            f"| {ratio(ours['ready']['p95'], poc['ready']['p95'] if poc['all_ready_wall_s'] else None)} "
            f"| {ratio(ours['operator_cpu_s'], poc['operator_cpu_s'])} "
            f"| {ratio(ours['operator_peak_rss_mib'], poc['operator_peak_rss_mib'])} "
            f"| {ratio(ours['api_requests_per_instance'], poc['api_requests_per_instance'] if poc['all_ready_wall_s'] else None)} "
            f"| {ratio(ours['steady_cpu_s_per_tick'], poc['steady_cpu_s_per_tick'])} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--sizes", default="1,100,500", help="comma-separated instance counts (default 1,100,500)")
    parser.add_argument("--operators", default="ours,poc", help="which operators, in order (default ours,poc)")
    parser.add_argument("--tick", type=float, default=10.0,
                        help="culling tick of both operators, seconds (default 10: several ticks per run)")
    parser.add_argument("--steady-ticks", type=float, default=2.0,
                        help="ticks to measure the steady cost after all are Ready (default 2)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for all Ready (default 180)")
    parser.add_argument("--unlimited-apiserver", action="store_true",
                        help="start the API server with " + " ".join(UNLIMITED_APISERVER))
    parser.add_argument("--viewer-workload", default="deployment", choices=("deployment", "pod"),
                        help="ours: the setting viewer_workload (default deployment)")
    parser.add_argument("--restart", action="store_true",
                        help="ours: after the steady state, restart the operator and measure its resumption")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the clusters' files (logs, audit)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = args.operators.split(",")
    base = Path(tempfile.mkdtemp(prefix="cxg-bench-spawn-"))
    print(f"work files in {base}; tick {args.tick:g} s; API server "
          f"{'with ' + ' '.join(UNLIMITED_APISERVER) if args.unlimited_apiserver else 'with default limits (APF on)'}",
          flush=True)  # fmt: skip
    results = []
    for n in sizes:
        for kind in kinds:
            load = os.getloadavg()[0]
            result = run_one(kind, n, args, base)
            result["load_before"] = load
            result["unlimited_apiserver"] = args.unlimited_apiserver
            result["viewer_workload"] = args.viewer_workload if kind == "ours" else "deployment"
            results.append(result)
            print(json.dumps(result), flush=True)
    print(table(results))
    print()
    print(ratios(results))
    print()
    for r in results:
        per = ", ".join(f"{k} {v / r['n']:.2f}" for k, v in sorted(r["api_requests"].items(), key=lambda kv: -kv[1]))
        print(f"{r['operator']} N={r['n']}: requests per instance: {per}")
        if r.get("restart"):
            d = r["restart"]
            print(f"{r['operator']} N={r['n']} restart: requests settled {d['resume_s']:.1f} s after the new operator "
                  f"started; children created again: {d['creates']}; status writes: {d['status_writes']}; instances "
                  f"that left Ready: {d['regressed']}; requests: {d['requests']}")  # fmt: skip
        if r["startup_seconds"]["count"]:
            d = r["startup_seconds"]
            print(f"{r['operator']} N={r['n']}: status.startupSeconds p50/p95/max {fmt(d['p50'])} / {fmt(d['p95'])} / "
                  f"{fmt(d['max'])} s ({d['count']} of {r['n']} instances)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
