"""``broker status``: every credential with its state, expiry, source and last error, and unusable CLI files."""

from __future__ import annotations

import argparse
import json
import sys

from broker.cli.connect import client
from broker.cli.timefmt import until
from broker.sanitize import printable


def run(args: argparse.Namespace) -> int:
    with client(args) as daemon:
        listing = daemon.request("GET", "/v1/providers")
    if args.json:
        json.dump(listing, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"store: {listing['store']}")
    if listing.get("store_error"):
        error = listing["store_error"]
        print(f"store error: {error['message']}\n  {error['hint']}")
    callers = {p["name"]: p.get("callers") for p in listing["providers"]}
    rows = [(p["name"], a) for p in listing["providers"] for a in p["accounts"]]
    if not rows:
        print("no credentials yet: broker login NAME   (see: broker providers)")
    for name, account in rows:
        shown = printable(account["account"])
        print(f"{name:<12} {shown:<28} {account['state']:<15} expires {until(account['expires_in'])}")
        print(f"{'':<12} source: {account['source']}")
        if callers.get(name) is not None:
            print(f"{'':<12} served only to: {', '.join(callers[name]) or 'nobody'} (callers under [providers.{name}])")
        if account["source"] == "login" and account.get("refreshable") is False and account["expires_in"] is not None:
            print(f"{'':<12} not renewable: this login ends when the token expires; then run: broker login {name}")
        error = account.get("last_error")
        if error:
            print(f"{'':<12} error: {printable(error['code'])}: {printable(error['message'])}")
            if error.get("hint"):
                print(f"{'':<12}        {printable(error['hint'])}")
    for provider in listing["providers"]:  # followed CLI files broker cannot use, and why
        for file in provider.get("files") or ():
            if file.get("error"):
                print(f"{provider['name']:<12} {file['cli'] + ' file':<28} {'error':<15} {printable(file['path'])}")
                print(f"{'':<12} error: {printable(file['error']['message'])}")
                if file["error"].get("hint"):
                    print(f"{'':<12}        {printable(file['error']['hint'])}")
    for provider in listing["providers"]:  # local servers: no login, a probe's answer
        if not provider.get("accounts") and provider.get("state") in ("ready", "unreachable"):
            print(f"{provider['name']:<12} {'(local server)':<28} {provider['state']:<15} {provider.get('base_url')}")
    return 0
