"""``broker refresh NAME``: refresh now, whatever the expiry says."""

from __future__ import annotations

import argparse
import json
import sys

from broker.cli.connect import client
from broker.cli.timefmt import until
from broker.client import query, quote


def run(args: argparse.Namespace) -> int:
    with client(args) as daemon:
        state = daemon.request("POST", f"/v1/refresh/{quote(args.provider)}{query(account=args.account)}")
    if args.json:
        json.dump(state, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"{args.provider} ({state['account']}): refreshed, expires {until(state['expires_in'])}")
    return 0
