"""The proof of concept's operator design, rebuilt for the benchmark's baseline (not for use).

What the PoC did, kept here on purpose because the bench measures it:

* the client rendered the Deployment, Service and Ingress and embedded them in the spec
  (``spec.deployment``, ``spec.service``, ``spec.ingress``, with the shared ``app=cellxgene``
  selector); ``@kopf.on.create`` adopts and creates the three, one API call each;
* every instance has its own ``@kopf.timer(interval=tick)`` that checks the lifespan and then
  fetches the *whole* ingress-nginx metrics page and parses it (prometheus_client's parser) to
  find its own Ingress: N instances make N scrapes and N parses of a page that grows with N,
  every tick (O(N²));
* kopf's default settings (posting handler Events at INFO, sync handlers in the default
  executor), a module-level Kubernetes client.

Two PoC defects are *not* carried because they would change behaviour, not cost: ages use
``total_seconds()`` (the PoC's ``timedelta.seconds`` dropped the days), and there is no finalizer
to block deletion. Run: ``kopf run --standalone --namespace NS bench/poc_operator.py`` with
``K8_SUI_OP_TICK`` (seconds), ``K8_SUI_OP_TO_UNVIS`` and ``CXG_METRICS_URL`` set.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import kopf
import kubernetes
import requests
from prometheus_client.parser import text_string_to_metric_families

TICK = float(os.environ.get("K8_SUI_OP_TICK", "60"))
TO_UNVIS = int(os.environ.get("K8_SUI_OP_TO_UNVIS", "300"))
METRICS_URL = os.environ.get("CXG_METRICS_URL", "http://localhost:10254/metrics")

kubernetes.config.load_kube_config()
APPS = kubernetes.client.AppsV1Api()
CORE = kubernetes.client.CoreV1Api()
NETWORKING = kubernetes.client.NetworkingV1Api()
CUSTOM = kubernetes.client.CustomObjectsApi()


@kopf.on.create("cnag.eu", "v1", "singleuserinstances")
def create_fn(spec: kopf.Spec, namespace: str, logger: Any, **_: Any) -> None:
    """Adopt and create the three client-rendered children."""
    deployment, service, ingress = (dict(spec[k]) for k in ("deployment", "service", "ingress"))
    kopf.adopt([deployment, service, ingress])
    APPS.create_namespaced_deployment(namespace, deployment)
    CORE.create_namespaced_service(namespace, service)
    NETWORKING.create_namespaced_ingress(namespace, ingress)
    logger.info("children created")


@kopf.timer("cnag.eu", "v1", "singleuserinstances", interval=TICK)
def check_fn(spec: kopf.Spec, meta: kopf.Meta, name: str, namespace: str, logger: Any, **_: Any) -> None:
    """Per instance, every tick: lifespan, then the whole metrics page for this one Ingress."""
    created = dt.datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00"))
    age = (dt.datetime.now(dt.UTC) - created).total_seconds()
    if age > int(spec.get("lifespan", 28800)):
        CUSTOM.delete_namespaced_custom_object("cnag.eu", "v1", namespace, "singleuserinstances", name)
        return
    page = requests.get(METRICS_URL, timeout=5).text
    visits = sum(
        sample.value
        for family in text_string_to_metric_families(page)
        for sample in family.samples
        if sample.name.startswith("nginx_ingress_controller_requests")
        and sample.labels.get("ingress") == name and sample.labels.get("namespace") == namespace
    )
    if not visits and age > TO_UNVIS:
        CUSTOM.delete_namespaced_custom_object("cnag.eu", "v1", namespace, "singleuserinstances", name)
        logger.info("deleted: never visited")
