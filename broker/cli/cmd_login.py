"""``broker login NAME``: relay a login the daemon runs.

``--json`` prints the daemon's events as they come, one JSON object a line; without
it the same is shown for a person: the user code set apart with a countdown, or the
address to open (opened in a browser when there is one, and said so). For a
code-grant login on a machine with no browser, a pasted redirect URL is read from
standard input and handed to the daemon. Ctrl-C closes the stream, which cancels the
login in the daemon too. Logging in again over a working login asks first on a
terminal (``--force`` does not ask); options the provider does not take are refused
before anything is asked.
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
from broker.cli.style import paint
from broker.cli.timefmt import until
from broker.client import quote
from broker.core import login_options
from broker.core.errors import BadRequest, BrokerError, from_wire
from broker.core.sanitize import printable


def run(args: argparse.Namespace) -> int:
    provider = _describe(args)
    if provider is not None:
        _check_options(args, provider)
        if not _may_replace(args, provider):
            print("nothing changed: the stored login stays", file=sys.stderr)
            return 1
    body: dict[str, Any] = {"account": args.account, "flow": args.flow, "enterprise_url": args.enterprise_url}
    secret = _secret(args, provider)
    if secret:
        body["secret"] = secret
    path = f"/v1/login/{quote(args.provider)}"
    waiting = Countdown()
    try:
        with client(args, timeout=3600) as daemon:
            for event in daemon.stream("POST", path, {k: v for k, v in body.items() if v is not None}):
                if args.json:
                    print(json.dumps(event), flush=True)
                status = _handle(args, event, waiting)
                if status is not None:
                    return status
    except KeyboardInterrupt:
        waiting.stop()
        print("login cancelled (the daemon stopped it too)", file=sys.stderr)
        return 130
    finally:
        waiting.stop()
    error = BrokerError("the daemon ended the login without a result", "see the daemon's log")
    if args.json:
        print(json.dumps({"event": "error", **error.to_wire()["error"]}), flush=True)
    else:
        report(error)
    return 1


def _describe(args: argparse.Namespace) -> dict[str, Any] | None:
    """The provider as the daemon lists it, with its accounts; ``None`` when unknown (the login says why)."""
    with client(args) as daemon:
        listing = daemon.request("GET", "/v1/providers?probe=0")
    return next((p for p in listing["providers"] if p["name"] == args.provider), None)


def _check_options(args: argparse.Namespace, provider: dict[str, Any]) -> None:
    """Refuse at once what the provider does not take (the daemon would too, after a prompt for nothing)."""
    refused = login_options.refused(
        provider.get("flows") or (),
        secret=bool(provider.get("secret_prompt")),
        enterprise_url=bool(provider.get("takes_enterprise_url")),
        flow=args.flow,
        given_url=args.enterprise_url,
        given_secret=args.token_stdin,
    )
    if refused is not None:
        takes = provider.get("login_options") or []
        hint = f"{args.provider} takes: {', '.join(takes)}" if takes else f"run: {provider.get('login')}"
        raise BadRequest(f"{args.provider} does not take {refused}", hint)


def _may_replace(args: argparse.Namespace, provider: dict[str, Any]) -> bool:
    """Whether to go on when a working login could be replaced: ``--force``, or yes on a terminal."""
    working = [
        a["account"]
        for a in provider.get("accounts", [])
        if a["source"] == "login" and a["state"] in ("ready", "refreshing")
    ]
    if args.account is not None:
        working = [account for account in working if account == args.account]
    elif provider.get("secret_prompt"):  # a key's login is named "default" unless --account names it
        working = [account for account in working if account == "default"]
    if not working or args.force:
        return True
    same = "replaces it" if provider.get("secret_prompt") or args.account else "replaces it if you sign in as it"
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        print(f"note: {args.provider} has a working login ({working[0]}); this {same}", file=sys.stderr)
        return True
    sys.stderr.write(f"{args.provider} already has a working login ({', '.join(working)}); this {same}. Go on? [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _secret(args: argparse.Namespace, provider: dict[str, Any] | None) -> str | None:
    """The token or key a ``pat``/``apikey`` login needs: stdin, its env variable, or a hidden prompt."""
    if args.token_stdin:
        secret = sys.stdin.readline().strip()
        if not secret:
            raise BadRequest(
                "nothing on standard input", f"pipe the token in: ... | broker login {args.provider} --token-stdin"
            )
        return secret
    if provider is None or not provider.get("secret_prompt"):
        return None
    prompt = provider["secret_prompt"]
    if provider.get("secret_env") and os.environ.get(provider["secret_env"]):
        return os.environ[provider["secret_env"]].strip()
    if not sys.stdin.isatty():
        env = provider.get("secret_env")
        raise BadRequest(
            f"{args.provider} asks for its {prompt}, and standard input is not a terminal",
            f"pipe it in: ... | broker login {args.provider} --token-stdin" + (f", or set {env}" if env else ""),
        )
    import getpass

    return getpass.getpass(f"{prompt}: ").strip() or None


def _handle(args: argparse.Namespace, event: dict[str, Any], waiting: Countdown) -> int | None:
    event = {name: printable(value) if isinstance(value, str) else value for name, value in event.items()}
    kind = event.get("event")
    if kind == "verify":
        complete = event.get("verification_uri_complete")
        opened = not args.no_browser and _open_browser(complete or event["verification_uri"])
        if not args.json:
            _show_code(args.provider, event, opened)
            waiting.start(float(event.get("expires_in") or 0))
    elif kind == "open":
        opened = not args.no_browser and _open_browser(event["url"])
        if not args.json:
            _show_address(args.provider, event["url"], opened, bool(event.get("login_id")))
        if event.get("login_id"):
            _relay_pasted_redirect(args, str(event["login_id"]), waiting.stopped)
    elif kind == "done":
        waiting.stop()
        if not args.json:
            done = f"logged in to {args.provider} as {event.get('account')}"
            print(paint(done, "ok", sys.stderr), file=sys.stderr)
            print(lasting(args.provider, event), file=sys.stderr)
        return 0
    elif kind == "error":
        waiting.stop()
        error = from_wire({"error": event})
        if not args.json:
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


def _show_code(provider: str, event: dict[str, Any], opened: bool) -> None:
    """The code on a line of its own, so it cannot be misread or copied with the text around it."""
    err = sys.stderr
    uri, complete = event["verification_uri"], event.get("verification_uri_complete")
    if opened:
        print(f"To sign in to {provider}, {complete or uri} was opened in your browser.", file=err)
        print("Check that it shows this code:" if complete else "Enter this code there:", file=err)
    else:
        print(f"To sign in to {provider}, open {uri} and enter this code:", file=err)
    print(f"\n    {paint(event['user_code'], 'code', err)}\n", file=err)
    if complete and not opened:
        print(f"(or open {complete}, which has the code in it)", file=err)


def _show_address(provider: str, url: str, opened: bool, can_paste: bool) -> None:
    err = sys.stderr
    if opened:
        print(f"To sign in to {provider}, the sign-in page was opened in your browser.", file=err)
        print("If it did not open, or your browser is on another machine, open this address:", file=err)
    else:
        print(f"To sign in to {provider}, open this address:", file=err)
    print(f"\n    {url}\n", file=err)
    if can_paste:
        print("If the browser is on another machine, paste here the address it ends on.", file=err)


class Countdown:
    """A live 'mm:ss left' line on a terminal, erased when the login ends; nothing when stderr is not one."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, seconds: float) -> None:
        if not sys.stderr.isatty() or seconds <= 0 or self._thread is not None:
            return
        deadline = time.monotonic() + seconds

        def tick() -> None:
            while not self.stopped.wait(1.0):
                left = max(0, int(deadline - time.monotonic()))
                sys.stderr.write(f"\r  waiting for approval, {left // 60:02d}:{left % 60:02d} left ")
                sys.stderr.flush()

        self._thread = threading.Thread(target=tick, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            sys.stderr.write("\r" + " " * 40 + "\r")  # the countdown line, erased
            sys.stderr.flush()


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


def _open_browser(url: str) -> bool:
    """Open a graphical browser if there is one (a text browser would take the terminal); whether it did."""
    graphical = sys.platform in ("darwin", "win32") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if not graphical:
        return False
    import webbrowser

    try:
        return webbrowser.open(url, new=1)
    except webbrowser.Error:
        return False
