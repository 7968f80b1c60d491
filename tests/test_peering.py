"""kopf peering, as in the proof of concept: of two operators for one namespace only the one with
the higher priority works; the other pauses, and takes over when the first one stops.

Real operators (``cxg-k8s operator`` processes) against the real control plane, with kopf's own
peering CRD installed for this module only (it is removed afterwards, so that the rest of the
session runs as a cluster without it would).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cxg_devcluster.cluster import DevCluster

from cxg_on_k8s.api import model
from cxg_on_k8s.controller.peering import outranked
from cxg_on_k8s.k8s.client import ApiError, K8ApiHandler
from cxg_on_k8s.render import install
from cxg_on_k8s.settings import Settings
from tests import service_accounts
from tests.conftest import StartOperator, install_crd, remove_peering_crd, wait_for
from tests.instances import create, instance_body, wait_phase

# kopf's own log lines (kopf/_core/engines/peering.py), what an administrator sees.
PAUSED = "Pausing operations in favour of"
RESUMED = "Resuming operations after the pause"
SPAWNED = "Handler 'spawn' succeeded"


# --- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def peering_crd(cluster: DevCluster) -> Iterator[None]:
    """kopf's peering CRD for one test, removed afterwards."""
    install_crd(cluster, install.kopf_peering_crd())
    yield
    remove_peering_crd(cluster)


def peering_status(k8s: K8ApiHandler) -> dict[str, Any]:
    try:
        body = k8s.custom.get_namespaced_custom_object(
            install.KOPF_GROUP, "v1", k8s.namespace, install.KOPF_PEERING_PLURAL, install.PEERING_NAME
        )
    except Exception:  # noqa: BLE001 - not there yet
        return {}
    return body.get("status") or {}


def priorities(k8s: K8ApiHandler) -> list[int]:
    return sorted(record["priority"] for record in peering_status(k8s).values())


# --- the decision the culling loop shares with kopf (pure) ------------------------------------------


NOW = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.UTC)


def record(priority: int, seen_ago: float = 5, lifetime: int = 60) -> dict[str, Any]:
    return {"priority": priority, "lifetime": lifetime, "lastseen": (NOW - dt.timedelta(seconds=seen_ago)).isoformat()}


@pytest.mark.parametrize(
    ("peers", "priority", "expected"),
    [
        ({}, 0, None),
        ({"me": record(0)}, 0, None),
        ({"me": record(0), "pod-a": record(100)}, 0, "higher priority than 0 are running: pod-a"),
        ({"pod-a": record(100), "laptop": record(0)}, 100, None),
        ({"me": record(0), "other": record(0)}, 0, "same priority 0 are running: me, other"),
        ({"me": record(0), "pod-a": record(100, seen_ago=61)}, 0, None),  # its keep-alive expired
        ({"me": record(0), "pod-a": record(100, lifetime=0)}, 0, None),  # it said goodbye
        ({"me": record(0), "junk": {"priority": "x"}}, 0, None),
    ],
    ids=["nobody", "alone", "outranked", "outranking", "same-priority", "expired", "goodbye", "unreadable"],
)
def test_outranked_follows_kopfs_rule(peers: dict[str, Any], priority: int, expected: str | None) -> None:
    reason = outranked(peers, priority, NOW)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


def test_peering_priority_defaults_to_100_in_a_pod_and_0_elsewhere() -> None:
    assert Settings().effective_peering_priority({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == 100
    assert Settings().effective_peering_priority({}) == 0
    assert Settings(peering_priority=7).effective_peering_priority({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == 7
    assert Settings.from_env({"CXG_PEERING_PRIORITY": ""}).peering_priority is None  # as the chart passes it


# --- real operators against the real control plane ------------------------------------------------------


def test_without_the_peering_crd_the_operator_warns_and_works(
    cluster: DevCluster, k8s: K8ApiHandler, start_operator: StartOperator
) -> None:
    remove_peering_crd(cluster)
    operator = start_operator()
    name = create(k8s, instance_body(k8s.namespace))
    wait_phase(k8s, name, model.Phase.READY)
    log = operator.text()
    assert f"kopf's peering CRD {install.KOPF_PEERING_CRD_NAME} is not installed: running without peering" in log
    assert "cxg-k8s install" in log


def test_the_higher_priority_operator_works_and_the_lower_one_takes_over_when_it_stops(
    cluster: DevCluster, k8s: K8ApiHandler, start_operator: StartOperator, peering_crd: None, tmp_path: Path
) -> None:
    ns = k8s.namespace
    # The in-cluster one runs with nothing but its own service account: its RBAC covers peering.
    rbac = install.operator_rbac(Settings(namespace=ns, metrics_service=""))
    service_accounts.apply(cluster, rbac)
    try:
        sa_kubeconfig = service_accounts.kubeconfig(cluster, ns, install.OPERATOR_NAME, tmp_path / "sa.kubeconfig")
        high = start_operator(kubeconfig=sa_kubeconfig, peering_priority=100)
        wait_for(lambda: priorities(k8s) == [100], 30, "the in-cluster operator's keep-alive in the KopfPeering")
        low = start_operator(peering_priority=0, tick=1)
        wait_for(lambda: PAUSED in low.text(), 30, "the laptop operator to pause in favour of the other")
        wait_for(lambda: priorities(k8s) == [0, 100], 30, "both keep-alives")
        # kopf pauses handlers; the culling loop, which kopf does not know, stands by too
        wait_for(lambda: "culling paused: operator(s) with a higher priority than 0" in low.text(), 30, "the culler to stand by")

        first = create(k8s, instance_body(k8s.namespace))
        wait_phase(k8s, first, model.Phase.READY)
        # kwok's pod can be Ready before kopf logs the handler's end (its progress patch comes last)
        wait_for(lambda: SPAWNED in high.text() and first in high.text(), 30, "the in-cluster operator to log the spawn")
        assert first not in low.text(), low.text()[-3000:]
        assert "Forbidden" not in high.text() and " 403" not in high.text(), high.text()[-3000:]

        high.stop()
        wait_for(lambda: RESUMED in low.text(), 30, "the laptop operator to resume")
        wait_for(lambda: priorities(k8s) == [0], 30, "the stopped operator's record to be gone")
        second = create(k8s, instance_body(k8s.namespace))
        wait_phase(k8s, second, model.Phase.READY)
        wait_for(lambda: SPAWNED in low.text() and second in low.text(), 30, "the laptop operator to log the spawn")
        wait_for(lambda: "culling resumed" in low.text(), 30, "the culler to resume")
    finally:
        service_accounts.delete_cluster_scoped(cluster, rbac)


def test_standalone_ignores_peering(k8s: K8ApiHandler, peering_crd: None, start_operator: StartOperator) -> None:
    """`cxg-k8s operator --standalone`, the old behaviour: no peering object, no keep-alives."""
    operator = start_operator("--standalone")
    name = create(k8s, instance_body(k8s.namespace))
    wait_phase(k8s, name, model.Phase.READY)
    with pytest.raises(ApiError) as missing:
        k8s.read_custom_resource(install.PEERING_NAME, install.KOPF_GROUP, "v1", install.KOPF_PEERING_PLURAL)
    assert missing.value.status == 404
    assert "peering" not in operator.text().lower(), operator.text()[-3000:]
