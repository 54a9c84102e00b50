"""What every provider offers the daemon, and what the daemon hands a provider."""

from __future__ import annotations

import abc
import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
from broker.flows import refresh
from broker.flows.http import DEFAULT_TIMEOUT, HttpClient
from broker.flows.pkce import PkceLogin
from broker.flows.token import OAuthClient, TokenSet
from broker.providers.wire import Wire

from broker.core import login_options
from broker.core.errors import BadRequest
from broker.core.model import Credential

Emit = Callable[[dict[str, Any]], Awaitable[None]]
"""Sends one login event (``verify``, ``open``, ...) to whoever started the login."""


@dataclass
class ProviderContext:
    """The daemon's services a provider may use: outbound HTTP and the clock."""

    session: aiohttp.ClientSession
    now: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]
    timeout: float = DEFAULT_TIMEOUT
    """``[http] timeout``: seconds one outbound request may take in all."""

    def http(self, *, proxy: str | None = None, headers: Mapping[str, str] | None = None) -> HttpClient:
        return HttpClient(self.session, proxy=proxy, headers=headers, timeout=self.timeout)


@dataclass
class LoginContext(ProviderContext):
    """A login in progress: events go back to the client that asked for it."""

    emit: Emit = field(kw_only=True)
    register_pkce: Callable[[PkceLogin], str] = field(kw_only=True)
    """Makes a pending code-grant login reachable for a pasted redirect; returns its id."""


@dataclass(frozen=True)
class LoginRequest:
    """What the user asked for with ``broker login NAME [options]``."""

    account: str | None = None
    flow: str | None = None
    secret: str | None = field(default=None, repr=False)
    """A pasted personal access token or API key."""
    enterprise_url: str | None = None
    """GitHub Enterprise or self-managed GitLab host, for providers that have one."""


@dataclass(frozen=True)
class FollowSettings:
    """How a provider treats the CLI file it can follow (config keys of any provider)."""

    enabled: bool = True
    """False: do not follow the CLI's file at all (config key ``follow``)."""
    file: Path | None = None
    """Overrides the CLI's default path."""
    write_back: bool = True
    """False: broker never redeems the file's refresh token; it only re-reads the file."""
    prefer: Literal["login", "file"] = "login"
    """Which credential a client gets by default when both a broker login and the file exist."""


FOLLOW_KEYS = ("follow", "file", "write_back", "prefer")
SHARED_KEYS = (*FOLLOW_KEYS, "callers")
"""Keys every ``[providers.NAME]`` table may have, read by the registry."""


def callers_problem(entry: str) -> str | None:
    """Why ``entry`` is no valid ``callers`` entry (see ``broker.caller_policy``); ``None`` when it is one."""
    if not entry.strip():
        return "an empty entry names nobody"
    if entry.startswith("unit:") and not entry[5:]:
        return 'unit: needs a unit name, like "unit:agent.service"'
    if entry.startswith("cgroup:") and not entry[7:].startswith("/"):
        return 'cgroup: needs an absolute cgroup path, like "cgroup:/user.slice"'
    return None


