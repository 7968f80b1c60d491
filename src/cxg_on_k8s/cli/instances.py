"""The instance commands: render, deploy (and watch until Ready), list, describe, delete, cleanup."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.live import Live
from rich.table import Table

from cxg_on_k8s.api import model
from cxg_on_k8s.cli.common import (
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    OUTPUT_HELP,
    Context,
    Kubeconfig,
    Namespace,
    Output,
    age,
    connect,
    console,
    emit,
    fail,
    settings_or_exit,
    table,
    target,
    write,
    write_line,
    yaml_text,
)
from cxg_on_k8s.k8s.client import ApiError, K8ApiHandler
from cxg_on_k8s.render import viewer
from cxg_on_k8s.render.plan import Refusal, plan_instance

Owner = Annotated[str | None, typer.Option(help="the user's OIDC identity (e-mail); portal form.")]
Dataset = Annotated[str | None, typer.Option(help="s3://bucket/key.h5ad or https://...; portal form.")]


def render(
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="a SingleUserInstance YAML file (either form); '-' reads stdin.")
    ] = None,
    owner: Owner = None,
    dataset: Dataset = None,
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
            raise fail(f"SingleUserInstance {name}: {validation_text(exc)}", EXIT_USAGE) from None
    else:
        raise fail("give --file FILE, or --owner and --dataset", EXIT_USAGE)
    meta = body.setdefault("metadata", {})
    meta["name"] = name or meta.get("name") or viewer.new_instance_name()
    meta["namespace"] = namespace or meta.get("namespace") or settings.namespace
    try:
        parsed = model.SingleUserInstanceSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        raise fail(f"SingleUserInstance {meta['name']}: {validation_text(exc)}", EXIT_USAGE) from None
    try:
        plan = plan_instance(meta["name"], meta["namespace"], meta.get("labels") or {}, parsed, settings)
    except Refusal as refusal:
        raise fail(str(refusal), EXIT_USAGE) from None
    for note in plan.ignored:
        console.print(f"note: not applied: {note}", markup=False, highlight=False)
    if plan.open_access:
        console.print(f"warning: every signed-in user may open it: {plan.open_access}", markup=False, highlight=False)
    write(yaml_text(body, *plan.children))  # `| kubectl apply -f -` parses it


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


def validation_text(exc: ValidationError) -> str:
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


def deploy(
    owner: Owner = None,
    dataset: Dataset = None,
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
    output: Annotated[Output, typer.Option("--output", "-o", help=f"table (the URL), {OUTPUT_HELP}")] = Output.table,
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
        raise fail(f"SingleUserInstance {name}: {validation_text(exc)}", EXIT_USAGE) from None
    except OSError as exc:
        raise fail(f"cannot read --template {template}: {exc}", EXIT_USAGE) from None
    handler = connect(kubeconfig, context, settings)  # only once the input is known to be good
    try:
        handler.create_custom_resource(body)
    except ApiError as exc:
        raise fail(str(exc), EXIT_USAGE if exc.status == 422 else EXIT_FAILED) from None
    console.print(f"created SingleUserInstance {settings.namespace}/{name}", markup=False)
    final = watch_until_ready(handler, name, timeout) if wait else handler.get_instance(name)
    status = final.get("status", {})
    if output == Output.table:
        write_line(status.get("url") or viewer.instance_url(name, settings))
    else:
        emit(final, output)
    if wait and status.get("phase") != model.Phase.READY.value:
        raise typer.Exit(EXIT_FAILED)


def watch_until_ready(handler: K8ApiHandler, name: str, timeout: float) -> dict[str, Any]:
    """Live view (on stderr) of phase and Events until Ready, Failed or the timeout, refreshed on
    every change of the instance (a watch: no polling)."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    phase = model.Phase.PENDING.value
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        try:
            for body in handler.watch_instance(name, timeout):
                status = body.get("status") or {}
                phase = status.get("phase") or model.Phase.PENDING.value
                progress = Table(title=f"{name}: {phase}", show_edge=False)
                progress.add_column("event")
                progress.add_column("message")
                for event in handler.list_events(name)[-8:]:
                    progress.add_row(event.reason or "", event.message or "")
                remaining = max(0.0, deadline - time.monotonic())
                progress.caption = f"{status.get('message', 'waiting for the operator')} — {remaining:.0f} s left"
                live.update(progress)
                if phase in (model.Phase.READY.value, model.Phase.FAILED.value):
                    return body
        except ApiError as exc:
            if exc.status == 404:
                raise fail(
                    f"SingleUserInstance {handler.namespace}/{name} disappeared while waiting", EXIT_NOT_FOUND
                ) from None
            raise fail(str(exc)) from None
    raise fail(
        f"SingleUserInstance {handler.namespace}/{name} not Ready after {timeout:.0f} s (phase {phase}); "
        f"see `cxg-k8s describe {name}`",
        EXIT_TIMEOUT,
    )


LIST_COLUMNS = ("NAME", "OWNER", "PHASE", "URL", "AGE", "EXPIRES")


def list_instances(
    output: Annotated[Output, typer.Option("--output", "-o", help=OUTPUT_HELP)] = Output.table,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Name, owner, phase, URL, age and expiry of every instance, each value whole (as kubectl)."""
    _, handler = target(namespace, kubeconfig, context)
    try:
        items = handler.list_instances()
    except ApiError as exc:
        raise fail(str(exc)) from None
    if output != Output.table:
        emit(items, output)
        return
    rows = []
    for item in items:
        status = item.get("status", {})
        rows.append(
            [
                item["metadata"]["name"],
                item["spec"].get("owner", "(embedded)"),
                status.get("phase", ""),
                status.get("url", ""),
                age(item["metadata"].get("creationTimestamp")),
                status.get("expiresAt", ""),
            ]
        )
    write(table(LIST_COLUMNS, rows))


def describe(
    name: str,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """The instance, its status and its Events."""
    settings, handler = target(namespace, kubeconfig, context)
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
    write("".join(f"{event.type:8} {event.reason:16} {event.message}\n" for event in handler.list_events(name)))


def delete(
    name: str,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Delete one instance; its pod saves the user's data before it stops."""
    settings, handler = target(namespace, kubeconfig, context)
    try:
        found = handler.delete_instance(name)
    except ApiError as exc:
        raise fail(str(exc)) from None
    if not found:
        raise fail(
            f"SingleUserInstance {settings.namespace}/{name} not found; `cxg-k8s list` shows what exists",
            EXIT_NOT_FOUND,
        )
    console.print(f"deleted SingleUserInstance {settings.namespace}/{name}", markup=False)


def cleanup(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation.")] = False,
    namespace: Namespace = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
) -> None:
    """Delete every instance (and by ownership every child) labelled app=cellxgene."""
    settings, handler = target(namespace, kubeconfig, context)
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
