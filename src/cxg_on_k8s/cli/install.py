"""The cluster-side commands: install and uninstall, run the operator, and set up Keycloak's client."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cxg_on_k8s.api import crd
from cxg_on_k8s.cli.common import (
    EXIT_FAILED,
    EXIT_TIMEOUT,
    Context,
    Kubeconfig,
    client_or_exit,
    connect,
    console,
    fail,
    settings_or_exit,
    write_line,
)
from cxg_on_k8s.k8s.apply import Installer
from cxg_on_k8s.k8s.client import ApiError, K8ApiHandler
from cxg_on_k8s.render import install as builders
from cxg_on_k8s.render import signin
from cxg_on_k8s.settings import DEFAULT_OPERATOR_IMAGE, Settings

CRD_WAIT = 30.0  # seconds for a new CRD to be Established (`install --crd-only`)


def install_objects(settings: Settings, image: str) -> list[dict[str, Any]]:
    """What `install` applies, in order: namespace, the CRDs (this project's and kopf's peering
    CRD), RBAC, the ingress-nginx metrics Service (when metrics_service names one), operator."""
    metrics = [builders.ingress_metrics_service(settings)] if builders.uses_ingress_nginx_metrics(settings) else []
    return [
        builders.namespace(settings.namespace),
        crd.definition(),
        builders.kopf_peering_crd(),
        *builders.operator_rbac(settings),
        *builders.portal_rbac(settings),
        *metrics,
        builders.operator_deployment(settings, image),
    ]


def crd_objects() -> list[dict[str, Any]]:
    """`install --crd-only`: what an operator run from a laptop needs, peering included."""
    return [crd.definition(), builders.kopf_peering_crd()]


def install(
    image: Annotated[str, typer.Option(help="operator image.")] = DEFAULT_OPERATOR_IMAGE,
    crd_only: Annotated[bool, typer.Option(help="install only the CRD (to run the operator locally).")] = False,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Install (or update) the CRD, the RBAC and the operator Deployment (server-side apply).

    What belongs in a namespace that does not exist yet (the ingress-nginx metrics Service and
    the operator's Role there, before ingress-nginx is installed) is skipped with a warning;
    run install again once it exists."""
    settings = settings_or_exit()
    objects = crd_objects() if crd_only else install_objects(settings, image)
    installer = Installer(client_or_exit(kubeconfig, context))
    try:
        missing = installer.missing_namespaces(objects, settings.namespace)
        for obj in objects:
            meta = obj["metadata"]
            where = f"{meta['namespace']}/" if meta.get("namespace") else ""
            if meta.get("namespace") in missing:
                console.print(
                    f"warning: skipped {obj['kind']} {where}{meta['name']}: namespace {meta['namespace']} not found "
                    "(installing ingress-nginx creates it; run `cxg-k8s install` again afterwards)",
                    markup=False,
                    highlight=False,
                )
                continue
            installer.apply(obj)
            console.print(f"applied {obj['kind']} {where}{meta['name']}", markup=False)
        if crd_only:
            for obj in objects:
                if not installer.wait_established(obj["metadata"]["name"], CRD_WAIT):
                    raise fail(f"CRD {obj['metadata']['name']} not Established after {CRD_WAIT:.0f} s", EXIT_TIMEOUT)
    except ApiError as exc:
        raise fail(str(exc)) from None


def uninstall(
    yes: Annotated[bool, typer.Option("--yes", "-y")] = False,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Remove the operator, its RBAC and the CRD (which deletes every instance).

    The namespace stays, and so does kopf's peering CRD, which other kopf operators may share."""
    settings = settings_or_exit()
    if not yes and not typer.confirm("this deletes the CRD and with it every SingleUserInstance; continue?"):
        raise typer.Exit(EXIT_FAILED)
    installer = Installer(client_or_exit(kubeconfig, context))
    kept = {("Namespace", settings.namespace), ("CustomResourceDefinition", builders.KOPF_PEERING_CRD_NAME)}
    objects = [o for o in install_objects(settings, "unused") if (o["kind"], o["metadata"]["name"]) not in kept]
    try:
        for obj in [builders.kopf_peering(settings), *reversed(objects)]:
            if installer.delete(obj):
                console.print(f"deleted {obj['kind']} {obj['metadata']['name']}", markup=False)
    except ApiError as exc:
        raise fail(str(exc)) from None


def operator(
    verbose: Annotated[bool, typer.Option(help="debug logging.")] = False,
    liveness: Annotated[str | None, typer.Option(help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz.")] = None,
    standalone: Annotated[
        bool,
        typer.Option(
            help="no kopf peering: work even while another operator for the namespace runs (default: peer, and pause while one with a higher priority, CXG_PEERING_PRIORITY, runs)."
        ),
    ] = False,
) -> None:
    """Run the operator in the foreground (in a pod, or locally); it pauses while one with a higher peering priority runs."""
    import asyncio
    import logging

    import kopf

    import cxg_on_k8s.controller.handlers  # noqa: F401  (registers the handlers)
    from cxg_on_k8s.controller.malloc import limit_arenas

    settings = settings_or_exit()
    limit_arenas()  # before the operator starts its threads
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO)
    asyncio.run(kopf.operator(namespaces=[settings.namespace], standalone=standalone, liveness_endpoint=liveness))


GROUPS_MAPPER_HELP = (
    "fill the groups claim with the user's groups, own e-mail and own username (what allowedGroups "
    "and the embedded form's user label need); --no-groups-mapper removes the three mappers."
)


def keycloak_setup(
    admin_user: Annotated[str, typer.Option(envvar="KEYCLOAK_ADMIN", help="Keycloak admin user.")] = "admin",
    admin_password: Annotated[
        str,
        typer.Option(envvar="KEYCLOAK_ADMIN_PASSWORD", prompt=True, hide_input=True, help="Keycloak admin password."),
    ] = "",
    groups_mapper: Annotated[bool, typer.Option(help=GROUPS_MAPPER_HELP)] = True,
    admin_realm: Annotated[str, typer.Option(help="realm the admin user belongs to.")] = "master",
    write_secret: Annotated[
        bool, typer.Option(help="store the client id and secret in the oauth2-proxy Secret.")
    ] = True,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Create or update the OIDC client oauth2-proxy signs in with (idempotent)."""
    from cxg_on_k8s.cli.keycloak_setup import KeycloakSetupError, setup_keycloak

    settings = settings_or_exit()
    try:
        report = setup_keycloak(
            settings.keycloak_endpoint,
            settings.keycloak_realm,
            admin_user,
            admin_password,
            settings,
            groups_mapper=groups_mapper,
            admin_realm=admin_realm,
        )
    except KeycloakSetupError as exc:
        raise fail(str(exc)) from None
    write_line(report.summary())
    write_line(f"client id: {report.client_id}")
    if write_secret:
        handler = connect(kubeconfig, context, settings)
        secret = signin.client_secret(settings, report.client_id, report.client_secret)
        _apply_secret(handler, secret)
        console.print(
            f"client secret stored in Secret {settings.namespace}/{settings.oauth2_proxy_client_secret}",
            markup=False,
        )


def _apply_secret(handler: K8ApiHandler, secret: dict[str, Any]) -> None:
    meta = secret["metadata"]
    if not handler.create_if_absent(secret):
        handler.core.patch_namespaced_secret(meta["name"], meta["namespace"], secret)
