"""Any OAuth 2.0 / OpenID Connect server described in config (``type = "oauth"``).

Endpoints come from the config or from discovery (OpenID Connect Discovery 1.0, then
RFC 8414 metadata at the issuer); the login is the device grant or the code grant
with PKCE, as ``flow`` says; refresh is RFC 6749 §6.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker.config import Section
from broker.errors import BadRequest, LoginFailed
from broker.model import Credential
from flows import device_code, pat, refresh
from flows.device_code import DeviceAuthorization, DeviceClient
from flows.errors import FlowError
from flows.pkce import PkceClient, PkceLogin
from flows.token import OAuthClient, TokenSet
from providers.base import LoginContext, LoginRequest, Provider, ProviderContext
from providers.jwt_claims import account_name, claims

FLOWS = ("device", "pkce")
DISCOVERY_PATHS = ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server")
KEYS = (
    "type",
    "flow",
    "issuer",
    "client_id",
    "client_secret",
    "scopes",
    "device_authorization_endpoint",
    "authorization_endpoint",
    "token_endpoint",
    "userinfo_endpoint",
    "redirect_port",
    "redirect_path",
    "base_url",
    "api",
    "headers",
    "proxy",
    "description",
)


@dataclass
class Endpoints:
    device_authorization_endpoint: str | None = None
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    userinfo_endpoint: str | None = None


@dataclass
class CustomOAuthProvider(Provider):
    name: str
    api: str
    base_url: str | None
    flow: str
    client: OAuthClient
    scopes: tuple[str, ...]
    issuer: str | None
    configured: Endpoints
    redirect_port: int = 0
    redirect_path: str = "/callback"
    proxy: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    description: str = "OAuth 2.0 server from config"
    _discovered: Endpoints | None = None

    @property
    def flows(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.flow,)

    @classmethod
    def from_config(cls, name: str, section: Section) -> CustomOAuthProvider:
        section.check_keys(KEYS)
        issuer = section.url("issuer", None)
        configured = Endpoints(
            device_authorization_endpoint=section.url("device_authorization_endpoint", None),
            authorization_endpoint=section.url("authorization_endpoint", None),
            token_endpoint=section.url("token_endpoint", None),
            userinfo_endpoint=section.url("userinfo_endpoint", None),
        )
        flow = section.choice("flow", FLOWS, "device")
        if issuer is None and configured.token_endpoint is None:
            raise section.error("token_endpoint", "is required when no issuer is given for discovery")
        return cls(
            name=name,
            api=section.str("api", "openai-chat"),
            base_url=section.url("base_url", None),
            flow=flow,
            client=OAuthClient(
                client_id=section.str("client_id"),
                client_secret=section.optional_str("client_secret") or None,
            ),
            scopes=section.str_list("scopes"),
            issuer=issuer,
            configured=configured,
            redirect_port=section.int("redirect_port", 0, min=0, max=65535),
            redirect_path=section.str("redirect_path", "/callback"),
            proxy=section.optional_str("proxy"),
            headers=section.str_table("headers"),
            description=section.str("description", "OAuth 2.0 server from config"),
        )

    async def endpoints(self, ctx: ProviderContext) -> Endpoints:
        """Configured endpoints, with the gaps filled by discovery (fetched once)."""
        if self.issuer is None:
            return self.configured
        if self._discovered is None:
            self._discovered = await self._discover(ctx)
        found, given = self._discovered, self.configured
        return Endpoints(
            device_authorization_endpoint=given.device_authorization_endpoint or found.device_authorization_endpoint,
            authorization_endpoint=given.authorization_endpoint or found.authorization_endpoint,
            token_endpoint=given.token_endpoint or found.token_endpoint,
            userinfo_endpoint=given.userinfo_endpoint or found.userinfo_endpoint,
        )

    async def _discover(self, ctx: ProviderContext) -> Endpoints:
        http = ctx.http(proxy=self.proxy)
        base = (self.issuer or "").rstrip("/")
        last: str = ""
        for path in DISCOVERY_PATHS:
            response = await http.request("GET", base + path)
            if response.status == 200:
                meta = response.json_object()
                return Endpoints(**{k: _str_or_none(meta.get(k)) for k in Endpoints.__dataclass_fields__})
            last = f"HTTP {response.status}"
        raise FlowError(f"no discovery document at {base} ({last}); set the endpoints in the config")

    async def login(self, ctx: LoginContext, request: LoginRequest) -> Credential:
        flow = request.flow or self.flow
        if flow not in self.flows:
            raise BadRequest(f"{self.name} logs in with {self.flow}, not {flow}")
        endpoints = await self.endpoints(ctx)
        token_endpoint = _need(endpoints.token_endpoint, "token_endpoint", self.name)
        http = ctx.http(proxy=self.proxy)
        if flow == "device":

            async def on_verify(grant: DeviceAuthorization) -> None:
                await ctx.emit(verify_event(grant))

            device = DeviceClient(
                device_authorization_endpoint=_need(
                    endpoints.device_authorization_endpoint, "device_authorization_endpoint", self.name
                ),
                token_endpoint=token_endpoint,
                client=self.client,
                scopes=self.scopes,
            )
            tokens = await device_code.run(http, device, on_verify, now=ctx.now, sleep=ctx.sleep)
        else:
            pkce = PkceClient(
                authorization_endpoint=_need(endpoints.authorization_endpoint, "authorization_endpoint", self.name),
                token_endpoint=token_endpoint,
                client=self.client,
                scopes=self.scopes,
                redirect_port=self.redirect_port,
                redirect_path=self.redirect_path,
            )
            pending = PkceLogin(http, pkce, now=ctx.now)
            try:
                url = await pending.start()
                await ctx.emit({"event": "open", "url": url, "login_id": ctx.register_pkce(pending)})
                tokens = await pending.finish()
            finally:
                await pending.close()
        account = request.account or await self._account_of(ctx, tokens, endpoints)
        return self._credential(account, tokens, source="login")

    async def refresh(self, ctx: ProviderContext, credential: Credential) -> Credential:
        endpoints = await self.endpoints(ctx)
        token_endpoint = _need(endpoints.token_endpoint, "token_endpoint", self.name)
        tokens = await refresh.refresh(
            ctx.http(proxy=self.proxy),
            token_endpoint,
            self.client,
            credential.refresh_token,
            now=ctx.now(),
        )
        return self._credential(credential.account, tokens, source=credential.source)

    def can_refresh(self, credential: Credential) -> bool:
        return bool(credential.refresh_token)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "issuer": self.issuer, "client_id": self.client.client_id}

    def _credential(self, account: str, tokens: TokenSet, *, source: str) -> Credential:
        return Credential(
            provider=self.name,
            account=account,
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token,
            expires_at=tokens.expires_at,
            issued_at=tokens.issued_at,
            token_type=tokens.token_type,
            base_url=self.base_url,
            api=self.api,
            headers=dict(self.headers),
            source=source,
            extra={"scope": tokens.scope} if tokens.scope else {},
        )

    async def _account_of(self, ctx: ProviderContext, tokens: TokenSet, endpoints: Endpoints) -> str:
        """Name the account after the id_token, else userinfo, else ``default``."""
        name = account_name(claims(tokens.id_token))
        if name is None and endpoints.userinfo_endpoint:
            try:
                info = await pat.validate(ctx.http(proxy=self.proxy), endpoints.userinfo_endpoint, tokens.access_token)
            except FlowError:
                info = {}
            name = account_name(info)
        return name or "default"


def verify_event(grant: DeviceAuthorization) -> dict[str, Any]:
    """The ``verify`` login event of the socket API (RFC 8628 §3.3)."""
    event: dict[str, Any] = {
        "event": "verify",
        "verification_uri": grant.verification_uri,
        "user_code": grant.user_code,
        "expires_in": grant.expires_in,
    }
    if grant.verification_uri_complete:
        event["verification_uri_complete"] = grant.verification_uri_complete
    return event


def _need(value: str | None, key: str, provider: str) -> str:
    if not value:
        raise LoginFailed(
            f"{provider} has no {key}", f"set {key} under [providers.{provider}] or an issuer with discovery"
        )
    return value


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
