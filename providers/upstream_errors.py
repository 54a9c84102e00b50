"""Turns what a grant raised into the broker error a person or a client sees."""

from __future__ import annotations

from typing import Literal

from broker.flows.errors import FlowError, OAuthError, RedirectError, TransportError

from broker.core.errors import (
    BrokerError,
    LoginFailed,
    LoginRequired,
    RefreshFailed,
    UpstreamUnavailable,
)

DEAD_GRANT = {
    "invalid_grant",
    "invalid_token",
    "token_expired",
    "refresh_token_reused",
    "refresh_token_expired",
    "refresh_token_invalidated",
}
"""Answers after which a refresh token will never work again (OpenAI adds its own three)."""


def to_broker_error(
    exc: FlowError, provider: str, during: Literal["login", "refresh"], login_hint: str | None = None
) -> BrokerError:
    """``login_hint``: the command that signs this login in again (default: ``broker login PROVIDER``)."""
    login_hint = login_hint or f"run: broker login {provider}"
    if isinstance(exc, TransportError):
        if during == "refresh":
            return UpstreamUnavailable(f"{provider}: {exc}", "it is retried by itself; check the network or proxy")
        return UpstreamUnavailable(f"{provider}: {exc}", f"check the network or proxy, then {login_hint}")
    if isinstance(exc, RedirectError):
        return LoginFailed(f"{provider}: {exc}", f"to start again, {login_hint}")
    if not isinstance(exc, OAuthError):
        return LoginFailed(f"{provider}: {exc}") if during == "login" else RefreshFailed(f"{provider}: {exc}")
    text = f"{provider}: the server answered {exc}"
    if exc.error == "invalid_client":
        return (LoginFailed if during == "login" else RefreshFailed)(
            text, f"check client_id and client_secret under [providers.{provider}] in the config"
        )
    if during == "refresh":
        if exc.error in DEAD_GRANT:
            return LoginRequired(f"{provider}: the login is no longer valid ({exc})", login_hint)
        return RefreshFailed(text, login_hint)
    if exc.error == "access_denied":
        return LoginFailed(f"{provider}: the sign-in was denied", f"to try again, {login_hint}")
    if exc.error == "expired_token":
        return LoginFailed(f"{provider}: the code expired before it was approved", login_hint)
    return LoginFailed(text, login_hint)
