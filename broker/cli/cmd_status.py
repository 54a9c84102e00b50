"""``broker status``: every credential and followed file, what needs the user, and the command that fixes it.

Exits as ``gh auth status`` does when something is wrong: 3 when a login is required
(an account's login is dead or its token expired for good), 1 for any other problem
(a broken followed file, a failing refresh, a refresh whose outcome must be checked, a
token left to its CLI that expired meanwhile, an unreadable store, a config the daemon
refused), 0 when all is well.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from broker.cli.connect import client
from broker.cli.style import paint
from broker.cli.timefmt import until
from broker.core.sanitize import printable

NEEDS_LOGIN = ("login_required", "expired")
PROBLEMS = ("error", "uncertain", *NEEDS_LOGIN)
INDENT = " " * 14


def run(args: argparse.Namespace) -> int:
    with client(args) as daemon:
        listing = daemon.request("GET", "/v1/providers")
    if args.json:
        json.dump(listing, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        show(listing)
    return exit_status(listing)


def exit_status(listing: dict[str, Any]) -> int:
    accounts = [a for p in listing["providers"] for a in p.get("accounts", [])]
    if any(a["state"] in NEEDS_LOGIN for a in accounts):
        return 3
    files = [f for p in listing["providers"] for f in p.get("files", [])]
    broken = any(needs_you(a) for a in accounts) or any(f["state"] == "error" for f in files)
    return 1 if broken or listing.get("store_error") or listing.get("config_error") else 0


def needs_you(account: dict[str, Any]) -> bool:
    """A problem of the account's; a token left to its CLI is one only once it has expired."""
    if account["state"] == "left_to_cli":
        return account["expires_in"] is not None and account["expires_in"] <= 0
    return account["state"] in PROBLEMS


def show(listing: dict[str, Any]) -> None:
    out = sys.stdout
    print(f"store: {listing['store']}")
    if listing.get("config"):
        print(f"config: {listing['config']}")
    for label in ("store_error", "config_error"):
        error = listing.get(label)
        if error:
            _problem(label.replace("_", " "), error["message"], error.get("hint"), "")
    missing: list[str] = []
    shown = 0
    for provider in listing["providers"]:
        files = {f["account"]: f for f in provider.get("files", [])}
        for account in provider.get("accounts", []):
            shown += 1
            _account(provider, account, files.pop(account["account"], None))
        for file in files.values():  # followed files that hold no credential now
            if file["state"] == "missing":
                missing.append(f"{file['path']} ({file['cli']})")
                continue
            shown += 1
            print(f"{provider['name']:<12}  {file['account']:<28} {paint('no credential', 'error', out)}")
            _file_problem(file)
        if not provider.get("accounts") and provider.get("state") in ("ready", "unreachable"):  # local servers
            print(f"{provider['name']:<12}  {'(local server)':<28} {provider['state']:<15} {provider.get('base_url')}")
    if not shown:
        print("no credentials yet: run: broker login NAME   (the names: broker providers)")
    if missing:
        print(paint("not there yet (followed when they appear): " + ", ".join(missing), "dim", out))


def _account(provider: dict[str, Any], account: dict[str, Any], file: dict[str, Any] | None) -> None:
    out = sys.stdout
    name, state = provider["name"], account["state"]
    role = "error" if needs_you(account) else "warn" if state == "left_to_cli" else "ok"
    label = printable(account["account"]) + (" (default)" if account.get("default") else "")
    expiry = "never expires" if account["expires_in"] is None else f"expires {until(account['expires_in'])}"
    print(f"{name:<12}  {label:<28} {paint(f'{state:<15}', role, out)} {expiry}")
    print(f"{INDENT}source: {account['source']}")
    callers = provider.get("callers")
    if callers is not None:
        print(f"{INDENT}served only to: {', '.join(callers) or 'nobody'} (callers under [providers.{name}])")
    if account["source"] == "login" and account.get("refreshable") is False and account["expires_in"] is not None:
        again = f"run: broker login {name}" + ("" if account.get("default") else f" --account {account['account']}")
        print(f"{INDENT}not renewable: this login ends when the token expires; then {again}")
    error = account.get("last_error")
    if error:
        _problem(error["code"], error["message"], account.get("fix") or error.get("hint"))
    elif account.get("fix"):
        _problem(state, "this login can no longer be used", account["fix"])
    if file is not None and file["state"] == "error":  # the last good token is served; the file needs its CLI
        _file_problem(file)


def _file_problem(file: dict[str, Any]) -> None:
    message = file["error"]["message"]
    _problem("file", message if file["path"] in message else f"{file['path']}: {message}", file["error"].get("hint"))


def _problem(what: str, message: str, fix: str | None, indent: str = INDENT) -> None:
    """A problem and, below it, what fixes it; text from elsewhere (an upstream's words) made printable."""
    out = sys.stdout
    print(f"{indent}{paint(printable(what) + ':', 'error', out)} {printable(message)}")
    if fix:
        print(f"{indent}  {paint(printable(fix), 'command', out)}")
