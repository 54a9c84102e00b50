"""OpenAI's device login for Codex (``codex login --device-auth``), which is not RFC 8628.

The user code comes from a JSON endpoint whose ``interval`` is a string; polling
answers HTTP 403 or 404 while the user has not approved; approval hands back an
authorization code together with the PKCE verifier the server generated, and that
pair is redeemed at the token endpoint like a browser login, with the issuer's
``/deviceauth/callback`` as the redirect URI. The whole wait is bounded (15 minutes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from broker.flows.device_code import Now, Sleep
from broker.flows.errors import OAuthError, TransportError
from broker.flows.http import HttpClient, HttpResponse
from broker.flows.token import OAuthClient, TokenSet, parse_token_response, request_token
from broker.providers.base import Emit

from broker.core.errors import LoginFailed

LIFETIME = 900.0
"""How long a user code is good for; OpenAI does not say it in the answer."""
DEFAULT_INTERVAL = 5.0
PENDING_STATUSES = frozenset({403, 404})
VERIFY_PATH = "/codex/device"
CALLBACK_PATH = "/deviceauth/callback"
MAX_TRANSPORT_BACKOFF = 60.0


@dataclass(frozen=True)
class DeviceEndpoints:
    usercode: str
    poll: str
    token: str

    @property
    def issuer(self) -> str:
        """``https://auth.openai.com``: where the user enters the code and the callback lives."""
        parts = urlsplit(self.usercode)
        return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class UserCode:
    device_auth_id: str = field(repr=False)
    user_code: str
    interval: float
    expires_in: float


@dataclass(frozen=True)
class Approval:
    authorization_code: str = field(repr=False)
    code_verifier: str = field(repr=False)


async def login(
    http: HttpClient,
    endpoints: DeviceEndpoints,
    client: OAuthClient,
    emit: Emit,
    *,
    now: Now,
    sleep: Sleep,
    provider: str,
) -> TokenSet:
    """Ask for a user code, show it, wait for approval, redeem the code."""
    code = await request_user_code(http, endpoints.usercode, client.client_id, provider)
    await emit(
        {
            "event": "verify",
            "verification_uri": endpoints.issuer + VERIFY_PATH,
            "user_code": code.user_code,
            "expires_in": int(code.expires_in),
        }
    )
    approval = await wait_for_approval(http, endpoints.poll, code, now=now, sleep=sleep)
    return await request_token(
        http,
        endpoints.token,
        client,
        "authorization_code",
        {
            "code": approval.authorization_code,
            "redirect_uri": endpoints.issuer + CALLBACK_PATH,
            "code_verifier": approval.code_verifier,
        },
        now=now(),
    )


async def request_user_code(http: HttpClient, endpoint: str, client_id: str, provider: str) -> UserCode:
    response = await http.request("POST", endpoint, json_body={"client_id": client_id})
    if response.status == 404:
        raise LoginFailed(
            f"{provider}: device login is not enabled for this account (HTTP 404 from {response.url})",
            f"sign in with the browser instead: broker login {provider} (with no browser on this machine, "
            "open the address on another one and paste back the address it ends on)",
        )
    data = _answer(response)
    user_code = data.get("user_code") or data.get("usercode")
    device_auth_id = data.get("device_auth_id")
    if not isinstance(user_code, str) or not isinstance(device_auth_id, str) or not user_code or not device_auth_id:
        raise OAuthError("invalid_response", "the device login answer lacks device_auth_id or user_code")
    return UserCode(
        device_auth_id=device_auth_id,
        user_code=user_code,
        interval=_seconds(data.get("interval"), DEFAULT_INTERVAL),
        expires_in=_seconds(data.get("expires_in"), LIFETIME),
    )


async def wait_for_approval(http: HttpClient, endpoint: str, code: UserCode, *, now: Now, sleep: Sleep) -> Approval:
    """Poll at the given interval until approval, an error, or the end of the code's life."""
    deadline = now() + code.expires_in
    body = {"device_auth_id": code.device_auth_id, "user_code": code.user_code}
    backoff = code.interval

    def left() -> float:
        return max(0.0, deadline - now())

    while True:
        if left() <= 0:
            minutes = round(code.expires_in / 60)
            raise OAuthError("expired_token", f"the code was not approved within {minutes} minutes")
        await sleep(min(code.interval, left()))
        try:
            response = await http.request("POST", endpoint, json_body=body)
            if response.status in PENDING_STATUSES:
                continue
            data = _answer(response)
        except TransportError as exc:
            backoff = min(MAX_TRANSPORT_BACKOFF, max(backoff * 2, exc.retry_after or 0.0, 1.0))
            await sleep(min(backoff, left()))
            continue
        authorization_code, verifier = data.get("authorization_code"), data.get("code_verifier")
        if not isinstance(authorization_code, str) or not isinstance(verifier, str):
            raise OAuthError("invalid_response", "the approval lacks authorization_code or code_verifier")
        return Approval(authorization_code=authorization_code, code_verifier=verifier)


def _answer(response: HttpResponse) -> dict[str, Any]:
    """A JSON object; errors raise as the token endpoint's do (OpenAI's error objects included)."""
    if response.status >= 400:
        parse_token_response(response, now=0.0)  # raises OAuthError, or TransportError for 5xx/429
    return response.json_object()


def _seconds(value: object, default: float) -> float:
    """A positive number of seconds from a number or a numeric string (OpenAI sends ``"5"``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return default
    try:
        seconds = float(value)
    except ValueError:
        return default
    return seconds if 0 < seconds < math.inf else default
