"""Culling against the real control plane: the operator runs with a one-second tick and scrapes a
real HTTP server that serves ingress-nginx's exposition text, whose counters each test moves
between ticks. Deletions are observed through a watch (the last state of the object carries
``status.cullReason``) and through the ``Culled`` Event, which outlives the instance.

Timeouts are a few seconds (``spec.idleTimeout`` and ``spec.unvisitedTimeout`` accept them); the
lifespan's minimum is 60 s, so one test waits for it, and the culler test moves a fake clock.

What is asserted does not depend on the machine's speed: never culled before its timeout, culled
with the right reason, one failed scrape per failed pass. How soon after the timeout (within
which tick) is measured by bench/culling.py; the waits here only end a broken run.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
from cxg_devcluster.cluster import free_port

from cxg_on_k8s.api import model
from cxg_on_k8s.culling.activity import MetricsSource, endpointslice_urls
from cxg_on_k8s.culling.culler import Culler
from cxg_on_k8s.k8s.client import K8ApiHandler, parse_time, rfc3339
from cxg_on_k8s.settings import Settings
from tests.conftest import wait_for
from tests.instances import get_or_none
from tests.metrics_server import MetricsServer, Mode, metrics_server, metrics_server_process
from tests.watches import InstanceWatch

if TYPE_CHECKING:
    from tests.netns_hosts import NetnsHosts

pytest_plugins = ["tests.netns_hosts"]  # the netns_test_hosts fixture
pytestmark = pytest.mark.cluster

OWNER = "ada@example.org"
# What the operator logs on every pass whose activity scrape failed (culler.py).
ACTIVITY_UNKNOWN = "activity unknown this tick, no idle or never-visited culls"
# Seconds after which a wait gives up: it ends a broken run; how soon things happen is the bench's.
GIVE_UP = 60
DATASET = "s3://datasets/pbmc3k.h5ad"


# --- helpers ---------------------------------------------------------------------------------------


def create_instance(k8s: K8ApiHandler, **spec: Any) -> str:
    """A portal-form instance with the given spec fields (camelCase, as the API has them)."""
    name = f"cellxgene-{uuid.uuid4()}"
    k8s.create_custom_resource(
        {
            "apiVersion": model.API_VERSION,
            "kind": model.KIND,
            "metadata": {"name": name, "namespace": k8s.namespace},
            # A dataset of its own: two live instances of one owner and dataset are refused.
            "spec": {"owner": OWNER, "dataset": DATASET.replace("pbmc3k", f"{name}/pbmc3k"), **spec},
        }
    )
    return name


def status(k8s: K8ApiHandler, name: str) -> dict[str, Any]:
    return k8s.get_instance(name).get("status", {})


def exists(k8s: K8ApiHandler, name: str) -> bool:
    return get_or_none(k8s, name) is not None


def wait_ready(k8s: K8ApiHandler, name: str) -> dt.datetime:
    """status.readyAt, once the (kwok) pod is Ready and the operator noticed."""
    ready = wait_for(lambda: status(k8s, name).get("readyAt"), 60, f"{name} to become Ready")
    return parse_time(ready)  # type: ignore[return-value]


def age(k8s: K8ApiHandler, name: str) -> float:
    created = parse_time(k8s.get_instance(name)["metadata"]["creationTimestamp"])
    assert created is not None
    return time.time() - created.timestamp()


def events(k8s: K8ApiHandler, name: str, reason: str) -> list[Any]:
    return [e for e in k8s.list_events(name) if e.reason == reason]


def scrape_failures(port: int) -> float:
    """The operator's ``cxg_metrics_scrape_failures_total`` from its own /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("cxg_metrics_scrape_failures_total "):
                return float(line.split()[1])
    raise AssertionError("the operator's /metrics has no cxg_metrics_scrape_failures_total")


@pytest.fixture
def metrics() -> Iterator[MetricsServer]:
    with metrics_server() as server:
        yield server


@pytest.fixture
def instance_watch(k8s: K8ApiHandler) -> Iterator[InstanceWatch]:
    watcher = InstanceWatch(k8s)
    yield watcher
    watcher.stop()


