"""``broker serve``: the daemon in the foreground; needs no config file."""

from __future__ import annotations

import argparse
import asyncio
import os

from broker.config import load_settings
from broker.daemon import configure_logging
from broker.daemon import run as run_daemon


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.socket:
        env["BROKER_SOCKET"] = args.socket
    settings = load_settings(env)
    configure_logging(args.log_level or settings.log_level)
    return asyncio.run(run_daemon(settings))
