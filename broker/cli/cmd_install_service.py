"""``broker install-service [--uninstall]``: the systemd user units for this installation.

Writes (or removes) ``broker.socket`` and ``broker.service`` in ``~/.config/systemd/user``
and prints the one command that enables (or stops) them; never needs root.
"""

from __future__ import annotations

import argparse
import os
import sys

from broker.cli import service_units
from broker.core.config import default_socket_path, socket_path_from_env
from broker.core.errors import BrokerError


def run(args: argparse.Namespace) -> int:
    directory = service_units.user_unit_dir()
    if args.uninstall:
        removed = service_units.uninstall(directory)
        for path in removed:
            print(f"removed {path}", file=sys.stderr)
        if not removed:
            print(f"no broker units in {directory}", file=sys.stderr)
            return 0
        print("stop the running units with:", file=sys.stderr)
        print(service_units.STOP_COMMAND)
        return 0
    installation = service_units.detect()
    changed = service_units.install(directory, installation)
    state = "wrote" if changed else "unchanged:"
    print(f"{state} {directory / service_units.SOCKET_UNIT}, {directory / service_units.SERVICE_UNIT}", file=sys.stderr)
    print(f"  ExecStart={installation.exec_start} serve ({installation.kind})", file=sys.stderr)
    for warning in _warnings(installation):
        print(f"warning: {warning}", file=sys.stderr)
    print("enable and start the socket with:", file=sys.stderr)
    print(service_units.ENABLE_COMMAND)
    return 0


def _warnings(installation: service_units.Installation) -> list[str]:
    found = []
    if installation.hidden_by_private_tmp:
        found.append("broker is installed under /tmp, which the service's private /tmp hides; install it elsewhere")
    try:
        clients = socket_path_from_env(os.environ)
    except BrokerError:
        return found
    if clients != default_socket_path(os.environ):
        found.append(
            f"clients look for the daemon at {clients} (BROKER_SOCKET or [daemon] socket), "
            "but the socket unit listens at $XDG_RUNTIME_DIR/broker/broker.sock"
        )
    return found
