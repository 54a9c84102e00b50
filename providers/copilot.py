"""GitHub Copilot: GitHub's device flow, then Copilot's short-lived token.

Two login models (providers.md). The default, ``copilot-token-exchange``, logs in with
the Copilot GitHub App's client id and keeps the long-lived GitHub token in
``Credential.extra``; clients get the Copilot token minted from it at ``copilot_token``,
renewed when that answer's ``refresh_in`` says (through ``Credential.lead``). With
``exchange = false`` and the ``client_id`` of an OAuth app GitHub approved for Copilot,
the ``gho_`` token is the bearer itself (``github-token``). GitHub answers device-flow errors with HTTP 200 and
an ``error`` field; ``flows.token`` reads those as errors whatever the status.

The headers are VS Code Copilot Chat's (microsoft/vscode-copilot-chat 0.38.0 for VS Code
1.109): ``X-GitHub-Api-Version: 2025-04-01`` on the token exchange
(``src/platform/authentication/node/copilotTokenManager.ts``), ``2025-05-01`` and
``OpenAI-Intent`` on API calls (``src/platform/networking/common/networking.ts``), with
the editor's identity on both, as copilot-api (``src/lib/api-config.ts``) sends it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from broker.flows import device_code, pat
from broker.flows.device_code import DeviceAuthorization, DeviceClient
from broker.flows.errors import FlowError, OAuthError, TransportError
from broker.flows.http import HttpClient, HttpResponse
from broker.flows.token import OAuthClient
from broker.providers.base import LoginContext, LoginRequest, Provider, ProviderContext
from broker.providers.custom import verify_event
from broker.providers.github_hosts import GitHubHost
from broker.providers.table import Table
from broker.providers.wire import Wire

from broker.core.config import Section
from broker.core.errors import BadRequest, BrokerError, LoginFailed, LoginRequired, RefreshFailed
from broker.core.model import Credential
from broker.core.sanitize import upstream_text

API = "openai-chat"
CLIENT_ID = "Iv1.b507a08c87ecfe98"
"""The Copilot GitHub App, as VS Code and copilot.vim use it (login model A)."""
SCOPES = ("read:user",)
ENDPOINT_KEYS = ("device_code", "access_token", "copilot_token", "api")
"""``api`` is the GitHub REST base: ``/user`` names the account; ``copilot_token`` derives from it."""
EDITOR = {
    "Editor-Version": "vscode/{vscode}",
    "Editor-Plugin-Version": "copilot-chat/{copilot_chat}",
    "User-Agent": "GitHubCopilotChat/{copilot_chat}",
}
"""The editor's identity, on the token exchange and on every API call."""
WIRE = Wire(
    client_id=CLIENT_ID,
    scopes=SCOPES,
    headers={
        "Copilot-Integration-Id": "vscode-chat",
        **EDITOR,
        "OpenAI-Intent": "conversation-panel",
        "X-GitHub-Api-Version": "2025-05-01",
    },
    token_headers={**EDITOR, "X-GitHub-Api-Version": "2025-04-01"},
    versions={"vscode": "1.109.0", "copilot_chat": "0.38.0"},
)
MODELS = {
    True: "copilot-token-exchange",
    False: "github-token",
}
TABLE = Table(forced_base_url=True, endpoint_keys=ENDPOINT_KEYS, wire=WIRE, own=("exchange", "enterprise_url"))
SUBSCRIPTION_PAGE = "https://github.com/settings/copilot"


