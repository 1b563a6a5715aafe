"""The modules a Python file imports, read from its syntax tree: for the tests that hold the tiers' import rules."""

from __future__ import annotations

import ast
from pathlib import Path


def imported_modules(path: Path, root: Path) -> list[str]:
    """Every module an `import` or `from ... import` in `path` (under `root`) names, relative ones made absolute.

    `from tests import peers` and `from tests.support import certs` name the modules tests.peers and
    tests.support.certs: below those two packages a name imported is a module, not an attribute.
    """
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            names += [f"{base}.{alias.name}" if base in ("tests", "tests.support") else base for alias in node.names]
    return names


def under(module: str, package: str) -> bool:
    """Whether `module` is `package` or inside it."""
    return module == package or module.startswith(package + ".")
