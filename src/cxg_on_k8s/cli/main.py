"""``cxg-k8s``: launch, watch, list and clean up viewers; install and run the operator.

Exit codes (documented in the README and in ``--help``):
0 success · 1 the operation failed (API error, instance Failed) · 2 bad usage or input ·
3 timed out waiting · 4 not found.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from kubernetes.client import ApiClient
from pydantic import ValidationError
from rich.console import Console
from rich.live import Live
from rich.table import Table

from cxg_on_k8s import envfile
from cxg_on_k8s.api import crd, model
from cxg_on_k8s.k8s.client import ApiError, K8ApiHandler, load_client
from cxg_on_k8s.render import edge_signin, install, viewer
from cxg_on_k8s.render.plan import Refusal, plan_instance
from cxg_on_k8s.render.yaml_text import py_to_yaml, yaml_to_py
from cxg_on_k8s.settings import DEFAULT_OPERATOR_IMAGE, Settings, SettingsError

EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_NOT_FOUND = 1, 2, 3, 4

app = typer.Typer(
    help="Personal cellxgene viewers on Kubernetes. Exit codes: 0 ok, 1 failed, 2 bad input, 3 timed out, 4 not found.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# soft_wrap: lines are never broken at the terminal's width, so a field path or a name in a
# message (or a URL in a listing) can be copied whole, as kubectl prints them.
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


@app.callback()
def read_env_file() -> None:
    """Read the PoC's .env in the current directory (variables already set win)."""
    try:
        envfile.load(".env")
    except (envfile.EnvFileError, OSError) as exc:
        raise fail(f"cannot read .env: {exc}", EXIT_USAGE) from None


class Output(str, Enum):
    table = "table"
    yaml = "yaml"
    json = "json"


Kubeconfig = Annotated[
    str | None,
    typer.Option(help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, the PoC's .env variables, in-cluster)."),
]
Context = Annotated[str | None, typer.Option(help="kubeconfig context.")]
Namespace = Annotated[
    str | None, typer.Option("--namespace", "-n", help="namespace of the instances (default: setting CXG_NAMESPACE).")
]


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def settings_or_exit(**overrides: Any) -> Settings:
    try:
        return Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        raise fail(str(exc), EXIT_USAGE) from None


def connect(kubeconfig: str | None, context: str | None, settings: Settings) -> K8ApiHandler:
    return K8ApiHandler(client=client_or_exit(kubeconfig, context), namespace=settings.namespace)


def client_or_exit(kubeconfig: str | None, context: str | None) -> ApiClient:
    """The cluster client, or exit 2 saying how to give credentials: every command that talks to
    the cluster, the typed handler's and the dynamic client's alike, fails the same readable way."""
    try:
        return load_client(kubeconfig, context)
    except Exception as exc:  # noqa: BLE001  config loading raises many types; all mean "cannot connect"
        raise fail(
            f"cannot load cluster credentials ({exc}); pass --kubeconfig, set KUBECONFIG, or the PoC's "
            "K8_IP/K8_PORT/ACCOUNT_TOKEN/CLUSTER_ROOT_CERTIFICATE",
            EXIT_USAGE,
        ) from None


def emit(data: Any, output: Output) -> None:
    if output == Output.json:
        out.print_json(json.dumps(data, default=str))
    else:
        out.print(yaml.safe_dump(data, sort_keys=False), end="", markup=False, highlight=False)


def age(timestamp: str | None) -> str:
    if not timestamp:
        return ""
    from cxg_on_k8s.culling.decision import format_age
    from cxg_on_k8s.k8s.client import parse_time

    moment = parse_time(timestamp)
    return format_age(max(0.0, time.time() - moment.timestamp())) if moment else ""


@app.command()
def render(
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="a SingleUserInstance YAML file (either form); '-' reads stdin.")
    ] = None,
    owner: Annotated[str | None, typer.Option(help="the user's OIDC identity (e-mail); portal form.")] = None,
    dataset: Annotated[str | None, typer.Option(help="s3://bucket/key.h5ad or https://...; portal form.")] = None,
    name: Annotated[
        str | None, typer.Option(help="instance name (default: the file's, else cellxgene-<uuid4>).")
    ] = None,
    namespace: Namespace = None,
    lifespan: Annotated[int | None, typer.Option(help="seconds.")] = None,
) -> None:
    """Print the instance and the children the operator would create, through the operator's own
    code path; nothing is applied and no cluster is needed. A refused instance prints the
    operator's message and exits 2. Notes (what was not applied, open access) go to stderr."""
    settings = settings_or_exit(namespace=namespace)
    if file is not None:
        body = _read_instance(file)
    elif owner and dataset:
        try:
            body = viewer.instance(
                name or viewer.new_instance_name(),
                settings.namespace,
                owner,
                dataset,
                **({"lifespan": lifespan} if lifespan else {}),
            )
        except ValidationError as exc:
            raise fail(f"SingleUserInstance {name}: {_validation_text(exc)}", EXIT_USAGE) from None
    else:
        raise fail("give --file FILE, or --owner and --dataset", EXIT_USAGE)
    meta = body.setdefault("metadata", {})
    meta["name"] = name or meta.get("name") or viewer.new_instance_name()
    meta["namespace"] = namespace or meta.get("namespace") or settings.namespace
    try:
        parsed = model.SingleUserInstanceSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        raise fail(f"SingleUserInstance {meta['name']}: {_validation_text(exc)}", EXIT_USAGE) from None
    try:
        plan = plan_instance(meta["name"], meta["namespace"], meta.get("labels") or {}, parsed, settings)
    except Refusal as refusal:
        raise fail(str(refusal), EXIT_USAGE) from None
    for note in plan.ignored:
        console.print(f"note: not applied: {note}", markup=False, highlight=False)
    if plan.open_access:
        console.print(f"warning: every signed-in user may open it: {plan.open_access}", markup=False, highlight=False)
    # Machine output: plain text, never wrapped or styled, so `| kubectl apply -f -` parses it.
    sys.stdout.write(yaml.safe_dump_all([body, *plan.children], sort_keys=False))


