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

from broker.flows.errors import OAuthError
from broker.flows.token import OAuthClient
from broker.providers.base import ProviderContext, renewed
from broker.providers.builtin import OwnCli, OwnCliLogin
from broker.providers.table import Table
from broker.providers.wire import Wire

from broker.core.errors import LoginRequired
from broker.core.model import Credential

DESCRIPTION = "Gemini CLI's Google login, kept fresh for Gemini CLI (usable only by Gemini CLI itself)"
API = "gemini-code-assist"
BASE_URL = "https://cloudcode-pa.googleapis.com/v1internal"
CLIENT_ID = "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com"
CLIENT_SECRET = "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"
"""Gemini CLI's installed-app client; its secret is public by design (RFC 8252 §8.5)."""
ENDPOINTS = {"token": "https://oauth2.googleapis.com/token"}
WIRE = Wire(
    client_id=CLIENT_ID,
    client_secret=CLIENT_SECRET,
    token_headers={"User-Agent": "google-api-nodejs-client/{google_auth_library}"},
    versions={"google_auth_library": "10.9.0"},
)
TABLE = Table(base_url=BASE_URL, description=DESCRIPTION, endpoints=ENDPOINTS, wire=WIRE)
LOGIN_HINT = "run: gemini, then choose Login with Google"
CLI = OwnCli(
    "gemini",
    "~/.gemini/oauth_creds.json",
    "Google allows Gemini CLI's login only in Gemini CLI (other tools can use gemini-api, an API key, or vertex)",
)


class GeminiProvider(OwnCliLogin):
    table = TABLE
    cli = CLI
    api = API
    cli_login = LOGIN_HINT

    @property
    def client(self) -> OAuthClient:
        """Gemini CLI's installed-app client: its public secret goes in the form, as google-auth-library sends it."""
        return OAuthClient(
            self.wire.client_id or CLIENT_ID,
            self.wire.client_secret or CLIENT_SECRET,
            auth_method="client_secret_post",
            headers=dict(self.wire.token_headers or {}),
        )

    async def refresh(self, ctx: ProviderContext, credential: Credential) -> Credential:
        try:
            tokens = await self.redeem(ctx, self.endpoints["token"], self.client, credential)
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
