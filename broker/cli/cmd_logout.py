"""``broker logout NAME``: forget a credential (the daemon deletes it from the store)."""

from __future__ import annotations

import argparse

from broker.cli.connect import client
from broker.client import query, quote


def run(args: argparse.Namespace) -> int:
    path = f"/v1/credentials/{quote(args.provider)}" + query(account=args.account, all="1" if args.all else None)
    with client(args) as daemon:
        result = daemon.request("DELETE", path)
    for account in result["deleted"]:
        print(f"logged out of {args.provider} ({account})")
    return 0
