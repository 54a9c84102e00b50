"""The client path (``broker token|env|exec``) stays on the standard library."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
    assert not any(name.startswith(("broker.daemon", "broker.server", "broker.store")) for name in report["broker"])


MODULES = """
import sys
from broker.cli.main import main
status = main(sys.argv[1:])
print(status, " ".join(sorted(sys.modules)), file=sys.stderr)
"""


def test_token_loads_no_module_beyond_the_floor_but_brokers_own(daemon: DaemonProcess, oauth: FakeOAuthServer):
    # `broker token` is benchmarked against `python -c 'import socket, json'`: any other
    # module it loads (argparse alone is ~2 ms) shows in every `$(broker token x)`.
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    floor = subprocess.run([sys.executable, "-c", "import socket, json, sys; print(' '.join(sys.modules))"],
                           env=daemon.env, capture_output=True, text=True, check=True)  # fmt: skip
    token = subprocess.run(
        [sys.executable, "-c", MODULES, "token", "acme"], env=daemon.env, capture_output=True, text=True
    )
    status, loaded = token.stderr.strip().splitlines()[-1].split(" ", 1)
    assert status == "0"
    extra = set(loaded.split()) - set(floor.stdout.split())
    assert {name for name in extra if not name.startswith("broker")} <= {"__future__"}
