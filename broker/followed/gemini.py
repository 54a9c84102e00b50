"""Gemini CLI's ``oauth_creds.json``: where it is, what it holds, how refreshed tokens go back in.

The write-back merges: Google's refresh answer has no refresh token, and replacing the
file with it logs Gemini CLI out an hour later. Gemini CLI refreshes 5 minutes ahead of
expiry; broker comes first, at 10.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from broker.core.model import Credential
from broker.followed.format import CliFormat, FollowedFile, home, ms_timestamp, optional_str, require
from broker.providers.gemini import LOGIN_HINT, GeminiProvider

ACCOUNT = "gemini-cli"
CLI = "Gemini CLI"
HOME_VARIABLE = "GEMINI_CLI_HOME"
"""Replaces the home directory for Gemini CLI: the file is ``$GEMINI_CLI_HOME/.gemini/oauth_creds.json``."""
LEAD = 600.0


def default_path(env: Mapping[str, str]) -> Path:
    cli_home = Path(env[HOME_VARIABLE]).expanduser() if env.get(HOME_VARIABLE) else home(env)
    return cli_home / ".gemini" / "oauth_creds.json"


def credential_in(doc: dict[str, Any], provider: GeminiProvider) -> Credential:
    where = "Gemini CLI's file"
    expires_at = ms_timestamp(doc, "expiry_date", f"{where}: expiry_date")
    return Credential(
        provider=provider.name,
        account=ACCOUNT,
        access_token=require(doc, "access_token", str, where),
        refresh_token=optional_str(doc, "refresh_token"),
        expires_at=expires_at,
        token_type=optional_str(doc, "token_type") or "Bearer",
        base_url=provider.base_url,
        api=provider.api,
    )


def merge(doc: dict[str, Any], credential: Credential) -> dict[str, Any]:
    """The new access token and expiry into Gemini CLI's JSON; its refresh token and the rest stay."""
    doc["access_token"] = credential.access_token
    if credential.refresh_token:
        doc["refresh_token"] = credential.refresh_token
    if credential.expires_at is not None:
        doc["expiry_date"] = int(credential.expires_at * 1000)
    for key in ("id_token", "scope"):
        if isinstance(credential.extra.get(key), str):
            doc[key] = credential.extra[key]
    return doc


FORMAT = CliFormat(ACCOUNT, CLI, LOGIN_HINT, merge, lead=LEAD)


def files(provider: GeminiProvider, env: Mapping[str, str]) -> tuple[FollowedFile, ...]:
    return (
        FORMAT.file(provider, provider.follow.file or default_path(env), partial(credential_in, provider=provider)),
    )
