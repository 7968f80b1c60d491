"""The admission policy the API server's schema cannot express: the operator's limits, and the box
an embedded-form pod stays in.

Two kinds of rule, both pure functions of the spec and the settings:

* **refused** (:func:`problems`): what would raise privilege, leave the namespace, reach another
  user's secrets or the node, or exceed the limits. Each problem names the exact field path and
  the fix; the operator then creates nothing.
* **neutralised** (:func:`harden_pod`): what the proof of concept's clients simply left out
  (security contexts, limits, a sizeLimit) or set harmlessly high (replicas, grace period): the
  operator writes its own value, so those clients keep working unchanged.

Together they make every viewer pod pass the Pod Security Standard ``restricted``, which the
instances' namespace enforces (``manifests.namespace``).
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

from cxg_on_k8s.api import model
from cxg_on_k8s.settings import Settings

# Service accounts an embedded viewer may run as: the namespace's default (or none given, which
# is the same). Any other account could carry RBAC that a client must not be able to borrow.
ALLOWED_SERVICE_ACCOUNTS = ("", "default")
# Volume types a viewer needs: scratch space, configuration, and facts about itself. Everything
# else reaches storage or secrets beyond the pod (secret, nfs, persistentVolumeClaim, csi, ...).
ALLOWED_VOLUMES = ("emptyDir", "configMap", "downwardAPI", "projected")
ALLOWED_PROJECTIONS = ("downwardAPI", "configMap")
# SELinux types the Pod Security Standard "baseline" (and so "restricted") admits.
ALLOWED_SELINUX_TYPES = ("", "container_t", "container_init_t", "container_kvm_t", "container_engine_t")
CONTAINER_GROUPS = ("initContainers", "containers", "ephemeralContainers")
POD = "spec.deployment.spec.template.spec"
_HOST_NAMESPACES = {"hostNetwork": "network", "hostPID": "process", "hostIPC": "IPC"}


def _mapping(value: Any) -> dict[str, Any]:
    """A manifest's sub-object, or {} where the client put nothing (or something malformed, which
    the API server refuses with its own message when the child is created)."""
    return value if isinstance(value, dict) else {}


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def pod_template(spec: model.SingleUserInstanceSpec) -> dict[str, Any]:
    """The client's pod template (``spec.deployment.spec.template``), or {}."""
    return _mapping(_mapping(_mapping(spec.deployment).get("spec")).get("template"))


def problems(spec: model.SingleUserInstanceSpec, settings: Settings, namespace: str | None = None) -> list[str]:
    """Everything that refuses ``spec`` in ``namespace`` (default: the settings' namespace): the
    lifespan and resource maxima, and for the embedded form :func:`embedded_problems`. An empty
    list means acceptable."""
    found: list[str] = embedded_problems(spec, namespace or settings.namespace, settings)
    lifespan = lifespan_problem(spec.lifespan, settings)
    if lifespan is not None:
        found.append(lifespan)
    if spec.resources:
        for field, limit in (("cpu", settings.max_cpu), ("memory", settings.max_memory)):
            asked = getattr(spec.resources, field)
            if asked and parse_quantity(asked) > parse_quantity(limit):
                found.append(
                    f"spec.resources.{field} {asked} exceeds the maximum {limit} "
                    f"(setting CXG_MAX_{field.upper()}); ask for less"
                )
    return found


def lifespan_problem(lifespan: int | None, settings: Settings) -> str | None:
    """Why ``lifespan`` (None: the default) exceeds the operator's max_lifespan, or None: on its
    own so that a changed lifespan is judged by the same rule, and words, as a new instance."""
    if lifespan is None or lifespan <= settings.max_lifespan:
        return None
    return (
        f"spec.lifespan {lifespan} s exceeds the maximum {settings.max_lifespan} s "
        "(setting CXG_MAX_LIFESPAN); ask for less"
    )


def embedded_problems(spec: model.SingleUserInstanceSpec, namespace: str, settings: Settings) -> list[str]:
    """The embedded form's refusals: a slot holding another kind (or apiVersion) than its own, a
    ``metadata.namespace`` other than the instance's, and a pod template that leaves its box
    (:func:`pod_problems`). The Service and Ingress are rendered by the operator, so nothing of
    theirs but the kind and namespace can be wrong."""
    found: list[str] = []
    for slot, (version, kind) in model.EMBEDDED_SLOTS.items():
        doc = getattr(spec, slot)
        if doc is None:
            continue
        where = f"spec.{slot}"
        if doc.get("kind") != kind:
            found.append(f"{where}.kind is {doc.get('kind')!r}: the {slot} slot takes a {kind} only; set kind: {kind}")
        if "apiVersion" in doc and doc["apiVersion"] != version:
            found.append(
                f"{where}.apiVersion is {doc['apiVersion']!r}: the {slot} slot takes {version} {kind}; "
                f"set apiVersion: {version}"
            )
        other = _mapping(doc.get("metadata")).get("namespace")
        if other not in (None, "", namespace):
            found.append(
                f"{where}.metadata.namespace is {other!r}, not the instance's namespace {namespace!r}: "
                f"children live next to their instance; remove metadata.namespace or set it to {namespace}"
            )
    if spec.deployment is not None:
        found += pod_problems(_mapping(pod_template(spec).get("spec")), POD, settings)
    return found