def assert_culled(
    k8s: K8ApiHandler, instance_watch: InstanceWatch, name: str, reason: str, timeout: float
) -> tuple[float, dict[str, Any]]:
    """Deleted, with the reason in its last status and in a Normal ``Culled`` Event."""
    when, last = instance_watch.deleted(name, timeout)
    assert last["status"]["cullReason"] == reason, last["status"]
    assert last["status"]["phase"] == model.Phase.TERMINATING.value
    culled = wait_for(lambda: events(k8s, name, "Culled"), 10, f"the Culled event of {name}")
    assert len(culled) == 1, [e.message for e in culled]
    assert culled[0].type == "Normal"
    assert culled[0].message.startswith(f"{reason}: "), culled[0].message
    return when, last


# --- the operator, one-second ticks -------------------------------------------------------------


def test_a_viewer_visited_then_left_is_culled_as_idle(
    namespace: str, k8s: K8ApiHandler, start_operator: Any, metrics: MetricsServer,
    instance_watch: InstanceWatch,
) -> None:  # fmt: skip
    start_operator(activity="ingress-nginx", metrics_url=metrics.url, tick=1)
    name = create_instance(k8s, idleTimeout=3, unvisitedTimeout=60)
    wait_ready(k8s, name)

    metrics.visit(namespace, name, 4)  # the owner opens the viewer: 4 answers 200
    last_activity = parse_time(wait_for(lambda: status(k8s, name).get("lastActivity"), 10, "lastActivity"))
    # Then leaves; a stale tab keeps bouncing off the sign-in (302, 401): that is nobody working.
    while not instance_watch.was_deleted(name):
        metrics.visit(namespace, name, status="302")
        metrics.visit(namespace, name, status="401")
        time.sleep(0.5)
        assert time.time() - last_activity.timestamp() < GIVE_UP, f"not culled {GIVE_UP} s after the last visit"

    when, last = assert_culled(k8s, instance_watch, name, "idle", 5)
    assert last["status"]["lastActivity"] == rfc3339(last_activity)
    idle_for = when - last_activity.timestamp()
    # lastActivity is whole seconds (up to 1 s early, which only lengthens idle_for); the watch
    # sees the deletion after it happened. How soon after 3 s: bench/culling.py.
    print(f"measured, not asserted: idle cull {idle_for:.1f} s after lastActivity (idleTimeout 3 s, tick 1 s)")
    assert idle_for > 3, f"culled {idle_for:.1f} s after the last visit, before its idle timeout of 3 s"
    assert "idle for" in last["status"]["message"]


def test_a_viewer_in_use_outlives_its_idle_timeout(
    namespace: str, k8s: K8ApiHandler, start_operator: Any, metrics: MetricsServer,
    instance_watch: InstanceWatch,
) -> None:  # fmt: skip
    start_operator(activity="ingress-nginx", metrics_url=metrics.url, tick=1)
    name = create_instance(k8s, idleTimeout=3, unvisitedTimeout=60)
    wait_ready(k8s, name)

    started = time.monotonic()
    seen: set[str] = set()
    scrapes = 0
    # The counter grows before every tick, for more than three idle timeouts and until
    # lastActivity moved five times: however slow the ticks, the use outlasts the timeout.
    while time.monotonic() - started <= 3 * 3 or len(seen - {""}) < 5:
        metrics.visit(namespace, name)
        metrics.wait_scrapes(1)
        scrapes += 1
        seen.add(status(k8s, name).get("lastActivity", ""))
        assert time.monotonic() - started < GIVE_UP, f"lastActivity did not advance with the use: {sorted(seen)}"
    print(f"measured: in use for {time.monotonic() - started:.1f} s ({scrapes} scrapes), idleTimeout 3 s, kept")
    assert exists(k8s, name) and not instance_watch.was_deleted(name)
    assert not events(k8s, name, "Culled")


