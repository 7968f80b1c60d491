"""What every ``cxg-k8s`` command shares: exit codes, output, the cluster options and connection.

Two streams, two rules. stdout carries what a user copies or a program reads (URLs, tables,
YAML, JSON, names): it goes out through :func:`write` as plain text, never wrapped, cut or
styled, whatever the terminal's width or whether stdout is one, as kubectl prints. stderr carries
messages for people (progress, notes, errors) through :data:`console`, which may colour them on a
terminal but never breaks a line either, so a field path or a name in a message stays whole.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any

import typer
import yaml
from kubernetes.client import ApiClient
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape

from cxg_on_k8s.api import model
from cxg_on_k8s.k8s.client import K8ApiHandler, load_client
from cxg_on_k8s.settings import Settings, SettingsError

EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_NOT_FOUND = 1, 2, 3, 4

# soft_wrap: lines are never broken at the terminal's width.
console = Console(stderr=True, soft_wrap=True)


class Output(StrEnum):
    table = "table"
    yaml = "yaml"
    json = "json"
    name = "name"


OUTPUT_HELP = "table, yaml, json or name (kind.group/name, as kubectl -o name)."


Kubeconfig = Annotated[
    str | None,
    typer.Option(help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, the PoC's .env variables, in-cluster)."),
]
Context = Annotated[str | None, typer.Option(help="kubeconfig context.")]
Namespace = Annotated[
    str | None, typer.Option("--namespace", "-n", help="namespace of the instances (default: setting CXG_NAMESPACE).")
]


# --- output ------------------------------------------------------------------------------------------


def write(text: str) -> None:
    """Put ``text`` on stdout exactly as it is: the one way anything reaches stdout."""
    sys.stdout.write(text)
    sys.stdout.flush()


def write_line(text: str) -> None:
    write(text if text.endswith("\n") else text + "\n")


def yaml_text(*docs: Any) -> str:
    """YAML documents with no line folded (PyYAML folds long strings at 80 columns by default)
    and non-ASCII text as it is, so that every value can be copied whole."""
    return yaml.safe_dump_all(docs, sort_keys=False, width=float("inf"), allow_unicode=True)


def object_name(body: dict[str, Any]) -> str:
    """``kind.group/name``, what ``kubectl get -o name`` prints and every kubectl verb takes."""
    return f"{model.SINGULAR}.{model.GROUP}/{body['metadata']['name']}"


def emit(data: Any, output: Output) -> None:
    """``data`` (one object or a list of them) as YAML, JSON or names; a table is the caller's."""
    if output == Output.json:
        write_line(json.dumps(data, indent=2, default=str, ensure_ascii=False))
    elif output == Output.name:
        write("".join(object_name(item) + "\n" for item in (data if isinstance(data, list) else [data])))
    else:
        write(yaml_text(data))


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A kubectl-style table: every value whole, each column as wide as its widest value and three
    spaces from the next, so that a narrow terminal wraps lines instead of cutting values."""
    lines = [list(header), *(list(row) for row in rows)]
    widths = [max(cell_len(line[i]) for line in lines) for i in range(len(header))]
    return "".join(
        "   ".join(cell + " " * (width - cell_len(cell)) for cell, width in zip(line, widths, strict=True)).rstrip()
        + "\n"
        for line in lines
    )


def age(timestamp: str | None) -> str:
    if not timestamp:
        return ""
    from cxg_on_k8s.culling.decision import format_age
    from cxg_on_k8s.k8s.client import parse_time

    moment = parse_time(timestamp)
    return format_age(max(0.0, time.time() - moment.timestamp())) if moment else ""


# --- failing, settings and the cluster ------------------------------------------------------------------


def fail(message: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print ``error: message`` on stderr and return the exit to raise; the message is shown as it
    is (a value holding ``[...]`` is not taken for markup)."""
    console.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


def settings_or_exit(**overrides: Any) -> Settings:
    try:
        return Settings.from_env(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        raise fail(str(exc), EXIT_USAGE) from None


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


def connect(kubeconfig: str | None, context: str | None, settings: Settings) -> K8ApiHandler:
    return K8ApiHandler(client=client_or_exit(kubeconfig, context), namespace=settings.namespace)


def target(namespace: str | None, kubeconfig: str | None, context: str | None) -> tuple[Settings, K8ApiHandler]:
    """The settings and the connected handler of a command's ``-n/--kubeconfig/--context``."""
    settings = settings_or_exit(namespace=namespace)
    return settings, connect(kubeconfig, context, settings)
