"""Real counterparts (providers' CLIs, SDKs and agent frameworks, OpenID servers) that tests run against
instead of fakes of our own.

They are installed by ``make peers`` from the pinned lists beside this module: npm packages
into ``.peers/npm``, each PyPI list ``pypi/NAME.txt`` into a virtualenv ``.peers/pypi/NAME``. Where one is missing, its
tests skip, unless ``BROKER_REQUIRE_PEERS=1`` (CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NPM_PREFIX = ROOT / ".peers" / "npm"
PYPI_VENVS = ROOT / ".peers" / "pypi"


def npm_program(name: str) -> Path:
    """The path of an npm peer's program (``node_modules/.bin/NAME``), or a skip / failure when absent."""
    program = NPM_PREFIX / "node_modules" / ".bin" / name
    if program.exists():
        return program
    return _missing(f"{name} is not installed (run: make peers)")


def npm_package(name: str) -> Path:
    """The directory of an installed npm peer package, or a skip / failure when absent."""
    directory = NPM_PREFIX / "node_modules" / name
    if (directory / "package.json").exists() and shutil.which("node"):
        return directory
    return _missing(f"npm package {name} or node is not installed (run: make peers)")


def pypi_program(name: str, venv: str = "clients") -> Path:
    """A program of a PyPI peers' virtualenv (``.peers/pypi/VENV/bin/NAME``; ``python`` runs its libraries)."""
    program = PYPI_VENVS / venv / "bin" / name
    if program.exists():
        return program
    return _missing(f"{name} is not installed in .peers/pypi/{venv} (run: make peers)")


def _missing(reason: str) -> Path:
    if os.environ.get("BROKER_REQUIRE_PEERS") == "1":
        pytest.fail(f"BROKER_REQUIRE_PEERS=1 but {reason}", pytrace=False)
    pytest.skip(reason)
