"""``broker providers``: what broker knows, with API style, auth and how to log in."""

from __future__ import annotations

import argparse
import json
import sys

from broker.cli.connect import client


def run(args: argparse.Namespace) -> int:
    with client(args) as daemon:
        listing = daemon.request("GET", "/v1/providers")
    if args.json:
        json.dump(listing["providers"], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not listing["providers"]:
        print("no providers configured: add [providers.NAME] to the config (see README)")
    for provider in listing["providers"]:
        flows = ", ".join(provider.get("flows", []))
        login = f"{provider.get('login') or ''}" + (f" [{flows}]" if flows else "")
        api, auth = provider.get("api") or "", provider.get("auth") or ""
        print(f"{provider['name']:<14} {api:<17} auth: {auth:<10} {provider['state']:<14} login: {login}")
    return 0
