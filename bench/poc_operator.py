"""The proof of concept's operator, rebuilt for the benchmark's baseline (not for use).

What the PoC did, kept here on purpose because the bench measures it:

* the client rendered the Deployment, Service and Ingress and embedded them in the spec
  (``spec.deployment``, ``spec.service``, ``spec.ingress``, with the shared ``app=cellxgene``
  selector); ``@kopf.on.create`` adopts and creates the three, one API call each;
* every instance has two ``@kopf.timer(interval=tick)``: one checks the lifespan; the other,
  an ``async`` handler that blocks the event loop while it works, first asks where the metrics
  are (the PoC ran ``nslookup`` of the in-cluster metrics Service and fell back to
  localhost:10254), then fetches the *whole* ingress-nginx metrics page and scans its text for its
  own Ingress's request counters: N instances make N lookups, N fetches and N scans of a page
  that grows with N, every tick (O(N²)), all on the one event loop that also runs the create
  handlers and the watches: past a few hundred instances it starves them;
* kopf's default settings (posting handler Events at INFO, sync handlers in the default
  executor), a module-level Kubernetes client.

The lookup is a stand-in: ``getent hosts localhost`` (a process, as nslookup is, answered from
/etc/hosts) instead of a DNS query, which would leave the machine. Two PoC defects are *not*
carried because they would change behaviour, not cost: ages use ``total_seconds()`` (the PoC's
``timedelta.seconds`` dropped the days), and there is no finalizer to block deletion.
The scan is a regular expression over the text, not prometheus_client's parser: with the parser
this rebuild spent ~0.3 s a timer at N=100 and created 6 of 100 instances in 5 minutes, where the
PoC's own file had all 100 Ready in 14.6 s and spent 0.81 s of CPU a tick (the issue's
measurements); bench/RESULTS.md compares the two. Run: ``kopf run --standalone --namespace NS bench/poc_operator.py`` with
``K8_SUI_OP_TICK`` (seconds), ``K8_SUI_OP_TO_UNVIS`` and ``CXG_METRICS_URL`` set.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
from typing import Any

import kopf
import kubernetes
import requests

TICK = float(os.environ.get("K8_SUI_OP_TICK", "60"))
TO_UNVIS = int(os.environ.get("K8_SUI_OP_TO_UNVIS", "300"))
METRICS_URL = os.environ.get("CXG_METRICS_URL", "http://localhost:10254/metrics")
RESOURCE = ("cnag.eu", "v1", "singleuserinstances")

kubernetes.config.load_kube_config()
APPS = kubernetes.client.AppsV1Api()
CORE = kubernetes.client.CoreV1Api()
NETWORKING = kubernetes.client.NetworkingV1Api()
CUSTOM = kubernetes.client.CustomObjectsApi()


@kopf.on.create(*RESOURCE)
def create_fn(spec: kopf.Spec, namespace: str, logger: Any, **_: Any) -> None:
    """Adopt and create the three client-rendered children."""
    deployment, service, ingress = (dict(spec[k]) for k in ("deployment", "service", "ingress"))
    kopf.adopt([deployment, service, ingress])
    APPS.create_namespaced_deployment(namespace, deployment)
    CORE.create_namespaced_service(namespace, service)
    NETWORKING.create_namespaced_ingress(namespace, ingress)
    logger.info("children created")


def age_of(meta: kopf.Meta) -> float:
    created = dt.datetime.fromisoformat(meta["creationTimestamp"])
    return (dt.datetime.now(dt.UTC) - created).total_seconds()


def delete(name: str, namespace: str) -> None:
    CUSTOM.delete_namespaced_custom_object(*RESOURCE[:2], namespace, RESOURCE[2], name)


@kopf.timer(*RESOURCE, interval=TICK)
def lifespan_fn(spec: kopf.Spec, meta: kopf.Meta, name: str, namespace: str, logger: Any, **_: Any) -> None:
    """The first timer, per instance: the lifespan."""
    if age_of(meta) > int(spec.get("lifespan", 28800)):
        delete(name, namespace)
        logger.info("deleted: lifespan exceeded")


@kopf.timer(*RESOURCE, interval=TICK)
async def visits_fn(meta: kopf.Meta, name: str, namespace: str, logger: Any, **_: Any) -> None:
    """The second timer, per instance: where the metrics are, then the whole page for this one
    Ingress; blocking calls in an async handler, as the PoC made them."""
    subprocess.run(["getent", "hosts", "localhost"], capture_output=True, check=False)  # noqa: ASYNC221
    page = requests.get(METRICS_URL, timeout=5).text  # noqa: ASYNC210
    series = rf'_requests{{[^}}]*ingress="{re.escape(name)}",[^}}]*namespace="{re.escape(namespace)}"[^}}]*}} (\S+)'
    visits = sum(float(value) for value in re.findall(series, page))
    if not visits and age_of(meta) > TO_UNVIS:
        delete(name, namespace)
        logger.info("deleted: never visited")
