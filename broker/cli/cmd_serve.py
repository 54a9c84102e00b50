"""``broker serve``: the daemon in the foreground; needs no config file."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os

from broker.core.config import load_settings
from broker.core.errors import BadRequest
from broker.daemon.process import configure_logging
from broker.daemon.process import run as run_daemon


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.socket:
        env["BROKER_SOCKET"] = args.socket
    settings = load_settings(env)
    if args.proxy_port is not None:
        if not 0 <= args.proxy_port <= 65535:
            raise BadRequest(f"--proxy-port must be between 0 and 65535 (got {args.proxy_port})")
        settings = dataclasses.replace(settings, proxy_port=args.proxy_port)
    configure_logging(args.log_level or settings.log_level)
    return asyncio.run(run_daemon(settings))
