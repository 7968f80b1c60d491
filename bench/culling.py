"""How soon the culler acts once an instance is due, and at what rate it deletes: measured, not asserted.

The culling tests (tests/test_lifecycle.py, tests/test_faults.py) assert only what does not
depend on this machine's speed: nobody is culled before their timeout, each cull has its reason
and its Event, one failed scrape per failed pass, all of a thousand expiries deleted. How soon
after the timeout, and how fast a thousand go, is printed here instead. On a fresh local control
plane (etcd, kube-apiserver, controller-manager, scheduler, kwok nodes; pods turn Ready without
images) with ``python -m cxg_on_k8s operator`` as its own process:

* windows (``--tick``, default 1 s; skipped with ``--no-windows``), against a metrics endpoint of
  the bench's own that serves ingress-nginx's text (tests/metrics_server.py), ``--repeat`` rounds:

  - idle: visited, then left, ``idleTimeout`` 3 s: seconds from ``status.lastActivity`` to the
    deletion as a watch delivers it (lastActivity is whole seconds: up to 1 s is truncation);
  - never-visited: ``unvisitedTimeout`` 3 s: seconds from ``status.readyAt`` to the deletion;
  - outage: the metrics endpoint down (connections refused) for ``--outage`` seconds: failed
    scrapes (``cxg_metrics_scrape_failures_total``) per tick of the outage (the design: one);
  - lifespan (``--lifespan-window``; waits out the 60 s minimum lifespan): age at deletion;

  "late" is the time past the timeout, in ticks: the culler's design puts a cull on the first pass
  past its timeout, so late is under one tick plus the watch's and API server's delay.
* expiries (``--expiries N``; 0 skips it; tests/test_faults.py makes 1000): N instances that pass
  a 60 s lifespan together, tick ``--expiry-tick`` (40 s) and ``--delete-rate`` (50/s): deletions
  from the last expiry on (first, last, how many after two ticks), the mean deletion rate, and
  the most deletions in any 4 s window against the limit (rate × 4 + the 8 API slots that may
  land together after a stall).

Usage::

    .venv/bin/python bench/culling.py [--repeat 3] [--tick 1] [--outage 10] [--lifespan-window]
        [--expiries 1000] [--expiry-tick 40] [--delete-rate 50] [--json out.json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cxg_devcluster.cluster import DevCluster, free_port

from cxg_on_k8s.api import crd, model
from cxg_on_k8s.k8s.client import K8ApiHandler, load_client, parse_time
from tests.conftest import OperatorProcess, install_crd, launch_operator, operator_env, wait_for
from tests.instances import create, create_all, instance_body, wait_phase
from tests.metrics_server import MetricsServer, Mode, metrics_server
from tests.watches import DeletionWatch, InstanceWatch

WINDOW_TIMEOUT = 3  # idleTimeout and unvisitedTimeout of the window runs, seconds
MIN_LIFESPAN = 60  # the CRD's minimum
BURST = 8  # the culler's API slots: deletions that may land together after a stall


def scrape_failures(port: int) -> float:
    """The operator's ``cxg_metrics_scrape_failures_total`` from its own /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("cxg_metrics_scrape_failures_total "):
                return float(line.split()[1])
    raise RuntimeError("the operator's /metrics has no cxg_metrics_scrape_failures_total")


def summary(values: list[float]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)
    return f"min {ordered[0]:.2f} / median {ordered[len(ordered) // 2]:.2f} / max {ordered[-1]:.2f}"


class Run:
    """One namespace and one operator in it, on the bench's cluster."""

    def __init__(self, cluster: DevCluster, workdir: Path, label: str, **settings: Any) -> None:
        self.namespace = f"bench-{label}-{uuid.uuid4().hex[:6]}"
        cluster.kubectl("create", "namespace", self.namespace)
        self.k8s = K8ApiHandler(client=load_client(str(cluster.kubeconfig)), namespace=self.namespace)
        self.started: list[OperatorProcess] = []
        env = operator_env(cluster.kubeconfig, self.namespace, **settings)
        self.operator = launch_operator(env, workdir / f"operator-{label}.log", started=self.started)

    def stop(self) -> None:
        for proc in self.started:
            proc.stop()


# --- windows ----------------------------------------------------------------------------------------


