"""What the proxy sends upstream: the client's request without its auth, hop-by-hop headers or
the proxy key, with the provider's auth, headers and query parameters; and which paths it refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

from multidict import CIMultiDict

from broker.daemon.proxy.keys import KEY_HEADERS
from broker.daemon.proxy.upstream import Route

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding",
     "upgrade", "host", "content-length", "expect", "proxy-connection"}
)  # fmt: skip
"""RFC 9110 §7.6.1 connection-specific fields, and what the proxy sets itself (the body is sent whole: no
``Expect``). ``Upgrade`` is dropped: a request reaches the upstream as plain HTTP/1.1 or not at all."""
CLIENT_AUTH = frozenset({"authorization", *KEY_HEADERS})
MAX_DECODINGS = 4
"""Percent-decodings a path is checked through before it counts as hiding something."""


def upstream_headers(
    incoming: Mapping[str, str],
    named_by_connection: frozenset[str],
    served: Mapping[str, Any],
    token: str,
    proxy_key: str,
) -> CIMultiDict[str]:
    """The client's headers without hop-by-hop (``named_by_connection`` too: ``Head.connection``), auth or
    proxy-key-carrying ones; the provider's auth and headers."""
    provider_headers: Mapping[str, str] = served.get("headers") or {}
    dropped = HOP_BY_HOP | CLIENT_AUTH | named_by_connection | {h.lower() for h in provider_headers}
    headers: CIMultiDict[str] = CIMultiDict()
    for header, value in incoming.items():
        if header.lower() not in dropped and proxy_key not in value:
            headers.add(header, value)
    headers.update(provider_headers)
    auth = served.get("auth", "bearer")
    if auth == "bearer":
        headers["Authorization"] = f"Bearer {token}"
    elif auth in ("x-api-key", "api-key"):
        headers[auth] = token
    return headers


def upstream_request(
    method: str, target: str, host: str, headers: CIMultiDict[str], body: bytes, route: Route
) -> bytes:
    """The request as it goes on the wire, body included: one write.

    Through an HTTP proxy an ``http://`` upstream gets an absolute target, and the proxy its
    credentials; an ``https://`` one is reached through a ``CONNECT`` tunnel (``upstream``),
    and asked as without a proxy.
    """
    if route.via is not None and route.scheme == "http":
        target = f"http://{host}{target}"
        if route.via_authorization is not None:
            headers["Proxy-Authorization"] = route.via_authorization
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def with_query(client_query: str, required: Mapping[str, str]) -> str:
    """The client's query string as sent, plus the provider's parameters it does not set itself."""
    if not required:
        return f"?{client_query}" if client_query else ""
    given = {name for name, _ in parse_qsl(client_query, keep_blank_values=True)}
    extra = urlencode({k: v for k, v in required.items() if k not in given})
    joined = "&".join(part for part in (client_query, extra) if part)
    return f"?{joined}" if joined else ""


def climbs_out(tail: str) -> bool:
    """A ``.`` or ``..`` segment however spelt: percent-encoded (even twice), ``\\`` as separator, ``..;/``.

    The upstream, or a server behind it, may decode once more, split on backslashes or drop
    ``;parameters``; what any of them could read as a step up is refused. So is a NUL.
    """
    decoded = tail
    for _ in range(MAX_DECODINGS):
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
    else:
        return True  # still encoded after that many rounds: nobody legitimate does this
    segments = decoded.replace("\\", "/").split("/")
    return "\0" in decoded or any(segment.split(";", 1)[0] in (".", "..") for segment in segments)
