"""The kopf operator: thin handlers that wire the spec, the renderers, the API and the culler.

* create/resume: check the spec against the operator's limits, render the children, adopt them
  (ownerReferences: deletion never waits on the operator, no finalizers) and create what is
  missing, so a handler that runs twice leaves one set of children;
* pod events move ``status.phase`` to Ready, or to Failed with the fetch step's message;
* one culling loop per operator (not one timer per instance) scrapes activity once per tick and
  asks :func:`cxg_on_k8s.culling.decide` about every instance.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from typing import Any

import kopf
import prometheus_client

from cxg_on_k8s import manifests
from cxg_on_k8s import spec as api
from cxg_on_k8s.api import ApiError, K8ApiHandler, load_client, rfc3339, utcnow
from cxg_on_k8s.culler import Culler
from cxg_on_k8s.pod_status import pod_phase
from cxg_on_k8s.settings import Settings

log = logging.getLogger("cxg_on_k8s.operator")
RESOURCE = (api.GROUP, api.VERSION, api.PLURAL)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Operator settings, each for a reason; the culling loop starts at once (first pass now)."""
    # Progress and diff-base in annotations: the CRD's structural status schema would prune
    # kopf's own status fields, and annotations survive operator restarts.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    # One operator replica; peering would need a cluster-wide CRD of kopf's own.
    settings.peering.standalone = True
    # Reconnect watches before load balancers silently drop them; back off on API errors.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.networking.error_backoffs = [1, 2, 5, 10, 20]
    # Children are created through the sync client in threads: enough threads for a class of 500.
    settings.execution.max_workers = 32
    # Handler errors are Events on the instance; chatty progress stays in the log.
    settings.posting.level = logging.WARNING
    config = Settings.from_env()
    if config.operator_metrics_port:
        # The culler's own health (scrape failures) for Prometheus; a taken port is an error.
        try:
            prometheus_client.start_http_server(config.operator_metrics_port)
        except OSError as exc:
            raise kopf.PermanentError(
                f"cannot serve operator metrics on port {config.operator_metrics_port}: {exc}; "
                "free the port or set CXG_OPERATOR_METRICS_PORT (0 = off)"
            ) from exc
    handler = K8ApiHandler(client=load_client(), namespace=config.namespace)
    memo.config = config
    memo.api = handler
    memo.instances = {}
    # The latest news of each instance's pod, kept so that it still reaches the instance when the
    # pod's event came first (operator restart) or a stale status write undid it.
    memo.pod_states = {}
    memo.announced = {}
    # One lock per instance: pod and instance events of one instance must not both announce,
    # while hundreds of instances starting at once must not queue behind each other.
    memo.carry_locks = {}
    memo.culler = Culler(config, handler, memo.instances)
    memo.culler.start()
    logger.info("operator configured for namespace %s, tick %.0f s", config.namespace, config.tick)


@kopf.on.cleanup()
async def stop_culler(memo: kopf.Memo, **_: Any) -> None:
    await memo.culler.stop()


@kopf.on.probe(id="culler")
def culler_alive(memo: kopf.Memo, **_: Any) -> str:
    """Liveness: the culling loop's last pass, so a stuck loop restarts the pod."""
    return memo.culler.last_pass or "starting"