def windows(cluster: DevCluster, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    tick = args.tick
    result: dict[str, Any] = {"tick_s": tick, "idle_late_s": [], "never_visited_late_s": [], "lifespan_late_s": []}
    with metrics_server() as metrics:
        port = free_port()
        run = Run(cluster, workdir, "windows", tick=tick, metrics_url=metrics.url, operator_metrics_port=port)
        watcher = InstanceWatch(run.k8s)
        try:
            for round_ in range(1, args.repeat + 1):
                idle, never = one_round(run, watcher, metrics)
                result["idle_late_s"].append(idle)
                result["never_visited_late_s"].append(never)
                print(f"  round {round_}: idle cull {idle:+.2f} s, never-visited cull {never:+.2f} s after the "
                      f"{WINDOW_TIMEOUT} s timeout (tick {tick:g} s)", flush=True)  # fmt: skip
            result.update(outage(run, metrics, port, args.outage, tick))
            if args.lifespan_window:
                late = lifespan_round(run, watcher)
                result["lifespan_late_s"].append(late)
                print(f"  lifespan cull {late:+.2f} s after the {MIN_LIFESPAN} s lifespan", flush=True)
        finally:
            watcher.stop()
            run.stop()
    return result


def one_round(run: Run, watcher: InstanceWatch, metrics: MetricsServer) -> tuple[float, float]:
    """(idle, never-visited): seconds past the timeout at which each was seen deleted."""
    ns = run.namespace
    idle_name = create(run.k8s, instance_body(ns, idleTimeout=WINDOW_TIMEOUT, unvisitedTimeout=600))
    never_name = create(run.k8s, instance_body(ns, idleTimeout=600, unvisitedTimeout=WINDOW_TIMEOUT))
    wait_phase(run.k8s, idle_name, model.Phase.READY)
    metrics.visit(ns, idle_name, 4)
    last_activity = parse_time(wait_for(lambda: run.k8s.get_instance(idle_name).get("status", {}).get("lastActivity"),
                                        30, "lastActivity"))  # fmt: skip
    ready_body = wait_phase(run.k8s, never_name, model.Phase.READY)
    ready_at = parse_time(ready_body["status"]["readyAt"])
    assert last_activity is not None and ready_at is not None
    idle_when, _ = watcher.deleted(idle_name, 120)
    never_when, _ = watcher.deleted(never_name, 120)
    return (idle_when - last_activity.timestamp() - WINDOW_TIMEOUT,
            never_when - ready_at.timestamp() - WINDOW_TIMEOUT)  # fmt: skip


def outage(run: Run, metrics: MetricsServer, port: int, seconds: float, tick: float) -> dict[str, Any]:
    metrics.wait_scrapes(1)
    before = scrape_failures(port)
    started = time.monotonic()
    metrics.set_mode(Mode.DOWN)
    time.sleep(seconds)
    failures = scrape_failures(port) - before
    lasted = time.monotonic() - started
    metrics.set_mode(Mode.OK)
    per_tick = failures / (lasted / tick)
    print(f"  outage {lasted:.1f} s: {failures:.0f} failed scrapes, {per_tick:.2f} per tick (design: 1)", flush=True)
    return {"outage_s": lasted, "outage_failed_scrapes": failures, "outage_failures_per_tick": per_tick}


def lifespan_round(run: Run, watcher: InstanceWatch) -> float:
    name = create(run.k8s, instance_body(run.namespace, lifespan=MIN_LIFESPAN, idleTimeout=0, unvisitedTimeout=0))
    created = parse_time(run.k8s.get_instance(name)["metadata"]["creationTimestamp"])
    assert created is not None
    when, _ = watcher.deleted(name, MIN_LIFESPAN + 120)
    return when - created.timestamp() - MIN_LIFESPAN


# --- expiries -----------------------------------------------------------------------------------------


def expiries(cluster: DevCluster, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    n, tick, rate = args.expiries, args.expiry_tick, args.delete_rate
    with metrics_server() as metrics:  # answers, with no visits: no ActivityUnknown Event storm
        run = Run(cluster, workdir, "expiries", tick=tick, delete_rate=rate, metrics_url=metrics.url)
        deletions = DeletionWatch(run.k8s)
        try:
            started = time.monotonic()
            bodies = [instance_body(run.namespace, lifespan=MIN_LIFESPAN) for _ in range(n)]
            names = create_all(cluster.kubeconfig, bodies, 16)
            create_s = time.monotonic() - started
            print(f"  created {n} instances in {create_s:.1f} s", flush=True)
            created = [parse_time(i["metadata"]["creationTimestamp"]).timestamp()  # type: ignore[union-attr]
                       for i in run.k8s.list_instances()]  # fmt: skip
            # creationTimestamp is whole seconds: an instance is past its lifespan at most 1 s later.
            last_expiry = max(created) + MIN_LIFESPAN + 1
            give_up = last_expiry + 2 * tick + args.expiry_timeout
            while len(deletions.deleted) < n and time.time() < give_up:
                time.sleep(0.5)
        finally:
            deletions.stop()
            run.stop()
    times = sorted(at for name, (at, _) in deletions.deleted.items() if name in set(names))
    result: dict[str, Any] = {"n": n, "tick_s": tick, "delete_rate": rate, "create_s": create_s,
                              "deleted": len(times), "watch_errors": deletions.errors[-3:]}  # fmt: skip
    if not times:
        print("  no deletion seen", flush=True)
        return result
    window = 4.0
    worst = max(sum(1 for u in times[i:] if u - t < window) for i, t in enumerate(times))
    span = times[-1] - times[0]
    mean = (len(times) - 1) / span if span > 0 else float("nan")
    late = sum(1 for t in times if t > last_expiry + 2 * tick)
    reasons = Counter(status.get("cullReason") for _, status in deletions.deleted.values())
    result.update(
        first_after_last_expiry_s=times[0] - last_expiry,
        last_after_last_expiry_s=times[-1] - last_expiry,
        later_than_two_ticks=late,
        mean_rate_per_s=mean,
        worst_in_4s=worst,
        limit_in_4s=rate * window + BURST,
        reasons=dict(reasons),
    )
    print(f"  deleted {len(times)} of {n}: from {times[0] - last_expiry:+.1f} s to {times[-1] - last_expiry:+.1f} s "
          f"after the last expiry; {late} later than two ticks ({2 * tick:.0f} s)", flush=True)  # fmt: skip
    print(f"  mean {mean:.1f} deletions/s (delete_rate {rate:g}/s); at most {worst} within {window:.0f} s "
          f"(limit {rate * window:.0f} + {BURST} API slots = {rate * window + BURST:.0f}); reasons {dict(reasons)}",
          flush=True)  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--no-windows", action="store_true", help="skip the idle/never-visited/outage windows")
    parser.add_argument("--repeat", type=int, default=3, help="idle and never-visited rounds (default 3)")
    parser.add_argument("--tick", type=float, default=1.0, help="culling tick of the window runs, s (default 1)")
    parser.add_argument("--outage", type=float, default=10.0, help="metrics outage of the window runs, s (default 10)")
    parser.add_argument(
        "--lifespan-window",
        action="store_true",
        help=f"also time a lifespan cull (waits out the {MIN_LIFESPAN} s minimum lifespan)",
    )
    parser.add_argument(
        "--expiries",
        type=int,
        default=0,
        help="instances expiring at once (default 0: skip; tests/test_faults.py makes 1000)",
    )
    parser.add_argument(
        "--expiry-tick", type=float, default=40.0, help="culling tick of the expiry run, s (default 40)"
    )
    parser.add_argument(
        "--delete-rate", type=float, default=50.0, help="delete_rate of the expiry run, /s (default 50)"
    )
    parser.add_argument(
        "--expiry-timeout",
        type=float,
        default=180.0,
        help="seconds past two ticks after the last expiry to wait for the deletions (default 180)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's files and the operators' logs")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="cxg-bench-culling-"))
    results: dict[str, Any] = {}
    print(f"work files in {base}", flush=True)
    try:
        with DevCluster(workdir=base / "cluster", quiet=True) as cluster:
            install_crd(cluster, crd.definition())
            if not args.no_windows:
                print(f"windows (tick {args.tick:g} s, timeouts {WINDOW_TIMEOUT} s, {args.repeat} rounds):", flush=True)
                results["windows"] = windows(cluster, base, args)
                w = results["windows"]
                print(f"idle cull late by {summary(w['idle_late_s'])} s; never-visited late by "
                      f"{summary(w['never_visited_late_s'])} s (tick {args.tick:g} s)", flush=True)  # fmt: skip
            if args.expiries:
                print(f"expiries ({args.expiries} at once, tick {args.expiry_tick:g} s, delete_rate "
                      f"{args.delete_rate:g}/s):", flush=True)  # fmt: skip
                results["expiries"] = expiries(cluster, base, args)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
