"""OAuth 2.0 Device Authorization Grant, RFC 8628.

§3.1-3.2 device authorization request and response, §3.3 user interaction (through
the injected ``on_verify`` callback), §3.4-3.5 polling the token endpoint:
``authorization_pending`` keeps polling, ``slow_down`` adds 5 seconds to the
interval for this and all later polls (or takes the server's new ``interval`` if
longer), ``access_denied`` and ``expired_token`` end the flow. The whole wait is
bounded by ``expires_in``. Transport faults while polling back off exponentially
(§3.5) instead of ending the login.

A client whose server expects another rhythm gives a ``PollPolicy`` (Qwen Code: first
poll at once, then every 2 s, 1.5 times longer per ``slow_down`` up to 10 s, back to 2 s on a plain
pending answer); the default is the RFC's.

Optional PKCE on the device grant (Qwen) sends an S256 ``code_challenge`` with the
authorization request and the ``code_verifier`` with every poll.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from broker.flows.errors import OAuthError, TransportError
from broker.flows.http import HttpClient
from broker.flows.token import LoginClient, TokenSet, request_token

from broker.core.sanitize import printable

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_INTERVAL = 5.0
SLOW_DOWN_STEP = 5.0
MAX_TRANSPORT_BACKOFF = 60.0


@dataclass(frozen=True)
class PollPolicy:
    """When to poll the token endpoint; the defaults are RFC 8628 §3.5's."""

    interval: float | None = None
    """Seconds between polls; ``None``: the server's ``interval`` (5 s when it gives none)."""
    slow_down_step: float = SLOW_DOWN_STEP
    """Added to the interval on ``slow_down`` (after ``slow_down_factor``)."""
    slow_down_factor: float = 1.0
    max_interval: float = math.inf
    reset_on_pending: bool = False
    """A plain ``authorization_pending`` brings the interval back to where it started."""
    first_poll_at_once: bool = False
    """Poll as soon as the code is shown, and wait between polls only."""

    def first(self, grant: DeviceAuthorization) -> float:
        return grant.interval if self.interval is None else self.interval

    def slowed(self, interval: float, asked: float | None) -> float:
        """The interval after ``slow_down``; a server-driven policy also takes the server's new one."""
        slower = interval * self.slow_down_factor + self.slow_down_step
        if self.interval is None and asked:
            slower = max(slower, asked)
        return min(slower, self.max_interval)


@dataclass(frozen=True, kw_only=True)
class DeviceClient(LoginClient):
    """Endpoints and client settings of one device-flow login."""

    device_authorization_endpoint: str
    pkce: bool = False
    authorization_headers: Mapping[str, str] = field(default_factory=dict)
    """Sent with the §3.1 request only, besides the client's own headers."""
    poll: PollPolicy = field(default_factory=PollPolicy)


@dataclass(frozen=True)
class DeviceAuthorization:
    """§3.2: what the user must see, and what the client polls with."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float
    code_verifier: str | None = field(default=None, repr=False)


Now = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
OnVerify = Callable[[DeviceAuthorization], Awaitable[None]]


async def authorize(http: HttpClient, device: DeviceClient) -> DeviceAuthorization:
    """§3.1: ask for a device code and a user code."""
    form: dict[str, str] = {"client_id": device.client.client_id, **device.extra_params}
    if device.scopes:
        form["scope"] = " ".join(device.scopes)
    verifier = None
    if device.pkce:
        from authlib.oauth2.rfc7636 import create_s256_code_challenge  # a login's, not the daemon's start

        verifier = secrets.token_urlsafe(64)
        form["code_challenge"] = create_s256_code_challenge(verifier)
        form["code_challenge_method"] = "S256"
    response = await http.request(
        "POST",
        device.device_authorization_endpoint,
        form=form,
        headers={**device.client.headers, **device.authorization_headers},
    )
    if response.status >= 500 or response.status == 429:
        raise TransportError(f"{response.url} answered HTTP {response.status}", response.status)
    data = response.json_object()
    if "error" in data or response.status >= 400:
        description = data.get("error_description")
        raise OAuthError(
            str(data.get("error") or "invalid_request"),
            description if isinstance(description, str) else None,
            response.status,
        )
    try:
        return DeviceAuthorization(
            device_code=str(data["device_code"]),
            user_code=printable(str(data["user_code"])),
            verification_uri=printable(str(data.get("verification_uri") or data["verification_url"])),
            verification_uri_complete=printable(str(data.get("verification_uri_complete") or "")) or None,
            expires_in=float(data.get("expires_in") or 900),
            interval=float(data.get("interval") or DEFAULT_INTERVAL),
            code_verifier=verifier,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise OAuthError("invalid_response", f"device authorization response lacks {exc}") from None


async def poll(
    http: HttpClient, device: DeviceClient, grant: DeviceAuthorization, *, now: Now, sleep: Sleep
) -> TokenSet:
    """§3.4-3.5: poll until the user decides or the code expires."""
    deadline = now() + grant.expires_in
    policy = device.poll
    interval = start = policy.first(grant)
    transport_backoff = interval
    params = {"device_code": grant.device_code, "code_verifier": grant.code_verifier}
    wait = not policy.first_poll_at_once
    while True:
        if now() >= deadline:
            raise OAuthError("expired_token", "the device code expired before the user approved it")
        if wait:
            await sleep(min(interval, max(0.0, deadline - now())))
        wait = True
        try:
            return await request_token(http, device.token_endpoint, device.client, GRANT_TYPE, params, now=now())
        except OAuthError as exc:
            if exc.error == "authorization_pending":
                interval = start if policy.reset_on_pending else interval
                continue
            if exc.error == "slow_down":
                interval = policy.slowed(interval, exc.interval)
                continue
            raise
        except TransportError as exc:
            transport_backoff = min(MAX_TRANSPORT_BACKOFF, max(transport_backoff * 2, exc.retry_after or 0.0, 1.0))
            await sleep(min(transport_backoff, max(0.0, deadline - now())))


async def run(http: HttpClient, device: DeviceClient, on_verify: OnVerify, *, now: Now, sleep: Sleep) -> TokenSet:
    """The whole grant: authorize, show the code, poll."""
    grant = await authorize(http, device)
    await on_verify(grant)
    return await poll(http, device, grant, now=now, sleep=sleep)