def test_a_viewer_never_visited_is_culled_after_the_unvisited_timeout_from_ready(
    namespace: str, k8s: K8ApiHandler, start_operator: Any, metrics: MetricsServer,
    instance_watch: InstanceWatch,
) -> None:  # fmt: skip
    start_operator(activity="ingress-nginx", metrics_url=metrics.url, tick=1)
    name = create_instance(k8s, idleTimeout=60, unvisitedTimeout=3)
    # Still fetching its dataset: its pod can never be scheduled, so it never becomes Ready.
    starting = f"cellxgene-{uuid.uuid4()}"
    k8s.create_custom_resource(unschedulable_instance(starting, k8s.namespace, unvisited_timeout=3))
    ready_at = wait_ready(k8s, name)

    # Someone without access keeps trying: sign-in redirects are not visits.
    while not instance_watch.was_deleted(name):
        metrics.visit(namespace, name, status="302")
        time.sleep(0.5)
        assert time.time() - ready_at.timestamp() < GIVE_UP, f"not culled {GIVE_UP} s after it became Ready"

    when, last = assert_culled(k8s, instance_watch, name, "never-visited", 5)
    assert "lastActivity" not in last["status"]
    unvisited_for = when - ready_at.timestamp()
    created = parse_time(last["metadata"]["creationTimestamp"])
    assert created is not None and ready_at >= created
    print(f"measured, not asserted: never-visited cull {unvisited_for:.1f} s after readyAt, "
          f"{when - created.timestamp():.1f} s after creation (unvisitedTimeout 3 s)")
    assert unvisited_for > 3, f"culled {unvisited_for:.1f} s after readyAt, before its unvisited timeout of 3 s"

    # The one that is not Ready yet outlives its unvisited timeout by a few ticks.
    wait_for(lambda: age(k8s, starting) > 3 + 3, 10, f"{starting} to pass its unvisited timeout")
    assert exists(k8s, starting) and "readyAt" not in status(k8s, starting)
    assert not events(k8s, starting, "Culled")


def unschedulable_instance(name: str, namespace: str, unvisited_timeout: int) -> dict[str, Any]:
    """An embedded-form instance whose pod no node accepts: it stays Starting forever."""
    labels = {"app": "cellxgene", "instance": name}
    return {
        "apiVersion": model.API_VERSION,
        "kind": model.KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "lifespan": 3600,
            "unvisitedTimeout": unvisited_timeout,
            "deployment": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "nodeSelector": {"cnag.eu/no-such-node": "true"},
                            "containers": [{"name": "cellxgene", "image": "cellxgene:1.3.0-slim"}],
                        },
                    },
                },
            },
            "service": {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name},
                "spec": {"ports": [{"name": "http", "port": 5005}]},
            },
            "ingress": {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "Ingress",
                "metadata": {"name": name},
                "spec": {
                    "ingressClassName": "nginx",
                    "rules": [{"http": {"paths": [{
                        "path": f"/{name}", "pathType": "Prefix",
                        "backend": {"service": {"name": name, "port": {"number": 5005}}},
                    }]}}],  # fmt: skip
                },
            },
        },
    }


