"""ChatGPT subscription for Codex: sign in with ChatGPT, serve the Responses API.

Data first; the code is what OpenAI does differently: a fixed loopback port (1455,
then 1457) that OpenAI has registered, with ``localhost`` in the redirect URI; a
device login of its own (``codex_device``); refresh as a JSON body with single-use
refresh tokens; and the account id from the id_token's claims, which the Codex
backend wants as the ``ChatGPT-Account-ID`` header.

The wire facts are the official client's (openai/codex ``codex-rs``, release 0.171.0):
the authorize URL of ``login/src/server.rs`` (``build_authorize_url``), the identifying
headers of ``login/src/auth/default_client.rs`` (``default_headers``), which go on the
refresh (``login/src/auth/manager.rs``, ``request_chatgpt_token_refresh``) and on every
API call together with the ``version`` header of ``model-provider-info/src/lib.rs``
(``create_openai_provider``). The code exchange and the device login use a plain client
without those headers (``server.rs`` ``exchange_code_for_tokens``,
``device_code_auth.rs``), as broker does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.flows.errors import FlowError, OAuthError, TransportError
from broker.flows.pkce import LISTEN_HOST, PkceClient, PkceLogin
from broker.flows.token import OAuthClient, TokenSet
from broker.providers import codex_device
from broker.providers.base import LoginContext, LoginRequest, ProviderContext
from broker.providers.builtin import Builtin
from broker.providers.jwt_claims import account_name, claims
from broker.providers.table import Table
from broker.providers.upstream_errors import DEAD_GRANT
from broker.providers.wire import Wire

from broker.core.config import Section
from broker.core.errors import BadRequest, LoginFailed
from broker.core.model import Credential

DESCRIPTION = "ChatGPT subscription for Codex (sign in with ChatGPT)"
API = "openai-responses"
BASE_URL = "https://chatgpt.com/backend-api/codex"
CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
SCOPES = ("openid", "profile", "email", "offline_access", "api.connectors.read", "api.connectors.invoke")
"""``server.rs`` ``build_authorize_url``."""
ORIGINATOR = "codex_cli_rs"
"""``default_client.rs`` ``DEFAULT_ORIGINATOR``; auth.openai.com checks it against the client id's allow-list."""
USER_AGENT = ORIGINATOR + "/{codex} ({os} {os_version}; {arch}) unknown"
"""``default_client.rs`` ``get_codex_user_agent``: originator/version (os_info type and version; arch), then
the terminal (``terminal-detection``), ``unknown`` where there is none, as for a daemon."""
IDENTITY = {"originator": ORIGINATOR, "User-Agent": USER_AGENT}
"""``default_client.rs`` ``default_headers``: on the refresh and on every API call."""
WIRE = Wire(
    client_id=CLIENT_ID,
    scopes=SCOPES,
    authorize_params={
        "id_token_add_organizations": "true",
        "codex_cli_simplified_flow": "true",
        "originator": ORIGINATOR,
    },
    headers={**IDENTITY, "version": "{codex}"},  # version: model-provider-info create_openai_provider
    token_headers=IDENTITY,
    versions={"codex": "0.171.0"},
)
ENDPOINTS = {
    "authorize": "https://auth.openai.com/oauth/authorize",
    "token": "https://auth.openai.com/oauth/token",
    "device_usercode": "https://auth.openai.com/api/accounts/deviceauth/usercode",
    "device_token": "https://auth.openai.com/api/accounts/deviceauth/token",
    "revoke": "https://auth.openai.com/oauth/revoke",
}
FLOWS = ("pkce", "device")
REDIRECT_HOST = "localhost"
REDIRECT_PORT = 1455
FALLBACK_REDIRECT_PORT = 1457
"""The only two ports OpenAI accepts in this client's redirect URI."""
REDIRECT_PATH = "/auth/callback"
AUTH_CLAIM = "https://api.openai.com/auth"
PROFILE_CLAIM = "https://api.openai.com/profile"
ACCOUNT_ID_CLAIM = "chatgpt_account_id"
ACCOUNT_HEADER = "ChatGPT-Account-ID"
DEAD_REFRESH_CODES = frozenset({"refresh_token_expired", "refresh_token_reused", "refresh_token_invalidated"})
"""OpenAI's codes for a refresh token that will never work again, compared without case; any 401 is
dead too (``manager.rs``, ``classify_refresh_token_failure``)."""
API_KEY_API = "openai-chat"
API_KEY_BASE_URL = "https://api.openai.com/v1"
"""A plain OpenAI API key (Codex's ``OPENAI_API_KEY`` login) is served as it is, at OpenAI's own API."""
KEYRING_NOTE = (
    'with cli_auth_credentials_store = "keyring" in its config.toml, Codex keeps its login in the OS keyring '
    "and writes no auth.json: broker then has no file to follow (log in with: broker login codex)"
)
TABLE = Table(
    base_url=BASE_URL,
    description=DESCRIPTION,
    endpoints=ENDPOINTS,
    wire=WIRE,
    own=("redirect_port", "fallback_redirect_port"),
)


