"""``cxg-k8s``: launch, watch, list and clean up viewers; install and run the operator.

The typer app and its command table; the commands live in ``cli.instances`` (render, deploy,
list, describe, delete, cleanup) and ``cli.install`` (install, uninstall, operator,
keycloak-setup), what they share in ``cli.common``; the small file converters are here.

Exit codes (documented in the README and in ``--help``):
0 success · 1 the operation failed (API error, instance Failed) · 2 bad usage or input ·
3 timed out waiting · 4 not found.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from cxg_on_k8s import envfile
from cxg_on_k8s.api import crd
from cxg_on_k8s.cli import install as install_commands
from cxg_on_k8s.cli import instances
from cxg_on_k8s.cli.common import EXIT_USAGE, fail, write, write_line, yaml_text
from cxg_on_k8s.cli.install import crd_objects, install_objects
from cxg_on_k8s.render.yaml_text import py_to_yaml, yaml_to_py

__all__ = ["app", "crd_objects", "install_objects", "main"]

app = typer.Typer(
    help="Personal cellxgene viewers on Kubernetes. Exit codes: 0 ok, 1 failed, 2 bad input, 3 timed out, 4 not found.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def read_env_file() -> None:
    """Read the PoC's .env in the current directory (variables already set win)."""
    try:
        envfile.load(".env")
    except (envfile.EnvFileError, OSError) as exc:
        raise fail(f"cannot read .env: {exc}", EXIT_USAGE) from None


# The command table, in the order `--help` lists them.
app.command()(instances.render)
app.command()(instances.deploy)
app.command("list")(instances.list_instances)
app.command()(instances.describe)
app.command()(instances.delete)
app.command()(instances.cleanup)
app.command("install")(install_commands.install)
app.command()(install_commands.uninstall)
app.command()(install_commands.operator)
app.command("keycloak-setup")(install_commands.keycloak_setup)


@app.command("yaml-to-py")
def yaml_to_py_command(file: Path) -> None:
    """Print a YAML manifest as a Python dict (the PoC's yaml_to_py.py)."""
    try:
        write_line(yaml_to_py(file.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise fail(f"cannot convert {file}: {exc}", EXIT_USAGE) from None


@app.command("py-to-yaml")
def py_to_yaml_command(file: Path) -> None:
    """Print a Python dict literal (a file) as YAML."""
    try:
        write(py_to_yaml(file.read_text()))
    except (OSError, ValueError, SyntaxError) as exc:
        raise fail(f"cannot convert {file}: {exc}", EXIT_USAGE) from None


@app.command(name="crd")
def print_crd() -> None:
    """Print the CRD generated from the spec model."""
    write(yaml_text(crd.definition()))


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