@dataclass
class CopilotProvider(Provider):
    name: str
    host: GitHubHost
    endpoint_overrides: dict[str, str]
    exchange: bool
    wire: Wire
    forced_base_url: str | None = None
    proxy: str | None = None
    base_url: str | None = field(init=False)
    """The chat API of the configured host, when a Copilot token names none."""
    api: str = API
    flows: tuple[str, ...] = ("device",)
    takes_enterprise_url: bool = True
    description: str = "GitHub Copilot: GitHub device login, then Copilot's short-lived token"

    def __post_init__(self) -> None:
        self.base_url = self.fallback_base_url(self.host)

    @property
    def client_id(self) -> str:
        return self.wire.client_id or CLIENT_ID

    @classmethod
    def from_config(cls, name: str, section: Section) -> CopilotProvider:
        shared = TABLE.read(section)
        exchange = section.flag("exchange", True)
        if not exchange and "client_id" not in section:
            raise section.error(
                "client_id", "is required with exchange = false: the id of an OAuth app GitHub approved for Copilot"
            )
        enterprise_url = section.url("enterprise_url", None)
        try:
            host = GitHubHost.parse(enterprise_url)
        except ValueError as exc:
            raise section.error("enterprise_url", str(exc)) from None
        return cls(name=name, **shared, host=host, exchange=exchange)

    # --- data derived from the host ------------------------------------------------------

    def endpoints(self, host: GitHubHost) -> dict[str, str]:
        """The effective endpoints for a host: config overrides first, then the host's."""
        given = self.endpoint_overrides
        api = given.get("api", host.api).rstrip("/")
        return {
            "device_code": given.get("device_code", host.device_code),
            "access_token": given.get("access_token", host.access_token),
            "copilot_token": given.get("copilot_token", f"{api}/copilot_internal/v2/token"),
            "api": api,
        }

    def fallback_base_url(self, host: GitHubHost) -> str:
        """The chat API when the Copilot token names none, and the base of model B."""
        return self.forced_base_url or host.copilot_api

    def _host_of(self, enterprise_url: str | None) -> GitHubHost:
        try:
            return GitHubHost.parse(enterprise_url) if enterprise_url else self.host
        except ValueError as exc:
            raise BadRequest(f"--enterprise-url: {exc}") from None

    # --- login and refresh -----------------------------------------------------------------

    async def login(self, ctx: LoginContext, request: LoginRequest) -> Credential:
        if request.flow not in (None, "device"):
            raise BadRequest(f"{self.name} logs in with the device flow, not {request.flow}")
        host = self._host_of(request.enterprise_url)
        endpoints = self.endpoints(host)
        http = ctx.http(proxy=self.proxy)

        async def on_verify(grant: DeviceAuthorization) -> None:
            await ctx.emit(verify_event(grant))

        device = DeviceClient(
            device_authorization_endpoint=endpoints["device_code"],
            token_endpoint=endpoints["access_token"],
            client=OAuthClient(client_id=self.client_id),
            scopes=self.wire.scopes or (),
        )
        tokens = await device_code.run(http, device, on_verify, now=ctx.now, sleep=ctx.sleep)
        account = request.account or await _github_login(http, endpoints["api"], tokens.access_token) or "default"
        extra: dict[str, Any] = {
            "enterprise_url": host.enterprise_url,
            "login_model": MODELS[self.exchange],
            "client_id": self.client_id,
        }
        if not self.exchange:
            return self.credential_from(account, tokens, base_url=self.fallback_base_url(host), extra=extra)
        github = Credential(
            provider=self.name,
            account=account,
            access_token="",
            extra={**extra, "github_token": tokens.access_token},
        )
        return await self._exchange(ctx, github, during="login")

    async def refresh(self, ctx: ProviderContext, credential: Credential) -> Credential:
        if not credential.extra.get("github_token"):
            raise LoginRequired(f"{self.name}: this login keeps no GitHub token", f"run: broker login {self.name}")
        return await self._exchange(ctx, credential, during="refresh")

    def can_refresh(self, credential: Credential) -> bool:
        return bool(credential.extra.get("github_token"))

    async def _exchange(self, ctx: ProviderContext, credential: Credential, *, during: str) -> Credential:
        """GET ``copilot_token`` with the GitHub token: the Copilot token, its expiry and API base."""
        host = GitHubHost.parse(credential.extra.get("enterprise_url"))
        url = self.endpoints(host)["copilot_token"]
        github_token = str(credential.extra["github_token"])
        response = await ctx.http(proxy=self.proxy).request(
            "GET", url, headers={**(self.wire.token_headers or {}), "Authorization": f"token {github_token}"}
        )
        if response.status >= 500 or response.status == 429:
            raise TransportError(
                f"{response.url} answered HTTP {response.status}", response.status, response.retry_after()
            )
        if response.status == 401:
            raise OAuthError("invalid_token", "GitHub no longer accepts this login's GitHub token (revoked?)", 401)
        if response.status in (403, 404):
            raise self._no_subscription(response, credential.extra.get("github_user") or credential.account, during)
        if response.status >= 400:
            raise OAuthError("invalid_request", f"the Copilot token endpoint answered HTTP {response.status}")
        now = ctx.now()
        answer = response.json_object()
        token, expires_at = answer.get("token"), _number(answer.get("expires_at"))
        if not isinstance(token, str) or not token or expires_at is None:
            raise OAuthError("invalid_response", "the Copilot token answer lacks token or expires_at")
        refresh_in = _number(answer.get("refresh_in"))
        endpoints = answer.get("endpoints")
        api_base = endpoints.get("api") if isinstance(endpoints, dict) else None
        return credential.replace(
            access_token=token,
            expires_at=expires_at,
            issued_at=now,
            lead=renewal_lead(now, expires_at, refresh_in),
            token_type="Bearer",
            base_url=api_base.rstrip("/") if isinstance(api_base, str) and api_base else self.fallback_base_url(host),
            api=self.api,
            extra={
                **credential.extra,
                "sku": answer.get("sku") if isinstance(answer.get("sku"), str) else None,
                "exchanged_at": now,
                "refresh_at": None if refresh_in is None else now + refresh_in,
            },
        )

    def _no_subscription(self, response: HttpResponse, account: str, during: str) -> BrokerError:
        """403/404 from the exchange: the GitHub login is fine, Copilot is not on this account."""
        reason = _github_reason(response)
        message = f"{self.name}: no Copilot subscription for GitHub account {account} ({reason})"
        if during == "login":
            return LoginFailed(message, f"check the account's Copilot access at {SUBSCRIPTION_PAGE}")
        return RefreshFailed(
            message, f"check the account's Copilot access at {SUBSCRIPTION_PAGE}, then: broker refresh {self.name}"
        )

    # --- what clients and `broker providers` see -------------------------------------------

    def served(self, credential: Credential) -> dict[str, Any]:
        host = GitHubHost.parse(credential.extra.get("enterprise_url"))
        return {
            "base_url": credential.base_url or self.fallback_base_url(host),
            "api": self.api,
            "headers": dict(self.wire.headers or {}),
            "auth": self.auth,
        }

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "endpoints": self.endpoints(self.host),
            "enterprise_url": self.host.enterprise_url,
            "login_model": MODELS[self.exchange],
        }


