"""The kopf operator: thin handlers that wire the spec, the renderers, the API and the culler.

* create/resume: check the spec against the operator's limits and the embedded form's policy,
  render the children, adopt them (ownerReferences: deletion never waits on the operator, no
  finalizers) and create what is missing, so a handler that runs twice leaves one set of
  children; an existing child that this instance does not own fails it (no takeover);
* pod events move ``status.phase`` to Ready, or to Failed with the fetch step's message;
* one culling loop per operator (not one timer per instance) scrapes activity once per tick and
  asks :func:`cxg_on_k8s.culling.decide` about every instance.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from collections.abc import Callable
from typing import Any, NoReturn, cast

import kopf
import prometheus_client

from cxg_on_k8s.api import model, policy
from cxg_on_k8s.controller import ownership
from cxg_on_k8s.controller.peering import ensure_peering_object, standby_check
from cxg_on_k8s.controller.pod_record import PodRecord, already_shown, carry_pod_state
from cxg_on_k8s.controller.pod_status import pod_phase
from cxg_on_k8s.culling.culler import API_CONCURRENCY, Culler
from cxg_on_k8s.culling.pod_activity import PodAddresses
from cxg_on_k8s.k8s.client import ApiError, K8ApiHandler, load_client, parse_time, rfc3339, utcnow, with_pool
from cxg_on_k8s.render import viewer
from cxg_on_k8s.render.install import PEERING_NAME
from cxg_on_k8s.render.plan import Plan, Refusal, plan_instance
from cxg_on_k8s.settings import Settings

log = logging.getLogger("cxg_on_k8s.operator")
RESOURCE = (model.GROUP, model.VERSION, model.PLURAL)
WORKERS = min(32, (os.cpu_count() or 1) + 4)  # threads of each executor (see configure)
# Retries (5 s apart) of a child the API server rejects before the instance is Failed.
REJECTION_RETRIES = 3


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Operator settings, each for a reason; the culling loop starts at once (first pass now)."""
    # Progress and diff-base in annotations: the CRD's structural status schema would prune
    # kopf's own status fields, and annotations survive operator restarts.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=model.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=model.GROUP, key="last-handled-configuration"
    )
    # Reconnect watches before load balancers silently drop them; back off on API errors.
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.networking.error_backoffs = [1, 2, 5, 10, 20]
    # Threads: kopf's executor (sync handlers) and the loop's default one (asyncio.to_thread:
    # children, status, Events) keep Python's default, min(32, CPUs + 4): 6 on a 2-core node.
    # With 500 instances at once on 2 cores, 32 threads in both were slower than 6 (alternating
    # runs, bench/spawn.py: 26.6, 29.9, 52.5, 55.2 s to all Ready vs 25.0, 24.9, 28.6, 42.9 s, and
    # more operator CPU): the API server is the bottleneck, and more threads only contend.
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
    # A connection per thread (kopf's, the default executor's, the culler's): past the pool's size
    # (default 5 × CPUs) urllib3 drops each extra connection after one request, and the next pays
    # a TLS handshake.
    handler = K8ApiHandler(
        client=with_pool(load_client(), 2 * WORKERS + API_CONCURRENCY + 2), namespace=config.namespace
    )
    standby: Callable[[], str | None] | None = None  # standalone: nobody to yield to
    if not settings.peering.standalone:  # `cxg-k8s operator --standalone` / `kopf run --standalone`
        # Peering as in the PoC: of the operators for this namespace only the highest-priority one
        # works, the others pause while it lives (kopf's keep-alives in a KopfPeering object), so a
        # laptop's operator (priority 0) yields to the in-cluster one (100) and a stray second
        # replica cannot double-handle or double-cull. Not mandatory: where kopf's CRD is absent
        # the operator still runs, with a warning. Namespaced (KopfPeering, not the cluster-wide
        # kind): the operator holds no cluster-wide write permission, and namespaces are separate.
        settings.peering.name = PEERING_NAME
        settings.peering.mandatory = False
        settings.peering.clusterwide = False
        settings.peering.priority = config.effective_peering_priority()
        await asyncio.to_thread(ensure_peering_object, handler, config, logger)
        logger.info(
            "peering %r in namespace %s with priority %d", PEERING_NAME, config.namespace, settings.peering.priority
        )
        standby = standby_check(handler, config, settings.peering.priority)
    memo.config = config
    memo.api = handler
    memo.instances = {}
    memo.pod_records = {}  # (namespace, name) -> PodRecord
    memo.user_data = {}  # user-data URL -> (namespace, name) of the instance saving there
    memo.pod_addresses = PodAddresses()  # where each viewer pod's sidecar counts, for the culler
    memo.culler = Culler(config, handler, memo.instances, standby=standby, pods=memo.pod_addresses)
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
async def remember(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Keep every instance's latest body for the culling loop (one watch, no per-tick listing).
    On the loop, not in kopf's threads: every instance event comes here, and only a pod state
    still to write (an API call) is worth a thread."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    if event.get("type") == "DELETED":
        memo.instances.pop(key, None)
        memo.pod_records.pop(key, None)
        for url in [url for url, holder in memo.user_data.items() if holder == key]:
            del memo.user_data[url]
    else:
        status = dict(body.get("status", {}))
        memo.instances[key] = {
            "metadata": dict(body["metadata"]),
            "spec": dict(body.get("spec", {})),
            "status": status,
        }
        record = memo.pod_records.get(key)
        if record is not None and record.latest is not None and not already_shown(status, record.latest[0]):
            await asyncio.to_thread(carry_pod_state, memo, key, logger)


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
async def spawn(
    body: kopf.Body,
    spec: kopf.Spec,
    name: str,
    namespace: str | None,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: kopf.Logger,
    retry: int,
    **_: Any,
) -> None:
    """Create the instance's children, or the missing ones after a crash."""
    config: Settings = memo.config
    namespace = namespace or config.namespace  # kopf passes the instance's; the CRD is namespaced
    if status.get("phase") in (model.Phase.FAILED.value, model.Phase.TERMINATING.value):
        return
    parsed = model.SingleUserInstanceSpec.model_validate(dict(spec))
    # The policy runs here, before anything exists: nothing is created for a refused spec.
    try:
        plan = plan_instance(name, namespace, dict(meta.get("labels") or {}), parsed, config)
    except Refusal as refusal:
        await _refuse(body, str(refusal), meta, patch, memo)
    if not parsed.embedded:
        taken = _claim_user_data(
            viewer.user_data_url(parsed, config), (namespace, name), bool(status.get("phase")), memo
        )
        if taken:
            await _refuse(body, taken, meta, patch, memo)
    children = plan.children
    kopf.adopt(children, owner=body)
    restricted = _restricted_condition(plan)
    memo.pod_records.setdefault((namespace, name), PodRecord()).kept_conditions = [restricted]
    update: dict[str, Any] = {
        "url": viewer.instance_url(name, config),
        "expiresAt": _expires_at(meta, parsed.lifespan, config),
        "observedGeneration": meta.get("generation"),
    }
    resumed = bool(status.get("phase"))
    if not resumed:
        # Written now, before any pod can exist: in the handler's patch (applied after the
        # handler) it could land after the pod's Ready and step the phase back. With the URL
        # and expiry in the same write: one status write (and watch event) less per instance.
        # No Event: the status says it, and the Ready (or Failed) Event follows within seconds.
        starting = {
            "phase": model.Phase.STARTING.value,
            "message": "creating the viewer; waiting for it to become ready",
            "conditions": [restricted],
            **update,
        }
        try:
            await asyncio.to_thread(memo.api.patch_instance_status, name, starting, namespace)
        except ApiError as exc:  # an API error or an unreachable API server: both mean "try again"
            raise kopf.TemporaryError(f"could not set phase Starting: {exc}", delay=5) from None
        await _tell_the_client(body, plan, memo, logger)
    # A new instance's children are created first, and an existing one (409) is read for its
    # owner: one request per child where there is nothing in the way. A resumed instance (after
    # an operator restart or a retry) most likely has them all: those are read first. Either way
    # a child another owner holds fails the instance, and the Deployment comes last, so nothing
    # of the instance runs then (the children created before it go with the instance).
    for child in children:
        if resumed and await _owned(child, body, retry, meta, patch, memo):
            continue
        try:
            created = await asyncio.to_thread(memo.api.create_if_absent, child)
        except ApiError as exc:
            # A rejection is final only once it persists: an API server that is restarting answers
            # 403 (admission not ready) or 422 (its IP allocator unreachable) for a moment.
            if exc.status in (400, 403, 422) and not exc.transient and retry >= REJECTION_RETRIES:
                patch.status.update(model.status_patch({"phase": model.Phase.FAILED, "message": str(exc)}))
                await asyncio.to_thread(memo.api.post_event, body, "Warning", model.Phase.FAILED.value, str(exc))
                raise kopf.PermanentError(str(exc)) from None
            raise kopf.TemporaryError(str(exc), delay=5) from None  # also an unreachable API server
        if not created and not await _owned(child, body, retry, meta, patch, memo):  # 409, then gone
            raise kopf.TemporaryError(f"{child['kind']} {namespace}/{name} vanished; creating it again", delay=1)
        logger.debug("%s %s/%s", "created" if created else "kept existing", child["kind"], name)
    if resumed and any(status.get(key) != value for key, value in update.items()):
        patch.status.update(model.status_patch(update))  # a resumed instance written by an older operator


def _restricted_condition(plan: Plan) -> dict[str, Any]:
    """Condition ``Restricted``: whether the sign-in lets only the people named in the spec in."""
    restricted = plan.access.restricted
    return {
        "type": "Restricted",
        "status": "True" if restricted else "False",
        "reason": "Named" if restricted else "NobodyNamed",
        "message": f"only {plan.access.describe()} may open it"
        if restricted
        else (f"every signed-in user may open it: {plan.open_access}"),
        "lastTransitionTime": rfc3339(utcnow()),
    }


async def _tell_the_client(body: kopf.Body, plan: Plan, memo: kopf.Memo, logger: kopf.Logger) -> None:
    """Warning Events for what a client of the embedded form should change: the parts of its
    manifests the operator did not apply, and an instance open to every signed-in user."""
    notices = []
    if plan.ignored:
        notices.append(
            ("Ignored", "not applied, the operator renders the Service and Ingress itself: " + "; ".join(plan.ignored))
        )
    if plan.open_access:
        notices.append(("OpenAccess", f"every signed-in user may open this viewer: {plan.open_access}"))
    for reason, message in notices:
        try:
            await asyncio.to_thread(memo.api.post_event, body, "Warning", reason, message)
        except ApiError as exc:  # best effort: the instance's status carries what matters
            logger.warning("could not post the %s event: %s", reason, exc)


def _claim_user_data(url: str, key: tuple[str, str], resumed: bool, memo: kopf.Memo) -> str | None:
    """Claim ``url`` for instance ``key``, or say which live instance saves there already: two
    viewers saving to one prefix would overwrite each other's work. A second instance is refused
    naming the first and its URL, not redirected to it: the portal waits on the name it created,
    and the message tells it where the open viewer is. A resumed instance keeps its claim (it was
    accepted before the operator restarted). Runs on the event loop between awaits, so two
    creations cannot both claim."""
    holder = memo.user_data.get(url)
    other = memo.instances.get(holder) if holder not in (None, key) else None
    live = (
        other is not None
        and not other["metadata"].get("deletionTimestamp")
        and other["status"].get("phase") not in (model.Phase.FAILED.value, model.Phase.TERMINATING.value)
    )
    if live and not resumed:
        assert other is not None and holder is not None
        return (
            f"SingleUserInstance {key[0]}/{key[1]}: its user data {url} is in use by SingleUserInstance "
            f"{holder[0]}/{holder[1]} (open at {other['status'].get('url', 'its URL once ready')}): two viewers "
            "saving to one place would overwrite each other's work; use that one, delete it first, or set "
            "spec.userData to another prefix"
        )
    memo.user_data[url] = key
    return None


async def _refuse(body: kopf.Body, message: str, meta: kopf.Meta, patch: kopf.Patch, memo: kopf.Memo) -> NoReturn:
    """Failed for good: the message in status and in a Warning Event, and no retry."""
    patch.status.update(
        model.status_patch(
            {"phase": model.Phase.FAILED, "message": message, "observedGeneration": meta.get("generation")}
        )
    )
    await asyncio.to_thread(memo.api.post_event, body, "Warning", model.Phase.FAILED.value, message)
    raise kopf.PermanentError(message)


# Tries (3 s apart) to wait for the garbage collector to remove the children of an earlier
# instance of the same name before the name clash is reported as a conflict.
PREDECESSOR_RETRIES = 20


async def _owned(
    child: dict[str, Any], body: kopf.Body, retry: int, meta: kopf.Meta, patch: kopf.Patch, memo: kopf.Memo
) -> bool:
    """True: the child exists and this instance owns it; False: it does not exist. A child owned
    by something else (or by nothing) fails the instance: no takeover."""
    kind, namespace, name = child["kind"], child["metadata"]["namespace"], child["metadata"]["name"]
    try:
        owners = await asyncio.to_thread(memo.api.read_owner_references, kind, namespace, name)
    except ApiError as exc:  # an API error or an unreachable API server: both mean "try again"
        raise kopf.TemporaryError(f"checking the owner of {kind} {namespace}/{name}: {exc}", delay=5) from None
    conflict = ownership.child_conflict(
        kind, namespace, name, owners, body["metadata"]["uid"], body["metadata"]["name"]
    )
    if conflict is None:
        return owners is not None
    if conflict.transient and retry < PREDECESSOR_RETRIES:
        raise kopf.TemporaryError(conflict.message, delay=3)
    await _refuse(
        body, f"SingleUserInstance {namespace}/{body['metadata']['name']}: {conflict.message}", meta, patch, memo
    )


@kopf.on.update(*RESOURCE, field="spec.lifespan")
def lifespan_changed(name: str, new: Any, meta: kopf.Meta, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """A changed lifespan moves expiresAt; the culler reads the new value from its cache."""
    config: Settings = memo.config
    problem = policy.lifespan_problem(new, config)
    if problem:
        raise kopf.PermanentError(f"SingleUserInstance {name}: {problem}")
    patch.status.update(
        model.status_patch({"expiresAt": _expires_at(meta, new, config), "observedGeneration": meta.get("generation")})
    )


def _expires_at(meta: kopf.Meta, lifespan: int | None, config: Settings) -> str:
    """``status.expiresAt``: creation plus the lifespan, the default one when the spec gives none.
    Written on create/resume and on a lifespan change; one formula keeps a resumed instance from
    being rewritten for a difference between the two."""
    created = parse_time(meta["creationTimestamp"])
    assert created is not None, "the API server sets creationTimestamp on every object"
    return rfc3339(created + dt.timedelta(seconds=lifespan or config.default_lifespan))


def _owner_uid(pod: kopf.Body) -> str | None:
    """The uid of the instance that owns the pod itself (viewer_workload pod), else None (a
    Deployment's pod belongs to its ReplicaSet)."""
    refs = pod["metadata"].get("ownerReferences") or []
    return next((ref.get("uid") for ref in refs if ref.get("kind") == model.KIND and ref.get("controller")), None)


# Tries (1, 2, 4 s apart) to make a viewer pod again before giving up until the next operator start.
REMAKE_TRIES = 4


async def _make_pod_again(pod: kopf.Body, key: tuple[str, str], memo: kopf.Memo, logger: kopf.Logger) -> None:
    """A viewer pod its instance owns is gone (deleted, evicted, its node lost): make it again,
    unless the instance is going as well. Its Event tells the user why the viewer restarted."""
    owner = _owner_uid(pod)
    instance = memo.instances.get(key)
    if owner is None or instance is None or instance["metadata"].get("uid") != owner:
        return
    if instance["metadata"].get("deletionTimestamp") or already_shown(instance.get("status", {}), model.Phase.FAILED):
        return
    config: Settings = memo.config
    meta = instance["metadata"]
    spec = model.SingleUserInstanceSpec.model_validate(instance["spec"])
    plan = plan_instance(key[1], key[0], dict(meta.get("labels") or {}), spec, config)
    (child,) = [c for c in plan.children if c["kind"] == "Pod"]
    owner_body = {"apiVersion": model.API_VERSION, "kind": model.KIND, "metadata": meta}
    kopf.adopt(child, owner=kopf.Body(cast(kopf.RawBody, owner_body)))
    for attempt in range(REMAKE_TRIES):
        try:
            await asyncio.to_thread(memo.api.create_if_absent, child)
            break
        except ApiError as exc:
            if attempt == REMAKE_TRIES - 1:
                message = (
                    f"the viewer pod is gone and could not be made again ({exc}); the operator's next start makes it"
                )
                logger.warning("%s/%s: %s", key[0], key[1], message)
                await asyncio.to_thread(memo.api.post_event, owner_body, "Warning", "PodLost", message)
                return
            await asyncio.sleep(2**attempt)
    message = "the viewer pod was gone (deleted or evicted); a new one is starting, with the user's saved data"
    logger.info("%s/%s: %s", key[0], key[1], message)
    try:
        await asyncio.to_thread(memo.api.post_event, owner_body, "Normal", "PodReplaced", message)
    except ApiError as exc:  # best effort: the new pod is there
        logger.warning("could not post the PodReplaced event: %s", exc)


@kopf.on.event("", "v1", "pods", labels={"app": viewer.APP_LABEL})
async def pod_changed(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Carry the viewer pod's state to its instance: Ready, or Failed with the cause; and keep
    where its sidecar counts requests, for the culler."""
    memo.pod_addresses.update(event.get("type"), body)
    instance_name = body["metadata"].get("labels", {}).get("instance")
    key = (body["metadata"]["namespace"], instance_name)
    if event.get("type") == "DELETED":
        if key not in memo.instances:
            # The instance went first and its pod's last updates made a record again: drop it,
            # or every deleted instance would leave one behind for the operator's lifetime.
            memo.pod_records.pop(key, None)
        elif key in memo.pod_records:
            memo.pod_records[key].latest = None
        await _make_pod_again(body, key, memo, logger)
        return
    if (body.get("status") or {}).get("phase") == "Failed" and _owner_uid(body):
        # An evicted pod (or one whose node went) stays, failed, until someone deletes it: the
        # operator does, and the DELETED event that follows makes a new one.
        meta = body["metadata"]
        logger.info(
            "viewer pod %s/%s failed (%s); replacing it", meta["namespace"], meta["name"], body["status"].get("reason")
        )
        try:
            await asyncio.to_thread(memo.api.delete_pod, meta["name"], meta["namespace"], meta["uid"])
        except ApiError as exc:  # the next event of the pod tries again
            logger.warning("could not delete the failed viewer pod %s/%s: %s", meta["namespace"], meta["name"], exc)
        return
    phase, message = pod_phase(body)
    if phase is None:
        return
    memo.pod_records.setdefault(key, PodRecord()).latest = (phase, message)
    instance = memo.instances.get(key)
    if instance and already_shown(instance.get("status", {}), phase):
        # carry_pod_state would return at once: the pod events of a state already carried spare
        # the hop to a thread. A cached body replaced after this check comes with an instance
        # event, whose handler (remember) carries the state set above.
        return
    await asyncio.to_thread(carry_pod_state, memo, key, logger)
