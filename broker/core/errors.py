"""Errors with stable codes that travel on the wire and become CLI exit statuses.

    BrokerError                     internal             500  exit 1
     ├── BadRequest                 bad_request          400  exit 2
     ├── UnknownProvider            unknown_provider     404  exit 2
     ├── NotLoggedIn                not_logged_in        404  exit 3
     ├── LoginRequired              login_required       401  exit 3
     ├── LoginFailed                login_failed         400  exit 1
     ├── Unauthorized               unauthorized         401  exit 1
     ├── Forbidden                  forbidden            403  exit 1
     ├── RefreshFailed              refresh_failed       502  exit 1
     │    ├── RefreshUncertain      refresh_uncertain    502  exit 1
     │    └── LeftToCli             left_to_cli          502  exit 1
     ├── UpstreamUnavailable        upstream_unavailable 503  exit 1
     ├── ConfigError                config_error         500  exit 78
     ├── StoreError                 store_error          500  exit 74
     └── DaemonUnavailable          daemon_unavailable   ---  exit 69

The server turns any of these into ``{"error": {"code", "message", "hint"}}`` with
``status``; the client turns that body back into the same class, so a CLI command
exits with the status of the error the daemon raised. This module is stdlib-only:
the fast client path imports it.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~5 ms to import; the fast client path avoids it
if TYPE_CHECKING:
    from typing import Any, ClassVar


class BrokerError(Exception):
    """Base of every error broker reports to a person or a client."""

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    exit_status: ClassVar[int] = 1
    default_hint: ClassVar[str] = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint

    def to_wire(self) -> dict[str, Any]:
        """The JSON error body of the socket API."""
        return {"error": {"code": self.code, "message": self.message, "hint": self.hint}}

    def __str__(self) -> str:
        return self.message


class BadRequest(BrokerError):
    code = "bad_request"
    status = 400
    exit_status = 2


class UnknownProvider(BrokerError):
    code = "unknown_provider"
    status = 404
    exit_status = 2
    default_hint = "run: broker providers"


class NotLoggedIn(BrokerError):
    """No credential exists yet for this provider/account."""

    code = "not_logged_in"
    status = 404
    exit_status = 3


class LoginRequired(BrokerError):
    """The credential exists but can no longer be refreshed (revoked, expired grant)."""

    code = "login_required"
    status = 401
    exit_status = 3


class LoginFailed(BrokerError):
    """A login did not complete: denied, expired, cancelled, bad redirect."""

    code = "login_failed"
    status = 400


class Unauthorized(BrokerError):
    """The auth proxy's answer to a request without its key, or with a wrong or expired one."""

    code = "unauthorized"
    status = 401


class Forbidden(BrokerError):
    code = "forbidden"
    status = 403


class RefreshFailed(BrokerError):
    """The upstream refused a refresh for a reason that is not a dead grant."""

    code = "refresh_failed"
    status = 502


class RefreshUncertain(RefreshFailed):
    """A refresh whose request may have reached the upstream, with no answer: never sent again by itself."""

    code = "refresh_uncertain"


class LeftToCli(RefreshFailed):
    """A followed file's refresh only its CLI can make safely now (it may be making it this moment)."""

    code = "left_to_cli"
    cli_running = False
    """Set by the daemon: a process of that CLI was running, so its new file may come any moment."""


class UpstreamUnavailable(BrokerError):
    """The upstream could not be reached or answered with a transient fault."""

    code = "upstream_unavailable"
    status = 503


class ConfigError(BrokerError):
    code = "config_error"
    exit_status = 78


class StoreError(BrokerError):
    code = "store_error"
    exit_status = 74


class DaemonUnavailable(BrokerError):
    """Raised on the client side only: nothing listens on the socket."""

    code = "daemon_unavailable"
    status = 503
    exit_status = 69
    default_hint = "run: broker serve   (or: systemctl --user start broker.socket)"


_BY_CODE: dict[str, type[BrokerError]] = {
    cls.code: cls
    for cls in (
        BrokerError,
        BadRequest,
        UnknownProvider,
        NotLoggedIn,
        LoginRequired,
        LoginFailed,
        Unauthorized,
        Forbidden,
        RefreshFailed,
        RefreshUncertain,
        LeftToCli,
        UpstreamUnavailable,
        ConfigError,
        StoreError,
        DaemonUnavailable,
    )
}


def from_wire(body: Any) -> BrokerError:
    """Rebuild the error a daemon sent; unknown codes keep their code and text."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return BrokerError("the daemon sent a malformed error response")
    code = str(error.get("code", "internal"))
    cls = _BY_CODE.get(code, BrokerError)
    exc = cls(str(error.get("message", code)), str(error.get("hint", "")))
    if cls is BrokerError and code != "internal":
        exc.code = code  # type: ignore[misc]
    return exc
