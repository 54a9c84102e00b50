"""The local proxy's own key: made once with ``secrets``, kept in the store, checked in constant time.

Clients send it the way their SDK sends any key (``Authorization: Bearer``,
``x-api-key``, Azure's ``api-key`` or Gemini's ``x-goog-api-key``); every one of
those headers is removed before a request goes upstream, so the key never leaves
the machine.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Mapping

from broker.errors import StoreError
from broker.store.base import Store

log = logging.getLogger("broker.proxy")

SECRET_NAME = "proxy_key"
KEY_PREFIX = "brk-proxy-"
KEY_HEADERS = ("x-api-key", "api-key", "x-goog-api-key")
"""Key headers besides ``Authorization``; like it, never forwarded."""


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def load_or_create_key(store: Store) -> str:
    """The proxy key from the store, made and stored on first use.

    An unreadable store must not stop the daemon: the proxy then runs with a key
    that lasts until the daemon stops, and the log says so.
    """
    try:
        key = await asyncio.to_thread(store.get_secret, SECRET_NAME)
        if key:
            return key
        key = new_key()
        await asyncio.to_thread(store.set_secret, SECRET_NAME, key)
    except StoreError as exc:
        log.error("proxy key not kept in the store (%s): clients need a new one after a restart", exc.message)
        return new_key()
    return key


def presented_keys(headers: Mapping[str, str]) -> list[str]:
    """Every key a request carries, in whichever header its SDK uses."""
    found = []
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        found.append(value.strip())
    found.extend(headers[name] for name in KEY_HEADERS if headers.get(name))
    return found


def holds_key(headers: Mapping[str, str], key: str) -> bool:
    """True when any presented key is the proxy key (compared in constant time)."""
    expected = key.encode()
    presented = (candidate.encode("utf-8", "surrogateescape") for candidate in presented_keys(headers))
    return any(hmac.compare_digest(candidate, expected) for candidate in presented)
