"""GitLab Duo: a personal access token, traded for GitLab's short-lived AI gateway token.

The PAT is checked once at ``user``, kept in ``Credential.extra``, and exchanged at
``direct_access`` (code completions, the default) or ``agents_direct_access`` (the
gateway's Anthropic and OpenAI proxies) for the token, base URL and headers clients
get. ``direct_access`` allows 10 calls per 5 minutes per user: the answer is kept
until the refresher renews it near ``expires_at``, and a renewal asked for within a
minute of the last one returns the token in hand.

The agents routes speak as GitLab's own AI provider package does
(gitlab-org/editor-extensions/gitlab-ai-provider 3.6.1, ``src/gitlab-direct-access.ts``
and ``src/gitlab-provider.ts``): the exchange body ``{"feature_flags":
{"DuoAgentPlatformNext": true}}`` with ``User-Agent: ai-sdk-gitlab/<v>``, then the
answer's headers (minus ``x-api-key``) with ``User-Agent: gitlab-ai-provider/<v>`` on
gateway calls; GPT models through the OpenAI proxy with chat completions, and the
Codex models with the Responses API (``serve = "openai-responses"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.flows import pat
from broker.flows.errors import FlowError, OAuthError, TransportError
from broker.flows.http import HttpResponse
from broker.providers.base import LoginContext, LoginRequest, Provider, ProviderContext
from broker.providers.table import Table
from broker.providers.wire import Wire

from broker.core.config import Section
from broker.core.errors import BadRequest, BrokerError, LoginFailed, LoginRequired, RefreshFailed
from broker.core.model import Credential
from broker.core.sanitize import upstream_text

INSTANCE = "https://gitlab.com"
GATEWAY = "https://cloud.gitlab.com"
ENDPOINT_PATHS = {
    "user": "/api/v4/user",
    "direct_access": "/api/v4/code_suggestions/direct_access",
    "agents_direct_access": "/api/v4/ai/third_party_agents/direct_access",
}
"""Each endpoint under the instance; ``endpoints.KEY`` in the config replaces one whole."""
ENDPOINT_KEYS = ("instance", *ENDPOINT_PATHS)
SCOPE_ADVICE = "a personal access token with the api scope (or ai_features)"
WIRE = Wire(
    headers={"User-Agent": "gitlab-ai-provider/{gitlab_ai_provider}"},
    token_headers={"User-Agent": "ai-sdk-gitlab/{gitlab_ai_provider}"},
    versions={"gitlab_ai_provider": "3.6.0"},  # the package's own VERSION constant (in release 3.6.1)
)
"""gitlab-ai-provider's identity, on the agents routes only: the code-suggestions client (GitLab's language
server) was not checked, so that route sends and serves what GitLab's answer gives."""
FEATURE_FLAGS = {"DuoAgentPlatformNext": True}
"""``gitlab-provider.ts`` ``createAgenticChatModel``: the agents exchange's body."""
TABLE = Table(endpoint_keys=ENDPOINT_KEYS, wire=WIRE, own=("enterprise_url", "serve", "gateway_url", "feature_flags"))
AGENTS_TOKEN_LIFETIME = 25 * 60.0
"""When the agents answer has no ``expires_at``: third-party clients keep it 25 minutes."""
MIN_EXCHANGE_GAP = 60.0
KEEP_IF_LEFT = 600.0
"""A token exchanged less than MIN_EXCHANGE_GAP ago with more than KEEP_IF_LEFT left is kept."""
DROPPED_HEADERS = frozenset({"x-api-key", "authorization"})
"""Answer headers never served: the gateway authenticates the Bearer token."""


@dataclass(frozen=True)
class Route:
    """What clients are served: from which exchange, at which base, in which API style."""

    endpoint: str | None
    """Endpoint key of the exchange; ``None``: the PAT itself is served."""
    api: str
    base: str | None
    """``{gateway}``/``{instance}`` template; ``None``: the answer's ``base_url``."""
    note: str = ""

    @property
    def agents(self) -> bool:
        """A route of gitlab-ai-provider's: its feature flags in the body, its identity in the headers."""
        return self.endpoint == "agents_direct_access"


ROUTES = {
    "code_suggestions": Route("direct_access", "gitlab-code-suggestions", None),
    "anthropic": Route("agents_direct_access", "anthropic", "{gateway}/ai/v1/proxy/anthropic"),
    "openai": Route("agents_direct_access", "openai-chat", "{gateway}/ai/v1/proxy/openai/v1"),
    "openai-responses": Route("agents_direct_access", "openai-responses", "{gateway}/ai/v1/proxy/openai/v1"),
    "pat-proxy": Route(
        None,
        "openai-chat",
        "{instance}/api/v4/ai/llm/proxy",
        note="serves the personal access token itself, for instances that take only OAuth tokens at "
        "direct_access (unverified)",
    ),
}


