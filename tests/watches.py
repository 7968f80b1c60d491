"""Watches of a namespace's SingleUserInstances that record when (wall clock) each event came:
shared by the culling tests (tests/test_lifecycle.py, tests/test_faults.py) and the culling
bench (bench/culling.py), which reads the same events as timings.

* :class:`InstanceWatch`: every event, for tests that wait for one instance's deletion and read
  its last state (``status.cullReason``);
* :class:`DeletionWatch`: only deletions, for a thousand at once; it resumes from the last
  resourceVersion it saw, so none is missed when the API server ends the watch or restarts.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from kubernetes import watch

from cxg_on_k8s.api import model
from cxg_on_k8s.k8s.client import K8ApiHandler
from tests.conftest import wait_for


class InstanceWatch:
    """Every watch event of the namespace's instances, with the wall-clock time it arrived."""

    def __init__(self, k8s: K8ApiHandler) -> None:
        self.k8s = k8s
        self.seen: list[tuple[float, str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="instance-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        version = None
        while not self._stop.is_set():
            stream = watch.Watch().stream(
                self.k8s.custom.list_namespaced_custom_object,
                model.GROUP, model.VERSION, self.k8s.namespace, model.PLURAL,
                resource_version=version, timeout_seconds=2,
            )  # fmt: skip
            for event in stream:
                if event["type"] == "ERROR":
                    version = None
                    continue
                version = event["object"]["metadata"]["resourceVersion"]
                with self._lock:
                    self.seen.append((time.time(), event["type"], event["object"]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def deleted(self, name: str, timeout: float) -> tuple[float, dict[str, Any]]:
        """(when, last state) of ``name``'s DELETED event."""

        def find() -> tuple[float, dict[str, Any]] | None:
            with self._lock:
                for when, kind, obj in self.seen:
                    if kind == "DELETED" and obj["metadata"]["name"] == name:
                        return when, obj
            return None

        return wait_for(find, timeout, f"{name} to be deleted")

    def was_deleted(self, name: str) -> bool:
        with self._lock:
            return any(k == "DELETED" and o["metadata"]["name"] == name for _, k, o in self.seen)


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