def pod_problems(pod: dict[str, Any], where: str, settings: Settings) -> list[str]:
    """A pod spec's refusals: host namespaces and paths, borrowed service accounts and tokens,
    scheduling onto chosen or tainted nodes or above others, volumes and secrets beyond the pod,
    root and unconfined security settings, and resources above the maxima."""
    found: list[str] = []
    for field, shared in _HOST_NAMESPACES.items():
        if pod.get(field) is True:
            found.append(
                f"{where}.{field} is true: a viewer must not share the node's {shared} namespace; "
                "remove it or set it to false"
            )
    for field in ("serviceAccountName", "serviceAccount"):  # serviceAccount: the deprecated alias
        account = pod.get(field)
        if account is not None and account not in ALLOWED_SERVICE_ACCOUNTS:
            found.append(
                f"{where}.{field} is {account!r}: an embedded viewer runs as the namespace's default "
                f"service account only; remove {field}"
            )
    if pod.get("automountServiceAccountToken") is True:
        found.append(
            f"{where}.automountServiceAccountToken is true: a viewer never talks to the Kubernetes "
            "API; remove it or set it to false"
        )
    found += _scheduling_problems(pod, where)
    found += _security_problems(_mapping(pod.get("securityContext")), f"{where}.securityContext")
    if _mapping(pod.get("securityContext")).get("sysctls"):
        found.append(f"{where}.securityContext.sysctls: kernel settings are not allowed; remove sysctls")
    grace = pod.get("terminationGracePeriodSeconds")
    if grace is not None and not isinstance(grace, int):
        found.append(f"{where}.terminationGracePeriodSeconds is {grace!r}: give whole seconds")
    for i, volume in enumerate(_listed(pod.get("volumes"))):
        found += _volume_problems(_mapping(volume), f"{where}.volumes[{i}]", settings)
    totals = {"cpu": Decimal(0), "memory": Decimal(0)}
    for group in CONTAINER_GROUPS:
        for i, container in enumerate(_listed(pod.get(group))):
            container = _mapping(container)
            path = f"{where}.{group}[{i}]"
            found += _container_problems(container, path, settings)
            # What runs beside the viewer counts toward its share: containers and native sidecars.
            if group == "containers" or container.get("restartPolicy") == "Always":
                for resource, amount in _limits(container, settings).items():
                    totals[resource] += amount
    for resource, limit in (("cpu", settings.max_cpu), ("memory", settings.max_memory)):
        one_too_large = any(f"resources.limits.{resource} " in problem for problem in found)
        if totals[resource] > parse_quantity(limit) and not one_too_large:
            found.append(
                f"{where}.containers[*].resources.limits.{resource}: together "
                f"{_shown(totals[resource], resource)} exceeds the maximum {limit} "
                f"(setting CXG_MAX_{resource.upper()}); ask for less"
            )
    return found


def _shown(amount: Decimal, resource: str) -> str:
    if resource == "memory":
        return f"{amount / 2**20:.0f}Mi"
    return f"{amount.normalize():f}"


def _scheduling_problems(pod: dict[str, Any], where: str) -> list[str]:
    """A viewer goes where the scheduler puts it, among ordinary pods: not onto a node of the
    client's choice, not onto nodes tainted to keep workloads off, not ahead of the cluster's own."""
    found: list[str] = []
    if pod.get("nodeName"):
        found.append(f"{where}.nodeName is {pod['nodeName']!r}: the scheduler places viewers; remove nodeName")
    for i, toleration in enumerate(_listed(pod.get("tolerations"))):
        if not _mapping(toleration).get("key"):
            found.append(
                f"{where}.tolerations[{i}] has no key, so it tolerates every taint of every node; "
                "name the taint's key or remove the toleration"
            )
    priority = pod.get("priorityClassName")
    if isinstance(priority, str) and priority.startswith("system-"):
        found.append(
            f"{where}.priorityClassName is {priority!r}: system priorities are for the cluster's own "
            "components; remove priorityClassName"
        )
    if pod.get("runtimeClassName"):
        found.append(
            f"{where}.runtimeClassName is {pod['runtimeClassName']!r}: viewers run in the cluster's "
            "default runtime; remove runtimeClassName"
        )
    return found


