"""``broker doctor``: check what broker needs, with or without the daemon; exit 1 when a check fails."""

from __future__ import annotations

import argparse
import json
import os
import sys

from broker.cli.doctor import run_checks
from broker.cli.style import paint

MARKS = {"ok": ("ok", "ok"), "warn": ("warn", "warn"), "fail": ("FAIL", "error")}


def run(args: argparse.Namespace) -> int:
    checks = run_checks(os.environ, args.socket)
    if args.json:
        json.dump([check.as_json() for check in checks], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        width = max(len(check.name) for check in checks)
        for check in checks:
            word, role = MARKS[check.status]
            print(f"{paint(f'{word:<4}', role, sys.stdout)}  {check.name:<{width}}  {check.detail}")
            if check.fix:
                print(f"{'':<4}  {'':<{width}}    {check.fix}")
    return 1 if any(check.status == "fail" for check in checks) else 0
