"""Committed files that are generated from the code must equal what the code generates now.

The CRD (plain install and Helm chart), the kustomize manifests, and the README's tables of
settings and spec fields: edit the model or the builders, run the generator, commit both.
"""

from __future__ import annotations

import re
import subprocess
import sys

import yaml

from cxg_on_k8s import docs
from cxg_on_k8s.api import crd, model
from cxg_on_k8s.docs import settings_table
from cxg_on_k8s.settings import Settings
from tests.conftest import REPO

# Both committed copies (manifests/ and the chart's crds/) equal spec.crd(): render-manifests.py
# --check compares them byte for byte, so only what the API-server tests rely on is checked here.
CRD_FILE = REPO / "manifests" / "crd_single-user-instance.yaml"


def test_committed_crd_carries_the_cel_rules_and_printer_columns() -> None:
    """What the API-server tests rely on is in the file users apply, not only in the model."""
    crd_file = yaml.safe_load(CRD_FILE.read_text())
    version = crd_file["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert schema["x-kubernetes-validations"][0]["rule"] == crd.FORM_RULE
    assert schema["properties"]["owner"]["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Owner", "Phase", "URL", "Expires", "Age"]
    assert crd_file["spec"]["names"]["shortNames"] == ["sui", "suis"]


def run_check(script: str) -> subprocess.CompletedProcess[str]:
    """``scripts/<script> --check``: each script is the one definition of "in sync"."""
    command = [sys.executable, str(REPO / "scripts" / script), "--check"]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_render_manifests_check_passes() -> None:
    result = run_check("render-manifests.py")
    assert result.returncode == 0, f"render-manifests.py --check failed:\n{result.stderr}"
    assert "in sync" in result.stdout


def test_readme_tables_are_generated_from_settings_and_the_model() -> None:
    """The README's settings and SingleUserInstance tables are what render-docs.py writes: the
    script is the one definition of "in sync", so the test runs it rather than re-implementing it."""
    result = run_check("render-docs.py")
    assert result.returncode == 0, f"render-docs.py --check failed (run it without --check):\n{result.stderr}"


def test_settings_table_lists_every_setting_with_its_default_and_legacy_name() -> None:
    table = settings_table()
    for name, field in Settings.model_fields.items():
        assert f"`CXG_{name.upper()}`" in table, name
    assert "`CXG_TICK` (or `K8_SUI_OP_TICK`) | `60.0`" in table
    assert "`CXG_UNVISITED_TIMEOUT` (or `K8_SUI_OP_TO_UNVIS`) | `300`" in table
    assert len(table.splitlines()) == 2 + len(Settings.model_fields)


def test_spec_table_lists_every_spec_field_once() -> None:
    table = docs.spec_reference_table()
    rows = table.splitlines()[2:]
    fields = [re.match(r"\| `([^`]+)` \|", row).group(1) for row in rows]  # type: ignore[union-attr]
    expected = ["spec." + (f.alias or n) for n, f in model.SingleUserInstanceSpec.model_fields.items()]
    assert [f for f in fields if f.count(".") == 1] == expected
    assert {"spec.resources.cpu", "spec.resources.memory"} <= set(fields)
    flavor = next(row for row in rows if row.startswith("| `spec.flavor`"))
    assert "`cellxgene-vip`" in flavor and "| `cellxgene` |" in flavor
    for row in rows:
        assert row.count(" | ") == 3, f"a cell breaks the table: {row}"
        assert "<" not in row, f"raw angle brackets vanish when rendered: {row}"
