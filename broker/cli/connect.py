"""The one client a command uses, honouring ``broker --socket``."""

from __future__ import annotations

import argparse

from broker.client import Client


def client(args: argparse.Namespace, timeout: float = 60.0) -> Client:
    return Client(getattr(args, "socket", None), timeout=timeout)