def test_a_metrics_outage_pauses_idle_and_unvisited_culling_but_not_the_lifespan(
    namespace: str, k8s: K8ApiHandler, start_operator: Any, metrics: MetricsServer,
    instance_watch: InstanceWatch,
) -> None:  # fmt: skip
    """The one long test: it waits out the 60 s minimum lifespan while the metrics are broken."""
    metrics_port = free_port()
    operator = start_operator(activity="ingress-nginx", metrics_url=metrics.url, tick=1, operator_metrics_port=metrics_port)
    visited = create_instance(k8s, idleTimeout=2, unvisitedTimeout=60)
    wait_ready(k8s, visited)
    metrics.visit(namespace, visited)
    last_activity = wait_for(lambda: status(k8s, visited).get("lastActivity"), 10, "lastActivity")
    failures_before = scrape_failures(metrics_port)
    failed_passes_before = operator.text().count(ACTIVITY_UNKNOWN)

    # The controller goes away, the operator says so; then an instance is created during the
    # outage (it must be told too) and is never visited.
    outage = time.monotonic()
    metrics.set_mode(Mode.DOWN)
    wait_for(lambda: events(k8s, visited, "ActivityUnknown"), 10, "the ActivityUnknown warning")
    short = create_instance(k8s, lifespan=60, idleTimeout=2, unvisitedTimeout=2)
    short_ready = wait_ready(k8s, short)
    modes = [Mode.DOWN, Mode.ERROR, Mode.GARBAGE]
    while not instance_watch.was_deleted(short):
        metrics.set_mode(modes[int((time.monotonic() - outage) / 4) % len(modes)])  # 4 s each
        time.sleep(0.25)
        assert time.monotonic() - outage < 60 + GIVE_UP, "the short-lived instance outlived its lifespan"
    outage_seconds = time.monotonic() - outage
    failures = scrape_failures(metrics_port) - failures_before

    when, last = assert_culled(k8s, instance_watch, short, "lifespan-exceeded", 5)
    created = parse_time(last["metadata"]["creationTimestamp"])
    # Not before its lifespan (how soon after it: bench/culling.py); and long past its unvisited
    # timeout, so the reason above is the lifespan's for a reason, not because nothing else was due.
    assert created is not None and when - created.timestamp() > 60, when - created.timestamp()
    assert when - short_ready.timestamp() > 2 + 10, "the unvisited timeout passed long ago"
    # Idle for a minute with a 2 s idle timeout, yet kept: activity was unknown, not zero.
    assert exists(k8s, visited) and status(k8s, visited)["lastActivity"] == last_activity
    assert not events(k8s, visited, "Culled")
    for name in (visited, short):  # one Warning per instance per outage, not one per tick
        warnings = events(k8s, name, "ActivityUnknown")
        assert len(warnings) == 1, [w.message for w in warnings]
        assert warnings[0].type == "Warning"
        assert warnings[0].message.startswith("activity scrape failed, idle culling paused: ")
    print(f"measured, not asserted: outage {outage_seconds:.1f} s, {failures:.0f} failed scrapes; lifespan "
          f"cull at age {when - created.timestamp():.1f} s (lifespan 60 s)")
    # Passes start a tick apart and scrape once each: never more failures than ticks (+ the passes
    # at both ends). The lower side (one per tick, none skipped) is speed: bench/culling.py.
    assert 1 <= failures <= outage_seconds + 3, (failures, outage_seconds)

    # The controller is back and nobody used the viewer meanwhile: idle culling resumes.
    metrics.set_mode(Mode.OK)
    assert_culled(k8s, instance_watch, visited, "idle", 10)
    settled = scrape_failures(metrics_port)
    metrics.wait_scrapes(2)
    assert scrape_failures(metrics_port) == settled
    # Each failed scrape was a pass without activity (logged), and each such pass one failed scrape.
    failed_passes = operator.text().count(ACTIVITY_UNKNOWN) - failed_passes_before
    assert settled - failures_before == failed_passes, (settled - failures_before, failed_passes)


