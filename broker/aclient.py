"""The async twin of ``broker.client.get_token``, on aiohttp, for asyncio programs.

Imported only when ``broker.client.aget_token`` is first awaited, so the sync client
path keeps to the standard library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from broker.client import DEFAULT_TIMEOUT, default_socket_path, query, quote
from broker.errors import BrokerError, DaemonUnavailable, from_wire


async def get_token(
    provider: str,
    account: str | None = None,
    min_ttl: float | None = None,
    socket_path: Path | str | None = None,
) -> dict[str, Any]:
    """A fresh token for ``provider``: access_token, base_url, headers, expires_at, api."""
    path = str(socket_path) if socket_path else default_socket_path()
    target = f"http://broker/v1/token/{quote(provider)}" + query(account=account, min_ttl=min_ttl)
    try:
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=path), timeout=aiohttp.ClientTimeout(total=DEFAULT_TIMEOUT)
            ) as session,
            session.get(target) as response,
        ):
            body = await response.json(content_type=None)
            status = response.status
    except (FileNotFoundError, ConnectionRefusedError, aiohttp.ClientConnectorError):
        raise DaemonUnavailable(f"no broker daemon answers on {path}") from None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise DaemonUnavailable(f"the broker daemon at {path} did not answer ({type(exc).__name__})") from None
    if status >= 400:
        raise from_wire(body)
    if not isinstance(body, dict):
        raise BrokerError("the daemon answered with JSON that is not an object")
    return body
