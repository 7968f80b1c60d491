"""One culling pass's activity read, in operator CPU: the viewer pods' sidecars vs ingress-nginx's page.

The issue's goal: at most 0.5 s of operator CPU per pass at 5000 viewers, linear in N. Measured
here, for each N of ``--sizes`` (default 1000 and 5000), in this process (the operator's side;
the simulated endpoints run in a process of their own, whose CPU is not counted):

* pods: :class:`~cxg_on_k8s.culling.pod_activity.PodActivitySource` reading N simulated
  sidecars, ``activity_concurrency`` (64) at a time. The first pass connects to every pod;
  the next ``--passes`` reuse the kept connections (the operator's steady state).
* pod list: what a per-tick pod list would cost the operator (``json.loads`` and
  :func:`~cxg_on_k8s.culling.pod_activity.targets_from_pods`, page by page), the reason it does
  not list: its pod watch keeps the addresses (``PodAddresses``) at no cost per tick. N viewer
  pods as the API server would send them: the rendered pod (edge gateway) with a Running status, the API's
  defaults and managedFields. The API server itself is not run (no cluster here), nor TLS.
* ingress-nginx: today's :class:`~cxg_on_k8s.culling.activity.MetricsSource` scrape (fetch and
  parse) of one controller page with N Ingresses (bench/spawn.py's page: four request series
  and two histograms per Ingress), served by the same server process.
* ``--compare``: the alternatives pod_activity.py's docstring weighs, on the same endpoints:
  aiohttp (one ClientSession, its kept connections) and a new connection per read (the pod
  source with too few file descriptors to keep any, as with a low RLIMIT_NOFILE).

The simulated sidecars: ONE server process (this file, ``--serve``), an asyncio server
listening on N loopback addresses, 127.77.x.y:44180, one per pod: each pod has an address and a
connection of its own, as in a cluster (same port, own IP). It answers as oauth2-proxy v7.15.6
does (HTTP/1.1, keep-alive, its headers, Content-Length) the page it serves for
``?name[]=oauth2_proxy_requests_total`` after some use: eight status codes, ~480 bytes, every
counter growing at every answer: every viewer in use at every tick, the worst case (the reader
skips a page that is the same as the last one). ``--active 0.1``: a tenth of them in use, the
others' counters standing still.

CPU is ``getrusage`` user + system of this process around the pass (threads included), so it
also holds the kernel's TCP work on loopback, which in a cluster partly falls elsewhere. Wall
time and the load average are printed too: the server shares the machine's cores.

Usage::

    .venv/bin/python bench/activity.py [--sizes 1000,5000] [--passes 5] [--compare] [--active 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.spawn import metrics_page
from cxg_on_k8s.api import model
from cxg_on_k8s.culling.activity import MetricsSource
from cxg_on_k8s.culling.pod_activity import PodActivitySource, Target, owner_answers, targets_from_pods
from cxg_on_k8s.render import viewer
from cxg_on_k8s.render.plan import plan_instance
from cxg_on_k8s.render.signin import SIGNIN_METRICS_PATH, SIGNIN_METRICS_PORT
from cxg_on_k8s.settings import Settings

NAMESPACE = "cellxgene"
CONCURRENCY = Settings().activity_concurrency
CODES = ("200", "301", "302", "304", "401", "403", "404", "502")
GOAL_S = 0.5  # the issue's: operator CPU per pass at 5000 viewers


def pod_address(i: int) -> str:
    """The i-th simulated pod's address: 127.77.0.1 on, 250 a /24 (all of 127/8 is loopback)."""
    return f"127.77.{i // 250}.{i % 250 + 1}"


# --- the server process -----------------------------------------------------------------------------


def is_active(pod: int, active: float) -> bool:
    """Whether the pod-th simulated viewer is in use: ``active`` of them, spread evenly."""
    return int((pod + 1) * active) > int(pod * active)


