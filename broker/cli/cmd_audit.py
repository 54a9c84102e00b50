"""``broker audit``: which process was handed which token, and every refresh (see ``broker.audit``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from broker.cli.connect import client
from broker.cli.timefmt import seconds_in
from broker.client import query
from broker.core.sanitize import printable


def run(args: argparse.Namespace) -> int:
    since = None if args.since is None else time.time() - seconds_in(args.since)
    with client(args) as daemon:
        answer = daemon.request(
            "GET", "/v1/audit" + query(provider=args.provider, since=since, fingerprint=args.fingerprint)
        )
    entries = answer["entries"]
    if args.json:
        json.dump(entries, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not entries:
        print("no entries" + (" in that time" if since is not None else ""))
    for entry in entries:
        print(printable(_line(entry)))
    return 0


def _line(entry: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["time"]))
    what = f"{entry['provider']}/{entry['account']}"
    if entry["event"] == "refresh":
        detail = f"refresh  {entry['result']}"
    else:
        parents = entry.get("parents") or []
        chain = " < ".join([entry.get("name") or "?", *(parent["name"] for parent in parents[:3])])
        who = f"pid {entry['pid']} {chain}" if entry.get("pid") else f"from {entry.get('peer', '?')}"
        unit = f"  unit {entry['unit']}" if entry.get("unit") else ""
        detail = f"token    {entry['via']}  {who}{unit}"
    return f"{when}  {what:<28} {detail}  {entry.get('fingerprint') or ''}"
