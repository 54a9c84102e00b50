"""The client path (``broker token|env|exec``) stays on the standard library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from unittest.mock import patch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.client import default_socket_path
from broker.core.errors import ConfigError
from broker.core.locations import socket_path
from tests.conftest import DaemonProcess, acme_config
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import device_login

PROBE = """
import json, os, sys
before = set(sys.modules)
os.execvpe = lambda *args: sys.exit(0)  # exec would replace the process before the report
from broker.cli.main import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit:
    status = exit.code
outside = sorted({n.split('.')[0] for n in set(sys.modules) - before} - set(sys.stdlib_module_names) - {'broker'})
loaded = sorted(name for name in sys.modules if name.startswith('broker'))
print(json.dumps({'status': status, 'outside': outside, 'broker': loaded}), file=sys.stderr)
"""


@pytest.mark.parametrize("command", [["token", "acme"], ["env", "acme"], ["exec", "acme", "--", "true"]])
def test_client_commands_import_only_the_standard_library(
    daemon: DaemonProcess, oauth: FakeOAuthServer, command: list[str]
):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    result = subprocess.run([sys.executable, "-c", PROBE, *command], env=daemon.env, capture_output=True, text=True)
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report["status"] == 0
    assert report["outside"] == []
    assert not any(name.startswith(("broker.daemon", "broker.store", "broker.providers")) for name in report["broker"])


MODULES = """
import sys
from broker.cli.main import main
status = main(sys.argv[1:])
print(status, " ".join(sorted(sys.modules)), file=sys.stderr)
"""


def loaded_by(command: list[str], env: dict[str, str]) -> set[str]:
    """The modules ``broker COMMAND`` has loaded when it ends, which must be with status 0."""
    result = subprocess.run([sys.executable, "-c", MODULES, *command], env=env, capture_output=True, text=True)
    status, loaded = result.stderr.strip().splitlines()[-1].split(" ", 1)
    assert status == "0", result.stderr
    return set(loaded.split())


def settled_client_config(daemon: DaemonProcess) -> dict[str, str]:
    """The daemon's env with its socket named by a config file written a minute ago, not by BROKER_SOCKET."""
    config = daemon.root / "client.toml"
    config.write_text(f'[daemon]\nsocket = "{daemon.socket_path}"\n\n{daemon.config_path.read_text()}')
    written = time.time_ns() - 60 * 1_000_000_000
    os.utime(config, ns=(written, written))
    env = {k: v for k, v in daemon.env.items() if k != "BROKER_SOCKET"}
    return {**env, "BROKER_CONFIG": str(config)}


@pytest.mark.parametrize("named_by", ["BROKER_SOCKET", "config file"])
def test_token_loads_no_module_beyond_the_floor_but_brokers_own(
    daemon: DaemonProcess, oauth: FakeOAuthServer, named_by: str
):
    # `broker token` is benchmarked against `python -c 'import socket, json'`: any other
    # module it loads (argparse alone is ~2 ms, tomllib ~8 ms, each of broker's ~0.2 ms)
    # shows in every `$(broker token x)`. Even `__future__` (~0.2 ms): the modules on this path
    # quote the annotations that name type-only imports instead of importing it.
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    env = daemon.env if named_by == "BROKER_SOCKET" else settled_client_config(daemon)
    floor = subprocess.run([sys.executable, "-c", "import socket, json, sys; print(' '.join(sys.modules))"],
                           env=env, capture_output=True, text=True, check=True)  # fmt: skip
    first = loaded_by(["token", "acme"], env)
    loaded = loaded_by(["token", "acme"], env)  # the config file's socket is remembered by now
    extra = loaded - set(floor.stdout.split())
    assert {name for name in extra if not name.startswith("broker")} == set()
    assert "broker.core.errors" not in loaded  # its classes are 3% of the command: loaded when one is raised
    assert ("tomllib" in first) == (named_by == "config file")
    assert ("broker.core.locations" in loaded) == (named_by == "config file")  # a plain BROKER_SOCKET is taken as is


def test_the_quick_exit_of_broker_token_keeps_its_output_and_status(daemon: DaemonProcess, oauth: FakeOAuthServer):
    # `broker token` leaves through os._exit, skipping Python's teardown: what it printed,
    # on a pipe as in $(...), and its exit status must still all arrive.
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    broker = [sys.executable, "-m", "broker"]
    piped = subprocess.run([*broker, "token", "acme", "--json"], env=daemon.env, capture_output=True, text=True)
    assert piped.returncode == 0 and json.loads(piped.stdout)["access_token"]
    unknown = subprocess.run([*broker, "token", "nobody"], env=daemon.env, capture_output=True, text=True)
    assert unknown.returncode == 2 and unknown.stdout == ""  # unknown_provider's exit status
    assert unknown.stderr.startswith("broker: unknown_provider: no provider named 'nobody'")
    assert "broker providers" in unknown.stderr


@given(st.text(alphabet="/ab~$.{}_é", max_size=12))  # an environment holds no NUL
def test_the_clients_shortcut_for_broker_socket_reads_it_as_the_config_readers_do(tail: str):
    # A plain absolute BROKER_SOCKET skips broker.core.locations; whatever it takes as it is,
    # the full reading ($VARS, ~, errors) must give the same.
    value = "/" + tail
    env = {"BROKER_SOCKET": value, "HOME": "/home/u", "a": "/x"}
    try:
        expected: str | None = socket_path(env)
    except ConfigError:
        expected = None
    with patch.dict(os.environ, env, clear=True):
        try:
            got: str | None = default_socket_path()
        except ConfigError:
            got = None
    assert got == expected
