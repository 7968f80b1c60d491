"""Faults at scale against a real control plane: what breaks, and what must not.

These tests get a control plane of their own (module scope), not the session's: one restarts its
API server, another makes a thousand instances, and neither should disturb (or be slowed by) the
rest of the suite. Every wait is bounded; counts are checked exactly.

* the API server restarts while 50 instances are being created: all end Ready, one Deployment
  each, and the operator recovers by itself (same process);
* the operator is SIGKILLed three times during a 100-instance create: same outcome;
* the metrics endpoint flaps (down, garbage, 500, up) for several ticks: nobody is culled for
  it, and a visit made during the outage is noticed when the endpoint is back;
* a thousand instances pass their lifespan at once: all deleted within two ticks, each with its
  reason, at no more than ``delete_rate`` deletions a second.
"""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cxg_devcluster.cluster import DevCluster
from kubernetes import watch

from cxg_on_k8s.api import crd, model
from cxg_on_k8s.k8s.client import K8ApiHandler, load_client, parse_time
from tests.conftest import StartOperator, _healthy, install_crd, wait_for
from tests.instances import CHILD_KINDS, instance_body, list_children
from tests.metrics_server import Mode, metrics_server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """This module's own control plane (overrides the session's), with the CRD installed."""
    with DevCluster(workdir=tmp_path_factory.mktemp("faults-cluster")) as running:
        install_crd(running, crd.definition())
        yield running


# --- helpers ---------------------------------------------------------------------------------------


def create_all(kubeconfig: Path, bodies: list[dict[str, Any]], threads: int = 16, deadline: float = 120) -> list[str]:
    """Create every instance, as a portal would: retry what fails (API server down, 5xx, 429), and
    take 409 Already Exists as done (the first attempt got through, its answer did not)."""
    local = threading.local()

    def one(item: dict[str, Any]) -> str:
        if not hasattr(local, "k8s"):
            local.k8s = K8ApiHandler(client=load_client(str(kubeconfig)), namespace=item["metadata"]["namespace"])
        give_up = time.monotonic() + deadline
        while True:
            try:
                local.k8s.create_custom_resource(item)
                return item["metadata"]["name"]
            except Exception as exc:  # ApiError or a connection error while the API server is away
                if getattr(exc, "status", None) == 409:
                    return item["metadata"]["name"]
                permanent = getattr(exc, "status", None) in (400, 403, 404, 422) and not getattr(exc, "transient", False)
                if permanent or time.monotonic() > give_up:
                    raise
                time.sleep(0.5)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, bodies))


def phases(k8s: K8ApiHandler) -> dict[str, str]:
    return {i["metadata"]["name"]: i.get("status", {}).get("phase", "") for i in k8s.list_instances()}


def wait_all_ready(k8s: K8ApiHandler, names: list[str], timeout: float) -> None:
    def ready() -> bool:
        try:
            current = phases(k8s)
        except Exception:  # the API server may still be coming back
            return False
        return all(current.get(n) == model.Phase.READY.value for n in names)

    try:
        wait_for(ready, timeout, f"{len(names)} instances Ready", interval=1)
    except AssertionError:
        items = {i["metadata"]["name"]: i.get("status", {}) for i in k8s.list_instances()}
        late = Counter(items.get(n, {}).get("phase", "no phase") if n in items else "missing" for n in names)
        why = {n: items[n].get("message") for n in names if n in items and items[n].get("phase") != "Ready"}
        raise AssertionError(
            f"not all {len(names)} instances Ready after {timeout:.0f} s: {dict(late)}; e.g. {dict(list(why.items())[:3])}"
        ) from None


def children_by_instance(k8s: K8ApiHandler) -> dict[str, Counter[str]]:
    """Per instance, how many of each child kind exist (by the ``instance`` label)."""
    counts: dict[str, Counter[str]] = {}
    for kind, items in list_children(k8s, "instance", CHILD_KINDS).items():
        for item in items:
            counts.setdefault(item.metadata.labels["instance"], Counter())[kind] += 1
    return counts


