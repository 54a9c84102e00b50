"""``broker token NAME``: only the access token, for ``$(...)``; ``--json`` for all of it."""

import json
import sys

from broker.cli.connect import client

TYPE_CHECKING = False  # argparse costs ~2 ms to import: the fast path parses without it
if TYPE_CHECKING:
    import argparse


def run(args: "argparse.Namespace") -> int:
    with client(args) as daemon:
        token = daemon.token(args.provider, args.account, args.min_ttl)
    if args.json:
        json.dump(token, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(token["access_token"] + "\n")
    return 0
