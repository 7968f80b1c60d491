"""What a viewer pod's status means for its instance: a pure function, tested without a cluster."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cxg_on_k8s.api.model import Phase

# Waiting reasons that do not heal by waiting: the spec or the cluster set-up must change.
FATAL_WAITING = {
    "CreateContainerConfigError": "a Secret or ConfigMap the pod needs is missing (is the AWS secret created?)",
    "InvalidImageName": "the image name is invalid (check the image settings)",
    "ErrImageNeverPull": "the image is not on the node (load it, or change imagePullPolicy)",
}


# Restarts of a crash-looping viewer before its instance is Failed: one or two may be a node's
# hiccup; a viewer that cannot start fails the same way every time.
CRASH_RESTARTS = 3


def pod_phase(pod: Mapping[str, Any]) -> tuple[Phase | None, str]:
    """(Ready | Failed | None, message). None: nothing new to say (still starting)."""
    status = pod.get("status") or {}
    for container in status.get("initContainerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated and terminated.get("exitCode", 0) != 0:
            return Phase.FAILED, _step_failed(container.get("name"), terminated)
        last = (container.get("lastState") or {}).get("terminated") or {}
        if container.get("name") == "fetch" and last.get("exitCode", 0) != 0 and last:
            return Phase.FAILED, _step_failed("fetch", last)
    for container in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in FATAL_WAITING:
            return (
                Phase.FAILED,
                f"container {container.get('name')}: {reason}: {FATAL_WAITING[reason]}. {waiting.get('message', '')}".strip(),
            )
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        last = (container.get("lastState") or {}).get("terminated") or {}
        if waiting.get("reason") == "CrashLoopBackOff" and container.get("restartCount", 0) >= CRASH_RESTARTS and last:
            detail = (last.get("message") or last.get("reason") or "").strip()
            return Phase.FAILED, (
                f"container {container.get('name')} keeps exiting (exit {last.get('exitCode')}, restarted "
                f"{container.get('restartCount')} times): {detail}"
            ).strip()
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready" and condition.get("status") == "True":
            return Phase.READY, "the viewer is ready"
    return None, ""


def _step_failed(name: str | None, terminated: Mapping[str, Any]) -> str:
    """One wording for a failed init step, whether it failed now or in an earlier restart."""
    detail = (terminated.get("message") or terminated.get("reason") or "").strip()
    return f"{name} step failed (exit {terminated.get('exitCode')}): {detail}"