def assert_one_set_of_children_each(k8s: K8ApiHandler, names: list[str], timeout: float = 60) -> None:
    """Every instance gets all four children (Ready can come first: the pod needs only the
    Deployment), and none is doubled, whatever was interrupted."""
    kinds = {"Deployment", "Service", "Ingress", "NetworkPolicy"}

    def complete() -> bool:
        counts = children_by_instance(k8s)
        return all(set(counts.get(n, {})) == kinds for n in names)

    try:
        wait_for(complete, timeout, "every instance's four children", interval=1)
    except AssertionError:
        pass  # the assertion below names the instances and what they lack
    counts = children_by_instance(k8s)
    one_each = Counter({"Deployment": 1, "Service": 1, "Ingress": 1, "NetworkPolicy": 1})
    wrong = {n: dict(counts.get(n, Counter())) for n in names if counts.get(n) != one_each}
    assert not wrong, f"{len(wrong)} instances without exactly one set of children: {dict(list(wrong.items())[:5])}"
    strays = set(counts) - set(names)
    assert not strays, f"children of no instance: {sorted(strays)[:5]}"


def count_deployments(k8s: K8ApiHandler) -> int:
    try:
        return len(k8s.apps.list_namespaced_deployment(k8s.namespace, label_selector="instance").items)
    except Exception:
        return 0


def culled_events(k8s: K8ApiHandler) -> dict[str, str]:
    """involvedObject name -> message of each ``Culled`` Event in the namespace."""
    found = k8s.core.list_namespaced_event(k8s.namespace, field_selector="reason=Culled").items
    return {e.involved_object.name: e.message for e in found}


# --- the API server restarts mid-create ------------------------------------------------------------


def test_api_server_restart_during_50_creates_recovers_without_operator_restart(
    cluster: DevCluster, k8s: K8ApiHandler, start_operator: StartOperator
) -> None:
    operator = start_operator()
    pid = operator.popen.pid
    bodies = [instance_body(k8s.namespace) for _ in range(50)]
    with concurrent.futures.ThreadPoolExecutor(1) as runner:
        creating = runner.submit(create_all, cluster.kubeconfig, bodies, 4)
        wait_for(lambda: count_deployments(k8s) >= 10, 60, "the first ten Deployments")
        cluster.stop_apiserver()  # mid-create: some instances made, some children not, some not sent
        time.sleep(3)
        cluster.start_apiserver()
        names = creating.result(timeout=180)
    wait_all_ready(k8s, names, 120)
    assert_one_set_of_children_each(k8s, names)
    assert operator.popen.poll() is None and operator.popen.pid == pid, "the operator had to be restarted"
    port = int(operator.popen.args[-1].split(":")[2].split("/")[0])  # its --liveness URL
    assert _healthy(port), "the operator's liveness endpoint does not answer after the API server came back"


# --- the operator is killed mid-create, three times -------------------------------------------------


def test_operator_sigkilled_three_times_during_100_creates(k8s: K8ApiHandler, cluster: DevCluster, start_operator: StartOperator) -> None:
    operator = start_operator()
    bodies = [instance_body(k8s.namespace) for _ in range(100)]
    with concurrent.futures.ThreadPoolExecutor(1) as runner:
        creating = runner.submit(create_all, cluster.kubeconfig, bodies, 8)
        for at_least in (15, 45, 75):  # each kill lands while children are being made
            wait_for(lambda: count_deployments(k8s) >= at_least, 90, f"{at_least} Deployments")
            operator.stop(signal.SIGKILL)
            operator = start_operator()
        names = creating.result(timeout=120)
    wait_all_ready(k8s, names, 120)
    assert_one_set_of_children_each(k8s, names)


# --- the metrics endpoint flaps ---------------------------------------------------------------------


