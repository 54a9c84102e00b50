"""``broker __complete providers`` / ``accounts NAME``: names for the completion scripts, from the daemon.

The scripts ``broker completion`` prints call this on TAB; it takes the fast path (no
argparse) and waits at most a second, and exits non-zero when no daemon answers, so
the script falls back to the built-in names it carries.
"""

from __future__ import annotations

import sys

from broker.client import Client
from broker.core.errors import BadRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

TIMEOUT = 1.0


def run(args: argparse.Namespace) -> int:
    what = list(args.what)
    if what not in (["providers"],) and (len(what) != 2 or what[0] != "accounts"):
        raise BadRequest("usage: broker __complete providers | accounts PROVIDER")
    with Client(args.socket, timeout=TIMEOUT) as daemon:
        listing = daemon.request("GET", "/v1/providers?probe=0")
    if what[0] == "providers":
        names = [provider["name"] for provider in listing["providers"]]
    else:
        names = [a["account"] for p in listing["providers"] if p["name"] == what[1] for a in p.get("accounts", [])]
    sys.stdout.write("".join(f"{name}\n" for name in names))
    return 0
