"""``broker exec NAME -- CMD ...``: run CMD with the provider's variables set.

The token goes to the child through its environment, never its argv, and the child
replaces this process (``execvpe``) so signals and the exit status are its own.
"""

from __future__ import annotations

import argparse
import os

from broker.cli.cmd_env import answer
from broker.cli.connect import client
from broker.envvars import variables
from broker.errors import BadRequest


def run(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if not argv:
        raise BadRequest("no command given", f"usage: broker exec {args.provider} -- COMMAND [ARGS...]")
    with client(args) as daemon:
        values = variables(answer(daemon, args))
    try:
        os.execvpe(argv[0], argv, {**os.environ, **values})  # noqa: S606 - replacing this process is the point
    except FileNotFoundError:
        raise BadRequest(f"command not found: {argv[0]}") from None
    except PermissionError:
        raise BadRequest(f"cannot run {argv[0]}: permission denied") from None
