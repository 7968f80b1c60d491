"""The culling decision, with the clock passed in: each case reads as a user's situation. Then the
pass over the viewer pods' sign-in sidecars (real oauth2-proxy processes, the real API server):
an instance whose pod cannot be read is not culled as idle, while the others are decided."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes.client
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cxg_on_k8s.culling import culler
from cxg_on_k8s.culling.activity import MetricsSource
from cxg_on_k8s.culling.culler import Culler, RateLimiter, instance_times
from cxg_on_k8s.culling.decision import (
    ACTIVITY_WRITE_FRACTION,
    CullReason,
    Decision,
    InstanceTimes,
    activity_write_due,
    decide,
    expires_at,
    format_age,
    latest_activity,
)
from cxg_on_k8s.culling.pod_activity import PodActivitySource, PodAddresses
from cxg_on_k8s.k8s.client import K8ApiHandler, parse_time, rfc3339
from cxg_on_k8s.render.signin import SIGNIN_CONTAINER, SIGNIN_METRICS_PATH, SIGNIN_METRICS_PORT
from cxg_on_k8s.settings import Settings
from tests.conftest import wait_for
from tests.instances import create, get_or_none, instance_body
from tests.test_activity import Sidecar

NOW = datetime(2024, 5, 17, 12, 0, 0, tzinfo=timezone.utc)
MINUTE, HOUR, DAY = 60, 3600, 86400


def instance(
    age: float,
    *,
    lifespan: int = 7 * DAY,
    idle_timeout: int = HOUR,
    unvisited_timeout: int = 5 * MINUTE,
    idle: float | None = None,
    ready_after: float | None = 0,
) -> InstanceTimes:
    """An instance created ``age`` seconds before NOW, Ready ``ready_after`` seconds after its
    creation (None: still starting), last used ``idle`` seconds before NOW."""
    created = NOW - timedelta(seconds=age)
    return InstanceTimes(
        name="cellxgene-test",
        created=created,
        lifespan=lifespan,
        idle_timeout=idle_timeout,
        unvisited_timeout=unvisited_timeout,
        last_activity=None if idle is None else NOW - timedelta(seconds=idle),
        ready_at=None if ready_after is None else created + timedelta(seconds=ready_after),
    )


CASES = [
    # (case, instance, activity reliable, expected reason or None for keep)
    ("fresh and unvisited", instance(60), True, None),
    ("day-long lifespan exceeded by 10 s (PoC bug kept it)",
     instance(DAY + 10, lifespan=DAY, idle=5), True, CullReason.LIFESPAN_EXCEEDED),
    ("lifespan exactly reached is kept", instance(DAY, lifespan=DAY, idle=5), True, None),
    ("lifespan exceeded by 1 s", instance(DAY + 1, lifespan=DAY, idle=5), True,
     CullReason.LIFESPAN_EXCEEDED),
    ("lifespan applies when activity is unknown", instance(8 * DAY, idle=0), False,
     CullReason.LIFESPAN_EXCEEDED),
    ("lifespan is checked before idle", instance(8 * DAY, idle=2 * DAY), True,
     CullReason.LIFESPAN_EXCEEDED),
    ("never visited past the timeout", instance(5 * MINUTE + 1), True, CullReason.NEVER_VISITED),
    ("never visited, exactly at the timeout", instance(5 * MINUTE), True, None),
    ("never visited for days (PoC: .seconds saw 10 s)", instance(2 * DAY + 10), True,
     CullReason.NEVER_VISITED),
    ("never visited, unvisited timeout off", instance(3 * DAY, unvisited_timeout=0), True, None),
    ("never visited but activity unknown", instance(HOUR), False, None),
    ("slow fetch: ready late, unvisited timeout counts from ready",
     instance(20 * MINUTE, ready_after=16 * MINUTE), True, None),
    ("slow fetch: ready late, then unvisited past the timeout",
     instance(20 * MINUTE, ready_after=14 * MINUTE), True, CullReason.NEVER_VISITED),
    ("ready, never visited, exactly at the timeout",
     instance(10 * MINUTE, ready_after=5 * MINUTE), True, None),
    ("still starting long after the unvisited timeout", instance(HOUR, ready_after=None), True,
     None),
    ("still starting: the lifespan still applies", instance(2 * DAY, lifespan=DAY, ready_after=None),
     True, CullReason.LIFESPAN_EXCEEDED),
    ("ready in the future (clock skew)", instance(HOUR, ready_after=HOUR + 60), True, None),
    ("visited while not ready yet (readyAt lost): idle rule applies",
     instance(2 * DAY, idle=HOUR + 1, ready_after=None), True, CullReason.IDLE),
    ("idle past the timeout", instance(2 * DAY, idle=HOUR + 1), True, CullReason.IDLE),
    ("idle exactly at the timeout", instance(2 * DAY, idle=HOUR), True, None),
    ("idle for a day (PoC: .seconds saw 10 s)", instance(3 * DAY, idle=DAY + 10), True,
     CullReason.IDLE),
    ("idle timeout off", instance(3 * DAY, idle=2 * DAY, idle_timeout=0), True, None),
    ("idle but activity unknown", instance(2 * DAY, idle=DAY), False, None),
    ("recently used", instance(2 * DAY, idle=30), True, None),
    ("visited once: unvisited timeout no longer matters",
     instance(DAY, idle=10 * MINUTE, unvisited_timeout=MINUTE), True, None),
    ("created in the future (clock skew)", instance(-30), True, None),
    ("last activity in the future (clock skew)", instance(2 * DAY, idle=-120), True, None),
]


@pytest.mark.parametrize(
    ("times", "reliable", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decision_table(times: InstanceTimes, reliable: bool, reason: CullReason | None) -> None:
    decision = decide(times, reliable, NOW)
    assert decision.reason == reason, decision.message
    assert decision.delete is (reason is not None)


def test_the_poc_bug_case_is_culled_and_says_why() -> None:
    times = instance(DAY + 10, lifespan=DAY, idle=5)
    assert (NOW - times.created).seconds == 10  # what the proof of concept compared
    assert decide(times, True, NOW) == Decision(
        True,
        CullReason.LIFESPAN_EXCEEDED,
        "lifespan exceeded: age 1d00h00m10s > lifespan 1d00h00m00s",
    )


def test_idle_message_states_both_ages() -> None:
    decision = decide(instance(DAY, idle=HOUR + 2 * MINUTE + 5), True, NOW)
    assert decision.message == "idle for 1h02m05s > idle timeout 1h00m00s"


def test_never_visited_message_states_both_ages() -> None:
    decision = decide(instance(5 * MINUTE + 1), True, NOW)
    assert decision.message == "never visited: ready for 5m01s > unvisited timeout 5m00s"


def test_never_visited_counts_from_ready_not_from_creation() -> None:
    times = instance(HOUR, ready_after=HOUR - 4 * MINUTE)
    assert decide(times, True, NOW).message == (
        "kept: age 1h00m00s of lifespan 7d00h00m00s; "
        "never visited yet, ready for 4m00s of unvisited timeout 5m00s"
    )
    later = decide(times, True, NOW + timedelta(minutes=1, seconds=1))
    assert later.reason is CullReason.NEVER_VISITED
    assert later.message == "never visited: ready for 5m01s > unvisited timeout 5m00s"


def test_keep_message_says_the_viewer_is_not_ready_yet() -> None:
    message = decide(instance(HOUR, ready_after=None), True, NOW).message
    assert message == (
        "kept: age 1h00m00s of lifespan 7d00h00m00s; not ready yet, unvisited clock not started"
    )


def test_keep_message_states_the_ages() -> None:
    decision = decide(instance(2 * DAY + 3 * HOUR + 4 * MINUTE + 5, idle=90), True, NOW)
    assert decision.message == (
        "kept: age 2d03h04m05s of lifespan 7d00h00m00s; idle 1m30s of idle timeout 1h00m00s"
    )


def test_keep_message_says_activity_was_unknown() -> None:
    message = decide(instance(DAY, idle=DAY), False, NOW).message
    assert message.startswith("kept: age 1d00h00m00s of lifespan 7d00h00m00s; activity unknown")


def test_keep_message_says_a_rule_is_off() -> None:
    assert "unvisited timeout off" in decide(instance(DAY, unvisited_timeout=0), True, NOW).message
    assert "idle timeout off" in decide(instance(DAY, idle=DAY, idle_timeout=0), True, NOW).message


def test_skew_is_reported_and_counted_as_zero() -> None:
    decision = decide(instance(-90), True, NOW)
    assert decision.message == (
        "kept: age 0s of lifespan 7d00h00m00s; "
        "never visited yet, ready for 0s of unvisited timeout 5m00s; "
        "created is 1m30s in the future (clock skew), age taken as 0; "
        "ready is 1m30s in the future (clock skew), age taken as 0"
    )
    decision = decide(instance(DAY, idle=-5), True, NOW)
    assert "last activity is 5s in the future (clock skew), age taken as 0" in decision.message
    assert "idle 0s of idle timeout" in decision.message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m00s"),
        (3599, "59m59s"),
        (3600, "1h00m00s"),
        (3725, "1h02m05s"),
        (86400, "1d00h00m00s"),
        (7 * 86400 + 3 * 3600 + 5, "7d03h00m05s"),
        (-90, "-1m30s"),
    ],
)
def test_format_age(seconds: float, text: str) -> None:
    assert format_age(seconds) == text


def test_expires_at_adds_the_whole_lifespan() -> None:
    times = instance(0, lifespan=2 * DAY + 1)
    assert expires_at(times) == NOW + timedelta(days=2, seconds=1)


def test_naive_datetimes_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="cellxgene-test: created must be a timezone-aware"):
        InstanceTimes("cellxgene-test", datetime(2024, 1, 1), DAY, HOUR, 300, None)
    with pytest.raises(ValueError, match="cellxgene-test: ready_at must be a timezone-aware"):
        InstanceTimes("cellxgene-test", NOW, DAY, HOUR, 300, None, ready_at=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="now must be a timezone-aware"):
        decide(instance(10), True, datetime(2024, 1, 1))


def test_nonsense_durations_are_refused() -> None:
    with pytest.raises(ValueError, match="cellxgene-test: lifespan must be > 0"):
        instance(10, lifespan=0)
    with pytest.raises(ValueError, match="cellxgene-test: idle_timeout must be >= 0"):
        instance(10, idle_timeout=-1)


# --- properties -----------------------------------------------------------------------------

seconds = st.integers(min_value=-2 * DAY, max_value=60 * DAY)
timeouts = st.integers(min_value=0, max_value=30 * DAY)
instances = st.builds(
    lambda age, lifespan, idle_timeout, unvisited_timeout, idle, ready_after: instance(
        age,
        lifespan=lifespan,
        idle_timeout=idle_timeout,
        unvisited_timeout=unvisited_timeout,
        idle=idle,
        ready_after=ready_after,
    ),
    seconds,
    st.integers(min_value=60, max_value=30 * DAY),
    timeouts,
    timeouts,
    st.none() | seconds,
    st.none() | st.integers(min_value=0, max_value=DAY),
)


@given(instances)
def test_unknown_activity_never_culls_as_idle_or_unvisited(times: InstanceTimes) -> None:
    assert decide(times, False, NOW).reason in (None, CullReason.LIFESPAN_EXCEEDED)


# Past their lifespan at NOW by 1 s to 30 days, whatever their other times: every example
# exercises the property below (a filter on all instances would leave most examples vacuous).
expired_instances = st.builds(
    lambda lifespan, past, idle_timeout, unvisited_timeout, idle, ready_after: instance(
        lifespan + past,
        lifespan=lifespan,
        idle_timeout=idle_timeout,
        unvisited_timeout=unvisited_timeout,
        idle=idle,
        ready_after=ready_after,
    ),
    st.integers(min_value=60, max_value=30 * DAY),
    st.integers(min_value=1, max_value=30 * DAY),
    timeouts,
    timeouts,
    st.none() | seconds,
    st.none() | st.integers(min_value=0, max_value=DAY),
)


@given(expired_instances, st.booleans(), st.integers(min_value=0, max_value=365 * DAY))
def test_once_past_its_lifespan_an_instance_stays_past_it(
    times: InstanceTimes, reliable: bool, later: int
) -> None:
    assert decide(times, reliable, NOW).reason is CullReason.LIFESPAN_EXCEEDED
    assert decide(times, reliable, NOW + timedelta(seconds=later)).reason is CullReason.LIFESPAN_EXCEEDED


@given(instances, st.booleans())
def test_deletion_agrees_with_reason_and_is_explained(times: InstanceTimes, reliable: bool) -> None:
    decision = decide(times, reliable, NOW)
    assert decision.delete is (decision.reason is not None)
    assert decision.message.startswith("kept: ") is not decision.delete


# Every time in the future (clock skew): created 1 s to 2 days ahead of NOW, Ready at or after
# that (or not yet), last used 1 s to 2 days ahead (or never).
future = st.integers(min_value=1, max_value=2 * DAY).map(lambda ahead: -ahead)
skewed_instances = st.builds(
    lambda age, lifespan, idle_timeout, unvisited_timeout, idle, ready_after: instance(
        age,
        lifespan=lifespan,
        idle_timeout=idle_timeout,
        unvisited_timeout=unvisited_timeout,
        idle=idle,
        ready_after=ready_after,
    ),
    future,
    st.integers(min_value=60, max_value=30 * DAY),
    timeouts,
    timeouts,
    st.none() | future,
    st.none() | st.integers(min_value=0, max_value=DAY),
)


@given(skewed_instances, st.booleans())
def test_clock_skew_alone_never_culls(times: InstanceTimes, reliable: bool) -> None:
    assert all(t is None or t > NOW for t in (times.created, times.last_activity, times.ready_at))
    decision = decide(times, reliable, NOW)
    assert not decision.delete, decision.message
    assert "clock skew" in decision.message


@given(instances)
def test_a_viewer_that_is_not_ready_is_never_culled_as_unvisited(times: InstanceTimes) -> None:
    starting = InstanceTimes(
        times.name, times.created, times.lifespan, times.idle_timeout, times.unvisited_timeout,
        None, ready_at=None,
    )  # fmt: skip
    assert decide(starting, True, NOW).reason in (None, CullReason.LIFESPAN_EXCEEDED)


# --- how often lastActivity is written, and what the idle rule counts from ---------------------


def test_the_first_visit_is_written_at_once_and_later_ones_once_the_stored_value_lags() -> None:
    lag = timedelta(seconds=3600 * ACTIVITY_WRITE_FRACTION)  # 15 min at a 1 h idle timeout
    assert activity_write_due(None, 3600, NOW)
    assert not activity_write_due(NOW - lag + timedelta(seconds=1), 3600, NOW)
    assert activity_write_due(NOW - lag, 3600, NOW)


def test_an_owner_working_every_tick_costs_one_write_in_fifteen_ticks_at_the_defaults() -> None:
    settings = Settings()
    stored, writes, ticks = None, 0, 150
    for tick in range(ticks):
        now = NOW + timedelta(seconds=tick * settings.tick)
        if activity_write_due(stored, settings.idle_timeout, now):
            stored, writes = now, writes + 1
    assert writes == ticks // 15


def test_what_this_process_saw_counts_exactly() -> None:
    seen = NOW - timedelta(seconds=30)
    assert latest_activity(NOW - timedelta(seconds=600), seen, 3600, NOW) == seen
    assert latest_activity(None, seen, 3600, NOW) == seen
    assert latest_activity(NOW - timedelta(seconds=10), seen, 3600, NOW) == NOW - timedelta(seconds=10)


def test_a_value_stored_by_an_earlier_process_counts_with_the_lag_it_may_have() -> None:
    stored = NOW - timedelta(seconds=3000)
    assert latest_activity(stored, None, 3600, NOW) == stored + timedelta(seconds=900)
    assert latest_activity(NOW - timedelta(seconds=60), None, 3600, NOW) == NOW  # never in the future
    assert latest_activity(None, None, 3600, NOW) is None


@given(
    st.integers(min_value=1, max_value=DAY),  # idle timeout
    st.lists(st.integers(min_value=1, max_value=DAY), min_size=1, max_size=30),  # gaps between visits
    st.integers(min_value=0, max_value=2 * DAY),  # when the operator restarts, after the last visit
)
def test_a_restart_never_culls_as_idle_before_the_idle_timeout(idle_timeout: int, gaps: list[int], restart: int) -> None:
    """Visits seen by one process (which writes by the rule), then a new process that saw nothing:
    it never counts idleness from before the real last visit."""
    visit, stored = NOW - timedelta(seconds=3 * DAY), None
    for gap in gaps:
        visit += timedelta(seconds=gap)
        if activity_write_due(stored, idle_timeout, visit):
            stored = visit
    later = visit + timedelta(seconds=restart)
    counted = latest_activity(stored, None, idle_timeout, later)
    assert counted is not None and visit <= counted <= later
    assert counted - visit <= timedelta(seconds=idle_timeout * ACTIVITY_WRITE_FRACTION)


@pytest.mark.parametrize(("asked", "maximum", "lived"), [(40_000, 36_000, 36_000), (30_000, 36_000, 30_000)])
def test_the_culler_bounds_a_lifespan_by_the_operators_maximum(asked: int, maximum: int, lived: int) -> None:
    # A spec edited above the maximum keeps its value (the operator only refuses to move
    # expiresAt); the culler must not honour it.
    body = {
        "metadata": {"namespace": "ns", "name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"lifespan": asked},
    }
    assert instance_times(body, Settings(max_lifespan=maximum)).lifespan == lived


# --- the delete rate, with a fake clock ------------------------------------------------------


def test_the_delete_rate_spaces_deletions_evenly_and_saves_up_no_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    """The culler takes a RateLimiter token before each cull's requests. With the clock in the
    test's hands, the k-th of a burst of takers goes at exactly k/rate, and a quiet minute earns
    no burst afterwards: what ``delete_rate`` promises, whatever the machine's speed (the rate a
    real API server reaches is bench/culling.py's)."""
    now = [100.0]
    released: list[tuple[str, float]] = []
    slept: dict[object, float] = {}  # task -> what it was told to sleep: it is released at now + that
    limiter = RateLimiter(5.0)  # its asyncio.Lock made before the module's asyncio is replaced

    async def fake_sleep(seconds: float) -> None:
        slept[asyncio.current_task()] = seconds
        await asyncio.sleep(0)

    monkeypatch.setattr(culler, "time", SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setattr(culler, "asyncio", SimpleNamespace(sleep=fake_sleep))

    async def take(label: str) -> None:
        start = now[0]
        await limiter.acquire()
        released.append((label, start + slept.get(asyncio.current_task(), 0.0)))

    async def scenario() -> None:
        await asyncio.gather(*(take(f"burst-{i}") for i in range(10)))
        now[0] = 200.0  # a quiet stretch: no saved tokens
        await asyncio.gather(*(take(f"after-{i}") for i in range(3)))

    asyncio.run(scenario())
    burst = sorted(at for label, at in released if label.startswith("burst-"))
    after = sorted(at for label, at in released if label.startswith("after-"))
    assert burst == pytest.approx([100.0 + k / 5.0 for k in range(10)])
    assert after == pytest.approx([200.0, 200.2, 200.4])
    # so no window of a second holds more than rate tokens (+1 for its closed ends)
    times = burst + after
    assert max(sum(1 for u in times if t <= u < t + 1.0) for t in times) == 5


# --- the pass over the viewer pods' sidecars (edge ingress or gateway) ----------------------------


@pytest.mark.parametrize("settings", [Settings(), Settings(edge="gateway")], ids=["default", "gateway"])
def test_the_culler_reads_the_sidecars_when_each_viewer_signs_in(settings: Settings) -> None:
    handler = K8ApiHandler(client=kubernetes.client.ApiClient(), namespace="cellxgene")
    expected = PodActivitySource if settings.activity == "sidecar" else MetricsSource
    assert isinstance(Culler(settings, handler, {}).source, expected)


def bare_pod(name: str, instance: str, sidecar: bool) -> dict[str, Any]:
    """A pod as the viewer's Deployment labels it, with or without the sign-in container (kwok
    runs whatever it is given: the images are never pulled)."""
    containers = [{"name": "cellxgene", "image": "cellxgene:test"}]
    if sidecar:
        containers.append({"name": SIGNIN_CONTAINER, "image": "oauth2-proxy:test"})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "cellxgene", "instance": instance}},
        "spec": {"containers": containers},
    }


