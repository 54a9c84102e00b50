"""panva's oidc-provider (npm), run by tests/peers/oidc_provider.mjs, and a browser for its pages.

The server prints one JSON line per token endpoint answer; ``OidcPeer.next_event`` waits
for them, so a test waits on the server's own account of a refresh instead of sleeping.
``Browser`` is the user's part: it keeps cookies, signs in, consents, and stops at the
redirect to broker's loopback listener so the test decides what to do with it.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import urllib.error
import urllib.request
from html.parser import HTMLParser
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from tests.peers import npm_package

LAUNCHER = Path(__file__).resolve().parent / "peers" / "oidc_provider.mjs"
CLIENT_ID = "broker-cli"
START_TIMEOUT = 60.0
"""Node starting oidc-provider took over 30 s once, with the machine loaded by other work."""


class OidcPeer:
    """The launcher as a process; ``issuer`` once it listens."""

    def __init__(self, access_token_ttl: int) -> None:
        package = npm_package("oidc-provider")
        self.process = subprocess.Popen(
            ["node", str(LAUNCHER), str(package), str(access_token_ttl)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()
        ready = self.events.get(timeout=START_TIMEOUT)
        self.issuer = str(ready["issuer"])

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put(json.loads(line))

    def next_event(self, timeout: float) -> dict[str, Any]:
        event = self.events.get(timeout=timeout)
        self.seen.append(event)
        return event

    def next_grant(self, grant_type: str, timeout: float) -> dict[str, Any]:
        """The next token endpoint answer of ``grant_type`` (errors and revocations on the way are kept in seen)."""
        while True:
            event = self.next_event(timeout)
            if event.get("grant_type") == grant_type:
                return event

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """A token endpoint request of the test's own (another client holding broker's client id)."""
        request = urllib.request.Request(f"{self.issuer}/token", data=urlencode(form).encode(), method="POST")
        return _json(request)

    def userinfo(self, access_token: str) -> int:
        request = urllib.request.Request(f"{self.issuer}/me", headers={"Authorization": f"Bearer {access_token}"})
        return _json(request)[0]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def _json(request: urllib.request.Request) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


class _Forms(HTMLParser):
    """The inputs of a page's first form: all a device-flow page needs."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form" and self.action is None:
            self.action, self._inside = values.get("action", ""), True
        elif tag == "input" and self._inside and values.get("name"):
            self.fields[values["name"]] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._inside = False


class _Stop(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Browser:
    """A person's browser at the OpenID provider: cookies kept, redirects followed up to broker's listener."""

    def __init__(self, peer: OidcPeer, login: str = "alice") -> None:
        self.peer = peer
        self.login = login
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()), _Stop)
        self.pages: list[str] = []

    def authorize(self, url: str) -> str:
        """Open the authorization URL, sign in and consent; the redirect to the loopback listener."""
        return self._through_interactions(url)

    def approve_device(self, verification_uri: str, user_code: str) -> str:
        """Enter the user code at the device page, confirm, sign in, consent; the final page."""
        status, page, _ = self._send(verification_uri)
        form = self._form(page)
        form.fields["user_code"] = user_code
        status, page, _ = self._send(urljoin(verification_uri, form.action or ""), form.fields)
        confirm = self._form(page)
        assert confirm.fields.get("confirm") == "yes", confirm.fields
        status, page, location = self._send(urljoin(verification_uri, confirm.action or ""), confirm.fields)
        assert location, f"no redirect after confirming the code (HTTP {status}): {page[:300]}"
        self._through_interactions(urljoin(verification_uri, location))
        return self.pages[-1]

    def _through_interactions(self, url: str) -> str:
        """Follow redirects, answering login and consent prompts, until one leaves the issuer."""
        for _ in range(20):
            if not url.startswith(self.peer.issuer):
                return url
            path = urlsplit(url).path
            if path.startswith("/interaction/") and path.count("/") == 2:
                url = self._answer(url)
                continue
            _, _, location = self._send(url)
            if location is None:
                return url
            url = urljoin(url, location)
        raise AssertionError("too many redirects")

    def _answer(self, url: str) -> str:
        status, page, _ = self._send(url)
        assert status == 200, page
        prompt = json.loads(page)
        self.pages.append(page)
        step = {"login": ("/login", {"login": self.login}), "consent": ("/consent", {})}[prompt["prompt"]]
        status, page, location = self._send(url + step[0], step[1])
        assert status == 303 and location, f"{prompt['prompt']} refused: HTTP {status} {page}"
        return urljoin(url, location)

    def _send(self, url: str, form: dict[str, str] | None = None) -> tuple[int, str, str | None]:
        data = None if form is None else urlencode(form).encode()
        try:
            with self.opener.open(urllib.request.Request(url, data=data), timeout=10) as response:
                page = response.read().decode()
                self.pages.append(page)
                return response.status, page, None
        except urllib.error.HTTPError as error:
            page = error.read().decode()
            self.pages.append(page)
            return error.code, page, error.headers.get("Location")

    @staticmethod
    def _form(page: str) -> _Forms:
        form = _Forms()
        form.feed(page)
        assert form.fields, f"no form on the page: {page[:300]}"
        return form