def renewal_lead(now: float, expires_at: float, refresh_in: float | None) -> float | None:
    """Seconds before expiry at which Copilot asks for renewal (``now + refresh_in``).

    The refresher renews at the largest of its margin, 10 % of the lifetime and this
    lead, so a ``refresh_in`` later than its own rule changes nothing. At most half
    the remaining time is taken, so a bogus ``refresh_in`` cannot make the timer spin.
    """
    if refresh_in is None:
        return None
    lead = min(expires_at - (now + refresh_in), (expires_at - now) / 2)
    return lead if lead > 0 else None


async def _github_login(http: HttpClient, api: str, github_token: str) -> str | None:
    """The GitHub login name, to name the account; ``None`` when ``/user`` cannot say."""
    try:
        user = await pat.validate(http, f"{api}/user", github_token, scheme="token")
    except FlowError:
        return None
    login = user.get("login")
    return login if isinstance(login, str) and login else None


def _github_reason(response: HttpResponse) -> str:
    """GitHub's own words for a refused exchange: ``error_details``, else ``message``, else the status."""
    try:
        body = response.json_object()
    except FlowError:
        return f"HTTP {response.status}"
    details = body.get("error_details")
    parts = [details.get("notification_id"), details.get("message")] if isinstance(details, dict) else []
    words = [p for p in (*parts, body.get("message")) if isinstance(p, str) and p]
    return upstream_text(": ".join(dict.fromkeys(words[:2]))) or f"HTTP {response.status}"


def _number(value: object) -> float | None:
    """A JSON number as a float; ``None`` for anything else (booleans included)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