@pytest.mark.cluster
def test_the_viewer_pods_addresses_follow_their_watch_events(namespace: str, k8s: K8ApiHandler) -> None:
    """PodAddresses fed with the API server's own pod objects, as the operator's pod watch gets
    them: Running viewer pods with the sign-in container count; others, gone or going, do not."""
    pods = [("x-1", "cellxgene-x", True), ("x-2", "cellxgene-x", True), ("w-1", "cellxgene-w", True),
            ("y-1", "cellxgene-y", False)]  # fmt: skip
    for name, instance, sidecar in pods:
        k8s.core.create_namespaced_pod(namespace, bare_pod(name, instance, sidecar))

    def running(name: str) -> dict[str, Any] | None:
        pod = k8s.core.api_client.sanitize_for_serialization(k8s.core.read_namespaced_pod(name, namespace))
        return pod if pod["status"].get("phase") == "Running" else None

    found = {name: wait_for(lambda n=name: running(n), 60, f"pod {name} Running") for name, _, _ in pods}
    addresses = PodAddresses()
    for pod in found.values():
        addresses.update("ADDED", pod)
    url = f"http://{{}}:{SIGNIN_METRICS_PORT}{SIGNIN_METRICS_PATH}"
    ip = {name: pod["status"]["podIP"] for name, pod in found.items()}
    assert sorted(addresses.targets()) == sorted([
        ((namespace, "cellxgene-x"), url.format(ip["x-1"])),
        ((namespace, "cellxgene-x"), url.format(ip["x-2"])),
        ((namespace, "cellxgene-w"), url.format(ip["w-1"])),
    ])  # fmt: skip
    addresses.update("DELETED", found["x-2"])
    going = {**found["w-1"], "metadata": {**found["w-1"]["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    addresses.update("MODIFIED", going)
    assert addresses.targets() == [((namespace, "cellxgene-x"), url.format(ip["x-1"]))]


def ready_instance(k8s: K8ApiHandler, namespace: str) -> str:
    """A Ready instance (the test plays the pod handler) that has a sidecar of its own below."""
    name = create(k8s, instance_body(namespace, lifespan=3600, idleTimeout=300, unvisitedTimeout=120))
    created = k8s.get_instance(name)["metadata"]["creationTimestamp"]
    k8s.patch_instance_status(name, {"phase": "Ready", "readyAt": created})
    return name


@pytest.mark.cluster
def test_an_unreadable_viewer_is_not_culled_as_idle_while_a_readable_idle_one_is(
    namespace: str, k8s: K8ApiHandler, tmp_path: Path
) -> None:
    """Culler.cull_once(now=...) with a fake clock, real sidecars and the real API server: the
    owner works on three viewers, then leaves; one sidecar stops answering meanwhile."""
    idle, unread, used = (ready_instance(k8s, namespace) for _ in range(3))
    sidecars = {}
    for name in (idle, unread, used):
        (tmp_path / name).mkdir()
        sidecars[name] = Sidecar(name, tmp_path / name).start()
    created = max(parse_time(k8s.get_instance(n)["metadata"]["creationTimestamp"]) for n in sidecars)  # type: ignore[type-var]
    t0 = created + timedelta(seconds=10)
    settings = Settings(namespace=namespace, edge="gateway", tick=1)
    targets = [((namespace, name), sidecar.metrics_url) for name, sidecar in sidecars.items()]

    def cache() -> dict[tuple[str, str], dict[str, Any]]:
        return {(namespace, i["metadata"]["name"]): i for i in k8s.list_instances()}

    def at(seconds: float) -> datetime:
        return t0 + timedelta(seconds=seconds)

    def last_activity(name: str) -> str | None:
        return k8s.get_instance(name).get("status", {}).get("lastActivity")

    async def scenario() -> None:
        pass_ = Culler(settings, k8s, cache(), PodActivitySource(lambda: targets, timeout=2, concurrency=4))
        for sidecar in sidecars.values():
            sidecar.owner_works()
        assert await pass_.cull_once(now=at(0)) == []
        assert {last_activity(n) for n in sidecars} == {rfc3339(at(0))}

        sidecars[unread].stop()  # its pod stops answering: unknown, tick after tick
        sidecars[idle].outsiders_knock()  # refusals and sign-in redirects are nobody working
        sidecars[used].owner_works()
        assert await pass_.cull_once(now=at(200)) == []
        assert last_activity(used) == rfc3339(at(200))
        assert last_activity(idle) == last_activity(unread) == rfc3339(at(0))

        culled = await pass_.cull_once(now=at(301))
        assert [(n, d.message) for n, d in culled] == [(f"{namespace}/{idle}", "idle for 5m01s > idle timeout 5m00s")]
        assert get_or_none(k8s, unread) is not None and get_or_none(k8s, used) is not None

        # Back, restarted: its counters start over at 0, and its owner did not come back.
        sidecars[unread].start()
        culled = await pass_.cull_once(now=at(302))
        assert [(n, d.message) for n, d in culled] == [(f"{namespace}/{unread}", "idle for 5m02s > idle timeout 5m00s")]

        # Every sidecar silent (say, a NetworkPolicy keeps the operator out): nobody is culled
        # as idle, although the last one left is past its idle timeout by now.
        for sidecar in sidecars.values():
            sidecar.stop()
        assert await pass_.cull_once(now=at(600)) == []
        assert pass_.metrics_failing
        assert any(e.reason == "ActivityUnknown" for e in k8s.list_events(used))
        await pass_.stop()

    try:
        asyncio.run(scenario())
    finally:
        for sidecar in sidecars.values():
            sidecar.stop()
    assert get_or_none(k8s, used) is not None
    assert [e.reason for e in k8s.list_events(idle) if e.reason == "Culled"] == ["Culled"]
