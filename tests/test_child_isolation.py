"""A child process the daemon starts runs broker's own code, whatever directory the daemon runs in.

The refresh helper (``broker.daemon.redeem``) gets the refresh token and the journal key on
stdin. A ``broker/`` package planted in the daemon's working directory (a shared ``/tmp``,
another user's checkout) must never be the code that receives them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, acme_config
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import device_login

PLANTED = """\
import pathlib, sys
pathlib.Path({marker!r}).write_text(sys.stdin.read())
"""


def plant(directory: Path, marker: Path) -> None:
    """A ``broker`` package whose ``daemon.redeem`` module records what it was handed."""
    package = directory / "broker" / "daemon"
    package.mkdir(parents=True)
    (package.parent / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "redeem.py").write_text(PLANTED.format(marker=str(marker)))


def console_script() -> tuple[str, ...]:
    """How a user starts broker: its console script, which puts no working directory on the path."""
    script = Path(sys.executable).with_name("broker")
    if not os.access(script, os.X_OK):
        pytest.skip(f"no console script beside {sys.executable} (make setup installs one)")
    return (str(script),)


def test_a_broker_package_in_the_daemons_directory_never_receives_a_refresh(
    daemon: DaemonProcess, oauth: FakeOAuthServer
):
    cwd, marker = daemon.root / "shared", daemon.root / "planted-ran"
    plant(cwd, marker)
    # The plant works: the old way of starting the helper would have run it.
    subprocess.run([sys.executable, "-m", "broker.daemon.redeem"], cwd=cwd, env=daemon.env, input=b"order", timeout=30)
    assert marker.read_text() == "order"
    marker.unlink()

    daemon.write_config(acme_config(oauth))
    daemon.start(command=console_script(), cwd=cwd)
    device_login(daemon, oauth)
    before = daemon.cli("token", "acme").stdout.strip()
    refreshed = daemon.cli("refresh", "acme")
    assert refreshed.returncode == 0, refreshed.stderr
    after = daemon.cli("token", "acme").stdout.strip()
    assert after != before and oauth.valid_access_token(after)
    assert oauth.grant_counts["refresh_token"] == 1
    assert not marker.exists(), "the planted broker/daemon/redeem.py ran"
