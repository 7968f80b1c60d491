"""Rewrite the README's generated tables (settings, SingleUserInstance reference, module map) from the code.

`--check` exits 1 when the README differs, which is what the test suite asserts.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from cxg_on_k8s.docs import module_table, settings_table, spec_reference_table

README = Path(__file__).resolve().parents[1] / "README.md"


def render(text: str) -> str:
    tables = ("settings-table", settings_table()), ("spec-table", spec_reference_table()), ("module-table", module_table())
    for marker, table in tables:
        pattern = re.compile(rf"(<!-- {marker}:start -->\n).*?(<!-- {marker}:end -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md lacks the markers <!-- {marker}:start --> / <!-- {marker}:end -->")
        text = pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)
    return text


def main() -> int:
    current = README.read_text()
    wanted = render(current)
    if "--check" in sys.argv:
        if current != wanted:
            print("README.md tables differ from the code: run `python scripts/render-docs.py`", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
