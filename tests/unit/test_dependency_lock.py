"""uv.lock agrees with pyproject.toml, and the environment running the suite is exactly the lock's.

scripts/test.sh and scripts/run-example.sh install with `uv sync --locked`, which refuses a lock
that pyproject.toml has moved away from; these tests say the same from inside the suite (also in
the quick tier, with no uv on the machine) and check what was actually installed.
"""

from __future__ import annotations

import importlib.metadata
import os
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PROJECT = canonicalize_name("smtp-monitor")
# scripts/test.sh --latest runs the suite on purpose on the newest releases, off the lock.
UNLOCKED = os.environ.get("SMTP_MONITOR_UNLOCKED") == "1"


@dataclass(frozen=True)
class Declared:
    """One requirement as pyproject.toml or the lock's copy of it states it."""

    name: NormalizedName
    specifier: SpecifierSet
    extra: str | None  # None for the runtime set


def _pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    return project


def _lock() -> dict[str, Any]:
    with (ROOT / "uv.lock").open("rb") as f:
        return tomllib.load(f)


def _locked_packages() -> dict[NormalizedName, dict[str, Any]]:
    return {canonicalize_name(p["name"]): p for p in _lock()["package"]}


def declared_in_pyproject() -> set[Declared]:
    project = _pyproject()
    found = {Declared(canonicalize_name(r.name), r.specifier, None) for r in map(Requirement, project["dependencies"])}
    for extra, lines in project.get("optional-dependencies", {}).items():
        found |= {Declared(canonicalize_name(r.name), r.specifier, extra) for r in map(Requirement, lines)}
    return found


def declared_in_lock() -> set[Declared]:
    """The requirements uv resolved the lock from (its copy of pyproject.toml's)."""
    root = _locked_packages()[PROJECT]
    found = set()
    for entry in root["metadata"]["requires-dist"]:
        extra = None
        if "marker" in entry:
            # uv writes an extra's requirement as `extra == 'NAME'` and nothing else
            marker = str(Marker(entry["marker"]))
            assert marker.startswith("extra == "), f"unexpected marker in uv.lock: {marker}"
            extra = marker.split("==", 1)[1].strip().strip("'\"")
        found.add(Declared(canonicalize_name(entry["name"]), SpecifierSet(entry.get("specifier", "")), extra))
    return found


def _dependencies(package: dict[str, Any], extras: Iterable[str]) -> Iterator[dict[str, Any]]:
    yield from package.get("dependencies", [])
    for extra in extras:
        yield from package.get("optional-dependencies", {}).get(extra, [])


def needed_here(extras: Iterable[str]) -> dict[NormalizedName, Version]:
    """Every locked package this interpreter and platform needs for the project with `extras`."""
    packages = _locked_packages()
    needed: dict[NormalizedName, Version] = {}
    pending: list[tuple[NormalizedName, tuple[str, ...]]] = [(PROJECT, tuple(extras))]
    seen: set[tuple[NormalizedName, tuple[str, ...]]] = set()
    while pending:
        name, wanted_extras = pending.pop()
        if (name, wanted_extras) in seen:
            continue
        seen.add((name, wanted_extras))
        package = packages[name]
        needed[name] = Version(package["version"])
        for dependency in _dependencies(package, wanted_extras):
            marker = dependency.get("marker")
            if marker is not None and not Marker(marker).evaluate({"extra": ""}):
                continue
            pending.append((canonicalize_name(dependency["name"]), tuple(dependency.get("extra", ()))))
    return needed


def installed() -> dict[NormalizedName, Version]:
    return {
        canonicalize_name(d.metadata["Name"]): Version(d.version)
        for d in importlib.metadata.distributions()
        if d.metadata["Name"]
    }


def test_pyproject_and_uv_lock_declare_the_same_requirements() -> None:
    in_pyproject, in_lock = declared_in_pyproject(), declared_in_lock()
    assert in_pyproject == in_lock, (
        "pyproject.toml and uv.lock disagree: run ./scripts/lock.sh and commit uv.lock\n"
        f"only in pyproject.toml: {sorted(map(str, in_pyproject - in_lock))}\n"
        f"only in uv.lock: {sorted(map(str, in_lock - in_pyproject))}"
    )


def test_every_locked_direct_dependency_is_inside_its_pyproject_range() -> None:
    packages = _locked_packages()
    outside = [
        f"{d.name} {packages[d.name]['version']} not in {d.specifier}"
        for d in declared_in_pyproject()
        if not d.specifier.contains(packages[d.name]["version"], prereleases=True)
    ]
    assert not outside


def test_the_lock_resolves_for_this_interpreter_with_every_extra() -> None:
    """Walking the lock from the project reaches only packages the lock holds (no dangling name)."""
    extras = tuple(_pyproject().get("optional-dependencies", {}))
    needed = needed_here(extras)
    assert {"pysnmp", "cryptography", "pytest"} <= set(needed)


@pytest.mark.skipif(UNLOCKED, reason="scripts/test.sh --latest runs off the lock on purpose")
def test_the_running_environment_holds_exactly_the_locked_versions() -> None:
    have = installed()
    locked = {name: Version(p["version"]) for name, p in _locked_packages().items()}
    not_locked = sorted(f"{n}=={v}" for n, v in have.items() if locked.get(n) != v)
    assert not not_locked, f"installed but not as uv.lock pins them (install with ./scripts/test.sh): {not_locked}"
    missing = sorted(f"{n}=={v}" for n, v in needed_here(("test",)).items() if have.get(n) != v)
    assert not missing, f"uv.lock's test set is not installed: {missing}"
