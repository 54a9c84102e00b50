"""Qwen (chat.qwen.ai): RFC 8628 device login with PKCE, then an OpenAI-compatible API.

Data first; the code is what Qwen does differently: the API host comes with the token
(``resource_url``, which may change on refresh), the OAuth host sits behind a firewall
that answers some clients with an HTML page and HTTP 200, and the free OAuth tier
ended on 2026-04-15, so refusals are reported with the server's own words.

The wire facts are Qwen Code's (QwenLM/qwen-code 0.24.4, ``packages/core/src/qwen/qwenOAuth2.ts``
for the OAuth requests and the poll rhythm, ``packages/core/src/core/openaiContentGenerator/
provider/dashscope.ts`` ``buildHeaders`` for the API headers).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from broker.flows import device_code
from broker.flows.device_code import DeviceAuthorization, DeviceClient, PollPolicy
from broker.flows.errors import OAuthError, TransportError
from broker.flows.token import OAuthClient, TokenSet
from broker.providers.base import LoginContext, LoginRequest, ProviderContext
from broker.providers.builtin import Builtin
from broker.providers.custom import verify_event
from broker.providers.jwt_claims import account_name, claims
from broker.providers.table import Table
from broker.providers.upstream_errors import to_broker_error
from broker.providers.wire import Wire

from broker.core.config import Section
from broker.core.errors import BadRequest, BrokerError, LoginFailed, UpstreamUnavailable
from broker.core.model import Credential

DESCRIPTION = "Qwen Code's OAuth login (free tier ended 2026-04-15; existing logins work until refused)"
API = "openai-chat"
DEFAULT_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"
CLIENT_ID = "f0304373b74a44d2b584a3fb70ca9e56"
SCOPES = ("openid", "profile", "email", "model.completion")
ENDPOINTS = {
    "device_code": "https://chat.qwen.ai/api/v1/oauth2/device/code",
    "token": "https://chat.qwen.ai/api/v1/oauth2/token",
}
FLOWS = ("device",)
USER_AGENT = "QwenCode/{qwen_code} ({node_platform}; {node_arch})"
"""``dashscope.ts`` ``buildHeaders``: the CLI version, Node's process.platform and process.arch."""
WIRE = Wire(
    client_id=CLIENT_ID,
    scopes=SCOPES,
    headers={  # dashscope.ts buildHeaders, with an OAuth token
        "User-Agent": USER_AGENT,
        "X-DashScope-CacheControl": "enable",
        "X-DashScope-UserAgent": USER_AGENT,
        "X-DashScope-AuthType": "qwen-oauth",
    },
    token_headers={"User-Agent": "node"},  # qwenOAuth2.ts sends none of its own: Node's fetch says "node"
    versions={"qwen_code": "0.24.4"},
)
POLL = PollPolicy(
    interval=2.0,
    slow_down_step=0.0,
    slow_down_factor=1.5,
    max_interval=10.0,  # "poll_interval" in the config moves the start, not this cap
    reset_on_pending=True,
    first_poll_at_once=True,
)
"""``qwenOAuth2.ts`` ``authWithQwenDeviceFlow``: poll at once, then every 2 s; 1.5 times longer per ``slow_down`` (HTTP
429), at most 10 s; 2 s again after a plain ``authorization_pending``. The server's ``interval`` is not read."""
DEAD_STATUSES = frozenset({400, 401})
"""``qwenOAuth2.ts`` ``refreshAccessToken``: Qwen Code deletes its login on either, whatever the body says."""
REFUSAL_HINT = (
    "Qwen's free OAuth tier ended on 2026-04-15: if this account has no paid plan, the server's refusal "
    "is final; use a DashScope API key instead"
)
WAF_NOTE = (
    "chat.qwen.ai sits behind a firewall that answers some clients with a web page instead of JSON; "
    "try again later or through another network ([providers.qwen] proxy)"
)
TABLE = Table(forced_base_url=True, description=DESCRIPTION, endpoints=ENDPOINTS, wire=WIRE, own=("poll_interval",))


