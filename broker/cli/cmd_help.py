"""``broker help [COMMAND]``: the same text as ``broker [COMMAND] --help``."""

from __future__ import annotations

import argparse
import sys

from broker.cli.parser import build_parser, subcommands
from broker.core.errors import BadRequest


def run(args: argparse.Namespace) -> int:
    parser = build_parser()
    if args.topic is None:
        sys.stdout.write(parser.format_help())  # not print_help: it hides a closed pipe, which must end quietly
        return 0
    commands = subcommands(parser)
    if args.topic not in commands:
        import difflib

        close = difflib.get_close_matches(args.topic, commands, n=1)
        raise BadRequest(
            f"no command named {args.topic!r}",
            (f"did you mean: broker help {close[0]}? " if close else "") + "the commands: broker help",
        )
    sys.stdout.write(commands[args.topic].format_help())
    return 0
