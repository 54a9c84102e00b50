"""Claude subscription: Claude Code's own login, kept fresh for every Claude Code.

Anthropic allows subscription (OAuth) tokens only inside Claude Code, so broker does
not log in to Claude itself and its proxy does not serve it. What broker adds is one
refresher for Claude Code's login instead of one per running Claude Code: its refresh
tokens rotate, and Claude Code instances that refresh the same copy log each other out.
Its file, its locks and the write-back are ``broker.followed.claude``'s.

Its refresh is Claude Code's (``@anthropic-ai/claude-code`` 2.1.332, the shipped bundle):
a JSON body with ``grant_type``, ``refresh_token``, ``client_id`` and ``scope`` (the
login's own scopes), posted by axios with no User-Agent of Claude Code's own, so axios
says ``axios/<version>``; the token endpoint is reported to answer 429 to other agents.
"""

from __future__ import annotations

from broker.flows.token import OAuthClient
from broker.providers.base import ProviderContext, renewed
from broker.providers.builtin import OwnCli, OwnCliLogin
from broker.providers.table import Table
from broker.providers.wire import Wire

from broker.core.model import Credential

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
TABLE = Table(base_url=BASE_URL, description=DESCRIPTION, endpoints=ENDPOINTS, wire=WIRE)
LOGIN_HINT = "run: claude, then /login"
CLI = OwnCli("claude", "~/.claude/.credentials.json", "Anthropic allows this login only in Claude Code")


class ClaudeProvider(OwnCliLogin):
    table = TABLE
    cli = CLI
    api = API
    cli_login = LOGIN_HINT

    async def refresh(self, ctx: ProviderContext, credential: Credential) -> Credential:
        """Claude Code's refresh: its JSON body asks again for the scopes the login has."""
        scopes = credential.extra.get("scopes")
        if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
            scopes = list(self.wire.scopes or SCOPES)
        client = OAuthClient(
            self.wire.client_id or CLIENT_ID, json_body=True, headers=dict(self.wire.token_headers or {})
        )
        tokens = await self.redeem(ctx, self.endpoints["token"], client, credential, scopes)
        return renewed(credential, tokens)
