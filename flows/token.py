"""Token endpoint requests and responses (RFC 6749 §3.2, §4.1.3, §5.1, §5.2).

Request bodies come from authlib's ``prepare_token_request`` and client
authentication from authlib's ``encode_client_secret_*``; what is left here is the
transport and the reading of the answer, including servers (GitHub) that report
errors with HTTP 200, servers (Codex) that want a JSON body and answer errors as
objects or as a top-level ``code``, and ``slow_down`` sent with HTTP 429 (Qwen).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from broker.flows.errors import OAuthError, TransportError
from broker.flows.http import HttpClient, HttpResponse

ClientAuth = Literal["none", "client_secret_basic", "client_secret_post"]

MAX_INTERVAL = 300.0
"""A poll interval a server may ask for; anything longer is a garbled answer."""


@dataclass(frozen=True)
class OAuthClient:
    """What identifies the client at the token endpoint."""

    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    auth_method: ClientAuth | None = None
    """``None``: ``client_secret_basic`` when a secret is set, else ``none``."""
    json_body: bool = False
    """Send token requests as JSON instead of a form (Codex refresh, Claude)."""
    headers: Mapping[str, str] = field(default_factory=dict)

    def effective_auth(self) -> ClientAuth:
        if self.auth_method:
            return self.auth_method
        return "client_secret_basic" if self.client_secret else "none"


@dataclass(frozen=True, kw_only=True)
class LoginClient:
    """What every interactive grant of one client names: where its tokens come from, who
    asks, for which scopes, with which extra parameters on its first request."""

    token_endpoint: str
    client: OAuthClient
    scopes: tuple[str, ...] = ()
    extra_params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenSet:
    """A successful token response, with the expiry made absolute."""

    access_token: str = field(repr=False)
    token_type: str = "Bearer"
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None
    issued_at: float | None = None
    scope: str | None = None
    id_token: str | None = field(default=None, repr=False)
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)


async def request_token(
    http: HttpClient,
    token_endpoint: str,
    client: OAuthClient,
    grant_type: str,
    params: Mapping[str, str | Sequence[str] | None],
    *,
    now: float,
) -> TokenSet:
    """POST one grant to the token endpoint and read the answer."""
    values = {k: v for k, v in params.items() if v}
    headers = dict(client.headers)
    auth = client.effective_auth()
    if client.json_body:
        payload: dict[str, Any] = {"grant_type": grant_type, "client_id": client.client_id, **values}
        if auth != "none" and client.client_secret:
            payload["client_secret"] = client.client_secret
        response = await http.request("POST", token_endpoint, json_body=payload, headers=headers)
    else:
        if auth == "none":
            values["client_id"] = client.client_id
        from authlib.oauth2.auth import encode_client_secret_basic, encode_client_secret_post  # not at start
        from authlib.oauth2.rfc6749.parameters import prepare_token_request

        body = prepare_token_request(grant_type, **values)
        if auth == "client_secret_basic":
            _, headers, body = encode_client_secret_basic(client, "POST", token_endpoint, headers, body)
        elif auth == "client_secret_post":
            _, headers, body = encode_client_secret_post(client, "POST", token_endpoint, headers, body)
        response = await http.request("POST", token_endpoint, form=body, headers=headers)
    return parse_token_response(response, now=now)


def parse_token_response(response: HttpResponse, *, now: float) -> TokenSet:
    """A TokenSet, an OAuthError (§5.2) or a TransportError for faults worth retrying."""
    if response.status == 429 and _error_code(response) == "slow_down":
        # RFC 8628 §3.5 sent with HTTP 429 (Qwen)
        raise OAuthError("slow_down", None, 429, interval=_interval(response.json_object()))
    if response.status >= 500 or response.status == 429:
        raise TransportError(
            f"{response.url} answered HTTP {response.status}",
            status=response.status,
            retry_after=response.retry_after(),
        )
    data = response.json_object()
    error = data.get("error")
    if not error and response.status >= 400 and isinstance(data.get("code"), str):
        error = data["code"]  # OpenAI also answers {"code": "refresh_token_reused"} at the top level
    if error:
        description = data.get("error_description")
        if isinstance(error, dict):  # OpenAI: {"error": {"code", "message", "type"}}
            description = error.get("message")
            error = error.get("code") or error.get("type") or "invalid_request"
        if not isinstance(error, str):
            error = str(error)
        interval = _interval(data) if error == "slow_down" else None
        raise OAuthError(
            error, description if isinstance(description, str) else None, response.status, interval=interval
        )
    if response.status >= 400:
        raise OAuthError("invalid_request", f"HTTP {response.status} without an error code", response.status)
    return token_set_from(data, now=now)


def _interval(data: Mapping[str, Any]) -> float | None:
    """A ``slow_down`` answer's new poll interval, when it gives a sane one (GitHub does)."""
    value = data.get("interval")
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_INTERVAL:
        return None
    return float(value)


def _error_code(response: HttpResponse) -> object:
    """The ``error`` field of a JSON body, or ``None`` when the body is not JSON."""
    try:
        return response.json_object().get("error")
    except TransportError:
        return None


def token_set_from(data: Mapping[str, Any], *, now: float) -> TokenSet:
    """Read a §5.1 token response whose shape is already known to be JSON."""
    access_token = data.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise OAuthError("invalid_response", "the token response has no access_token")
    expires_at: float | None = None
    expires_in = data.get("expires_in")
    if expires_in not in (None, ""):
        try:
            expires_at = now + float(expires_in)
        except (TypeError, ValueError):
            raise OAuthError("invalid_response", "expires_in is not a number") from None
    refresh_token = data.get("refresh_token")
    scope = data.get("scope")
    id_token = data.get("id_token")
    return TokenSet(
        access_token=access_token,
        token_type=str(data.get("token_type") or "Bearer"),
        refresh_token=refresh_token if isinstance(refresh_token, str) and refresh_token else None,
        expires_at=expires_at,
        issued_at=now,
        scope=scope if isinstance(scope, str) else None,
        id_token=id_token if isinstance(id_token, str) else None,
        raw=dict(data),
    )
