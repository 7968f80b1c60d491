"""Committed files that are generated from the code must equal what the code generates now.

The CRD (plain install and Helm chart), the kustomize manifests, and the README's tables of
settings and spec fields: edit the model or the builders, run the generator, commit both.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxg_on_k8s import spec
from cxg_on_k8s.settings import Settings, settings_table

REPO = Path(__file__).resolve().parents[1]
CRD_FILES = [
    REPO / "manifests" / "crd_single-user-instance.yaml",
    REPO / "charts" / "cxg-on-k8s" / "crds" / "crd_single-user-instance.yaml",
]
REGENERATE = "run `.venv/bin/python scripts/render-manifests.py` and commit the result"


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_committed_crd_is_the_generated_one(path: Path) -> None:
    expected = yaml.safe_dump(spec.crd(), sort_keys=False)
    assert path.is_file(), f"{path} is missing: {REGENERATE}"
    assert path.read_text() == expected, f"{path.relative_to(REPO)} drifted from spec.crd(): {REGENERATE}"


def test_committed_crd_carries_the_cel_rules_and_printer_columns() -> None:
    """What the API-server tests rely on is in the file users apply, not only in the model."""
    crd = yaml.safe_load(CRD_FILES[0].read_text())
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert schema["x-kubernetes-validations"][0]["rule"] == spec.FORM_RULE
    assert schema["properties"]["owner"]["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Owner", "Phase", "URL", "Expires", "Age"]
    assert crd["spec"]["names"]["shortNames"] == ["sui", "suis"]


def test_render_manifests_check_passes() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "render-manifests.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert result.returncode == 0, f"render-manifests.py --check failed:\n{result.stderr}"
    assert "in sync" in result.stdout


def readme_section(marker: str) -> str:
    """The text between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` in README.md."""
    readme = REPO / "README.md"
    assert readme.is_file(), "README.md is missing"
    text = readme.read_text()
    found = re.search(rf"<!-- {marker}:start -->\n(.*?)\n?<!-- {marker}:end -->", text, re.S)
    assert found, f"README.md has no <!-- {marker}:start --> ... <!-- {marker}:end --> section"
    return found.group(1).strip()


def test_readme_settings_table_is_generated_from_settings() -> None:
    assert readme_section("settings-table") == settings_table(), (
        "README.md's settings table drifted: paste `python -c 'from cxg_on_k8s.settings import "
        "settings_table; print(settings_table())'` between the settings-table markers"
    )


def test_readme_spec_table_is_generated_from_the_model() -> None:
    assert readme_section("spec-table") == spec.spec_reference_table(), (
        "README.md's SingleUserInstance table drifted: paste `python -c 'from cxg_on_k8s.spec import "
        "spec_reference_table; print(spec_reference_table())'` between the spec-table markers"
    )


def test_settings_table_lists_every_setting_with_its_default_and_legacy_name() -> None:
    table = settings_table()
    for name, field in Settings.model_fields.items():
        assert f"`CXG_{name.upper()}`" in table, name
    assert "`CXG_TICK` (or `K8_SUI_OP_TICK`) | `60.0`" in table
    assert "`CXG_UNVISITED_TIMEOUT` (or `K8_SUI_OP_TO_UNVIS`) | `300`" in table
    assert len(table.splitlines()) == 2 + len(Settings.model_fields)


def test_spec_table_lists_every_spec_field_once() -> None:
    table = spec.spec_reference_table()
    rows = table.splitlines()[2:]
    fields = [re.match(r"\| `([^`]+)` \|", row).group(1) for row in rows]  # type: ignore[union-attr]
    expected = ["spec." + (f.alias or n) for n, f in spec.SingleUserInstanceSpec.model_fields.items()]
    assert [f for f in fields if f.count(".") == 1] == expected
    assert {"spec.resources.cpu", "spec.resources.memory"} <= set(fields)
    flavor = next(row for row in rows if row.startswith("| `spec.flavor`"))
    assert "`cellxgene-vip`" in flavor and "| `cellxgene` |" in flavor
    for row in rows:
        assert row.count(" | ") == 3, f"a cell breaks the table: {row}"
        assert "<" not in row, f"raw angle brackets vanish when rendered: {row}"
