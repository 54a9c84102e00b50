"""``broker env NAME``: ``unset`` and ``export`` lines for a shell's ``eval``; ``--proxy`` for the auth proxy's.

The ``unset`` line comes first: variables another provider's ``eval`` (or ``~/.bashrc``)
left behind must not travel with this provider's (see ``broker.envvars``).
"""

from __future__ import annotations

import argparse
import json
import sys

from broker.cli.connect import client
from broker.cli.envvars import cleared, variables
from broker.client import Client, quote

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def run(args: argparse.Namespace) -> int:
    with client(args) as daemon:
        values = variables(answer(daemon, args))
    if args.json:
        json.dump(values, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(f"unset {' '.join(cleared(values))}\n")
        sys.stdout.writelines(f"export {name}={shell_quote(value)}\n" for name, value in values.items())
    return 0


def answer(daemon: Client, args: argparse.Namespace) -> dict[str, Any]:
    """The token answer, or with ``--proxy`` the proxy's (its base URL for the provider and its key)."""
    if not args.proxy:
        return daemon.token(args.provider, args.account)
    query = f"?account={quote(args.account)}" if args.account else ""
    result: dict[str, Any] = daemon.request("GET", f"/v1/proxy/{quote(args.provider)}{query}")
    return result


def shell_quote(value: str) -> str:
    """POSIX single quotes (what shlex.quote does, without importing re on the fast path)."""
    return "'" + value.replace("'", "'\"'\"'") + "'"
