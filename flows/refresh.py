"""Refreshing an access token, RFC 6749 §6.

Rotation-aware: when the answer carries a new refresh token the old one is dead
(single-use tokens: Codex, Claude, Kimi), so the caller must persist the returned
``TokenSet`` before it serves the access token. When the answer omits the refresh
token (Google), the old one stays valid and is carried over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from broker.flows.errors import OAuthError
from broker.flows.http import HttpClient
from broker.flows.token import OAuthClient, TokenSet, request_token


async def refresh(
    http: HttpClient,
    token_endpoint: str,
    client: OAuthClient,
    refresh_token: str | None,
    *,
    now: float,
    scopes: Sequence[str] = (),
    extra: Mapping[str, str] | None = None,
) -> TokenSet:
    """Redeem ``refresh_token`` once; raises OAuthError (e.g. ``invalid_grant``) or TransportError.

    No refresh token at all (a login or a CLI's file without one) is a dead grant too.
    """
    if not refresh_token:
        raise OAuthError("invalid_grant", "there is no refresh token to redeem")
    params: dict[str, str | Sequence[str] | None] = {"refresh_token": refresh_token, **(extra or {})}
    if scopes:
        params["scope"] = " ".join(scopes)
    tokens = await request_token(http, token_endpoint, client, "refresh_token", params, now=now)
    if tokens.refresh_token is None:
        tokens = dataclasses.replace(tokens, refresh_token=refresh_token)
    return tokens
