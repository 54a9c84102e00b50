"""``broker exec NAME [-- CMD ...]``: run CMD (default: your shell) with the provider's variables set.

The daemon decides what the child gets (``POST /v1/exec``, see ``broker.proxy_api``):
by default a key of its own on the auth proxy, valid for as long as the child runs,
so tokens that expire or keys that rotate never stop it. The child's environment
loses every other credential, base URL and header set (``broker.envvars``). The key
goes through the environment, never argv, and the child replaces this process
(``execvpe``), so signals, the pid and the exit status are its own. As in a shell, a
command that is not found exits 127, one that cannot run 126.
"""

from __future__ import annotations

import argparse
import os
import sys

from broker.cli.connect import client
from broker.cli.envvars import child_environment, variables
from broker.client import quote
from broker.core.machine import machine_id

NOT_FOUND, CANNOT_RUN = 127, 126


def run(args: argparse.Namespace) -> int:
    argv = list(args.argv) or [user_shell()]
    via = "proxy" if args.proxy else "direct" if args.direct else "auto"
    body = {"via": via, "machine": machine_id(), **({"account": args.account} if args.account else {})}
    with client(args) as daemon:
        answer = daemon.request("POST", f"/v1/exec/{quote(args.provider)}", body)
    try:
        os.execvpe(argv[0], argv, child_environment(os.environ, variables(answer)))  # noqa: S606 - the point
    except FileNotFoundError:
        print(f"broker: {argv[0]}: command not found", file=sys.stderr)
        return NOT_FOUND
    except PermissionError:
        print(f"broker: {argv[0]}: permission denied", file=sys.stderr)
        return CANNOT_RUN


def user_shell() -> str:
    """``$SHELL``, else the login shell, else ``/bin/sh`` (what aws-vault starts)."""
    shell = os.environ.get("SHELL")
    if shell:
        return shell
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_shell or "/bin/sh"
    except KeyError:
        return "/bin/sh"