def test_replicas_behind_an_endpointslice_are_added_up(
    namespace: str, k8s: K8ApiHandler, start_operator: Any, instance_watch: InstanceWatch,
    netns_test_hosts: NetnsHosts,
) -> None:  # fmt: skip
    """Two controller replicas; the owner's requests all land on the second one.

    The API server refuses loopback addresses in EndpointSlices, so the replicas run on two test
    hosts in a network namespace of the test's own (tests/netns_hosts.py), on ingress-nginx's
    port, and the operator scrapes them there through the veth pair."""
    host_a, host_b = netns_test_hosts.addresses
    inside = netns_test_hosts.exec_prefix
    with (
        metrics_server_process(host_a, 10254, pod="controller-a", prefix=inside) as replica_a,
        metrics_server_process(host_b, 10254, pod="controller-b", prefix=inside) as replica_b,
    ):
        k8s.core.create_namespaced_service(namespace, {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "metrics"},
            "spec": {"ports": [{"name": "metrics", "port": 10254}]},  # no selector: the slice is ours
        })  # fmt: skip
        # One slice, as the EndpointSlice controller makes it: two ready pods, and a third one on
        # replica b's host that is not ready and must not be scraped (nor b scraped twice).
        k8s.discovery.create_namespaced_endpoint_slice(namespace, {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "metrics-abc12", "labels": {"kubernetes.io/service-name": "metrics"}},
            "addressType": "IPv4",
            "ports": [{"name": "metrics", "port": 10254, "protocol": "TCP"}],
            "endpoints": [{
                "addresses": [address], "conditions": {"ready": ready},
                "targetRef": {"kind": "Pod", "namespace": "ingress-nginx", "name": pod},
            } for address, pod, ready in ((host_a, "controller-a", True), (host_b, "controller-b", True),
                                          (host_b, "controller-c", False))],
        })  # fmt: skip

        both = sorted([replica_a.url, replica_b.url])
        assert endpointslice_urls(k8s.discovery, namespace, "metrics", "metrics") == both
        assert endpointslice_urls(k8s.discovery, namespace, "metrics", 10254) == both
        assert endpointslice_urls(k8s.discovery, namespace, "metrics", 9913) == []
        assert endpointslice_urls(k8s.discovery, namespace, "metrics", "http") == []
        assert endpointslice_urls(k8s.discovery, namespace, "no-such-service", "metrics") == []

        start_operator(activity="ingress-nginx", metrics_service=f"{namespace}/metrics", tick=1)
        name = create_instance(k8s, idleTimeout=3, unvisitedTimeout=60)
        wait_ready(k8s, name)
        replica_a.visit(namespace, name, 7)  # earlier requests, served by replica a
        started, started_wall = time.monotonic(), time.time()
        # Now every request lands on replica b, one before each tick, for more than three idle
        # timeouts (however many ticks that takes).
        while time.monotonic() - started <= 3 * 3:
            replica_b.visit(namespace, name)
            replica_b.wait_scrapes(1)
        scrapes_a, scrapes_b = replica_a.scrapes, replica_b.scrapes
        print(f"measured: replica b busy {time.monotonic() - started:.1f} s, scrapes a={scrapes_a} "
              f"b={scrapes_b}, idleTimeout 3 s, kept")
        assert exists(k8s, name) and not instance_watch.was_deleted(name)
        # What kept it: replica b's requests, recorded after the idle timeout had passed.
        last_activity = parse_time(status(k8s, name)["lastActivity"])
        assert last_activity is not None and last_activity.timestamp() > started_wall + 3
        # Both replicas were read on every tick.
        assert abs(scrapes_a - scrapes_b) <= 1, (scrapes_a, scrapes_b)


def test_an_operator_restart_keeps_last_activity(
    namespace: str, k8s: K8ApiHandler, start_operator: Any, metrics: MetricsServer
) -> None:
    first = start_operator(activity="ingress-nginx", metrics_url=metrics.url, tick=1)
    used = create_instance(k8s, idleTimeout=120, unvisitedTimeout=120)
    unvisited = create_instance(k8s, idleTimeout=120, unvisitedTimeout=120)
    wait_ready(k8s, used)
    wait_ready(k8s, unvisited)
    metrics.visit(namespace, used, 5)
    last_activity = wait_for(lambda: status(k8s, used).get("lastActivity"), 10, "lastActivity")
    first.stop()

    # While the operator is down, the other viewer gets its first visit. Then 2 s pass, so that a
    # reset or an advance of lastActivity would show in its whole seconds.
    metrics.visit(namespace, unvisited, 2)
    time.sleep(2)
    second = start_operator(activity="ingress-nginx", metrics_url=metrics.url, tick=1)
    wait_for(lambda: second.text().count("culling pass: 2 instances") >= 4, 30, "four passes of the new operator")
    assert status(k8s, used)["lastActivity"] == last_activity
    # The visit made while it was down is news for the viewer that had none recorded.
    assert status(k8s, unvisited).get("lastActivity", "") > last_activity

    # New traffic after the restart is seen, and kept in memory: lastActivity is written again
    # only once the stored value lags by a quarter of the idle timeout (30 s here).
    logged = len(second.text())
    metrics.visit(namespace, used)
    wait_for(lambda: "2 instances, 1 active" in second.text()[logged:], 10, "a pass that saw the visit")
    assert status(k8s, used)["lastActivity"] == last_activity


# --- the culling pass alone, with a fake clock ---------------------------------------------------


