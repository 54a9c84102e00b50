"""A token the user pastes (a personal access token or an API key), validated once.

Not an OAuth grant: the token is checked against an endpoint that needs it (e.g.
GitLab's ``/api/v4/user``) so a typo or a missing scope is reported at login time,
not at the first API call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker.flows.errors import OAuthError, TransportError
from broker.flows.http import HttpClient


async def validate(
    http: HttpClient,
    url: str,
    token: str,
    *,
    header: str = "Authorization",
    scheme: str | None = "Bearer",
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """GET ``url`` with the token; its JSON answer (e.g. the user) on success.

    401 becomes ``invalid_token``, 403 ``insufficient_scope`` (RFC 6750 §3.1 names).
    """
    value = f"{scheme} {token}" if scheme else token
    response = await http.request("GET", url, headers={**(headers or {}), header: value})
    if response.status >= 500 or response.status == 429:
        raise TransportError(f"{response.url} answered HTTP {response.status}", response.status)
    if response.status == 401:
        raise OAuthError("invalid_token", "the token was not accepted (mistyped, expired or revoked)", 401)
    if response.status == 403:
        raise OAuthError("insufficient_scope", "the token lacks a scope this provider needs", 403)
    if response.status >= 400:
        raise OAuthError("invalid_request", f"HTTP {response.status}", response.status)
    return response.json_object()
