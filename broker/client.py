"""Talking to the daemon over its Unix socket, with the standard library only.

This is the fast path of ``broker token``: it imports nothing beyond the stdlib, so
a shell's ``$(broker token codex)`` costs about as much as starting Python. Other
Python tools can use it too::

    from broker.client import get_token
    token = get_token("codex")
    client = OpenAI(api_key=token["access_token"], base_url=token["base_url"],
                    default_headers=token["headers"])
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from broker.errors import BrokerError, DaemonUnavailable, from_wire

DEFAULT_TIMEOUT = 60.0


def default_socket_path() -> Path:
    """Where the daemon listens: ``$BROKER_SOCKET``, else the config's or the default path."""
    explicit = os.environ.get("BROKER_SOCKET")
    if explicit:
        return Path(explicit).expanduser()
    from broker.config import socket_path_from_env

    return socket_path_from_env(os.environ)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("broker", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise DaemonUnavailable(f"no broker daemon answers on {self.socket_path}") from None
        except OSError as exc:
            sock.close()
            raise DaemonUnavailable(f"cannot reach the broker daemon at {self.socket_path}: {exc.strerror}") from None
        self.sock = sock


class Client:
    """One connection to the daemon, reused across requests (HTTP keep-alive)."""

    def __init__(self, socket_path: Path | str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.socket_path = Path(socket_path) if socket_path else default_socket_path()
        self._conn = _UnixHTTPConnection(self.socket_path, timeout)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request; the decoded JSON answer, or the daemon's error raised."""
        response = self._send(method, path, body)
        raw = response.read()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            raise BrokerError(f"the daemon answered HTTP {response.status} with a non-JSON body") from None
        if response.status >= 400:
            raise from_wire(data)
        return data

    def stream(self, method: str, path: str, body: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Yield the NDJSON events of a streaming answer (a login) as they arrive."""
        response = self._send(method, path, body)
        if response.status >= 400:
            raw = response.read()
            raise from_wire(json.loads(raw) if raw else None)
        for line in response:
            if line.strip():
                yield json.loads(line)

    def token(self, provider: str, account: str | None = None, min_ttl: float | None = None) -> dict[str, Any]:
        query = {k: str(v) for k, v in (("account", account), ("min_ttl", min_ttl)) if v is not None}
        path = f"/v1/token/{quote(provider, safe='')}"
        result: dict[str, Any] = self.request("GET", path + (f"?{urlencode(query)}" if query else ""))
        return result

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> http.client.HTTPResponse:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            self._conn.request(method, path, body=payload, headers=headers)
            return self._conn.getresponse()
        except DaemonUnavailable:
            raise
        except (ConnectionError, http.client.HTTPException, TimeoutError) as exc:
            self._conn.close()
            raise DaemonUnavailable(f"the broker daemon at {self.socket_path} stopped answering ({exc})") from None


def get_token(
    provider: str, account: str | None = None, min_ttl: float | None = None, socket_path: Path | str | None = None
) -> dict[str, Any]:
    """A fresh token for ``provider``: access_token, base_url, headers, expires_at, api."""
    with Client(socket_path) as client:
        return client.token(provider, account, min_ttl)
