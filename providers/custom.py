"""Any OAuth 2.0 / OpenID Connect server described in config (``type = "oauth"``).

Endpoints come from the config or from discovery (OpenID Connect Discovery 1.0, then
RFC 8414 metadata at the issuer); the login is the device grant or the code grant
with PKCE, as ``flow`` says; refresh is RFC 6749 §6.

Defaults that make an OpenID server issue a lasting login: with no ``scopes`` in the
config, ``openid`` and ``offline_access`` are asked where the metadata lists them, and
a code grant that asks ``offline_access`` carries ``prompt=consent`` (without it a
server must drop that scope, and with it the refresh token). ``authorize_params`` adds
parameters to the authorization request, or drops a default with an empty value. An
account named after the ``id_token`` is named only once that token is validated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker.flows import device_code, pat
from broker.flows.device_code import DeviceAuthorization, DeviceClient
from broker.flows.errors import FlowError
from broker.flows.pkce import OFFLINE_ACCESS, PkceClient, PkceLogin, with_offline_consent
from broker.flows.token import OAuthClient, TokenSet
from broker.providers.base import LoginContext, LoginRequest, Provider, ProviderContext
from broker.providers.jwt_claims import account_name
from broker.providers.table import Table

from broker.core.config import Section
from broker.core.errors import BadRequest, LoginFailed
from broker.core.model import Credential

FLOWS = ("device", "pkce")
DISCOVERY_PATHS = ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server")
TABLE = Table(
    base_url=None,
    description="OAuth 2.0 server from config",
    headers=True,
    own=(
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
        "authorize_params",
        "api",
    ),
)


FLOW_PARAMS = frozenset(
    ("response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge", "code_challenge_method")
)
"""Authorization request parameters the flow sets itself: not for ``authorize_params``."""


@dataclass
class Endpoints:
    device_authorization_endpoint: str | None = None
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    userinfo_endpoint: str | None = None


@dataclass(frozen=True)
class ServerFacts:
    """What discovery says beyond the endpoints (RFC 8414 / OpenID Connect Discovery §3)."""

    issuer: str | None = None
    jwks_uri: str | None = None
    scopes_supported: tuple[str, ...] = ()
    id_token_signing_algs: tuple[str, ...] = ()
    iss_in_redirect: bool = False
    """``authorization_response_iss_parameter_supported`` (RFC 9207)."""


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
    authorize_params: dict[str, str] = field(default_factory=dict)
    """Extra authorization request parameters; an empty value drops a default (``prompt``)."""
    _discovered: tuple[Endpoints, ServerFacts] | None = None
    flows: tuple[str, ...] = field(init=False)
    """The one ``flow`` the config picks."""

    def __post_init__(self) -> None:
        self.flows = (self.flow,)

    @classmethod
    def from_config(cls, name: str, section: Section) -> CustomOAuthProvider:
        shared = TABLE.read(section)
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
        authorize_params = section.text_table("authorize_params")
        for name in sorted(FLOW_PARAMS & set(authorize_params)):
            hint = "use scopes" if name == "scope" else "broker sets it for each login"
            raise section.section("authorize_params").error(name, f"cannot be set here ({hint})")
        return cls(
            name=name,
            **shared,
            api=section.text("api", "openai-chat"),
            flow=flow,
            client=OAuthClient(
                client_id=section.text("client_id"),
                client_secret=section.optional_text("client_secret") or None,
            ),
            scopes=section.text_list("scopes"),
            issuer=issuer,
            configured=configured,
            redirect_port=section.integer("redirect_port", 0, min=0, max=65535),
            redirect_path=section.text("redirect_path", "/callback"),
            authorize_params=authorize_params,
        )

    async def endpoints(self, ctx: ProviderContext) -> Endpoints:
        """Configured endpoints, with the gaps filled by discovery (fetched once)."""
        return (await self._server(ctx))[0]

    async def _server(self, ctx: ProviderContext) -> tuple[Endpoints, ServerFacts]:
        if self.issuer is None:
            return self.configured, ServerFacts()
        if self._discovered is None:
            self._discovered = await self._discover(ctx)
        (found, facts), given = self._discovered, self.configured
        endpoints = Endpoints(
            device_authorization_endpoint=given.device_authorization_endpoint or found.device_authorization_endpoint,
            authorization_endpoint=given.authorization_endpoint or found.authorization_endpoint,
            token_endpoint=given.token_endpoint or found.token_endpoint,
            userinfo_endpoint=given.userinfo_endpoint or found.userinfo_endpoint,
        )
        return endpoints, facts

    async def _discover(self, ctx: ProviderContext) -> tuple[Endpoints, ServerFacts]:
        http = ctx.http(proxy=self.proxy)
        base = (self.issuer or "").rstrip("/")
        last: str = ""
        for path in DISCOVERY_PATHS:
            response = await http.request("GET", base + path)
            if response.status == 200:
                meta = response.json_object()
                endpoints = Endpoints(**{k: _str_or_none(meta.get(k)) for k in Endpoints.__dataclass_fields__})
                return endpoints, self._facts(meta, base)
            last = f"HTTP {response.status}"
        raise FlowError(f"no discovery document at {base} ({last}); set the endpoints in the config")

    def _facts(self, meta: dict[str, Any], base: str) -> ServerFacts:
        """The metadata's issuer must be the one configured (OpenID Connect Discovery §4.3)."""
        issuer = _str_or_none(meta.get("issuer")) or self.issuer
        if issuer is None or issuer.rstrip("/") != base:
            raise FlowError(
                f"the discovery document at {base} names the issuer {issuer!r}; "
                f"set issuer = {issuer!r} under [providers.{self.name}] if that server is the right one"
            )
        return ServerFacts(
            issuer=issuer,
            jwks_uri=_str_or_none(meta.get("jwks_uri")),
            scopes_supported=_strings(meta.get("scopes_supported")),
            id_token_signing_algs=_strings(meta.get("id_token_signing_alg_values_supported")),
            iss_in_redirect=meta.get("authorization_response_iss_parameter_supported") is True,
        )

    def _scopes(self, facts: ServerFacts) -> tuple[str, ...]:
        """The configured scopes; without any, what makes an OpenID server's login last."""
        if self.scopes:
            return self.scopes
        return tuple(scope for scope in ("openid", OFFLINE_ACCESS) if scope in facts.scopes_supported)

    async def login(self, ctx: LoginContext, request: LoginRequest) -> Credential:
        flow = request.flow or self.flow
        if flow not in self.flows:
            raise BadRequest(f"{self.name} logs in with {self.flow}, not {flow}")
        endpoints, facts = await self._server(ctx)
        token_endpoint = _need(endpoints.token_endpoint, "token_endpoint", self.name)
        http = ctx.http(proxy=self.proxy)
        scopes = self._scopes(facts)
        if flow == "device":

            async def on_verify(grant: DeviceAuthorization) -> None:
                await ctx.emit(verify_event(grant))

            device = DeviceClient(
                device_authorization_endpoint=_need(
                    endpoints.device_authorization_endpoint, "device_authorization_endpoint", self.name
                ),
                token_endpoint=token_endpoint,
                client=self.client,
                scopes=scopes,
                extra_params={name: value for name, value in self.authorize_params.items() if value},
            )
            tokens = await device_code.run(http, device, on_verify, now=ctx.now, sleep=ctx.sleep)
        else:
            pkce = PkceClient(
                authorization_endpoint=_need(endpoints.authorization_endpoint, "authorization_endpoint", self.name),
                token_endpoint=token_endpoint,
                client=self.client,
                scopes=scopes,
                redirect_port=self.redirect_port,
                redirect_path=self.redirect_path,
                extra_params=with_offline_consent(scopes, self.authorize_params),
                issuer=facts.issuer,
                issuer_in_redirect=facts.iss_in_redirect,
            )
            pending = PkceLogin(http, pkce, now=ctx.now)
            try:
                url = await pending.start()
                await ctx.emit({"event": "open", "url": url, "login_id": ctx.register_pkce(pending)})
                tokens = await pending.finish()
            finally:
                await pending.close()
        account = request.account or await self._account_of(ctx, tokens, endpoints, facts)
        return self._credential(account, tokens, source="login")

    async def refresh(self, ctx: ProviderContext, credential: Credential) -> Credential:
        endpoints = await self.endpoints(ctx)
        token_endpoint = _need(endpoints.token_endpoint, "token_endpoint", self.name)
        tokens = await self.redeem(ctx, token_endpoint, self.client, credential)
        return self._credential(credential.account, tokens, source=credential.source)

    def can_refresh(self, credential: Credential) -> bool:
        return bool(credential.refresh_token)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "issuer": self.issuer, "client_id": self.client.client_id}

    def _credential(self, account: str, tokens: TokenSet, *, source: str) -> Credential:
        return self.credential_from(
            account,
            tokens,
            source=source,
            base_url=self.base_url,
            headers=dict(self.headers),
            extra={"scope": tokens.scope} if tokens.scope else {},
        )

    async def _account_of(
        self, ctx: ProviderContext, tokens: TokenSet, endpoints: Endpoints, facts: ServerFacts
    ) -> str:
        """Name the account after the validated id_token, else userinfo, else ``default``.

        Without a known issuer an id_token cannot be validated, so it names nothing.
        """
        name = None
        if tokens.id_token and facts.issuer:
            name = account_name(await self._id_token_claims(ctx, tokens, facts))
        if name is None and endpoints.userinfo_endpoint:
            try:
                info = await pat.validate(ctx.http(proxy=self.proxy), endpoints.userinfo_endpoint, tokens.access_token)
            except FlowError:
                info = {}
            name = account_name(info)
        return name or "default"

    async def _id_token_claims(self, ctx: ProviderContext, tokens: TokenSet, facts: ServerFacts) -> dict[str, Any]:
        """The id_token's claims once iss, aud, exp (and the signature, given a JWKS) hold."""
        from broker.flows import id_token  # authlib's OpenID and joserfc: a login's, not the idle daemon's

        assert tokens.id_token is not None and facts.issuer is not None
        jwks = None
        if facts.jwks_uri:
            response = await ctx.http(proxy=self.proxy).request("GET", facts.jwks_uri)
            if response.status != 200:
                raise FlowError(f"{facts.jwks_uri} answered HTTP {response.status}: the id_token cannot be checked")
            jwks = response.json_object()
        return id_token.validate(
            tokens.id_token,
            issuer=facts.issuer,
            client_id=self.client.client_id,
            now=ctx.now(),
            jwks=jwks,
            algorithms=facts.id_token_signing_algs,
            access_token=tokens.access_token,
        )


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


def _strings(value: object) -> tuple[str, ...]:
    return tuple(item for item in value if isinstance(item, str)) if isinstance(value, list) else ()
