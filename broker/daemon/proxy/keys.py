"""The local proxy's own key: made once with ``secrets``, kept in the store, checked in constant time.

Clients send it the way their SDK sends any key (``Authorization: Bearer``,
``x-api-key``, Azure's ``api-key``, Gemini's ``x-goog-api-key`` or its ``?key=``
query parameter); every one of those places is emptied before a request goes
upstream, and so is any other header or query parameter that carries the key, so
the key never leaves the machine.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
from collections.abc import Mapping
from urllib.parse import unquote_plus

from broker.core.errors import StoreError
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


async def rotate_key(store: Store) -> str:
    """A new proxy key, stored before it is used: the old one stops working."""
    key = new_key()
    await asyncio.to_thread(store.set_secret, SECRET_NAME, key)
    log.info("proxy key replaced")
    return key


KEY_PARAMETER = "key"
"""The query parameter Gemini's clients send a key in."""


def presented_keys(headers: Mapping[str, str], query: str = "") -> list[str]:
    """Every key a request carries, in whichever header (or ``?key=``) its SDK uses."""
    found = []
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        found.append(value.strip())
    found.extend(headers[name] for name in KEY_HEADERS if headers.get(name))
    if query:
        found.extend(value for name, value in _parameters(query) if name == KEY_PARAMETER and value)
    return found


def query_without_key(query: str, key: str) -> str:
    """The raw query string, as the client encoded it, minus ``key=`` and any parameter carrying the proxy key."""
    if not query:
        return ""
    kept = [
        part
        for part, (name, value) in zip(query.split("&"), _parameters(query), strict=True)
        if name != KEY_PARAMETER and key not in value
    ]
    return "&".join(part for part in kept if part)


def _parameters(query: str) -> list[tuple[str, str]]:
    """Each ``&``-separated part of a raw query, decoded; one pair per part, so the two lists line up."""
    pairs = []
    for part in query.split("&"):
        name, _, value = part.partition("=")
        pairs.append((unquote_plus(name), unquote_plus(value)))
    return pairs


def same_key(candidate: str, key: str) -> bool:
    """Compared in constant time."""
    return hmac.compare_digest(candidate.encode("utf-8", "surrogateescape"), key.encode())
