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
    rows = []
    for provider in listing["providers"]:
        flows = ", ".join(provider.get("flows", []))
        login = f"{provider.get('login') or ''}" + (f" [{flows}]" if flows else "")
        auth = f"auth: {provider.get('auth') or ''}"
        rows.append((provider["name"], provider.get("api") or "", auth, provider["state"], f"login: {login}"))
    widths = [max(len(row[column]) for row in rows) for column in range(4)] if rows else []
    for row in rows:
        print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[4]]))
    return 0
