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


_BY_CODE: dict[str, type[BrokerError]] = {}
"""Every error class by its wire code, filled as the classes are declared."""


class BrokerError(Exception):
    """Base of every error broker reports to a person or a client.

    A subclass declares its wire code, HTTP status, exit status and default hint in its
    class line (``class X(BrokerError, code="x", status=400)``); what it leaves out it
    inherits, and a new code is registered for ``from_wire``.
    """

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    exit_status: ClassVar[int] = 1
    default_hint: ClassVar[str] = ""

    def __init_subclass__(
        cls,
        *,
        code: str | None = None,
        status: int | None = None,
        exit_status: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init_subclass__()
        cls.status = cls.status if status is None else status
        cls.exit_status = cls.exit_status if exit_status is None else exit_status
        cls.default_hint = cls.default_hint if hint is None else hint
        if code is not None:  # a subclass without a code of its own crosses the wire as its parent
            cls.code = code
            _BY_CODE[code] = cls

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint

    def to_wire(self) -> dict[str, Any]:
        """The JSON error body of the socket API."""
        return {"error": {"code": self.code, "message": self.message, "hint": self.hint}}

    def __str__(self) -> str:
        return self.message


_BY_CODE[BrokerError.code] = BrokerError


class BadRequest(BrokerError, code="bad_request", status=400, exit_status=2):
    """A request broker cannot act on: a bad argument, a malformed socket request."""


class UnknownProvider(BrokerError, code="unknown_provider", status=404, exit_status=2, hint="run: broker providers"):
    """A provider name no configured provider has."""


class NotLoggedIn(BrokerError, code="not_logged_in", status=404, exit_status=3):
    """No credential exists yet for this provider/account."""


class LoginRequired(BrokerError, code="login_required", status=401, exit_status=3):
    """The credential exists but can no longer be refreshed (revoked, expired grant)."""


class LoginFailed(BrokerError, code="login_failed", status=400):
    """A login did not complete: denied, expired, cancelled, bad redirect."""


class Unauthorized(BrokerError, code="unauthorized", status=401):
    """The auth proxy's answer to a request without its key, or with a wrong or expired one."""


class Forbidden(BrokerError, code="forbidden", status=403):
    """Not served to this caller: another user, a program outside ``callers``, a provider kept off the proxy."""


class RefreshFailed(BrokerError, code="refresh_failed", status=502):
    """The upstream refused a refresh for a reason that is not a dead grant."""


class RefreshUncertain(RefreshFailed, code="refresh_uncertain"):
    """A refresh whose request may have reached the upstream, with no answer: never sent again by itself."""


class LeftToCli(RefreshFailed, code="left_to_cli"):
    """A followed file's refresh only its CLI can make safely now (it may be making it this moment)."""

    cli_running = False
    """Set by the daemon: a process of that CLI was running, so its new file may come any moment."""


class UpstreamUnavailable(BrokerError, code="upstream_unavailable", status=503):
    """The upstream could not be reached or answered with a transient fault."""


class ConfigError(BrokerError, code="config_error", exit_status=78):
    """The config file or a setting in the environment is invalid."""


class StoreError(BrokerError, code="store_error", exit_status=74):
    """The credential store cannot be read or written."""


class DaemonUnavailable(
    BrokerError,
    code="daemon_unavailable",
    status=503,
    exit_status=69,
    hint="run: broker serve   (or: systemctl --user start broker.socket)",
):
    """Raised on the client side only: nothing listens on the socket."""


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