def test_flapping_metrics_cull_nobody_wrongly(cluster: DevCluster, k8s: K8ApiHandler, start_operator: StartOperator) -> None:
    with metrics_server() as metrics:
        start_operator(metrics_url=metrics.url, tick=1)
        busy = instance_body(k8s.namespace, idleTimeout=3, unvisitedTimeout=0)  # used throughout
        late = instance_body(k8s.namespace, idleTimeout=0, unvisitedTimeout=4)  # first visit during the outage
        never = instance_body(k8s.namespace, idleTimeout=0, unvisitedTimeout=4)  # the control: never visited
        names = create_all(cluster.kubeconfig, [busy, late, never])
        wait_all_ready(k8s, names, 60)
        using = threading.Event()

        def use() -> None:
            while not using.wait(0.3):
                metrics.visit(k8s.namespace, busy["metadata"]["name"])

        user = threading.Thread(target=use, daemon=True)
        metrics.visit(k8s.namespace, busy["metadata"]["name"])
        user.start()
        try:
            metrics.wait_scrapes(2)  # busy's first visit is recorded
            # Down, garbage, 500, down again: ~12 ticks without a good scrape, longer than
            # every timeout above; late is visited in the middle of it, past its unvisited timeout.
            for mode in (Mode.DOWN, Mode.GARBAGE, Mode.ERROR, Mode.DOWN):
                metrics.set_mode(mode)
                time.sleep(3)
                if mode is Mode.GARBAGE:
                    metrics.visit(k8s.namespace, late["metadata"]["name"])
                current = phases(k8s)
                assert all(n in current for n in names), f"culled while the metrics were {mode.value}: {current}"
            metrics.set_mode(Mode.OK)
            metrics.wait_scrapes(4)
        finally:
            using.set()
            user.join(5)
        current = phases(k8s)
        assert busy["metadata"]["name"] in current, "a viewer in use all along was culled after the outage"
        assert late["metadata"]["name"] in current, "a visit during the outage was not noticed after it"
        assert k8s.get_instance(late["metadata"]["name"])["status"].get("lastActivity")
        # The culler did run: the never-visited one went, with its reason, once the metrics were back.
        wait_for(lambda: never["metadata"]["name"] not in phases(k8s), 10, "the never-visited instance culled")
        events = culled_events(k8s)
        assert set(events) == {never["metadata"]["name"]}, events
        assert events[never["metadata"]["name"]].startswith("never-visited")


# --- a thousand expiries at once --------------------------------------------------------------------


class DeletionWatch:
    """Every instance deletion as a watch delivers it: when (wall clock) and the last status.

    The watch resumes from the last resourceVersion it saw when the API server ends it or answers
    an error (a fresh API server says 429 "storage is (re)initializing" for a moment)."""

    def __init__(self, k8s: K8ApiHandler) -> None:
        self.k8s = k8s
        self.deleted: dict[str, tuple[float, dict[str, Any]]] = {}
        self.errors: list[str] = []
        self._stopped = False
        self._watch: watch.Watch | None = None
        listed = k8s.custom.list_namespaced_custom_object(model.GROUP, model.VERSION, k8s.namespace, model.PLURAL)
        self._version = listed["metadata"]["resourceVersion"]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped:
            self._watch = watch.Watch()
            try:
                stream = self._watch.stream(
                    self.k8s.custom.list_namespaced_custom_object, model.GROUP, model.VERSION, self.k8s.namespace,
                    model.PLURAL, resource_version=self._version, timeout_seconds=300,
                )  # fmt: skip
                for event in stream:
                    obj = event["object"]
                    if event["type"] == "ERROR":
                        raise RuntimeError(f"watch error: {obj}")
                    self._version = obj["metadata"]["resourceVersion"]
                    if event["type"] == "DELETED":
                        self.deleted[obj["metadata"]["name"]] = (time.time(), obj.get("status", {}))
            except Exception as exc:  # ended or refused: resume from the last version seen
                self.errors.append(repr(exc)[:300])
                time.sleep(0.5)

    def stop(self) -> None:
        self._stopped = True
        if self._watch is not None:
            self._watch.stop()


