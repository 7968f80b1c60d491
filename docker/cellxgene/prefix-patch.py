"""Make cellxgene 1.3.0's web client load every file from under the instance's URL prefix.

Each viewer is served at ``https://<host>/<name>/``. The ingress strips ``/<name>``, so everything
works except three requests that leave the prefix or ask for nothing:

- the logo is ``<img src="../static/assets/icon-<hash>.png">`` in the JavaScript bundle: relative
  to the page ``/<name>/`` that is ``/static/...``, outside the prefix, a 404. It becomes
  ``static/assets/...`` (relative to the page, so it is right with or without a prefix);
- ``index.html`` loads ``obsolete.js``, a file the package does not ship (404 with or without a
  prefix): the tag is removed;
- the page names no icon, so browsers ask ``/favicon.ico`` at the host's root, which no Ingress
  serves: the page gets ``<link rel="icon">`` to the logo under the prefix.

The viewer images run this at build time and the test suite's cellxgene venv runs it too
(scripts/cellxgene-venv.sh), so the browser test checks what the images serve. Idempotent: a
patched file is left as it is. It fails, naming the file and the text it looked for, when cellxgene's
files are not the ones it knows, instead of shipping a half-patched client.

Usage: python prefix-patch.py   (with the interpreter of the environment cellxgene is installed in)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

OBSOLETE_TAG = '<script defer src="obsolete.js"></script>'
LOGO_OUTSIDE = '"../static/assets/icon-'
LOGO_INSIDE = '"static/assets/icon-'
HEAD_END = "</head>"


class PatchError(RuntimeError):
    """cellxgene's web files are not the ones this patch was written for."""


def web_dir() -> Path:
    """cellxgene's ``server/common/web``, found without importing the server (and its Flask)."""
    spec = importlib.util.find_spec("server")
    if spec is None or not spec.submodule_search_locations:
        raise PatchError("cellxgene is not installed in this environment (no package 'server')")
    web = Path(next(iter(spec.submodule_search_locations))) / "common" / "web"
    if not (web / "templates" / "index.html").is_file():
        raise PatchError(f"{web}/templates/index.html is missing: is this cellxgene 1.3.0?")
    return web


def one(paths: list[Path], what: str, where: Path) -> Path:
    if len(paths) != 1:
        raise PatchError(f"expected one {what} in {where}, found {[p.name for p in paths]}")
    return paths[0]


def patch_page(page: str, icon: str) -> str:
    """index.html without obsolete.js and with an icon under the prefix."""
    link = f'<link rel="icon" href="static/assets/{icon}">'
    if link in page:
        return page
    if HEAD_END not in page:
        raise PatchError(f"no {HEAD_END} in index.html")
    return page.replace(OBSOLETE_TAG, "").replace(HEAD_END, link + HEAD_END, 1)


def patch_bundle(bundle: str) -> str:
    """The bundle with the logo's path relative to the page."""
    if bundle.count(LOGO_OUTSIDE) == 1:
        return bundle.replace(LOGO_OUTSIDE, LOGO_INSIDE)
    if LOGO_OUTSIDE not in bundle and LOGO_INSIDE in bundle:
        return bundle
    raise PatchError(f"expected {LOGO_OUTSIDE}...png once in the bundle, found it {bundle.count(LOGO_OUTSIDE)} times")


def main() -> int:
    try:
        web = web_dir()
        static = web / "static"
        icon = one(sorted((static / "assets").glob("icon-*.png")), "logo icon-*.png", static / "assets")
        bundle = one(sorted(static.glob("main-*.js")), "bundle main-*.js", static)
        page = web / "templates" / "index.html"
        for path, patch in ((page, lambda text: patch_page(text, icon.name)), (bundle, patch_bundle)):
            text = path.read_text(encoding="utf-8")
            patched = patch(text)
            if patched != text:
                path.write_text(patched, encoding="utf-8")
                print(f"patched {path}", file=sys.stderr)
    except (PatchError, OSError) as exc:
        print(f"prefix-patch: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