def _read_instance(file: Path) -> dict[str, Any]:
    """The SingleUserInstance in ``file`` (or stdin for '-'), or exit 2 naming what is wrong."""
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text()
        body = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise fail(f"cannot read {file}: {exc}", EXIT_USAGE) from None
    if not isinstance(body, dict) or body.get("kind") != model.KIND:
        raise fail(
            f"{file}: not a {model.KIND} (kind: {model.KIND}, apiVersion: {model.API_VERSION}, metadata, spec)",
            EXIT_USAGE,
        )
    return body


def _validation_text(exc: ValidationError) -> str:
    """Each problem as ``spec.field[i] = 'value': what is wrong (what the field takes)``, in the
    API server's field style: pydantic's message says what broke, the field's description says
    what would be accepted."""
    fields = {info.alias or name: info for name, info in model.SingleUserInstanceSpec.model_fields.items()}
    problems = []
    for error in exc.errors():
        path = "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        given = error.get("input")
        shown = f" = {given!r}" if isinstance(given, str | int | float) else ""
        field = fields.get(str(error["loc"][0])) if error["loc"] else None
        takes = f" ({field.description})" if field and field.description else ""
        problems.append(f"{path}{shown}: {error['msg']}{takes}")
    return "; ".join(problems)


@app.command()
def deploy(
    owner: Annotated[str | None, typer.Option(help="the user's OIDC identity (e-mail); portal form.")] = None,
    dataset: Annotated[str | None, typer.Option(help="s3://bucket/key.h5ad or https://...; portal form.")] = None,
    template: Annotated[
        Path | None, typer.Option(help="YAML of an embedded-form spec (lifespan, deployment, service, ingress).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="instance name (default cellxgene-<uuid4>).")] = None,
    lifespan: Annotated[int | None, typer.Option(help="seconds (default: setting).")] = None,
    title: Annotated[str | None, typer.Option(help="title shown by cellxgene.")] = None,
    allowed_group: Annotated[
        list[str] | None, typer.Option(help="an OIDC group whose members may open it too (repeatable).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="wait with live progress until Ready.")] = True,
    timeout: Annotated[float, typer.Option(help="seconds to wait for Ready.")] = 300,
    with_oauth2_proxy: Annotated[bool, typer.Option(help="create oauth2-proxy first if absent.")] = True,
    output: Annotated[Output, typer.Option("--output", "-o", help="table, yaml or json.")] = Output.table,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Create a viewer for OWNER on DATASET, wait until it is Ready and print its URL."""
    settings = settings_or_exit(namespace=namespace)
    name = name or viewer.new_instance_name()
    try:
        if template:
            spec = yaml.safe_load(template.read_text())
            model.SingleUserInstanceSpec.model_validate(spec)
            body = viewer.instance_body(name, settings.namespace, spec)
        elif owner and dataset:
            given = {"lifespan": lifespan, "title": title, "allowedGroups": allowed_group or None}
            fields = {k: v for k, v in given.items() if v is not None}
            body = viewer.instance(name, settings.namespace, owner, dataset, **fields)
        else:
            raise fail("give --owner and --dataset (portal form) or --template (embedded form)", EXIT_USAGE)
    except ValidationError as exc:
        raise fail(f"SingleUserInstance {name}: {_validation_text(exc)}", EXIT_USAGE) from None
    except OSError as exc:
        raise fail(f"cannot read --template {template}: {exc}", EXIT_USAGE) from None
    handler = connect(kubeconfig, context, settings)
    try:
        if with_oauth2_proxy:
            ensure_oauth2_proxy(handler, settings)
        handler.create_custom_resource(body)
    except ApiError as exc:
        raise fail(str(exc), EXIT_USAGE if exc.status == 422 else EXIT_FAILED) from None
    console.print(f"created SingleUserInstance {settings.namespace}/{name}")
    final = watch_until_ready(handler, name, timeout) if wait else handler.get_instance(name)
    status = final.get("status", {})
    if output == Output.table:
        out.print(status.get("url") or viewer.instance_url(name, settings), markup=False, highlight=False)
    else:
        emit(final, output)
    if wait and status.get("phase") != model.Phase.READY.value:
        raise typer.Exit(EXIT_FAILED)


def ensure_oauth2_proxy(handler: K8ApiHandler, settings: Settings) -> None:
    """Create oauth2-proxy (and its cookie secret, generated once) when absent, as the PoC did."""
    cookie = edge_signin.oauth2_proxy_cookie_secret(settings, secrets.token_urlsafe(32)[:32])
    created = [handler.create_if_absent(obj) for obj in [cookie, *edge_signin.oauth2_proxy(settings)]]
    if any(created):
        console.print(f"created oauth2-proxy in namespace {settings.oauth2_proxy_namespace}")


def watch_until_ready(handler: K8ApiHandler, name: str, timeout: float) -> dict[str, Any]:
    """Live view of phase and Events until Ready, Failed or the timeout."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while True:
            try:
                body = handler.get_instance(name)
            except ApiError as exc:
                if exc.status == 404:
                    raise fail(
                        f"SingleUserInstance {handler.namespace}/{name} disappeared while waiting", EXIT_NOT_FOUND
                    ) from None
                raise fail(str(exc)) from None
            status = body.get("status", {})
            phase = status.get("phase") or model.Phase.PENDING.value
            table = Table(title=f"{name}: {phase}", show_edge=False)
            table.add_column("event")
            table.add_column("message")
            for event in handler.list_events(name)[-8:]:
                table.add_row(event.reason or "", event.message or "")
            remaining = deadline - time.monotonic()
            table.caption = f"{status.get('message', 'waiting for the operator')} — {max(0, remaining):.0f} s left"
            live.update(table)
            if phase in (model.Phase.READY.value, model.Phase.FAILED.value):
                return body
            if remaining <= 0:
                raise fail(
                    f"SingleUserInstance {handler.namespace}/{name} not Ready after {timeout:.0f} s (phase {phase}); "
                    f"see `cxg-k8s describe {name}`",
                    EXIT_TIMEOUT,
                )
            time.sleep(1)


@app.command("list")
def list_instances(
    output: Annotated[Output, typer.Option("--output", "-o")] = Output.table,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Name, owner, phase, URL, age and expiry of every instance."""
    settings = settings_or_exit(namespace=namespace)
    try:
        items = connect(kubeconfig, context, settings).list_instances()
    except ApiError as exc:
        raise fail(str(exc)) from None
    if output != Output.table:
        emit(items, output)
        return
    table = Table("NAME", "OWNER", "PHASE", "URL", "AGE", "EXPIRES")
    for item in items:
        status = item.get("status", {})
        table.add_row(
            item["metadata"]["name"],
            item["spec"].get("owner", "(embedded)"),
            status.get("phase", ""),
            status.get("url", ""),
            age(item["metadata"].get("creationTimestamp")),
            status.get("expiresAt", ""),
        )
    out.print(table)


@app.command()
def describe(
    name: str,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """The instance, its status and its Events."""
    settings = settings_or_exit(namespace=namespace)
    handler = connect(kubeconfig, context, settings)
    try:
        body = handler.get_instance(name)
    except ApiError as exc:
        raise fail(str(exc), EXIT_NOT_FOUND if exc.status == 404 else EXIT_FAILED) from None
    emit(
        {
            "metadata": {"name": name, "namespace": settings.namespace},
            "spec": body.get("spec"),
            "status": body.get("status"),
        },
        Output.yaml,
    )
    for event in handler.list_events(name):
        out.print(f"{event.type:8} {event.reason:16} {event.message}", markup=False, highlight=False)


@app.command()
def delete(
    name: str,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Delete one instance; its pod saves the user's data before it stops."""
    settings = settings_or_exit(namespace=namespace)
    try:
        found = connect(kubeconfig, context, settings).delete_instance(name)
    except ApiError as exc:
        raise fail(str(exc)) from None
    if not found:
        raise fail(
            f"SingleUserInstance {settings.namespace}/{name} not found; `cxg-k8s list` shows what exists",
            EXIT_NOT_FOUND,
        )
    console.print(f"deleted SingleUserInstance {settings.namespace}/{name}")


@app.command()
def cleanup(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation.")] = False,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Delete every instance (and by ownership every child) labelled app=cellxgene."""
    settings = settings_or_exit(namespace=namespace)
    handler = connect(kubeconfig, context, settings)
    items = [
        i["metadata"]["name"]
        for i in handler.list_instances()
        if i["metadata"].get("labels", {}).get("app") == viewer.APP_LABEL
    ]
    if not items:
        console.print("nothing to clean up")
        return
    if not yes and not typer.confirm(f"delete {len(items)} instance(s) in namespace {settings.namespace}?"):
        raise typer.Exit(EXIT_FAILED)
    for name in items:
        handler.delete_instance(name)
    console.print(f"deleted {len(items)} instance(s)")


def install_objects(settings: Settings, image: str) -> list[dict[str, Any]]:
    """What `install` applies, in order: namespace, the CRDs (this project's and kopf's peering
    CRD), RBAC, the ingress-nginx metrics Service (when metrics_service names one), operator."""
    metrics = [install.ingress_metrics_service(settings)] if settings.metrics_service else []
    return [
        install.namespace(settings.namespace),
        crd.definition(),
        install.kopf_peering_crd(),
        *install.operator_rbac(settings),
        *install.portal_rbac(settings),
        *metrics,
        install.operator_deployment(settings, image),
    ]


def crd_objects() -> list[dict[str, Any]]:
    """`install --crd-only`: what an operator run from a laptop needs, peering included."""
    return [crd.definition(), install.kopf_peering_crd()]


@app.command(name="install")
def install_command(
    image: Annotated[str, typer.Option(help="operator image.")] = DEFAULT_OPERATOR_IMAGE,
    crd_only: Annotated[bool, typer.Option(help="install only the CRD (to run the operator locally).")] = False,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Install (or update) the CRD, the RBAC and the operator Deployment (server-side apply)."""
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import DynamicApiError

    settings = settings_or_exit()
    objects = crd_objects() if crd_only else install_objects(settings, image)
    dynamic = DynamicClient(client_or_exit(kubeconfig, context))
    for obj in objects:
        resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        meta = obj["metadata"]
        try:
            resource.server_side_apply(
                body=obj,
                name=meta["name"],
                namespace=meta.get("namespace"),
                field_manager="cxg-k8s",
                force_conflicts=True,
            )
        except DynamicApiError as exc:
            raise fail(f"applying {obj['kind']} {meta['name']}: {exc.summary()}") from None
        console.print(
            f"applied {obj['kind']} {meta.get('namespace', '') + '/' if meta.get('namespace') else ''}{meta['name']}"
        )
    if crd_only:
        for obj in objects:
            wait_crd_established(dynamic, obj["metadata"]["name"])


def wait_crd_established(dynamic: Any, name: str = model.CRD_NAME, timeout: float = 30) -> None:
    crds = dynamic.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # A just-created CRD's status (and its conditions) may be null, not absent.
        conditions = (crds.get(name=name).to_dict().get("status") or {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            return
        time.sleep(0.2)
    raise fail(f"CRD {name} not Established after {timeout:.0f} s", EXIT_TIMEOUT)


@app.command()
def uninstall(
    yes: Annotated[bool, typer.Option("--yes", "-y")] = False,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Remove the operator, its RBAC and the CRD (which deletes every instance).

    The namespace stays, and so does kopf's peering CRD, which other kopf operators may share."""
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

    settings = settings_or_exit()
    if not yes and not typer.confirm("this deletes the CRD and with it every SingleUserInstance; continue?"):
        raise typer.Exit(EXIT_FAILED)
    dynamic = DynamicClient(client_or_exit(kubeconfig, context))
    kept = {("Namespace", settings.namespace), ("CustomResourceDefinition", install.KOPF_PEERING_CRD_NAME)}
    objects = [o for o in install_objects(settings, "unused") if (o["kind"], o["metadata"]["name"]) not in kept]
    for obj in [install.kopf_peering(settings), *reversed(objects)]:
        try:
            resource = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        except ResourceNotFoundError:  # the KopfPeering kind, when its CRD is not installed
            continue
        try:
            resource.delete(name=obj["metadata"]["name"], namespace=obj["metadata"].get("namespace"))
            console.print(f"deleted {obj['kind']} {obj['metadata']['name']}")
        except NotFoundError:
            pass


@app.command()
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

    settings = settings_or_exit()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO)
    asyncio.run(kopf.operator(namespaces=[settings.namespace], standalone=standalone, liveness_endpoint=liveness))


GROUPS_MAPPER_HELP = (
    "fill the groups claim with the user's groups, own e-mail and own username (what allowedGroups "
    "and the embedded form's user label need); --no-groups-mapper removes the three mappers."
)


@app.command("keycloak-setup")
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
    out.print(report.summary(), markup=False, highlight=False)
    out.print(f"client id: {report.client_id}", markup=False, highlight=False)
    if write_secret:
        handler = connect(kubeconfig, context, settings)
        secret = edge_signin.oauth2_proxy_client_secret_manifest(settings, report.client_id, report.client_secret)
        _apply_secret(handler, secret)
        console.print(
            f"client secret stored in Secret {settings.oauth2_proxy_namespace}/{settings.oauth2_proxy_client_secret}"
        )


def _apply_secret(handler: K8ApiHandler, secret: dict[str, Any]) -> None:
    meta = secret["metadata"]
    if not handler.create_if_absent(secret):
        handler.core.patch_namespaced_secret(meta["name"], meta["namespace"], secret)


@app.command("yaml-to-py")
def yaml_to_py_command(file: Path) -> None:
    """Print a YAML manifest as a Python dict (the PoC's yaml_to_py.py)."""
    try:
        out.print(yaml_to_py(file.read_text()), markup=False, highlight=False)
    except (OSError, yaml.YAMLError) as exc:
        raise fail(f"cannot convert {file}: {exc}", EXIT_USAGE) from None


@app.command("py-to-yaml")
def py_to_yaml_command(file: Path) -> None:
    """Print a Python dict literal (a file) as YAML."""
    try:
        out.print(py_to_yaml(file.read_text()), end="", markup=False, highlight=False)
    except (OSError, ValueError, SyntaxError) as exc:
        raise fail(f"cannot convert {file}: {exc}", EXIT_USAGE) from None


@app.command(name="crd")
def print_crd() -> None:
    """Print the CRD generated from the spec model."""
    out.print(yaml.safe_dump(crd.definition(), sort_keys=False), end="", markup=False, highlight=False)


@app.command()
def userdata(
    args: Annotated[
        list[str], typer.Argument(help="fetch|sync and their options; see `python -m cxg_on_k8s.userdata --help`.")
    ],
) -> None:
    """Fetch or save a user's data (what the viewer pod's data containers run)."""
    from cxg_on_k8s.userdata.command import main as userdata_main

    raise typer.Exit(userdata_main(args))


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
