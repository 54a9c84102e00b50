"""Claude subscription: Claude Code's own login, kept fresh for every Claude Code.

Anthropic allows subscription (OAuth) tokens only inside Claude Code, so broker does
not log in to Claude itself and its proxy does not serve it. What broker adds is one
refresher for ``~/.claude/.credentials.json`` instead of one per running Claude Code:
its refresh tokens rotate, and Claude Code instances that refresh the same copy log
each other out. Claude Code refreshes 5 minutes before expiry, holding
``.oauth_refresh.lock`` around its re-read, request and write (and then, where it can,
the older ``~/.claude.lock``), and ``.storage-write.lock`` around each write: broker takes
the same two locks in the same order, so the two never redeem one refresh token twice.

Its refresh is Claude Code's (``@anthropic-ai/claude-code`` 2.1.332, the shipped bundle):
a JSON body with ``grant_type``, ``refresh_token``, ``client_id`` and ``scope`` (the
login's own scopes), posted by axios with no User-Agent of Claude Code's own, so axios
says ``axios/<version>``; the token endpoint is reported to answer 429 to other agents.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.flows import refresh
from broker.flows.token import OAuthClient
from broker.providers.base import LoginContext, LoginRequest, Provider, ProviderContext, renewed
from broker.providers.table import Table
from broker.providers.wire import Wire

from broker.core.config import Section
from broker.core.errors import BadRequest
from broker.core.model import Credential
from broker.followed.format import CliLock, FileProblem, FollowedFile, file_path, home, require

NAME = "claude"
DESCRIPTION = "Claude subscription, from Claude Code's login (usable only by Claude Code itself)"
API = "anthropic"
BASE_URL = "https://api.anthropic.com"
CLIENT_ID = "9d1c250a-e61b-44d9-88ed-5944d1962f5e"
ENDPOINTS = {
    "token": "https://platform.claude.com/v1/oauth/token",
    "authorize": "https://claude.com/cai/oauth/authorize",  # CLAUDE_AI_AUTHORIZE_URL; broker only shows it
}
SCOPES = (
    "user:profile",
    "user:inference",
    "user:sessions:claude_code",
    "user:mcp_servers",
    "user:file_upload",
    "user:plugins",
)
"""Claude Code's claude.ai scopes, asked for when the file names none."""
WIRE = Wire(
    client_id=CLIENT_ID,
    scopes=SCOPES,
    headers={"anthropic-beta": "oauth-2025-04-20"},  # what the API wants with an OAuth token
    token_headers={"User-Agent": "axios/{axios}"},  # axios's own default: Claude Code sets none on its refresh
    versions={"axios": "1.15.2"},
)
FILE_ACCOUNT = "claude-code"
OAUTH_KEY = "claudeAiOauth"
TABLE = Table(base_url=BASE_URL, endpoints=ENDPOINTS, wire=WIRE)
LOGIN_HINT = "run: claude, then /login"
REFRESH_LOCK = ".oauth_refresh.lock"
REFRESH_LOCK_STALE = 60.0
STORAGE_WRITE_LOCK = ".storage-write.lock"
STORAGE_WRITE_STALE = 15.0
"""Claude Code's locks (npm proper-lockfile: a directory, its mtime kept fresh by the holder)."""


@dataclass
class ClaudeProvider(Provider):
    name: str = NAME
    api: str = API
    base_url: str | None = BASE_URL
    flows: tuple[str, ...] = ("file",)
    description: str = DESCRIPTION
    endpoints: dict[str, str] = field(default_factory=lambda: dict(ENDPOINTS))
    wire: Wire = WIRE
    proxy: str | None = None
    proxy_allowed: bool = False
    callers: tuple[str, ...] | None = ("claude",)  # and what it starts: Claude Code's apiKeyHelper, for one
    terms: str | None = "Anthropic allows this login only in Claude Code"
    cli_login: str | None = LOGIN_HINT

    @classmethod
    def from_config(cls, name: str, section: Section) -> ClaudeProvider:
        return cls(name=name, **TABLE.read(section))

    async def login(self, ctx: LoginContext, request: LoginRequest) -> Credential:
        raise BadRequest(
            "Claude subscriptions sign in inside Claude Code; broker then keeps that login fresh",
            f"{LOGIN_HINT}; broker follows ~/.claude/.credentials.json by itself",
        )

    async def refresh(self, ctx: ProviderContext, credential: Credential) -> Credential:
        """Claude Code's refresh: its JSON body asks again for the scopes the login has."""
        scopes = credential.extra.get("scopes")
        if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
            scopes = list(self.wire.scopes or SCOPES)
        tokens = await refresh.refresh(
            ctx.http(proxy=self.proxy),
            self.endpoints["token"],
            OAuthClient(self.wire.client_id or CLIENT_ID, json_body=True, headers=dict(self.wire.token_headers or {})),
            credential.refresh_token,
            now=ctx.now(),
            scopes=scopes,
        )
        return renewed(credential, tokens)

    def can_refresh(self, credential: Credential) -> bool:
        return bool(credential.refresh_token)

    def followed_files(self, env: Mapping[str, str]) -> tuple[FollowedFile, ...]:
        if not self.follow.enabled:
            return ()
        default = file_path(env, "CLAUDE_CONFIG_DIR", home(env) / ".claude", ".credentials.json")
        path = self.follow.file or default
        return (
            FollowedFile(
                provider=self.name,
                account=FILE_ACCOUNT,
                path=path,
                cli="Claude Code",
                parse=self._parse,
                merge=_merge,
                mode="lead" if self.follow.write_back else "follow",
                login_hint=LOGIN_HINT,
                lead=600.0,
                refresh_locks=(CliLock(path.parent / REFRESH_LOCK, "mkdir", REFRESH_LOCK_STALE),),
                write_locks=(CliLock(path.parent / STORAGE_WRITE_LOCK, "mkdir", STORAGE_WRITE_STALE),),
            ),
        )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "endpoints": dict(self.endpoints),
            "note": "Anthropic allows these tokens only in Claude Code; the proxy does not serve them",
        }

    def _parse(self, doc: dict[str, Any]) -> Credential:
        oauth = require(doc, OAUTH_KEY, dict, "Claude Code's file")
        where = f"{OAUTH_KEY}"
        expires_ms = oauth.get("expiresAt")
        if not isinstance(expires_ms, int | float) or isinstance(expires_ms, bool):
            raise FileProblem(f"{where}.expiresAt is missing or not a number")
        refresh_token = oauth.get("refreshToken")
        return Credential(
            provider=self.name,
            account=FILE_ACCOUNT,
            access_token=require(oauth, "accessToken", str, where),
            refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else None,
            expires_at=expires_ms / 1000,
            base_url=self.base_url,
            api=self.api,
            extra={k: oauth[k] for k in ("scopes", "subscriptionType") if k in oauth},
        )


def _merge(doc: dict[str, Any], credential: Credential) -> dict[str, Any]:
    oauth = doc.setdefault(OAUTH_KEY, {})
    oauth["accessToken"] = credential.access_token
    if credential.refresh_token:
        oauth["refreshToken"] = credential.refresh_token
    if credential.expires_at is not None:
        oauth["expiresAt"] = int(credential.expires_at * 1000)
    return doc
