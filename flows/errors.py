"""Errors a grant can end with.

    FlowError
     ├── OAuthError       the server answered with an RFC 6749 §5.2 / RFC 8628 §3.5 error
     ├── TransportError   no usable answer: network fault, timeout, 5xx/429, non-JSON body
     ├── RedirectError    the loopback redirect was unusable (state mismatch, no code, wrong iss)
     └── IdTokenError     the ID token fails OpenID Connect Core §3.1.3.7 (iss, aud, exp, signature)

Messages never contain a token: only the server's error code and description, and
those are upstream text: cleaned (``broker.sanitize``) before anything can log or show them.
"""

from __future__ import annotations

from broker.core.sanitize import upstream_text


class FlowError(Exception):
    """Base of every error a flow raises; its message is made safe to log and print."""

    def __init__(self, message: str) -> None:
        super().__init__(upstream_text(message))


class OAuthError(FlowError):
    """An error response from the authorization server, e.g. ``invalid_grant``."""

    def __init__(
        self, error: str, description: str | None = None, status: int = 400, *, interval: float | None = None
    ) -> None:
        self.error = upstream_text(error)
        self.description = None if description is None else upstream_text(description)
        self.status = status
        self.interval = interval
        """``slow_down`` only: the poll interval the server asks for from now on (GitHub sends one)."""
        super().__init__(self.error if not self.description else f"{self.error}: {self.description}")


class TransportError(FlowError):
    """A fault worth retrying: the request may succeed if sent again later."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        retry_after: float | None = None,
        *,
        maybe_delivered: bool = False,
    ) -> None:
        self.status = status
        self.retry_after = retry_after
        self.maybe_delivered = maybe_delivered
        """The request may have reached the server, and no answer came back (a timeout, a dropped
        connection): sent again, a single-use grant would be presented twice."""
        super().__init__(message)


class RedirectError(FlowError):
    """The redirect back from the browser cannot complete the login."""


class IdTokenError(FlowError):
    """The ID token cannot be trusted: another issuer or audience, expired, or a bad signature."""
