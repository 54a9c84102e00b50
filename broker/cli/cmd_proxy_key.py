"""``broker proxy-key [--rotate]``: print the auth proxy's key, or replace it and print the new one.

Rotating stops the old key at once (tools configured with it get 401 ``unauthorized``);
``broker exec`` children keep their own keys.
"""

from __future__ import annotations

import argparse

from broker.cli.connect import client


def run(args: argparse.Namespace) -> int:
    with client(args) as daemon:
        answer = daemon.request("POST" if args.rotate else "GET", "/v1/proxy-key")
    print(answer["key"])
    return 0
