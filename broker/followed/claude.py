"""Claude Code's ``.credentials.json``: where it is, what it holds, how refreshed tokens go back in.

Claude Code's refresh tokens rotate, and Claude Code instances that refresh the same copy
log each other out: broker refreshes first (10 minutes ahead, Claude Code's own margin is
5) and writes back. Claude Code holds ``.oauth_refresh.lock`` around its re-read, request
and write (and then, where it can, the older ``~/.claude.lock``), and ``.storage-write.lock``
around each write (npm proper-lockfile: a directory, its mtime kept fresh by the holder):
broker takes the same two locks in the same order, so the two never redeem one refresh
token twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from broker.core.model import Credential
from broker.followed.format import (
    CliFormat,
    CliLock,
    FollowedFile,
    file_path,
    home,
    ms_timestamp,
    require,
)
from broker.providers.claude import LOGIN_HINT, ClaudeProvider

ACCOUNT = "claude-code"
CLI = "Claude Code"
CONFIG_VARIABLE = "CLAUDE_CONFIG_DIR"
FILE_NAME = ".credentials.json"
OAUTH_KEY = "claudeAiOauth"
LEAD = 600.0
REFRESH_LOCK = ".oauth_refresh.lock"
REFRESH_LOCK_STALE = 60.0
STORAGE_WRITE_LOCK = ".storage-write.lock"
STORAGE_WRITE_STALE = 15.0


def credential_in(doc: dict[str, Any], provider: ClaudeProvider) -> Credential:
    """The login in ``claudeAiOauth``, with the scopes it was granted (the refresh asks for them again)."""
    oauth = require(doc, OAUTH_KEY, dict, "Claude Code's file")
    expires_at = ms_timestamp(oauth, "expiresAt", f"{OAUTH_KEY}.expiresAt")
    refresh_token = oauth.get("refreshToken")
    return Credential(
        provider=provider.name,
        account=ACCOUNT,
        access_token=require(oauth, "accessToken", str, OAUTH_KEY),
        refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else None,
        expires_at=expires_at,
        base_url=provider.base_url,
        api=provider.api,
        extra={k: oauth[k] for k in ("scopes", "subscriptionType") if k in oauth},
    )


def merge(doc: dict[str, Any], credential: Credential) -> dict[str, Any]:
    oauth = doc.setdefault(OAUTH_KEY, {})
    oauth["accessToken"] = credential.access_token
    if credential.refresh_token:
        oauth["refreshToken"] = credential.refresh_token
    if credential.expires_at is not None:
        oauth["expiresAt"] = int(credential.expires_at * 1000)
    return doc


FORMAT = CliFormat(ACCOUNT, CLI, LOGIN_HINT, merge, lead=LEAD)


def files(provider: ClaudeProvider, env: Mapping[str, str]) -> tuple[FollowedFile, ...]:
    path = provider.follow.file or file_path(env, CONFIG_VARIABLE, home(env) / ".claude", FILE_NAME)
    return (
        FORMAT.file(
            provider,
            path,
            partial(credential_in, provider=provider),
            refresh_locks=(CliLock(path.parent / REFRESH_LOCK, "mkdir", REFRESH_LOCK_STALE),),
            write_locks=(CliLock(path.parent / STORAGE_WRITE_LOCK, "mkdir", STORAGE_WRITE_STALE),),
        ),
    )
