"""Real counterparts (providers' CLIs, OpenID servers) that tests run against instead of fakes of our own.

They are installed by ``make peers`` from the pinned lists beside this module. Where one
is missing, its tests skip, unless ``BROKER_REQUIRE_PEERS=1`` (CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NPM_PREFIX = ROOT / ".peers" / "npm"


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


def _missing(reason: str) -> Path:
    if os.environ.get("BROKER_REQUIRE_PEERS") == "1":
        pytest.fail(f"BROKER_REQUIRE_PEERS=1 but {reason}", pytrace=False)
    pytest.skip(reason)
