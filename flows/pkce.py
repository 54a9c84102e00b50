"""Authorization code grant with PKCE and a loopback redirect.

RFC 6749 §4.1 (code grant, ``state`` against CSRF, §10.12), RFC 7636 (S256 code
challenge; the verifier comes from ``secrets``) and RFC 8252 §7.3 (the redirect
lands on a listener on 127.0.0.1 at any free port, or at the fixed port a server has
registered). On a machine with no browser the user can paste the URL the browser was
redirected to instead (``submit_redirect``); both paths end in the same code exchange.

- A redirect whose ``state`` is not this login's is ignored, an ``error=`` one too
  (§4.1.2.1): anyone on the machine can reach the listener, and must not end the login.
- RFC 9207: the redirect's ``iss`` must be the issuer the request went to; one that
  differs ends the login (a mix-up attack, or the wrong issuer in the config), and so
  does a missing one when the server's metadata promises it.
- OpenID Connect Core §11: a server ignores ``offline_access`` (no refresh token)
  unless ``prompt`` holds ``consent``; ``with_offline_consent`` adds it for a caller that wants it.
- Every text put into the listener's pages is HTML-escaped.
"""

from __future__ import annotations

import asyncio
import html
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from aiohttp import web
from broker.flows.errors import FlowError, OAuthError, RedirectError
from broker.flows.http import HttpClient
from broker.flows.token import LoginClient, TokenSet, request_token

LISTEN_HOST = "127.0.0.1"

DONE_PAGE = (
    "<!doctype html><meta charset=utf-8><title>broker</title>"
    "<p>Signed in. You can close this tab and go back to the terminal.</p>"
)
FAILED_PAGE = (
    "<!doctype html><meta charset=utf-8><title>broker</title>"
    "<p>The sign-in did not complete: {reason}. Go back to the terminal for details.</p>"
)


@dataclass(frozen=True, kw_only=True)
class PkceClient(LoginClient):
    """Endpoints and client settings of one code-grant login."""

    authorization_endpoint: str
    redirect_host: str = LISTEN_HOST
    """The host written into the redirect URI (some servers register ``localhost``)."""
    redirect_port: int = 0
    redirect_path: str = "/callback"
    issuer: str | None = None
    """The issuer the request goes to: a redirect's ``iss`` must equal it (RFC 9207)."""
    issuer_in_redirect: bool = False
    """The server's metadata says ``authorization_response_iss_parameter_supported``: ``iss`` is required."""


OFFLINE_ACCESS = "offline_access"


def with_offline_consent(scopes: tuple[str, ...], params: Mapping[str, str]) -> dict[str, str]:
    """``params`` plus ``prompt=consent`` when ``offline_access`` is asked (OpenID Connect Core §11).

    A ``prompt`` given already is kept: the caller decides. An empty value drops a parameter.
    """
    merged = dict(params)
    if OFFLINE_ACCESS in scopes and "prompt" not in merged:
        merged["prompt"] = "consent"
    return {name: value for name, value in merged.items() if value}


class PkceLogin:
    """One authorization attempt: a listener, an authorization URL, a code, a token."""

    def __init__(self, http: HttpClient, pkce: PkceClient, *, now: Callable[[], float]) -> None:
        self.http = http
        self.pkce = pkce
        self._now = now
        self.state = secrets.token_urlsafe(32)
        self._verifier = secrets.token_urlsafe(64)
        self._code: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._runner: web.AppRunner | None = None
        self.redirect_uri = ""

    async def start(self) -> str:
        """Bind the loopback listener and return the URL the user must open."""
        app = web.Application()
        app.router.add_get(self.pkce.redirect_path, self._on_redirect)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LISTEN_HOST, self.pkce.redirect_port, reuse_address=False)
        try:
            await site.start()
        except OSError as exc:
            await self.close()
            raise FlowError(
                f"cannot listen on {LISTEN_HOST}:{self.pkce.redirect_port} for the login redirect "
                f"({exc.strerror}); close the program using that port and try again"
            ) from None
        from authlib.oauth2.rfc6749.parameters import prepare_grant_uri  # imported by the first login, not at start
        from authlib.oauth2.rfc7636 import create_s256_code_challenge

        port = self._runner.addresses[0][1]
        self.redirect_uri = f"http://{self.pkce.redirect_host}:{port}{self.pkce.redirect_path}"
        return str(
            prepare_grant_uri(
                self.pkce.authorization_endpoint,
                self.pkce.client.client_id,
                "code",
                redirect_uri=self.redirect_uri,
                scope=" ".join(self.pkce.scopes) or None,
                state=self.state,
                code_challenge=create_s256_code_challenge(self._verifier),
                code_challenge_method="S256",
                **self.pkce.extra_params,
            )
        )

    def submit_redirect(self, url: str) -> None:
        """Take the redirected URL a person pasted; raises RedirectError if unusable."""
        code = self._read_redirect(url)
        if not self._code.done():
            self._code.set_result(code)

    async def finish(self) -> TokenSet:
        """Wait for the code (from the browser or a paste) and exchange it."""
        try:
            code = await self._code
        finally:
            await self.close()
        return await request_token(
            self.http,
            self.pkce.token_endpoint,
            self.pkce.client,
            "authorization_code",
            {"code": code, "redirect_uri": self.redirect_uri, "code_verifier": self._verifier},
            now=self._now(),
        )

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def _read_redirect(self, url: str) -> str:
        """The code of a redirect that belongs to this login; RedirectError otherwise.

        Only a redirect carrying this login's ``state`` can end it (with an error, or a
        wrong ``iss``); any other is refused and the login keeps waiting.
        """
        from authlib.oauth2.rfc6749.errors import OAuth2Error
        from authlib.oauth2.rfc6749.parameters import parse_authorization_code_response

        url = url.strip()
        if "?" not in url:
            url = "?" + url.lstrip("?")
        query = dict(parse_qsl(urlsplit(url).query))
        if not secrets.compare_digest(query.get("state", "").encode(), self.state.encode()):
            raise RedirectError("unusable redirect: the state does not match this login")
        self._check_issuer(query.get("iss"))
        if "error" in query:
            self._fail(OAuthError(query["error"], query.get("error_description")))
            raise RedirectError(f"the authorization server answered {query['error']}")
        try:
            params = parse_authorization_code_response(url, state=self.state)
        except OAuth2Error as exc:
            raise RedirectError(f"unusable redirect: {exc.error}") from None
        return str(params["code"])

    def _check_issuer(self, iss: str | None) -> None:
        """RFC 9207 §2.4: a redirect from another issuer, or without one where it is promised, ends the login."""
        expected = self.pkce.issuer
        if expected is None:
            return
        if iss is None and not self.pkce.issuer_in_redirect:
            return
        if iss != expected:
            found = "no iss" if iss is None else f"iss {iss!r}"
            error = RedirectError(
                f"the redirect carries {found}, not the issuer {expected!r} the login went to (RFC 9207); "
                "check issuer in the config, and sign in only where broker sent you"
            )
            self._fail(error)
            raise error

    def _fail(self, exc: FlowError) -> None:
        if not self._code.done():
            self._code.set_exception(exc)

    async def _on_redirect(self, request: web.Request) -> web.Response:
        try:
            code = self._read_redirect(str(request.rel_url))
        except RedirectError as exc:
            page = FAILED_PAGE.format(reason=html.escape(str(exc)))
            return web.Response(status=400, text=page, content_type="text/html")
        if not self._code.done():
            self._code.set_result(code)
        return web.Response(text=DONE_PAGE, content_type="text/html")
