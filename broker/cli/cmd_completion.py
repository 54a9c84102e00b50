"""``broker completion bash|zsh|fish``: a completion script, generated from the parser."""

from __future__ import annotations

import argparse
import sys

from broker.cli.completion import fish_script, posix_script
from broker.cli.parser import build_parser


def run(args: argparse.Namespace) -> int:
    from broker.providers.registry import BUILTINS

    builtins = sorted(BUILTINS)
    parser = build_parser()
    script = fish_script(parser, builtins) if args.shell == "fish" else posix_script(parser, builtins, args.shell)
    sys.stdout.write(script)
    return 0