@dataclass
class GitLabProvider(Provider):
    name: str
    instance: str
    endpoint_overrides: dict[str, str]
    serve: str = "code_suggestions"
    gateway_url: str = GATEWAY
    proxy: str | None = None
    wire: Wire = WIRE
    feature_flags: Mapping[str, bool] = field(default_factory=lambda: dict(FEATURE_FLAGS))
    flows: tuple[str, ...] = ("pat",)
    takes_enterprise_url: bool = True
    description: str = "GitLab Duo: a personal access token, then GitLab's short-lived AI gateway token"
    secret_prompt: str | None = "GitLab personal access token"
    secret_env: str | None = "GITLAB_TOKEN"

    api: str = field(init=False)
    base_url: str | None = field(init=False)
    """Both are the route's that ``serve`` picks."""

    def __post_init__(self) -> None:
        self.api = self.route.api
        self.base_url = self.route_base(self.route, self.instance)

    @property
    def route(self) -> Route:
        return ROUTES[self.serve]

    @classmethod
    def from_config(cls, name: str, section: Section) -> GitLabProvider:
        shared = TABLE.read(section)
        overrides = shared["endpoint_overrides"]
        enterprise_url = section.url("enterprise_url", None)
        if enterprise_url and "instance" in overrides and enterprise_url != overrides["instance"]:
            raise section.error("enterprise_url", "names another instance than endpoints.instance: keep one")
        return cls(
            name=name,
            **shared,
            instance=(overrides.get("instance") or enterprise_url or INSTANCE).rstrip("/"),
            serve=section.choice("serve", tuple(ROUTES), "code_suggestions"),
            gateway_url=section.url("gateway_url", GATEWAY).rstrip("/"),
            feature_flags={**FEATURE_FLAGS, **_flags(section)},
        )

    # --- data derived from the instance -------------------------------------------------

    def endpoints(self, instance: str) -> dict[str, str]:
        """Effective endpoints for an instance: config overrides first, then the instance's."""
        found = {"instance": instance}
        for key, path in ENDPOINT_PATHS.items():
            found[key] = self.endpoint_overrides.get(key, instance + path)
        return found

    def route_base(self, route: Route, instance: str) -> str | None:
        return None if route.base is None else route.base.format(gateway=self.gateway_url, instance=instance)

    # --- login and refresh ----------------------------------------------------------------

    async def login(self, ctx: LoginContext, request: LoginRequest) -> Credential:
        if request.flow not in (None, "pat"):
            raise BadRequest(f"{self.name} logs in with a personal access token, not {request.flow}")
        if not request.secret:
            raise BadRequest(f"{self.name} needs {SCOPE_ADVICE}", "pipe it in with --token-stdin, or set GITLAB_TOKEN")
        instance = _instance(request.enterprise_url) if request.enterprise_url else self.instance
        endpoints = self.endpoints(instance)
        username: str | None = None
        try:
            user = await pat.validate(ctx.http(proxy=self.proxy), endpoints["user"], request.secret)
            username = user.get("username") if isinstance(user.get("username"), str) else None
        except OAuthError as exc:
            if exc.error != "insufficient_scope":  # read_user missing: direct_access says if it matters
                raise LoginFailed(
                    f"{self.name}: {instance} did not accept the token (mistyped, expired or revoked)",
                    f"create {SCOPE_ADVICE} at {_token_page(instance)}",
                ) from None
        pending = Credential(
            provider=self.name,
            account=request.account or username or "default",
            access_token="",
            extra={"pat": request.secret, "instance": instance, "serve": self.serve},
        )
        return await self._exchange(ctx, pending, during="login")

    async def refresh(self, ctx: ProviderContext, credential: Credential) -> Credential:
        exchanged_at = credential.extra.get("exchanged_at")
        now = ctx.now()
        recent = isinstance(exchanged_at, int | float) and now - exchanged_at < MIN_EXCHANGE_GAP
        if recent and credential.remaining(now) > KEEP_IF_LEFT:
            return credential
        if not credential.extra.get("pat"):
            raise LoginRequired(f"{self.name}: this login keeps no access token", f"run: broker login {self.name}")
        return await self._exchange(ctx, credential, during="refresh")

    def can_refresh(self, credential: Credential) -> bool:
        return bool(credential.extra.get("pat")) and credential.expires_at is not None

    async def _exchange(self, ctx: ProviderContext, credential: Credential, *, during: str) -> Credential:
        """POST the route's direct-access endpoint with the PAT; the token, base URL and headers it gives."""
        personal = str(credential.extra["pat"])
        instance = str(credential.extra.get("instance") or self.instance)
        route = ROUTES.get(str(credential.extra.get("serve")), self.route)
        now = ctx.now()
        if route.endpoint is None:
            return credential.replace(
                access_token=personal,
                expires_at=None,
                issued_at=now,
                base_url=self.route_base(route, instance),
                api=route.api,
                headers={},
            )
        url = self.endpoints(instance)[route.endpoint]
        identity = (self.wire.token_headers or {}) if route.agents else {}
        body = ({"feature_flags": dict(self.feature_flags)} if self.feature_flags else {}) if route.agents else None
        response = await ctx.http(proxy=self.proxy).request(
            "POST", url, json_body=body, headers={**identity, "Authorization": f"Bearer {personal}"}
        )
        if response.status >= 500 or response.status == 429:
            raise TransportError(
                f"{response.url} answered HTTP {response.status}", response.status, response.retry_after()
            )
        if response.status >= 400:
            raise self._refused(response, instance, during)
        answer = response.json_object()
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise OAuthError("invalid_response", "the direct access answer has no token")
        expires_at = _number(answer.get("expires_at"))
        base = self.route_base(route, instance)
        if base is None:
            given = answer.get("base_url")
            base = given.rstrip("/") if isinstance(given, str) and given else f"{self.gateway_url}/ai"
        headers = answer.get("headers")
        return credential.replace(
            access_token=token,
            expires_at=now + AGENTS_TOKEN_LIFETIME if expires_at is None else expires_at,
            issued_at=now,
            base_url=base,
            api=route.api,
            headers=_served_headers(headers if isinstance(headers, dict) else {}),
            extra={**credential.extra, "exchanged_at": now},
        )

    def _refused(self, response: HttpResponse, instance: str, during: str) -> BrokerError | FlowError:
        """A 4xx from direct access, in words that say what to do."""
        body = _json_or_empty(response)
        login_hint = f"run: broker login {self.name}"
        if response.status == 403 and body.get("error") == "insufficient_scope":
            message = f"{self.name}: the token lacks the scope GitLab Duo needs: create {SCOPE_ADVICE}"
            hint = f"at {_token_page(instance)}, then: broker login {self.name}"
            return LoginFailed(message, hint) if during == "login" else LoginRequired(message, hint)
        if response.status == 401:
            if during == "refresh":
                return OAuthError("invalid_token", "GitLab no longer accepts the personal access token", 401)
            return LoginFailed(
                f"{self.name}: {response.url} refused the token that {instance}/api/v4/user accepted; "
                "this instance may take only OAuth tokens there",
                'set serve = "pat-proxy" under [providers.gitlab] to serve the token itself (unverified)',
            )
        reason = _gitlab_message(body) or f"HTTP {response.status}"
        if response.status == 404:
            message = f"{self.name}: {instance} has no {response.url} (GitLab 17.2 or later with Duo needed)"
        else:
            message = f"{self.name}: GitLab Duo is not available to this account on {instance} ({reason})"
        if during == "login":
            return LoginFailed(message, "check the account's GitLab Duo seat, or the instance's Duo settings")
        return RefreshFailed(message, login_hint)

    # --- what clients and `broker providers` see ------------------------------------------

    def served(self, credential: Credential) -> Mapping[str, Any]:
        """The gateway's headers, and on the agents routes gitlab-ai-provider's identity."""
        served = super().served(credential)
        if ROUTES.get(str(credential.extra.get("serve")), self.route).agents:
            return served
        return {**served, "headers": dict(credential.headers)}

    def describe(self) -> dict[str, Any]:
        described = {
            **super().describe(),
            "endpoints": self.endpoints(self.instance),
            "serve": self.serve,
            "serves_from": self.route.endpoint,
            "gateway_url": self.gateway_url,
            "needs": SCOPE_ADVICE,
            "feature_flags": dict(self.feature_flags),
        }
        if not self.route.agents:  # gitlab-ai-provider's identity goes on its own routes only
            described.update(headers={}, token_headers={}, feature_flags={})
        if self.route.note:
            described["note"] = self.route.note
        return described


