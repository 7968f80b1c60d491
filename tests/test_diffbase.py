"""The operator's diff-base storage (controller/diffbase.py) gives the essence kopf's own gives.

The instances are real: made by the real operator on the session's control plane (kwok pods), read
back with everything the API server adds (managedFields of three managers, status, kopf's
annotation), in both forms. kopf's own ``AnnotationsDiffBaseStorage`` is the reference.
"""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from cxg_on_k8s.api import model
from cxg_on_k8s.controller.diffbase import LeanAnnotationsDiffBaseStorage
from cxg_on_k8s.k8s.client import K8ApiHandler
from cxg_on_k8s.render import viewer
from tests.conftest import StartOperator
from tests.instances import create, instance_body, wait_phase
from tests.poc_form import poc_manifests

KEY = {"prefix": model.GROUP, "key": "last-handled-configuration"}
LIFESPAN = [("spec", "lifespan")]  # the field of the operator's update handler


def storages() -> tuple[kopf.AnnotationsDiffBaseStorage, LeanAnnotationsDiffBaseStorage]:
    return kopf.AnnotationsDiffBaseStorage(**KEY), LeanAnnotationsDiffBaseStorage(**KEY)


def embedded_body(namespace: str) -> dict[str, Any]:
    name = viewer.new_instance_name()
    spec = {"lifespan": 600, **poc_manifests(name)}
    return {
        "apiVersion": model.API_VERSION,
        "kind": model.KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": {"portal": "poc"}},
        "spec": spec,
    }


def test_the_operators_essence_of_a_real_instance_is_kopfs(k8s: K8ApiHandler, start_operator: StartOperator) -> None:
    start_operator()
    portal = instance_body(k8s.namespace, lifespan=600)
    portal["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "a"}
    names = [create(k8s, portal), create(k8s, embedded_body(k8s.namespace))]
    kopfs, ours = storages()
    for name in names:
        wait_phase(k8s, name, model.Phase.READY)
        body = kopf.Body(k8s.get_instance(name))
        assert body["metadata"]["managedFields"] and body["status"]["phase"] == "Ready"
        essence = ours.build(body=body, extra_fields=LIFESPAN)
        assert essence == kopfs.build(body=body, extra_fields=LIFESPAN)
        assert essence == kopfs.build(body=body)
        # What the operator stored after handling the instance is that essence: nothing changed
        # since, so kopf sees no update, as it would with its own storage.
        assert ours.fetch(body=body) == essence
        assert "status" not in essence and "managedFields" not in essence["metadata"]
    assert kopfs.build(body=kopf.Body(k8s.get_instance(names[0])))["metadata"]["annotations"] == {"team": "a"}


def test_the_dropped_parts_are_not_copied_unless_a_handler_watches_them() -> None:
    """A value that cannot be deep-copied, in status: kopf's build copies it and fails; ours
    leaves it alone, until a handler's field lies in status (then the body goes to kopf whole)."""
    raw: dict[str, Any] = {
        "apiVersion": model.API_VERSION,
        "kind": model.KIND,
        "metadata": {"name": "a", "labels": {"x": "1"}, "managedFields": [{"manager": "m"}]},
        "spec": {"lifespan": 60},
        "status": {"phase": (n for n in range(1))},
    }
    body = kopf.Body(raw)  # type: ignore[arg-type]
    kopfs, ours = storages()
    with pytest.raises(TypeError):
        kopfs.build(body=body, extra_fields=LIFESPAN)
    assert ours.build(body=body, extra_fields=LIFESPAN) == {
        "metadata": {"labels": {"x": "1"}},
        "spec": {"lifespan": 60},
    }
    with pytest.raises(TypeError):
        ours.build(body=body, extra_fields=["status.phase"])
