"""docker/cellxgene/prefix-patch.py: what the viewer images change in cellxgene's web client.

The browser test (test_signin_on_node.py) shows the patched client working under a prefix with no failed
request; these tests pin down the patch itself: what it changes, that it is idempotent, and that
it refuses files it does not know rather than half-patching them.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "docker" / "cellxgene" / "prefix-patch.py"


def load_patch() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prefix_patch", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


patch = load_patch()
PAGE = (
    '<head><title>x</title><script defer src="static/main-1.js"></script>'
    '<script defer src="obsolete.js"></script><link href="static/main-1.css" rel="stylesheet"></head>'
)
BUNDLE = 'a.createElement("img",{src:"../static/assets/icon-abc.png",height:t})'


def test_page_loses_obsolete_js_and_names_an_icon_under_the_prefix() -> None:
    patched = patch.patch_page(PAGE, "icon-abc.png")
    assert "obsolete.js" not in patched
    assert patched.endswith('<link rel="icon" href="static/assets/icon-abc.png"></head>')
    assert patch.patch_page(patched, "icon-abc.png") == patched


def test_bundle_logo_becomes_relative_to_the_page() -> None:
    patched = patch.patch_bundle(BUNDLE)
    assert '"static/assets/icon-abc.png"' in patched and "../static" not in patched
    assert patch.patch_bundle(patched) == patched


@pytest.mark.parametrize("bundle", ["no logo at all", BUNDLE + BUNDLE], ids=["missing", "twice"])
def test_an_unknown_bundle_is_refused_not_half_patched(bundle: str) -> None:
    with pytest.raises(patch.PatchError, match="expected"):
        patch.patch_bundle(bundle)


def test_the_script_leaves_the_patched_test_venv_as_it_is() -> None:
    venv = subprocess.run(
        ["bash", str(REPO / "scripts" / "cellxgene-venv.sh")], capture_output=True, text=True, timeout=1800
    )
    assert venv.returncode == 0, venv.stderr
    python = Path(venv.stdout.strip()) / "bin" / "python"
    again = subprocess.run([str(python), str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert (again.returncode, again.stderr) == (0, "")


def test_the_script_outside_cellxgene_says_so() -> None:
    run = subprocess.run(["python3", "-I", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "cellxgene is not installed" in run.stderr
