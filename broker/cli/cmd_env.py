"""``broker env NAME``: ``export`` lines for a shell's ``eval``."""

from __future__ import annotations

import argparse
import json
import sys

from broker.cli.connect import client
from broker.envvars import variables


def run(args: argparse.Namespace) -> int:
    with client(args) as daemon:
        values = variables(daemon.token(args.provider, args.account))
    if args.json:
        json.dump(values, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.writelines(f"export {name}={shell_quote(value)}\n" for name, value in values.items())
    return 0


def shell_quote(value: str) -> str:
    """POSIX single quotes (what shlex.quote does, without importing re on the fast path)."""
    return "'" + value.replace("'", "'\"'\"'") + "'"