@dataclass(kw_only=True)
class CodexProvider(Builtin):
    table = TABLE
    api = API
    flows = FLOWS
    base_url: str | None
    description: str
    endpoints: dict[str, str]
    wire: Wire
    redirect_ports: tuple[int, ...]

    @classmethod
    def own_fields(cls, section: Section) -> dict[str, Any]:
        first = section.integer("redirect_port", REDIRECT_PORT, min=1, max=65535)
        second = section.integer("fallback_redirect_port", FALLBACK_REDIRECT_PORT, min=1, max=65535)
        return {"redirect_ports": (first,) if first == second else (first, second)}

    @property
    def client_id(self) -> str:
        return self.wire.client_id or CLIENT_ID

    @property
    def form_client(self) -> OAuthClient:
        """Code exchanges are form-encoded, from a client without Codex's identifying headers."""
        return OAuthClient(client_id=self.client_id)

    @property
    def json_client(self) -> OAuthClient:
        """Refreshes are a JSON body, sent with Codex's identifying headers."""
        return OAuthClient(client_id=self.client_id, json_body=True, headers=dict(self.wire.token_headers or {}))

    async def login(self, ctx: LoginContext, request: LoginRequest) -> Credential:
        flow = request.flow or self.flows[0]
        if flow not in self.flows:
            raise BadRequest(f"{self.name} logs in with {' or '.join(self.flows)}, not {flow}")
        http = ctx.http(proxy=self.proxy)
        if flow == "device":
            endpoints = codex_device.DeviceEndpoints(
                usercode=self.endpoints["device_usercode"],
                poll=self.endpoints["device_token"],
                token=self.endpoints["token"],
            )
            tokens = await codex_device.login(
                http, endpoints, self.form_client, ctx.emit, now=ctx.now, sleep=ctx.sleep, provider=self.name
            )
        else:
            tokens = await self._browser_login(ctx)
        return self._credential(request.account or _account_name(tokens), tokens, source="login")

    async def _browser_login(self, ctx: LoginContext) -> TokenSet:
        """PKCE with the listener on the first free port of the registered ones."""
        http = ctx.http(proxy=self.proxy)
        for port in self.redirect_ports:
            pending = PkceLogin(http, self._pkce_client(port), now=ctx.now)
            try:
                url = await pending.start()
            except FlowError:
                continue  # the port is taken: the next registered one, if any
            try:
                await ctx.emit({"event": "open", "url": url, "login_id": ctx.register_pkce(pending)})
                return await pending.finish()
            finally:
                await pending.close()
        ports = " and ".join(str(port) for port in self.redirect_ports)
        raise LoginFailed(
            f"{self.name}: cannot listen on {LISTEN_HOST} port {ports} for the sign-in redirect: "
            f"{'both are' if len(self.redirect_ports) > 1 else 'it is'} in use, and OpenAI accepts no other port",
            f"close the program using {'them' if len(self.redirect_ports) > 1 else 'it'} (another sign-in "
            f"still waiting?) and try again, or sign in with a code instead: broker login {self.name} --device",
        )

    def _pkce_client(self, port: int) -> PkceClient:
        return PkceClient(
            authorization_endpoint=self.endpoints["authorize"],
            token_endpoint=self.endpoints["token"],
            client=self.form_client,
            scopes=self.wire.scopes or (),
            redirect_host=REDIRECT_HOST,
            redirect_port=port,
            redirect_path=REDIRECT_PATH,
            extra_params=dict(self.wire.authorize_params or {}),
        )

    async def refresh(self, ctx: ProviderContext, credential: Credential) -> Credential:
        try:
            tokens = await self.redeem(ctx, self.endpoints["token"], self.json_client, credential)
        except OAuthError as exc:
            raise _as_dead_grant(exc) from None
        except TransportError as exc:
            if exc.status == 401:  # Codex: any 401, whatever its body, ends the login
                raise OAuthError("invalid_grant", str(exc), 401) from None
            raise
        return self._credential(credential.account, tokens, source=credential.source, previous=credential)

    def can_refresh(self, credential: Credential) -> bool:
        return bool(credential.refresh_token)

    def served(self, credential: Credential) -> Mapping[str, Any]:
        """A ChatGPT login speaks as Codex; a plain API key from ``auth.json`` is served as it is."""
        served = super().served(credential)
        return {**served, "headers": dict(credential.headers)} if credential.api == API_KEY_API else served

    def describe(self) -> dict[str, Any]:
        redirects = [f"http://{REDIRECT_HOST}:{port}{REDIRECT_PATH}" for port in self.redirect_ports]
        return {
            **super().describe(),
            "endpoints": dict(self.endpoints),
            "redirect_uris": redirects,
            "note": KEYRING_NOTE,
        }

    def _credential(
        self, account: str, tokens: TokenSet, *, source: str, previous: Credential | None = None
    ) -> Credential:
        """The refresh answer may omit the id_token: the account id then stays what it was."""
        old = previous.extra if previous else {}
        id_token = tokens.id_token or old.get("id_token")
        account_id = account_id_of(id_token) or account_id_of(tokens.access_token) or old.get("account_id")
        extra = {"id_token": id_token, "account_id": account_id}
        return self.credential_from(
            account,
            tokens,
            source=source,
            expires_at=tokens.expires_at or _jwt_expiry(tokens.access_token),
            headers={ACCOUNT_HEADER: account_id} if account_id else {},
            extra={k: v for k, v in extra.items() if v},
        )


