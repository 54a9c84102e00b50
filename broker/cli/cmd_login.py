"""``broker login NAME``: relay a login the daemon runs.

``--json`` prints the daemon's events as they come, one JSON object a line; without
it the same is shown for a person: the code and URL with a countdown, or the URL to
open (in a browser when there is one). For a code-grant login on a machine with no
browser, a pasted redirect URL is read from standard input and handed to the daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

from broker.cli.connect import client
from broker.cli.main import report
from broker.cli.timefmt import until
from broker.client import quote
from broker.errors import BadRequest, BrokerError, from_wire
from broker.sanitize import printable


def run(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"account": args.account, "flow": args.flow, "enterprise_url": args.enterprise_url}
    secret = _secret(args)
    if secret:
        body["secret"] = secret
    path = f"/v1/login/{quote(args.provider)}"
    stop = threading.Event()
    try:
        with client(args, timeout=3600) as daemon:
            for event in daemon.stream("POST", path, {k: v for k, v in body.items() if v is not None}):
                if args.json:
                    print(json.dumps(event), flush=True)
                status = _handle(args, event, stop)
                if status is not None:
                    return status
    finally:
        stop.set()
    error = BrokerError("the daemon ended the login without a result", "see the daemon's log")
    if args.json:
        print(json.dumps({"event": "error", **error.to_wire()["error"]}), flush=True)
    else:
        report(error)
    return 1


def _secret(args: argparse.Namespace) -> str | None:
    """The token or key a ``pat``/``apikey`` login needs: stdin, its env variable, or a hidden prompt."""
    if args.token_stdin:
        secret = sys.stdin.readline().strip()
        if not secret:
            raise BadRequest("nothing on standard input", "pipe the token in: ... | broker login NAME --token-stdin")
        return secret
    with client(args) as daemon:
        listing = daemon.request("GET", "/v1/providers")
    provider = next((p for p in listing["providers"] if p["name"] == args.provider), None)
    if provider is None or not provider.get("secret_prompt"):
        return None
    if provider.get("secret_env") and os.environ.get(provider["secret_env"]):
        return os.environ[provider["secret_env"]].strip()
    if not sys.stdin.isatty():
        env = provider.get("secret_env")
        hint = "pipe it in with --token-stdin (or --key-stdin)" + (f", or set {env}" if env else "")
        raise BadRequest(f"{args.provider} needs a {provider['secret_prompt']}", hint)
    import getpass

    return getpass.getpass(f"{provider['secret_prompt']}: ").strip() or None


def _handle(args: argparse.Namespace, event: dict[str, Any], stop: threading.Event) -> int | None:
    event = {name: printable(value) if isinstance(value, str) else value for name, value in event.items()}
    kind = event.get("event")
    if kind == "verify":
        url = event.get("verification_uri_complete") or event["verification_uri"]
        if not args.json:
            print(f"To sign in to {args.provider}, open {event['verification_uri']}", file=sys.stderr)
            print(f"and enter the code: {event['user_code']}", file=sys.stderr)
            if event.get("verification_uri_complete"):
                print(f"(or open {event['verification_uri_complete']})", file=sys.stderr)
            _countdown(float(event.get("expires_in") or 0), stop)
        if not args.no_browser:
            _open_browser(url)
    elif kind == "open":
        if not args.json:
            print(f"To sign in to {args.provider}, open this address:\n\n  {event['url']}\n", file=sys.stderr)
            print("If the browser is on another machine, paste here the address it ends on:", file=sys.stderr)
        if not args.no_browser:
            _open_browser(event["url"])
        if event.get("login_id"):
            _relay_pasted_redirect(args, str(event["login_id"]), stop)
    elif kind == "done":
        stop.set()
        if not args.json:
            print(f"\nlogged in to {args.provider} as {event.get('account')}", file=sys.stderr)
            print(lasting(args.provider, event), file=sys.stderr)
        return 0
    elif kind == "error":
        stop.set()
        error = from_wire({"error": event})
        if not args.json:
            print(file=sys.stderr)
            report(error)
        return error.exit_status
    return None


def lasting(provider: str, event: dict[str, Any]) -> str:
    """How long the login lasts, in words: the thing to know before relying on it."""
    expires_in = event.get("expires_in")
    if expires_in is None:
        return "the token does not expire"
    if event.get("refreshable"):
        return f"the token expires {until(expires_in)}; broker renews it ahead of each expiry"
    return (
        f"this login cannot be renewed: the token expires {until(expires_in)} and the server gave no refresh "
        f"token; run broker login {provider} again then (for an OpenID server: ask the offline_access scope, "
        "and allow the refresh_token grant for this client)"
    )


def _countdown(seconds: float, stop: threading.Event) -> None:
    """A live 'mm:ss left' line on a terminal; nothing when stderr is not one."""
    if not sys.stderr.isatty() or seconds <= 0:
        return
    deadline = time.monotonic() + seconds

    def tick() -> None:
        while not stop.wait(1.0):
            left = max(0, int(deadline - time.monotonic()))
            sys.stderr.write(f"\r  waiting for approval, {left // 60:02d}:{left % 60:02d} left ")
            sys.stderr.flush()

    threading.Thread(target=tick, daemon=True).start()


def _relay_pasted_redirect(args: argparse.Namespace, login_id: str, stop: threading.Event) -> None:
    """Read pasted redirect URLs from stdin and hand each to the daemon until one works."""
    if sys.stdin is None or sys.stdin.closed:
        return

    def read() -> None:
        for line in sys.stdin:
            if stop.is_set():
                return
            url = line.strip()
            if not url:
                continue
            try:
                with client(args) as daemon:
                    daemon.request(
                        "POST",
                        f"/v1/login/{quote(args.provider)}/redirect",
                        {"login_id": login_id, "url": url},
                    )
                return
            except BrokerError as exc:
                if not args.json:
                    report(exc)

    threading.Thread(target=read, daemon=True).start()


def _open_browser(url: str) -> None:
    """Open a graphical browser if there is one; a text browser would take the terminal."""
    graphical = sys.platform in ("darwin", "win32") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if not graphical:
        return
    import webbrowser

    try:
        webbrowser.open(url, new=1)
    except webbrowser.Error:
        pass
