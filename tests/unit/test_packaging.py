"""What the wheel carries: every file of monitor/ that is not Python is declared as package data, or the
installed agent (the container image installs a wheel) would run without it."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_data_file_of_the_package_is_declared_package_data() -> None:
    package_data: dict[str, list[str]] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]
    undeclared = []
    for path in sorted((ROOT / "monitor").rglob("*")):
        if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        relative = path.relative_to(ROOT)
        declared = any(
            fnmatch.fnmatch(str(relative.relative_to(package.replace(".", "/"))), pattern)
            for package, patterns in package_data.items()
            if relative.is_relative_to(package.replace(".", "/"))
            for pattern in patterns
        )
        if not declared:
            undeclared.append(str(relative))
    assert undeclared == []
    assert "monitor.exporters.web" in package_data  # the status page's templates, at least
