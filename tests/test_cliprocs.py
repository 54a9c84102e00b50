"""Finding a CLI's running processes by name, user and the file their environment points them at."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.followed.cliprocs import running
from broker.followed.codex import PROGRAMS, default_path
from tests.helpers import wait_for


@pytest.fixture
def codex_binary(short_tmp: Path) -> Path:
    """A program named ``codex`` (a copy of sleep): /proc knows it by that name."""
    program = short_tmp / "bin" / "codex"
    program.parent.mkdir()
    shutil.copy(shutil.which("sleep") or "/bin/sleep", program)
    return program


@pytest.fixture
def started(codex_binary: Path, short_tmp: Path) -> Iterator[subprocess.Popen[bytes]]:
    home = short_tmp / "codex-home"
    process = subprocess.Popen([str(codex_binary), "30"], env={"CODEX_HOME": str(home), "HOME": str(short_tmp)})
    # Popen may return (vfork) before the kernel has set the new program's name and environment.
    wait_for(lambda: b"CODEX_HOME=" in Path(f"/proc/{process.pid}/environ").read_bytes())
    yield process
    process.kill()
    process.wait()


def test_a_running_cli_using_the_followed_file_is_found(started: subprocess.Popen[bytes], short_tmp: Path):
    assert started.pid in running(PROGRAMS, default_path, short_tmp / "codex-home" / "auth.json")


def test_a_cli_using_another_file_is_not_counted(started: subprocess.Popen[bytes], short_tmp: Path):
    assert started.pid not in running(PROGRAMS, default_path, short_tmp / "elsewhere" / "auth.json")


def test_other_programs_are_not_counted(started: subprocess.Popen[bytes], short_tmp: Path):
    assert started.pid not in running(("gemini",), default_path, short_tmp / "codex-home" / "auth.json")
