"""The security context every container the operator renders gets: what the Pod Security
Standard ``restricted`` asks, and a read-only root, so a viewer writes only to its volumes."""

from __future__ import annotations

from typing import Any

NONROOT_UID = 1000


def container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
