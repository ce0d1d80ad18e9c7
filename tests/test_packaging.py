"""What a non-editable install carries: every package and data file of the source tree.

An editable install finds new subpackages by itself; ``pip install .`` installs only the
packages listed in pyproject.toml, so a subpackage missing from that list works in every test
and fails on a user's machine (``ModuleNotFoundError``).
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _source_dirs() -> dict[str, Path]:
    """Each installed package name -> its folder in the repository."""
    config = _setuptools()
    roots = {name: ROOT / folder for name, folder in config["package-dir"].items()}
    roots["omixa_client"] = ROOT / "omixa_client"
    found = {}
    for name, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            found[".".join((name, *parts))] = init.parent
    return found


def test_every_package_in_the_tree_is_listed_for_installation():
    assert sorted(_setuptools()["packages"]) == sorted(_source_dirs())


def test_every_data_file_is_covered_by_package_data():
    config = _setuptools()
    packages = _source_dirs()
    data = config["package-data"]
    missing = []
    for name, folder in packages.items():
        for path in folder.rglob("*"):
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            owner = max((p for p in packages if packages[p] in path.parents), key=len)
            relative = path.relative_to(packages[owner]).as_posix()
            if owner == name and not any(fnmatch.fnmatch(relative, glob) for glob in data.get(owner, [])):
                missing.append(f"{owner}: {relative}")
    assert missing == []