def serve(pods: int, ingress_sizes: list[int], active: float) -> None:
    """Listen for ``pods`` sidecars and one ingress-nginx page per size; say "ready <port>"."""
    pages = {f"/ingress-nginx/{n}": metrics_page(NAMESPACE, [f"cellxgene-{i}" for i in range(n)]).encode()
             for n in ingress_sizes}  # fmt: skip

    class Sidecar(asyncio.Protocol):
        """One pod's metrics port: every request answered on the same connection, counts growing."""

        def __init__(self, pod: int) -> None:
            self.pod, self.answers, self.buffer, self.grows = pod, 0, b"", is_active(pod, active)

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while b"\r\n\r\n" in self.buffer:
                _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
                self.answers += self.grows
                body = (
                    "# HELP oauth2_proxy_requests_total Total number of requests by HTTP status code.\n"
                    "# TYPE oauth2_proxy_requests_total counter\n"
                    + "".join(
                        f'oauth2_proxy_requests_total{{code="{code}"}} {self.pod + 3 * self.answers + k}\n'
                        for k, code in enumerate(CODES)
                    )
                ).encode()
                head = (
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8; escaping=underscores\r\n"
                    f"Vary: Accept\r\nVary: Accept-Encoding\r\nDate: {time.strftime('%a, %d %b %Y %H:%M:%S GMT', time.gmtime())}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                self.transport.write(head + body)  # type: ignore[attr-defined]

    class Page(asyncio.Protocol):
        """The ingress-nginx pages, one per connection (as requests asks: keep-alive is not needed)."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport, self.buffer = transport, b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            if b"\r\n\r\n" in self.buffer:
                path = self.buffer.split(b" ", 2)[1].decode()
                body = pages.get(path, b"")
                head = (f"HTTP/1.1 {'200 OK' if body else '404 Not Found'}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()  # fmt: skip
                self.transport.write(head + body)  # type: ignore[attr-defined]
                self.transport.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for pod in range(pods):
            await loop.create_server(lambda pod=pod: Sidecar(pod), pod_address(pod), SIGNIN_METRICS_PORT, backlog=128)
        page_server = await loop.create_server(Page, "127.0.0.1", 0)
        print(f"ready {page_server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


@contextmanager
def server(pods: int, ingress_sizes: list[int], active: float = 1.0) -> Iterator[int]:
    """The server process; yields the port of its ingress-nginx pages."""
    command = [sys.executable, __file__, "--serve", str(pods), "--pages", ",".join(map(str, ingress_sizes)),
               "--active", str(active)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        if not line.startswith("ready "):
            raise RuntimeError(f"the simulated endpoints did not start (exit {process.poll()}): {line!r}")
        yield int(line.split()[1])
    finally:
        process.terminate()
        process.wait(10)


# --- measuring ----------------------------------------------------------------------------------------


def measured(fn: Callable[[], Any]) -> tuple[float, float, Any, float]:
    """(CPU seconds, wall seconds, result, the kernel's part of the CPU) of one call."""
    start, start_wall = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    result = fn()
    end = resource.getrusage(resource.RUSAGE_SELF)
    system = end.ru_stime - start.ru_stime
    return end.ru_utime - start.ru_utime + system, time.monotonic() - start_wall, result, system


def targets(n: int) -> list[Target]:
    return [((NAMESPACE, f"cellxgene-{i}"), f"http://{pod_address(i)}:{SIGNIN_METRICS_PORT}{SIGNIN_METRICS_PATH}")
            for i in range(n)]  # fmt: skip


def pod_passes(loop: asyncio.AbstractEventLoop, source: PodActivitySource, n: int, passes: int) -> dict[str, Any]:
    """The first pass (connecting) and ``passes`` steady ones, each checked to have read all n."""
    runs = []
    for _ in range(1 + passes):
        took_cpu, took_wall, reading, system = measured(lambda: loop.run_until_complete(source.read()))
        if len(reading.counters) != n or reading.unknown:
            raise RuntimeError(
                f"read {len(reading.counters)} of {n} pods, unknown: {list(reading.unknown.items())[:3]}"
            )
        runs.append((took_cpu, took_wall, system))
    steady = runs[1:]
    return {
        "first_cpu_s": runs[0][0],
        "first_wall_s": runs[0][1],
        "cpu_s": statistics.median(c for c, _, _ in steady),
        "system_s": statistics.median(s for _, _, s in steady),
        "wall_s": statistics.median(w for _, w, _ in steady),
    }


def aiohttp_passes(loop: asyncio.AbstractEventLoop, n: int, passes: int) -> dict[str, Any]:
    """aiohttp as one would use it: one session, its pool of kept connections, 64 at a time."""
    import aiohttp

    urls = [url for _, url in targets(n)]

    async def make() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=CONCURRENCY, limit_per_host=1, keepalive_timeout=3600)
        return aiohttp.ClientSession(connector=connector, auto_decompress=False)

    session = loop.run_until_complete(make())

    async def one_pass() -> int:
        pending, read = iter(urls), []

        async def worker() -> None:
            for url in pending:
                async with session.get(url) as response:
                    read.append(owner_answers((await response.read()).decode()))

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return len(read)

    runs = [measured(lambda: loop.run_until_complete(one_pass()))[:2] for _ in range(1 + passes)]
    loop.run_until_complete(session.close())
    return {"first_cpu_s": runs[0][0], "cpu_s": statistics.median(c for c, _ in runs[1:]),
            "wall_s": statistics.median(w for _, w in runs[1:])}  # fmt: skip


def without_kept_connections(n: int) -> PodActivitySource:
    """The pod source as it runs with a low open-file limit: (almost) no connection kept."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        return PodActivitySource(lambda: targets(n), timeout=5, concurrency=CONCURRENCY)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


LIST_PAGE = 500  # pods per page of the per-tick list the operator does not make


def listed_pod_pages(n: int) -> list[bytes]:
    """The pages (LIST_PAGE pods each) of a PodList of n viewer pods (edge gateway), as the API
    server would serialize them for a per-tick list."""
    settings = Settings(edge="gateway")
    name = viewer.new_instance_name()
    body = viewer.instance(name, NAMESPACE, "ada@example.org", "s3://omics-data/projects/p1/pbmc3k.h5ad")
    spec = model.SingleUserInstanceSpec.model_validate(body["spec"])
    plan = plan_instance(name, NAMESPACE, body["metadata"].get("labels", {}), spec, settings)
    template = next(c for c in plan.children if c["kind"] == "Deployment")["spec"]["template"]
    items = [pod_object(template, i) for i in range(n)]
    return [json.dumps({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "123456"},
                        "items": items[start : start + LIST_PAGE]}, separators=(",", ":")).encode()
            for start in range(0, n, LIST_PAGE)]  # fmt: skip


def pod_object(template: dict[str, Any], i: int) -> dict[str, Any]:
    """The i-th pod: the template with what the API server, the scheduler and the kubelet add."""
    instance = f"cellxgene-{i:08x}-0000-4000-8000-000000000000"
    spec = json.loads(json.dumps(template["spec"]))
    for container in spec.get("initContainers", []) + spec["containers"]:
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("volumeMounts", []).append(
            {
                "name": "kube-api-access-x7k2p",
                "readOnly": True,
                "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
            }
        )
    spec.update(dnsPolicy="ClusterFirst", enableServiceLinks=True, nodeName="node-3", preemptionPolicy="PreemptLowerPriority",
                priority=0, restartPolicy="Always", schedulerName="default-scheduler", serviceAccount="default",
                serviceAccountName="default", terminationGracePeriodSeconds=120,
                tolerations=[{"key": f"node.kubernetes.io/{t}", "operator": "Exists", "effect": "NoExecute",
                              "tolerationSeconds": 300} for t in ("not-ready", "unreachable")])  # fmt: skip
    spec.setdefault("volumes", []).append({"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}})  # fmt: skip
    ip = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
    at = "2026-12-02T05:00:00Z"

    def status_of(container: dict[str, Any], init: bool) -> dict[str, Any]:
        state = {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": at, "finishedAt": at,
                                "containerID": f"containerd://{i:064x}"}} if init else {"running": {"startedAt": at}}  # fmt: skip
        return {"name": container["name"], "state": state, "lastState": {}, "ready": not init, "restartCount": 0,
                "image": container["image"], "imageID": f"docker.io/library/x@sha256:{i:064x}",
                "containerID": f"containerd://{i:064x}", "started": not init}  # fmt: skip

    status = {
        "phase": "Running", "hostIP": "192.168.1.3", "hostIPs": [{"ip": "192.168.1.3"}], "podIP": ip,
        "podIPs": [{"ip": ip}], "startTime": at, "qosClass": "Guaranteed",
        "conditions": [{"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": at}
                       for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")],
        "initContainerStatuses": [status_of(c, True) for c in spec.get("initContainers", [])],
        "containerStatuses": [status_of(c, False) for c in spec["containers"]],
    }  # fmt: skip
    meta = {
        "name": f"{instance}-7d9f8c6b5-{i % 99999:05d}", "generateName": f"{instance}-7d9f8c6b5-",
        "namespace": NAMESPACE, "uid": f"{i:08x}-1111-4222-8333-444455556666", "resourceVersion": str(100000 + i),
        "creationTimestamp": at, "labels": {**template["metadata"]["labels"], "instance": instance,
                                            "pod-template-hash": "7d9f8c6b5"},
        "annotations": template["metadata"].get("annotations", {}),
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{instance}-7d9f8c6b5",
                             "uid": f"{i:08x}-aaaa-4bbb-8ccc-dddd00001111", "controller": True,
                             "blockOwnerDeletion": True}],
        "managedFields": [
            {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": at,
             "fieldsType": "FieldsV1", "fieldsV1": fields_v1({"metadata": {"labels": template["metadata"]["labels"]}, "spec": spec})},
            {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": at, "fieldsType": "FieldsV1",
             "fieldsV1": fields_v1({"status": status}), "subresource": "status"},
        ],
    }  # fmt: skip
    return {"metadata": meta, "spec": spec, "status": status}


def fields_v1(value: Any) -> Any:
    """The managedFields set of ``value``: its keys as ``f:``, list items by name as ``k:``."""
    if isinstance(value, dict):
        return {f"f:{key}": fields_v1(item) for key, item in value.items()} | {".": {}}
    if isinstance(value, list) and value and all(isinstance(item, dict) and "name" in item for item in value):
        return {f'k:{{"name":"{item["name"]}"}}': fields_v1(item) for item in value}
    return {}


def ingress_nginx_pass(page_port: int, n: int) -> dict[str, Any]:
    source = MetricsSource(lambda: [f"http://127.0.0.1:{page_port}/ingress-nginx/{n}"], timeout=120)
    took_cpu, took_wall, snapshot, _ = measured(source.scrape)
    if len(snapshot) != n:
        raise RuntimeError(f"the ingress-nginx page gave {len(snapshot)} Ingresses, not {n}")
    return {"cpu_s": took_cpu, "wall_s": took_wall}


def run(sizes: list[int], passes: int, compare: bool, active: float) -> list[dict[str, Any]]:
    results = []
    loop = asyncio.new_event_loop()
    with server(max(sizes), sizes, active) as page_port:
        for n in sizes:
            load = os.getloadavg()[0]
            source = PodActivitySource(lambda n=n: targets(n), timeout=5, concurrency=CONCURRENCY)
            pods = pod_passes(loop, source, n, passes)
            source.close()
            pages = listed_pod_pages(n)
            list_cpu, _, listed, _ = measured(
                lambda pages=pages: [t for page in pages for t in targets_from_pods(json.loads(page)["items"])]
            )
            assert len(listed) == n, len(listed)
            size = sum(map(len, pages))
            row: dict[str, Any] = {
                "n": n,
                "active": active,
                "load_before": load,
                "pods": pods,
                "pod_list": {"cpu_s": list_cpu, "bytes": size, "bytes_per_pod": size / n},
                "ingress_nginx": ingress_nginx_pass(page_port, n),
            }
            if compare:
                row["aiohttp"] = aiohttp_passes(loop, n, passes)
                fresh = without_kept_connections(n)
                row["new_connection_per_read"] = pod_passes(loop, fresh, n, passes)
                fresh.close()
            row["load_after"] = os.getloadavg()[0]
            results.append(row)
            print(line(row), flush=True)
    loop.close()
    return results


def line(row: dict[str, Any]) -> str:
    pods, nginx, listed = row["pods"], row["ingress_nginx"], row["pod_list"]
    text = (
        f"N={row['n']}: pods {pods['cpu_s']:.3f} s CPU per pass (kernel {pods['system_s']:.3f}; "
        f"{pods['wall_s']:.2f} s wall; first pass, "
        f"connecting: {pods['first_cpu_s']:.3f} s), + pod list {listed['cpu_s']:.3f} s "
        f"({listed['bytes'] / 1e6:.1f} MB); ingress-nginx page {nginx['cpu_s']:.3f} s ({nginx['wall_s']:.2f} s wall); "
        f"pods / ingress-nginx {pods['cpu_s'] / nginx['cpu_s']:.2f}; load {row['load_before']:.2f} -> {row['load_after']:.2f}"
    )
    for other in ("aiohttp", "new_connection_per_read"):
        if other in row:
            text += f"\n    {other}: {row[other]['cpu_s']:.3f} s CPU per pass (first {row[other]['first_cpu_s']:.3f} s)"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1000,5000", help="numbers of viewers, comma-separated")
    parser.add_argument("--passes", type=int, default=5, help="steady passes after the first (median)")
    parser.add_argument("--compare", action="store_true", help="also aiohttp and a new connection per read")
    parser.add_argument("--active", type=float, default=1.0,
                        help="share of the pods whose counters grow between reads (default 1: all, the worst case)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server process
    parser.add_argument("--pages", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, [int(n) for n in args.pages.split(",") if n], args.active)
        return
    sizes = [int(n) for n in args.sizes.split(",")]
    results = run(sizes, args.passes, args.compare, args.active)
    if len(results) > 1:
        small, big = results[0], results[-1]
        scale = big["n"] / small["n"]
        for what in ("pods", "ingress_nginx"):
            print(
                f"linearity {what}: {big[what]['cpu_s'] / small[what]['cpu_s']:.2f}x the CPU for {scale:g}x the viewers"
            )
        total = big["pods"]["cpu_s"] + big["pod_list"]["cpu_s"]
        print(f"goal at N={big['n']}: <= {GOAL_S} s per pass; reading {big['pods']['cpu_s']:.3f} s, with the pod list "
              f"{total:.3f} s")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