def _security_problems(security: dict[str, Any], where: str) -> list[str]:
    """Settings of a pod's or a container's securityContext that ``restricted`` refuses."""
    found: list[str] = []
    if security.get("runAsUser") == 0:
        found.append(f"{where}.runAsUser is 0: viewers do not run as root; remove it or give a non-zero user id")
    if security.get("runAsNonRoot") is False:
        found.append(f"{where}.runAsNonRoot is false: viewers do not run as root; remove it or set it to true")
    for field in ("seccompProfile", "appArmorProfile"):
        if _mapping(security.get(field)).get("type") == "Unconfined":
            found.append(
                f"{where}.{field}.type is 'Unconfined': viewers run confined; remove {field} or set "
                "its type to RuntimeDefault"
            )
    selinux = _mapping(security.get("seLinuxOptions"))
    for field in ("user", "role"):
        if selinux.get(field):
            found.append(
                f"{where}.seLinuxOptions.{field} is set: custom SELinux users and roles are not allowed; remove it"
            )
    if selinux.get("type", "") not in ALLOWED_SELINUX_TYPES:
        found.append(
            f"{where}.seLinuxOptions.type is {selinux['type']!r}: only "
            f"{', '.join(t for t in ALLOWED_SELINUX_TYPES if t)} are allowed; remove it"
        )
    if _mapping(security.get("windowsOptions")).get("hostProcess") is True:
        found.append(f"{where}.windowsOptions.hostProcess is true: host processes are not allowed; remove it")
    return found


def _volume_problems(volume: dict[str, Any], where: str, settings: Settings) -> list[str]:
    kinds = [key for key in volume if key != "name"]
    found: list[str] = []
    for kind in kinds:
        if kind == "hostPath":
            found.append(
                f"{where}.hostPath: directories of the node are not allowed; use an emptyDir (the pod "
                "fetches its data from S3) instead"
            )
        elif kind not in ALLOWED_VOLUMES:
            found.append(
                f"{where}.{kind}: a viewer's volumes are {', '.join(ALLOWED_VOLUMES)} only (its data "
                f"comes from S3 through the {settings.aws_secret} Secret); remove the volume"
            )
    for j, source in enumerate(_listed(_mapping(volume.get("projected")).get("sources"))):
        for kind in _mapping(source):
            if kind not in ALLOWED_PROJECTIONS:
                found.append(
                    f"{where}.projected.sources[{j}].{kind}: projected volumes may hold "
                    f"{' and '.join(ALLOWED_PROJECTIONS)} only; remove it"
                )
    size = _mapping(volume.get("emptyDir")).get("sizeLimit")
    if size is not None and _quantity_over(size, settings.data_volume_limit):
        found.append(
            f"{where}.emptyDir.sizeLimit {size} exceeds the maximum {settings.data_volume_limit} "
            "(setting CXG_DATA_VOLUME_LIMIT); ask for less"
        )
    return found


def _quantity_over(value: Any, limit: str) -> bool:
    try:
        return bool(parse_quantity(value) > parse_quantity(limit))
    except ValueError:
        return True