class Provider(abc.ABC):
    """One LLM service. Subclasses are mostly data; code only where the service differs.

    Every attribute below is plain data: a subclass declares what no config changes as a
    class attribute and what the config sets as a dataclass field (a built-in's are read by
    its table, ``providers.builtin``); one that derives a value from its other fields
    (GitLab's API from ``serve``) computes it in ``__post_init__`` rather than overriding
    the attribute with a property.
    """

    name: str
    api: str
    base_url: str | None
    flows: tuple[str, ...]
    description: str = ""
    auth: str = "bearer"
    """How clients send the token: ``bearer``, ``x-api-key``, ``api-key`` or ``none``."""
    needs_credential: bool = True
    """False for servers without auth (Ollama): the token answer needs no stored login."""
    proxy_allowed: bool = True
    """False where the service allows only its own client (Claude, Gemini CLI): the proxy refuses it."""
    secret_prompt: str | None = None
    """For logins that take a pasted secret (``pat``, ``apikey``): what the CLI asks for."""
    secret_env: str | None = None
    """An environment variable the CLI may read that secret from (e.g. ``GITLAB_TOKEN``)."""
    follow: FollowSettings = FollowSettings()
    wire: Wire | None = None
    """A built-in's official-client facts (``providers.wire``); its ``headers`` are served with every token."""
    callers: tuple[str, ...] | None = None
    """Which of the user's processes may take its tokens (``[providers.NAME] callers``); ``None``: any."""
    terms: str | None = None
    """Why its default ``callers`` are what they are: the provider's own rule, in a sentence."""
    cli_login: str | None = None
    """For a provider whose only login is another CLI's (Claude Code, Gemini CLI, gcloud): what to run there."""
    takes_enterprise_url: bool = False
    """Whether ``broker login --enterprise-url`` means something here (GitHub Enterprise, self-managed GitLab)."""
    proxy: str | None = None
    """The outbound HTTP proxy of this provider's requests (``[providers.NAME] proxy``); ``None``: the environment's."""

    def login_hint(self, account: str | None = None) -> str:
        """The command that signs in to this provider (as ``account``): one that works for it, never a circle."""
        if self.cli_login is not None:
            return self.cli_login
        if not self.needs_credential:
            return f"{self.name} needs no login: run: broker token {self.name}"
        return f"run: broker login {self.name}" + (f" --account {shlex.quote(account)}" if account else "")

    def login_options(self) -> tuple[str, ...]:
        """The ``broker login`` options this provider takes, as a person types them."""
        return login_options.offered(
            self.flows,
            secret=bool(self.secret_prompt),
            enterprise_url=self.takes_enterprise_url,
        )

    def check_login_request(self, request: LoginRequest) -> None:
        """Refuse what this provider's login does not take, naming what it does take."""
        refused = login_options.refused(
            self.flows,
            secret=bool(self.secret_prompt),
            enterprise_url=self.takes_enterprise_url,
            flow=request.flow,
            given_url=request.enterprise_url,
            given_secret=request.secret,
        )
        if refused is None:
            return
        takes = self.login_options()
        raise BadRequest(
            f"{self.name} does not take {refused}",
            f"{self.name} takes: {', '.join(takes)}" if takes else self.login_hint(),
        )

    @abc.abstractmethod
    async def login(self, ctx: LoginContext, request: LoginRequest) -> Credential:
        """Run an interactive login and return the new credential."""

    async def refresh(self, ctx: ProviderContext, credential: Credential) -> Credential:
        """A fresh credential; the default is for tokens that never expire."""
        return credential

    def can_refresh(self, credential: Credential) -> bool:
        return False

    async def redeem(
        self,
        ctx: ProviderContext,
        endpoint: str,
        client: OAuthClient,
        credential: Credential,
        scopes: Sequence[str] = (),
    ) -> TokenSet:
        """Redeem ``credential``'s refresh token once at ``endpoint``, through this provider's proxy.

        Raises OAuthError (``invalid_grant``: a dead login) or TransportError, for the provider to word.
        """
        http = ctx.http(proxy=self.proxy)
        return await refresh.refresh(http, endpoint, client, credential.refresh_token, now=ctx.now(), scopes=scopes)

    def credential_from(self, account: str, tokens: TokenSet, *, source: str = "login", **fields: Any) -> Credential:
        """A credential at this provider's API made of a token answer; ``fields`` set the rest (base URL, extra)."""
        return renewed(Credential(self.name, account, access_token="", api=self.api, source=source), tokens, **fields)

    def keyless_credential(self) -> Credential:
        """What a provider with ``needs_credential = False`` serves: no key, its base URL."""
        return Credential(
            provider=self.name, account="local", access_token="", base_url=self.base_url, api=self.api, source="none"
        )

    async def probe(self, ctx: ProviderContext) -> str | None:
        """A state learned by asking the server itself (local servers); ``None``: not probed."""
        return None

    def served(self, credential: Credential) -> Mapping[str, Any]:
        """Fields of the token answer derived from the credential (base URL, headers, API)."""
        return {
            "base_url": credential.base_url or self.base_url,
            "api": credential.api or self.api,
            "headers": {**credential.headers, **((self.wire.headers or {}) if self.wire else {})},
            "auth": self.auth,
        }

    def describe(self) -> dict[str, Any]:
        """The provider as ``broker providers --json`` shows it."""
        return {
            "name": self.name,
            "api": self.api,
            "base_url": self.base_url,
            "flows": list(self.flows),
            "auth": self.auth,
            "description": self.description,
            "login": self.login_hint().removeprefix("run: "),
            "secret_prompt": self.secret_prompt,
            "secret_env": self.secret_env,
            "callers": None if self.callers is None else list(self.callers),
            "login_options": list(self.login_options()),
            "takes_enterprise_url": self.takes_enterprise_url,
            **(self.wire.describe() if self.wire else {}),
        }


def renewed(credential: Credential, tokens: TokenSet, **fields: Any) -> Credential:
    """``credential`` with a token answer's tokens and expiry; a refresh token the answer omits stays.

    ``fields`` win over what the answer says (an expiry read elsewhere, the provider's extra).
    The token type is case-insensitive (RFC 6749 §5.1): GitHub's ``bearer`` is served as ``Bearer``.
    """
    answer = {
        "access_token": tokens.access_token,
        "refresh_token": tokens.refresh_token or credential.refresh_token,
        "expires_at": tokens.expires_at,
        "issued_at": tokens.issued_at,
        "token_type": "Bearer" if tokens.token_type.lower() == "bearer" else tokens.token_type,
    }
    return credential.replace(**{**answer, **fields})