def _flags(section: Section) -> dict[str, bool]:
    """``feature_flags``: a table of true/false, merged over gitlab-ai-provider's."""
    table = section.section("feature_flags")
    return {name: table.flag(name) for name in table.data}


def _instance(value: str) -> str:
    """A GitLab instance URL from ``--enterprise-url``: a bare host means https; a path is kept."""
    from urllib.parse import urlsplit

    text = value.strip() if "://" in value else "https://" + value.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"--enterprise-url: {value!r} is not an http(s) URL of a GitLab instance")
    return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")


def _token_page(instance: str) -> str:
    return f"{instance}/-/user_settings/personal_access_tokens?name=broker&scopes=api"


def _served_headers(headers: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in headers.items() if str(k).lower() not in DROPPED_HEADERS}


def _json_or_empty(response: HttpResponse) -> dict[str, Any]:
    try:
        return response.json_object()
    except FlowError:
        return {}


def _gitlab_message(body: Mapping[str, Any]) -> str | None:
    """GitLab's ``message`` (a string, or a table of reasons) or ``error`` as one line."""
    value = body.get("message", body.get("error"))
    if isinstance(value, dict):
        value = "; ".join(str(v) for v in value.values())
    return upstream_text(value) if value else None


def _number(value: object) -> float | None:
    """A JSON number as a float; ``None`` for anything else (booleans included)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