def account_id_of(token: str | None) -> str | None:
    """The ChatGPT account id in a token's OpenAI auth claim (the Codex backend wants it as a header)."""
    value = claims(token).get(AUTH_CLAIM, {})
    account_id = value.get(ACCOUNT_ID_CLAIM) if isinstance(value, dict) else None
    return account_id if isinstance(account_id, str) and account_id else None


def _account_name(tokens: TokenSet) -> str:
    """The email of the id_token (top level or OpenAI's profile claim), else the account id."""
    values = claims(tokens.id_token)
    profile = values.get(PROFILE_CLAIM)
    email = values.get("email") or (profile.get("email") if isinstance(profile, dict) else None)
    if isinstance(email, str) and email:
        return email
    return account_name(values) or account_id_of(tokens.id_token) or account_id_of(tokens.access_token) or "default"


def _jwt_expiry(token: str) -> float | None:
    """OpenAI's token answer may omit ``expires_in``; the access token is a JWT with ``exp``."""
    return jwt_time(token, "exp")


def jwt_time(token: str, claim: str) -> float | None:
    """A time claim (``exp``, ``iat``) of an OpenAI token, a JWT; ``None`` when it has none."""
    value = claims(token).get(claim)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _as_dead_grant(exc: OAuthError) -> OAuthError:
    """OpenAI's dead-refresh codes (and any 401) as the ``invalid_grant`` the refresher knows."""
    if exc.error in DEAD_GRANT or exc.error == "invalid_client":
        return exc
    if exc.error.lower() not in DEAD_REFRESH_CODES and exc.status != 401:
        return exc
    return OAuthError("invalid_grant", str(exc), exc.status)