def test_a_thousand_expired_instances_are_culled_within_two_ticks_at_the_delete_rate(
    cluster: DevCluster, k8s: K8ApiHandler, start_operator: StartOperator
) -> None:
    """tick 40 s and delete_rate 50/s. At 50/s one pass deletes the thousand in 20 s, half a
    tick; each cull is three writes (status reason, Event, delete) and the garbage collector adds
    about six more (children, ReplicaSet, pod), which this 2-core machine's API server carries at
    ~30 culls/s under load (measured: 31/s), still ~33 s, under a tick. Passes start a tick apart,
    so the first pass after the last expiry starts within one tick and ends within the second."""
    tick, rate, n, lifespan = 40.0, 50.0, 1000, 60
    with metrics_server() as metrics:  # answers, with no visits: no ActivityUnknown Event storm
        start_operator(tick=tick, delete_rate=rate, metrics_url=metrics.url)
        deletions = DeletionWatch(k8s)
        try:
            started = time.monotonic()
            names = create_all(cluster.kubeconfig, [instance_body(k8s.namespace, lifespan=lifespan) for _ in range(n)], 16)
            print(f"created {n} instances in {time.monotonic() - started:.1f} s")
            created = [
                parse_time(i["metadata"]["creationTimestamp"]).timestamp()  # type: ignore[union-attr]
                for i in k8s.list_instances()
            ]
            # creationTimestamp is whole seconds: an instance is past its lifespan at most 1 s later.
            last_expiry = max(created) + lifespan + 1
            budget = last_expiry + 2 * tick
            wait_for(lambda: len(deletions.deleted) >= n or time.time() > budget + 10, budget + 30 - time.time(),
                     "the deletions")  # fmt: skip
        finally:
            deletions.stop()
    missing = set(names) - set(deletions.deleted)
    assert not missing, (f"{len(missing)} of {n} expired instances not deleted within two ticks + 10 s "
                         f"(watch errors: {deletions.errors[-3:]})")  # fmt: skip
    times = sorted(at for at, _ in deletions.deleted.values())
    story = (f"deletions from {times[0] - last_expiry:+.1f} s to {times[-1] - last_expiry:+.1f} s after the last "
             f"expiry, mean {(len(times) - 1) / max(times[-1] - times[0], 1e-3):.0f}/s")  # fmt: skip
    print(story)
    late = [t for t in times if t > budget]
    assert not late, f"{len(late)} deletions came later than two ticks ({2 * tick:.0f} s) after the last expiry; {story}"
    # Rate: the culler takes a token (1/rate apart) right before each cull's requests, with one of
    # its 8 API slots in hand, so at most 8 deletions can land together after a stall; the watch
    # may bunch deliveries a little more. Over any 4 s window:
    window = 4.0
    worst = max(sum(1 for u in times[i:] if u - t < window) for i, t in enumerate(times))
    assert worst <= rate * window * 1.1 + 8, f"{worst} deletions within {window:.0f} s: above delete_rate {rate:.0f}/s"
    mean = (len(times) - 1) / (times[-1] - times[0])
    assert mean <= rate * 1.05, f"mean deletion rate {mean:.0f}/s above delete_rate {rate:.0f}/s"
    print(f"deleted {n} in {times[-1] - times[0]:.1f} s (mean {mean:.0f}/s, worst {worst} in {window:.0f} s); "
          f"last {times[-1] - last_expiry:.1f} s after the last expiry")  # fmt: skip
    reasons = Counter(status.get("cullReason") for _, status in deletions.deleted.values())
    assert reasons == Counter({"lifespan-exceeded": n}), reasons
    events = culled_events(k8s)
    assert set(events) >= set(names), f"{len(set(names) - set(events))} deletions without a Culled Event"
    assert all(events[name].startswith("lifespan-exceeded") for name in names)
