"""Sample instances in both forms (``manifests/templates/``), the embedded one exactly as the proof
of concept's clients render it.
"""

from __future__ import annotations

from typing import Any

from cxg_on_k8s.render.viewer import (
    ANNOTATIONS_FILE,
    APP_LABEL,
    DATA_DIR,
    GENE_SETS_FILE,
    VIEWER_PORT,
    Manifest,
    aws_env,
    instance,
    instance_body,
    route,
)
from cxg_on_k8s.settings import Settings

SAMPLE_OWNER = "alice@example.org"


SAMPLE_DATASET = "s3://cellxgene/datasets/pbmc3k.h5ad"


POC_AWS_CLI_IMAGE = "aws-cli:1.46.3"


def sample_portal_instance(settings: Settings, name: str = "cellxgene-example-portal") -> Manifest:
    """What the portal creates: the owner and the dataset; the operator renders the rest."""
    return instance(name, settings.namespace, SAMPLE_OWNER, SAMPLE_DATASET, lifespan=3600, title="PBMC 3k")


def poc_embedded_spec(
    name: str, namespace: str, owner: str, dataset_id: str, settings: Settings, lifespan: int = 3600
) -> dict[str, Any]:
    """The embedded form as the proof of concept's client rendered it: an aws-cli init container
    syncs ``s3://<bucket>/cxg_on_k8/<user>/<dataset>/`` to /data, cellxgene serves it on 5005, a
    preStop hook uploads the annotations and gene sets back. Two changes a client should make
    now: ``spec.owner`` names the user (the PoC named them in its Ingress's auth-url, which the
    operator still reads) and the Ingress is a plain one (the operator renders its own route and
    reports a client's annotations as ignored). The operator relabels the three so that each
    instance selects only its own pods."""
    prefix = f"s3://{settings.s3_bucket}/{settings.user_data_prefix}/{owner}/{dataset_id}/"

    def poc_labels() -> dict[str, str]:  # the PoC's one shared label (fresh dicts: no YAML anchors)
        return {"app": APP_LABEL}

    def data() -> list[dict[str, str]]:
        return [{"name": "data", "mountPath": DATA_DIR}]

    upload = f"aws s3 cp {ANNOTATIONS_FILE} {prefix}annotations.csv; aws s3 cp {GENE_SETS_FILE} {prefix}gene_sets.csv"
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": poc_labels()},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": poc_labels()},
            "template": {
                "metadata": {"labels": poc_labels()},
                "spec": {
                    "initContainers": [
                        {
                            "name": "fetch",
                            "image": POC_AWS_CLI_IMAGE,
                            "command": ["aws", "s3", "sync", prefix, f"{DATA_DIR}/"],
                            "env": aws_env(settings),
                            "volumeMounts": data(),
                        }
                    ],
                    "containers": [
                        {
                            "name": "cellxgene",
                            "image": settings.cellxgene_image,
                            "command": [
                                "cellxgene",
                                "launch",
                                "--verbose",
                                "-p",
                                str(VIEWER_PORT),
                                "--host",
                                "0.0.0.0",
                                f"{DATA_DIR}/{dataset_id}",
                                "--annotations-file",
                                ANNOTATIONS_FILE,
                                "--gene-sets-file",
                                GENE_SETS_FILE,
                            ],
                            "ports": [{"containerPort": VIEWER_PORT}],
                            "env": aws_env(settings),
                            "volumeMounts": data(),
                            "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", upload]}}},
                        }
                    ],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": poc_labels()},
        "spec": {"selector": poc_labels(), "ports": [{"port": VIEWER_PORT, "targetPort": VIEWER_PORT}]},
    }
    ingress_doc = route(name, namespace, settings.model_copy(update={"edge": "ingress"}))
    ingress_doc["metadata"]["labels"] = poc_labels()
    ingress_doc["spec"]["rules"][0]["http"]["paths"][0]["backend"] = {
        "service": {"name": name, "port": {"number": VIEWER_PORT}}
    }
    return {
        "lifespan": lifespan,
        "owner": owner,
        "deployment": deployment,
        "service": service,
        "ingress": ingress_doc,
    }


def sample_embedded_instance(settings: Settings, name: str = "cellxgene-example-embedded") -> Manifest:
    """An embedded-form instance as the proof of concept's clients created them."""
    spec = poc_embedded_spec(name, settings.namespace, SAMPLE_OWNER, "pbmc3k.h5ad", settings)
    return instance_body(name, settings.namespace, spec)