@kopf.on.event(*RESOURCE)
def remember(event: dict[str, Any], body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Keep every instance's latest body for the culling loop (one watch, no per-tick listing)."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    if event.get("type") == "DELETED":
        memo.instances.pop(key, None)
        memo.pod_states.pop(key, None)
        memo.announced.pop(key, None)
        memo.carry_locks.pop(key, None)
    else:
        memo.instances[key] = {
            "metadata": dict(body["metadata"]),
            "spec": dict(body.get("spec", {})),
            "status": dict(body.get("status", {})),
        }
        if key in memo.pod_states:
            carry_pod_state(memo, key, logger)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
async def spawn(
    body: kopf.Body,
    spec: kopf.Spec,
    name: str,
    namespace: str,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: logging.Logger,
    **_: Any,
) -> None:
    """Create the instance's children, or the missing ones after a crash."""
    config: Settings = memo.config
    if status.get("phase") in (api.Phase.FAILED.value, api.Phase.TERMINATING.value):
        return
    model = api.SingleUserInstanceSpec.model_validate(dict(spec))
    problems = api.problems(model, config)
    if problems:
        message = f"SingleUserInstance {namespace}/{name}: " + "; ".join(problems)
        patch.status.update(phase=api.Phase.FAILED.value, message=message, observedGeneration=meta.get("generation"))
        await asyncio.to_thread(memo.api.post_event, body, "Warning", api.Phase.FAILED.value, message)
        raise kopf.PermanentError(message)
    if not status.get("phase"):
        # Written now, before any pod can exist: in the handler's patch (applied after the
        # handler) it could land after the pod's Ready and step the phase back.
        starting = {"phase": api.Phase.STARTING.value, "message": "creating the viewer; waiting for it to become ready"}
        try:
            await asyncio.to_thread(memo.api.patch_instance_status, name, starting, namespace)
        except Exception as exc:  # the API's own exception types; all mean "try again"
            raise kopf.TemporaryError(f"could not set phase Starting: {exc}", delay=5) from None
    children = manifests.children(name, namespace, model, config)
    kopf.adopt(children, owner=body)
    for child in children:
        try:
            created = await asyncio.to_thread(memo.api.create_if_absent, child)
        except ApiError as exc:
            if exc.status in (400, 403, 422) and not exc.transient:
                patch.status.update(phase=api.Phase.FAILED.value, message=str(exc))
                await asyncio.to_thread(memo.api.post_event, body, "Warning", api.Phase.FAILED.value, str(exc))
                raise kopf.PermanentError(str(exc)) from None
            raise kopf.TemporaryError(str(exc), delay=5) from None
        except Exception as exc:  # connection refused or reset: the API server is away, soon back
            raise kopf.TemporaryError(f"creating {child['kind']} {namespace}/{name}: {exc}", delay=5) from None
        logger.debug("%s %s/%s", "created" if created else "kept existing", child["kind"], name)
    lifespan = model.lifespan or config.default_lifespan
    created_at = dt.datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00"))
    update: dict[str, Any] = {
        "url": manifests.instance_url(name, config),
        "expiresAt": rfc3339(created_at + dt.timedelta(seconds=lifespan)),
        "observedGeneration": meta.get("generation"),
    }
    patch.status.update(update)


@kopf.on.update(*RESOURCE, field="spec.lifespan")
def relife(name: str, new: int | None, meta: kopf.Meta, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """A changed lifespan moves expiresAt; the culler reads the new value from its cache."""
    config: Settings = memo.config
    if new and new > config.max_lifespan:
        raise kopf.PermanentError(
            f"SingleUserInstance {name}: spec.lifespan {new} s exceeds the maximum {config.max_lifespan} s; "
            "ask for less"
        )
    created_at = dt.datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00"))
    expires = created_at + dt.timedelta(seconds=new or config.default_lifespan)
    patch.status.update(expiresAt=rfc3339(expires), observedGeneration=meta.get("generation"))


@kopf.on.event("", "v1", "pods", labels={"app": manifests.APP_LABEL})
async def pod_changed(event: dict[str, Any], body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Carry the viewer pod's state to its instance: Ready, or Failed with the cause."""
    instance_name = body["metadata"].get("labels", {}).get("instance")
    key = (body["metadata"]["namespace"], instance_name)
    if event.get("type") == "DELETED":
        memo.pod_states.pop(key, None)
        return
    phase, message = pod_phase(body)
    if phase is None:
        return
    memo.pod_states[key] = (phase, message)
    await asyncio.to_thread(carry_pod_state, memo, key, logger)


def carry_pod_state(memo: kopf.Memo, key: tuple[str, str], logger: logging.Logger) -> None:
    """Write the pod's last news (memo.pod_states) into the instance's status unless it says so
    already; called on pod events and on instance events, so neither order loses it."""
    with memo.carry_locks.setdefault(key, threading.Lock()):
        instance = memo.instances.get(key)
        known = memo.pod_states.get(key)
        if not instance or not known:
            return
        phase, message = known
        current = instance.setdefault("status", {})
        if current.get("phase") in (phase.value, api.Phase.TERMINATING.value, api.Phase.FAILED.value):
            return
        now = rfc3339(utcnow())
        condition = {
            "type": "Ready",
            "status": "True" if phase == api.Phase.READY else "False",
            "reason": phase.value,
            "message": message,
            "lastTransitionTime": now,
        }
        update: dict[str, Any] = {"phase": phase.value, "message": message, "conditions": [condition]}
        if phase == api.Phase.READY and not current.get("readyAt"):
            update["readyAt"] = now
        memo.api.patch_instance_status(key[1], update, key[0])
        current.update(update)
        if memo.announced.get(key) != phase:
            memo.announced[key] = phase
            event_type = "Normal" if phase == api.Phase.READY else "Warning"
            memo.api.post_event({**instance, "apiVersion": api.API_VERSION, "kind": api.KIND}, event_type, phase.value, message)
    logger.info("instance %s/%s is %s: %s", key[0], key[1], phase.value, message)
