"""Gemini CLI's Google login (``~/.gemini/oauth_creds.json``), kept fresh for Gemini CLI.

Google's terms let only Gemini CLI use this login, so broker neither signs in to it
nor serves it through its proxy; other tools have the Gemini API key (``gemini-api``)
or Vertex (``vertex``). What broker adds is one refresher ahead of every Gemini CLI,
and a write-back that merges (``broker.followed.gemini``): Google's refresh answer has
no refresh token, and replacing the file with it logs Gemini CLI out an hour later.

The refresh is Gemini CLI's (0.61.0): google-auth-library 10.9.0's ``OAuth2Client``
``refreshTokenNoCache``, a form with ``refresh_token``, ``client_id``, ``client_secret``
and ``grant_type``, and the library's ``User-Agent: google-api-nodejs-client/<version>``
(its ``AuthClient`` request interceptor; its ``x-goog-api-client: gl-node/<Node's version>``
names the user's Node and is not copied).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker.flows.errors import OAuthError
from broker.flows.token import OAuthClient
from broker.providers.base import LoginContext, LoginRequest, Provider, ProviderContext, renewed
from broker.providers.table import Table
from broker.providers.wire import Wire

from broker.core.config import Section
from broker.core.errors import BadRequest, LoginRequired
from broker.core.model import Credential

NAME = "gemini"
DESCRIPTION = "Gemini CLI's Google login, kept fresh for Gemini CLI (usable only by Gemini CLI itself)"
API = "gemini-code-assist"
BASE_URL = "https://cloudcode-pa.googleapis.com/v1internal"
CLIENT_ID = "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com"
CLIENT_SECRET = "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"
"""Gemini CLI's installed-app client; its secret is public by design (RFC 8252 §8.5)."""
ENDPOINTS = {"token": "https://oauth2.googleapis.com/token"}
WIRE = Wire(
    client_id=CLIENT_ID,
    token_headers={"User-Agent": "google-api-nodejs-client/{google_auth_library}"},
    versions={"google_auth_library": "10.9.0"},
)
TABLE = Table(base_url=BASE_URL, endpoints=ENDPOINTS, wire=WIRE, own=("client_secret",))
LOGIN_HINT = "run: gemini, then choose Login with Google"
NOTE = (
    "Google allows this login only in Gemini CLI: broker keeps it fresh for Gemini CLI and the proxy does not "
    "serve it; other tools can use gemini-api (an API key) or vertex"
)


@dataclass
class GeminiProvider(Provider):
    name: str = NAME
    api: str = API
    base_url: str | None = BASE_URL
    flows: tuple[str, ...] = ("file",)
    cli_login: str | None = LOGIN_HINT
    description: str = DESCRIPTION
    endpoints: dict[str, str] = field(default_factory=lambda: dict(ENDPOINTS))
    wire: Wire = WIRE
    client_secret: str = field(default=CLIENT_SECRET, repr=False)
    proxy: str | None = None
    proxy_allowed: bool = False
    callers: tuple[str, ...] | None = ("gemini",)  # and what it starts: Claude Code's apiKeyHelper, for one
    terms: str | None = "Google allows Gemini CLI's login only in Gemini CLI"

    @classmethod
    def from_config(cls, name: str, section: Section) -> GeminiProvider:
        return cls(name=name, **TABLE.read(section), client_secret=section.text("client_secret", CLIENT_SECRET))

    async def login(self, ctx: LoginContext, request: LoginRequest) -> Credential:
        raise BadRequest(
            "Gemini CLI's Google login happens inside Gemini CLI; broker then keeps that login fresh",
            f"{LOGIN_HINT}; broker follows ~/.gemini/oauth_creds.json by itself "
            "(for other tools: broker login gemini-api, or vertex)",
        )

    async def refresh(self, ctx: ProviderContext, credential: Credential) -> Credential:
        try:
            client = OAuthClient(
                self.wire.client_id or CLIENT_ID,
                self.client_secret,
                auth_method="client_secret_post",
                headers=dict(self.wire.token_headers or {}),
            )
            tokens = await self.redeem(ctx, self.endpoints["token"], client, credential)
        except OAuthError as exc:
            if exc.error != "unauthorized_client":
                raise
            # Google binds a refresh token to the client that got it: no retry can help.
            raise LoginRequired(
                f"{self.name}: the login in Gemini CLI's file was made by another app, whose refresh token "
                f"Gemini CLI's client cannot use ({exc})",
                LOGIN_HINT,
            ) from None
        extra = {k: v for k, v in credential.extra.items() if k != "id_token"}
        if tokens.id_token:
            extra["id_token"] = tokens.id_token
        if tokens.scope:
            extra["scope"] = tokens.scope
        return renewed(credential, tokens, extra=extra)  # Google's answer has no refresh token: the old one stays

    def can_refresh(self, credential: Credential) -> bool:
        return bool(credential.refresh_token)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "endpoints": dict(self.endpoints), "note": NOTE}
