"""Talking to the daemon over its Unix socket, with the standard library only.

This is the fast path of ``broker token``: it imports nothing beyond a few stdlib
modules (not even ``http.client``, see ``broker.wire``), so a shell's
``$(broker token codex)`` costs about as much as starting Python. Other Python tools
can use it too (``await aget_token(...)`` in asyncio code)::

    from broker.client import get_token
    token = get_token("codex")
    client = OpenAI(api_key=token["access_token"], base_url=token["base_url"],
                    default_headers=token["headers"])
"""

import json
import os

from broker.client.wire import Connection, ProtocolError, Response
from broker.core.trust import Untrusted

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from typing import Any

    from broker.core.errors import DaemonUnavailable

DEFAULT_TIMEOUT = 60.0
UNTRUSTED_HINT = (
    "nothing was sent; if that is not your broker, remove it, or set BROKER_SOCKET to your daemon's socket"
    " (its directory must be yours and closed to others)"
)
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def default_socket_path() -> str:
    """Where the daemon listens: ``$BROKER_SOCKET``, else the config's ``[daemon] socket`` or the default.

    A plain absolute ``BROKER_SOCKET`` (nothing to expand) is taken as it is, without
    loading the config readers: that is the common case of ``$(broker token x)``.
    """
    explicit = os.environ.get("BROKER_SOCKET", "")
    if explicit.startswith("/") and "$" not in explicit:
        return explicit
    from broker.core.locations import socket_path

    return socket_path(os.environ)


def quote(value: str) -> str:
    """Percent-encode a path segment or query value (RFC 3986 unreserved kept)."""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in value.encode())


def query(**values: object) -> str:
    """``?a=1&b=2`` from the values that are not None; empty when there are none."""
    pairs = [f"{quote(k)}={quote(str(v))}" for k, v in values.items() if v is not None]
    return "?" + "&".join(pairs) if pairs else ""


class Client:
    """One keep-alive connection to the daemon."""

    def __init__(self, socket_path: "Path | str | None" = None, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.socket_path = str(socket_path) if socket_path else default_socket_path()
        self._conn = Connection(self.socket_path, timeout)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: "dict[str, Any] | None" = None) -> "Any":
        """Send one request; the decoded JSON answer, or the daemon's error raised."""
        response = self._send(method, path, body)
        try:
            raw = response.read()
        except (OSError, ProtocolError) as exc:
            raise self._stopped(exc) from None
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            from broker.core.errors import BrokerError

            raise BrokerError(f"the daemon answered HTTP {response.status} with a non-JSON body") from None
        if response.status >= 400:
            from broker.core.errors import from_wire

            raise from_wire(data)
        return data

    def stream(self, method: str, path: str, body: "dict[str, Any] | None" = None) -> "Iterator[dict[str, Any]]":
        """Yield the NDJSON events of a streaming answer (a login) as they arrive."""
        response = self._send(method, path, body)
        if response.status >= 400:
            from broker.core.errors import from_wire

            raw = response.read()
            raise from_wire(json.loads(raw) if raw else None)
        try:
            for line in response.lines():
                if line.strip():
                    yield json.loads(line)
        except (OSError, ProtocolError) as exc:
            raise self._stopped(exc) from None

    def token(self, provider: str, account: str | None = None, min_ttl: float | None = None) -> "dict[str, Any]":
        result: dict[str, Any] = self.request(
            "GET", f"/v1/token/{quote(provider)}" + query(account=account, min_ttl=min_ttl)
        )
        return result

    def _send(self, method: str, path: str, body: "dict[str, Any] | None") -> Response:
        payload = json.dumps(body).encode() if body is not None else None
        try:
            return self._conn.request(method, path, payload)
        except (FileNotFoundError, ConnectionRefusedError):
            from broker.core.errors import DaemonUnavailable

            raise DaemonUnavailable(f"no broker daemon answers on {self.socket_path}") from None
        except Untrusted as exc:
            from broker.core.errors import DaemonUnavailable

            raise DaemonUnavailable(f"refusing to talk to {self.socket_path}: {exc}", UNTRUSTED_HINT) from None
        except (OSError, ProtocolError) as exc:
            raise self._stopped(exc) from None

    def _stopped(self, exc: Exception) -> "DaemonUnavailable":
        from broker.core.errors import DaemonUnavailable

        self._conn.close()
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return DaemonUnavailable(f"the broker daemon at {self.socket_path} did not answer ({reason})")


def get_token(
    provider: str, account: str | None = None, min_ttl: float | None = None, socket_path: "Path | str | None" = None
) -> "dict[str, Any]":
    """A fresh token for ``provider``: access_token, base_url, headers, expires_at, api."""
    with Client(socket_path) as client:
        return client.token(provider, account, min_ttl)


async def aget_token(
    provider: str, account: str | None = None, min_ttl: float | None = None, socket_path: "Path | str | None" = None
) -> "dict[str, Any]":
    """``get_token`` for asyncio programs.

    The same client, in a worker thread: one code path checks who answers on the socket
    before anything is sent, and a fetch is a millisecond of local I/O that a thread
    carries without holding up the event loop.
    """
    import asyncio

    return await asyncio.to_thread(get_token, provider, account, min_ttl, socket_path)