def _container_problems(container: dict[str, Any], where: str, settings: Settings) -> list[str]:
    found: list[str] = []
    security = _mapping(container.get("securityContext"))
    if security.get("privileged") is True:
        found.append(
            f"{where}.securityContext.privileged is true: privileged containers are not allowed; "
            "remove it or set it to false"
        )
    if security.get("allowPrivilegeEscalation") is True:
        found.append(
            f"{where}.securityContext.allowPrivilegeEscalation is true: a viewer must not gain "
            "privileges; remove it or set it to false"
        )
    added = _mapping(security.get("capabilities")).get("add")
    if added:
        found.append(
            f"{where}.securityContext.capabilities.add is {added!r}: added capabilities are not "
            "allowed; remove capabilities.add (drop: [ALL] is what a viewer needs)"
        )
    if security.get("procMount") not in (None, "Default"):
        found.append(f"{where}.securityContext.procMount is {security['procMount']!r}: remove it")
    found += _security_problems(security, f"{where}.securityContext")
    for j, port in enumerate(_listed(container.get("ports"))):
        if _mapping(port).get("hostPort"):
            found.append(
                f"{where}.ports[{j}].hostPort is {_mapping(port)['hostPort']}: ports of the node are "
                "not allowed (the viewer is reached through its Service and Ingress); remove hostPort"
            )
    for j, var in enumerate(_listed(container.get("env"))):
        ref = _mapping(_mapping(_mapping(var).get("valueFrom")).get("secretKeyRef"))
        if ref and ref.get("name") != settings.aws_secret:
            found.append(_secret_problem(f"{where}.env[{j}].valueFrom.secretKeyRef.name", ref.get("name"), settings))
    for j, source in enumerate(_listed(container.get("envFrom"))):
        ref = _mapping(_mapping(source).get("secretRef"))
        if ref and ref.get("name") != settings.aws_secret:
            found.append(_secret_problem(f"{where}.envFrom[{j}].secretRef.name", ref.get("name"), settings))
    for kind in ("limits", "requests"):
        for resource, amount in _mapping(_mapping(container.get("resources")).get(kind)).items():
            limit = {"cpu": settings.max_cpu, "memory": settings.max_memory}.get(resource)
            if limit is not None and _quantity_over(amount, limit):
                found.append(
                    f"{where}.resources.{kind}.{resource} {amount} exceeds the maximum {limit} "
                    f"(setting CXG_MAX_{resource.upper()}); ask for less"
                )
    return found


def _secret_problem(where: str, name: Any, settings: Settings) -> str:
    return (
        f"{where} is {name!r}: a viewer reads only the S3 credentials Secret {settings.aws_secret!r} "
        "(setting CXG_AWS_SECRET); remove the reference"
    )


def _limits(container: dict[str, Any], settings: Settings) -> dict[str, Decimal]:
    """The container's CPU and memory limits as :func:`harden_pod` leaves them."""
    resources = _container_resources(_mapping(container.get("resources")), settings)
    out = {}
    for resource, amount in resources["limits"].items():
        try:
            out[resource] = parse_quantity(amount)
        except ValueError:
            out[resource] = Decimal(0)  # refused by _container_problems already
    return out


def _container_resources(resources: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Requests and limits both set: a limit the client left out is its request, else the
    default; a request left out is the limit (as the API server would default it)."""
    out = copy.deepcopy(resources)
    limits = out.setdefault("limits", {})
    requests = out.setdefault("requests", {})
    for resource, default in (("cpu", settings.default_cpu), ("memory", settings.default_memory)):
        limits.setdefault(resource, requests.get(resource, default))
        requests.setdefault(resource, limits[resource])
    return out


def _hardened_security(security: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(security)
    out["allowPrivilegeEscalation"] = False
    capabilities = out.setdefault("capabilities", {})
    capabilities["drop"] = sorted({*(_listed(capabilities.get("drop"))), "ALL"})
    capabilities.pop("add", None)
    out.setdefault("runAsNonRoot", True)
    return out


def harden_pod(pod: dict[str, Any], settings: Settings, uid: int) -> dict[str, Any]:
    """The client's pod spec with the operator's values where it left them out or set them
    harmlessly high: non-root (user ``uid`` when none is given), RuntimeDefault seccomp, no
    privilege escalation, every capability dropped, no service account token, requests and
    limits on every container, a sizeLimit on every emptyDir, a grace period of at most
    termination_grace_period. Call it on a spec :func:`pod_problems` accepted."""
    out = copy.deepcopy(pod)
    security = out.setdefault("securityContext", {})
    security["runAsNonRoot"] = True
    security.setdefault("runAsUser", uid)
    security.setdefault("runAsGroup", uid)
    security.setdefault("fsGroup", uid)
    security.setdefault("seccompProfile", {"type": "RuntimeDefault"})
    out["automountServiceAccountToken"] = False
    grace = out.get("terminationGracePeriodSeconds")
    limit = settings.termination_grace_period
    out["terminationGracePeriodSeconds"] = limit if grace is None else max(0, min(grace, limit))
    for group in CONTAINER_GROUPS:
        for container in _listed(out.get(group)):
            if not isinstance(container, dict):
                continue
            container["securityContext"] = _hardened_security(_mapping(container.get("securityContext")))
            if group != "ephemeralContainers":
                container["resources"] = _container_resources(_mapping(container.get("resources")), settings)
    for volume in _listed(out.get("volumes")):
        if isinstance(volume, dict) and isinstance(volume.get("emptyDir"), dict):
            volume["emptyDir"].setdefault("sizeLimit", settings.data_volume_limit)
        elif isinstance(volume, dict) and "emptyDir" in volume:
            volume["emptyDir"] = {"sizeLimit": settings.data_volume_limit}
    return out