@dataclass(kw_only=True)
class QwenProvider(Builtin):
    table = TABLE
    api = API
    flows = FLOWS
    base_url = DEFAULT_BASE_URL
    """Served when the token names no ``resource_url``."""
    description: str
    endpoints: dict[str, str]
    wire: Wire
    forced_base_url: str | None
    """``base_url`` from the config: it wins over the token's ``resource_url``."""
    poll: PollPolicy

    @classmethod
    def own_fields(cls, section: Section) -> dict[str, Any]:
        return {
            "poll": dataclasses.replace(POLL, interval=section.number("poll_interval", POLL.interval or 2.0, min=0.01))
        }

    @property
    def client(self) -> OAuthClient:
        return OAuthClient(client_id=self.wire.client_id or CLIENT_ID, headers=dict(self.wire.token_headers or {}))

    async def login(self, ctx: LoginContext, request: LoginRequest) -> Credential:
        if request.flow not in (None, *self.flows):
            raise BadRequest(f"{self.name} logs in with a device code only, not {request.flow}")
        device = DeviceClient(
            device_authorization_endpoint=self.endpoints["device_code"],
            token_endpoint=self.endpoints["token"],
            client=self.client,
            scopes=self.wire.scopes or (),
            pkce=True,
            authorization_headers={"x-request-id": str(uuid.uuid4())},  # qwenOAuth2.ts requestDeviceAuthorization
            poll=self.poll,
        )

        async def on_verify(grant: DeviceAuthorization) -> None:
            await ctx.emit(verify_event(grant))

        try:
            tokens = await device_code.run(ctx.http(proxy=self.proxy), device, on_verify, now=ctx.now, sleep=ctx.sleep)
        except TransportError as exc:
            if not _not_json(exc):
                raise
            raise UpstreamUnavailable(f"{self.name}: {exc}", WAF_NOTE) from None
        except OAuthError as exc:
            if exc.error in ("access_denied", "expired_token"):
                raise
            raise LoginFailed(f"{self.name}: the server refused the login: {exc}", REFUSAL_HINT) from None
        account = request.account or account_name(claims(tokens.id_token)) or "default"
        return self._credential(account, tokens, source="login")

    async def refresh(self, ctx: ProviderContext, credential: Credential) -> Credential:
        try:
            tokens = await self.redeem(ctx, self.endpoints["token"], self.client, credential)
        except TransportError as exc:
            if not _not_json(exc):
                raise
            raise TransportError(f"{exc}; {WAF_NOTE}", exc.status, exc.retry_after) from None
        except OAuthError as exc:
            dead = OAuthError("invalid_grant", str(exc), exc.status) if exc.status in DEAD_STATUSES else exc
            raise _with_hint(to_broker_error(dead, self.name, "refresh")) from None
        return self._credential(credential.account, tokens, source=credential.source, previous=credential)

    def can_refresh(self, credential: Credential) -> bool:
        return bool(credential.refresh_token)

    def served(self, credential: Credential) -> Mapping[str, Any]:
        return {
            **super().served(credential),
            "base_url": self.forced_base_url or credential.base_url or self.base_url,
        }

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "base_url": self.forced_base_url or self.base_url,
            "endpoints": dict(self.endpoints),
            "poll_interval": self.poll.interval,
        }

    def _credential(
        self, account: str, tokens: TokenSet, *, source: str, previous: Credential | None = None
    ) -> Credential:
        """A refresh answer without ``resource_url`` keeps the API host the login gave."""
        resource_url = tokens.raw.get("resource_url")
        if not isinstance(resource_url, str) or not resource_url.strip():
            resource_url = previous.extra.get("resource_url") if previous else None
        return self.credential_from(
            account,
            tokens,
            source=source,
            base_url=base_url_for(resource_url),
            extra={"resource_url": resource_url} if resource_url else {},
        )


def base_url_for(resource_url: str | None) -> str | None:
    """``portal.qwen.ai`` → ``https://portal.qwen.ai/v1``; a scheme or a ``/v1`` already there is kept."""
    if not resource_url or not resource_url.strip():
        return None
    url = resource_url.strip().rstrip("/")
    if "://" not in url:
        url = "https://" + url
    return url if url.endswith("/v1") else url + "/v1"


def _not_json(exc: TransportError) -> bool:
    """An answer that was not JSON (the firewall's page), as opposed to a 5xx/429 or a network fault."""
    return exc.status is not None and exc.status < 429


def _with_hint(error: BrokerError) -> BrokerError:
    error.hint = f"{error.hint}; {REFUSAL_HINT}" if error.hint else REFUSAL_HINT
    return error
