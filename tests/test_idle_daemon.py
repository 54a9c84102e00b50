"""The idle daemon carries only what serving tokens needs: logins, refreshes and keyring load on first use.

The proxy's modules are loaded from the start: ``broker exec``'s leases start it on demand.
"""

from __future__ import annotations

import sys

from tests.conftest import DaemonProcess, acme_config
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import device_login

IMPORT_LOG = (sys.executable, "-X", "importtime", "-m", "broker")
"""``broker serve`` under ``-X importtime``: every import, as it happens, goes to the daemon's log."""
LATER = ("authlib", "keyring", "secretstorage", "jeepney")


def imported(log: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in log.splitlines() if line.startswith("import time:")}


def loaded_of(names: set[str]) -> set[str]:
    return {name for name in names if name in LATER or name.split(".")[0] in LATER}


def test_idle_daemon_loads_no_login_refresh_or_keyring_code(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start({"DBUS_SESSION_BUS_ADDRESS": ""}, command=IMPORT_LOG)  # no session bus: no keyring can answer
    daemon.request("GET", "/v1/providers")
    assert loaded_of(imported(daemon.log())) == set()
    device_login(daemon, oauth)
    assert "authlib" in {name.split(".")[0] for name in imported(daemon.log())}  # the login brought it in
