"""The wheel users install holds one top-level package, ``broker``, with every source folder beneath it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.installed_tree import ROOT, package_dirs


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "--wheel-dir", str(out), str(ROOT)], check=True, timeout=300)
    (built,) = out.glob("broker-*.whl")
    return built


def names_in(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_the_wheel_installs_a_single_top_level_package(wheel: Path) -> None:
    tops = {name.split("/")[0] for name in names_in(wheel) if ".dist-info/" not in name and ".data/" not in name}
    assert tops == {"broker"}


def test_every_source_package_is_in_the_wheel_beneath_broker(wheel: Path) -> None:
    shipped = set(names_in(wheel))
    for package, folder in package_dirs().items():
        for init in folder.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            relative = init.relative_to(folder).parent.parts
            inside = "/".join([*package.split("."), *relative, "__init__.py"])
            assert inside in shipped, f"{init.relative_to(ROOT)} is not shipped (add its package to pyproject.toml)"


def test_the_installed_wheel_runs_without_the_checkout(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    modules = "broker.providers.registry, broker.daemon.main, broker.cli.main"
    probe = f"import {modules}; print(broker.providers.registry.__file__)"
    done = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {probe}"],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == str(target / "broker" / "providers" / "registry.py")
