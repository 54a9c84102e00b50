"""Errors a grant can end with.

    FlowError
     ├── OAuthError       the server answered with an RFC 6749 §5.2 / RFC 8628 §3.5 error
     ├── TransportError   no usable answer: network fault, timeout, 5xx/429, non-JSON body
     └── RedirectError    the loopback redirect was unusable (state mismatch, no code)

Messages never contain a token: only the server's error code and description.
"""

from __future__ import annotations


class FlowError(Exception):
    """Base of every error a flow raises."""


class OAuthError(FlowError):
    """An error response from the authorization server, e.g. ``invalid_grant``."""

    def __init__(
        self, error: str, description: str | None = None, status: int = 400, *, interval: float | None = None
    ) -> None:
        self.error = error
        self.description = description
        self.status = status
        self.interval = interval
        """``slow_down`` only: the poll interval the server asks for from now on (GitHub sends one)."""
        text = error if not description else f"{error}: {description}"
        super().__init__(text)


class TransportError(FlowError):
    """A fault worth retrying: the request may succeed if sent again later."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        self.status = status
        self.retry_after = retry_after
        super().__init__(message)


class RedirectError(FlowError):
    """The redirect back from the browser cannot complete the login."""