def test_a_culling_pass_with_a_fake_clock(namespace: str, k8s: K8ApiHandler, metrics: MetricsServer) -> None:
    """Culler.cull_once(now=...) against the real API server and a real metrics endpoint: hours
    pass in no time, and the messages carry exact ages. No operator process: the test plays the
    watch (the instance cache) and the pod handler (status.readyAt)."""
    settings = Settings(namespace=namespace, activity="ingress-nginx", metrics_service="", metrics_url=metrics.url, tick=1)
    used = create_instance(k8s, lifespan=3600, idleTimeout=300, unvisitedTimeout=120)
    unvisited = create_instance(k8s, lifespan=3600, idleTimeout=300, unvisitedTimeout=120)
    short = create_instance(k8s, lifespan=60, idleTimeout=300, unvisitedTimeout=120)
    starting = create_instance(k8s, lifespan=3600, idleTimeout=300, unvisitedTimeout=120)
    # An operator that crashed between writing the reason and deleting left this one behind.
    leftover = create_instance(k8s, lifespan=60, idleTimeout=300, unvisitedTimeout=120)
    names = (used, unvisited, short, starting, leftover)
    created = max(parse_time(k8s.get_instance(n)["metadata"]["creationTimestamp"]) for n in names)  # type: ignore[type-var]
    t0 = created + dt.timedelta(seconds=10)
    for name in (used, unvisited, short, leftover):
        k8s.patch_instance_status(name, {"phase": "Ready", "readyAt": rfc3339(created)})
    k8s.patch_instance_status(leftover, {"phase": "Terminating", "cullReason": "lifespan-exceeded"})

    def cache() -> dict[tuple[str, str], dict[str, Any]]:
        return {(namespace, i["metadata"]["name"]): i for i in k8s.list_instances()}

    def at(seconds: float) -> dt.datetime:
        return t0 + dt.timedelta(seconds=seconds)

    async def scenario() -> None:
        culler = Culler(settings, k8s, cache(), MetricsSource(lambda: [metrics.url], 2))

        metrics.visit(namespace, used, 2)
        assert await culler.cull_once(now=at(0)) == []
        assert status(k8s, used)["lastActivity"] == rfc3339(at(0))

        metrics.set_mode(Mode.ERROR)  # 200 s later the metrics fail: only the lifespan rule works
        culled = await culler.cull_once(now=at(200))
        assert sorted((n, d.reason) for n, d in culled) == sorted(
            (f"{namespace}/{n}", "lifespan-exceeded") for n in (short, leftover)
        )
        assert not exists(k8s, short) and not exists(k8s, leftover)
        assert {n for n in (used, unvisited, starting) if events(k8s, n, "ActivityUnknown")} == {used, unvisited, starting}

        metrics.set_mode(Mode.OK)  # back: the never-visited rule catches up, from readyAt
        culled = await culler.cull_once(now=at(200))
        assert [(n, d.message) for n, d in culled] == [
            (f"{namespace}/{unvisited}", "never visited: ready for 3m30s > unvisited timeout 2m00s")
        ]
        # The viewer still starting is older than its unvisited timeout, and kept.
        assert exists(k8s, starting)

        # A new operator (a restart): the counters are where they were, lastActivity stays. The
        # stored value may lag the truth by a quarter of the idle timeout (the write rule), so the
        # new operator counts from it plus that quarter: late by at most that much, never early.
        restarted = Culler(settings, k8s, cache(), MetricsSource(lambda: [metrics.url], 2))
        assert await restarted.cull_once(now=at(250)) == []
        assert status(k8s, used)["lastActivity"] == rfc3339(at(0))
        assert await restarted.cull_once(now=at(301)) == []
        culled = await restarted.cull_once(now=at(376))
        assert [(n, d.message) for n, d in culled] == [
            (f"{namespace}/{used}", "idle for 5m01s > idle timeout 5m00s")
        ]

    asyncio.run(scenario())
    for name, reason in ((short, "lifespan-exceeded"), (leftover, "lifespan-exceeded"),
                         (unvisited, "never-visited"), (used, "idle")):  # fmt: skip
        assert not exists(k8s, name)
        [culled] = events(k8s, name, "Culled")
        assert culled.message.startswith(f"{reason}: ")
    assert exists(k8s, starting) and not events(k8s, starting, "Culled")
