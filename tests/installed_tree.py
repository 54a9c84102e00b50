"""Build the installed layout of the source tree as symlinks, for tools that cannot follow a package-dir mapping.

The wheel installs ``flows/`` and ``providers/`` beneath ``broker`` (``[tool.setuptools] package-dir``), and the
editable install maps them with an import hook. mypy and import-linter read folders, not hooks: they check this tree
instead, whose files are links to the sources, so their reports name the same lines.

    python -m tests.installed_tree .layout   # then: mypy -p broker / lint-imports, from .layout
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """Each installed package's source folder, from pyproject.toml (the one place the mapping is written)."""
    settings = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = settings["package-dir"]
    return {name: root / folder for name, folder in mapping.items()}


def build(target: Path, root: Path = ROOT) -> Path:
    """Mirror every mapped package under ``target`` (replaced wholesale), linking each file to its source."""
    shutil.rmtree(target, ignore_errors=True)
    for package, source in sorted(package_dirs(root).items()):
        destination = target.joinpath(*package.split("."))
        for path in source.rglob("*"):
            if "__pycache__" in path.parts or path.is_dir():
                continue
            link = destination / path.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    return target


if __name__ == "__main__":
    print(build(Path(sys.argv[1]).resolve()))
