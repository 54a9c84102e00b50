"""``broker logout NAME``: forget a credential (the daemon deletes it from the store)."""

from __future__ import annotations

import argparse
from urllib.parse import quote, urlencode

from broker.cli.connect import client


def run(args: argparse.Namespace) -> int:
    query = {"all": "1"} if args.all else ({"account": args.account} if args.account else {})
    path = f"/v1/credentials/{quote(args.provider, safe='')}" + (f"?{urlencode(query)}" if query else "")
    with client(args) as daemon:
        result = daemon.request("DELETE", path)
    for account in result["deleted"]:
        print(f"logged out of {args.provider} ({account})")
    return 0
