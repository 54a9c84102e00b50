"""The auth-injecting local proxy: ``http://127.0.0.1:PORT/NAME[@ACCOUNT]/...`` -> NAME's API, with a fresh token.

For tools that take only a static base URL and key (Dify, LiteLLM, Ollama-style
clients): they get the proxy's address and its own key (``broker env NAME --proxy``);
the proxy swaps that key for the provider's current token and required headers on
every request and streams the answer back as it arrives (SSE included), so a token
that rotates every 25 minutes (Copilot) never reaches the tool.

- Loopback only; the proxy key is required (401 without it, nothing forwarded, the
  connection closed); until a connection shows it, ``broker.proxy_guard`` keeps it short.
- The client's auth and hop-by-hop headers are dropped, and so is every header or query
  parameter carrying the proxy key; the provider's are set.
- A path is checked as the upstream may read it: decoded (repeatedly), ``\\`` as ``/``,
  ``;parameters`` dropped; a ``.`` or ``..`` segment is refused.
- A client that goes away cancels the handler (aiohttp's handler cancellation), and
  with it the upstream request.
- One log line per request, naming provider, method, path and status: never a key
  or a query string. Refused requests log at a bounded rate (``broker.log_throttle``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from broker.caller_policy import restricted
from broker.callers import Peer
from broker.config import DEFAULT_HEADER_TIMEOUT
from broker.errors import BadRequest, BrokerError, Forbidden, UpstreamUnavailable
from broker.log_throttle import Throttle
from broker.model import Credential
from broker.proxy_auth import KEY_HEADERS, holds_key, query_without_key
from broker.proxy_guard import Guard, GuardedSite, seats
from broker.sanitize import printable, upstream_text
from broker.server import error_response
from providers.base import Provider
from providers.registry import Registry

log = logging.getLogger("broker.proxy")

MIN_TTL = 60.0
"""A token is refreshed first when less than this is left: a long stream outlives none."""
MAX_BODY = 64 * 1024 * 1024
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 600.0
"""Longest silence between two pieces of an answer (a model may think for minutes)."""
SHUTDOWN_TIMEOUT = 0.6
"""As the socket server's: the daemon stops both together and must be gone within 2 s."""
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding",
     "upgrade", "host", "content-length"}
)  # fmt: skip
"""RFC 9110 §7.6.1 connection-specific fields, plus what aiohttp sets itself."""
CLIENT_AUTH = frozenset({"authorization", *KEY_HEADERS})
LOOPBACK_HOSTS = ("127.0.0.1", "::1")
SHOWN_PATH = 200
"""Characters of a request's path a log line shows."""
MAX_DECODINGS = 4

FreshToken = Callable[[str, str | None, float, Peer], Awaitable[tuple[Provider, Credential]]]
"""``(provider, account, min_ttl, peer) -> (provider, credential)``: what ``/v1/token`` serves."""


class AuthProxy:
    def __init__(
        self,
        fresh: FreshToken,
        registry: Callable[[], Registry],
        key: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    ) -> None:
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"the proxy listens on loopback only, not {host}")
        self.fresh = fresh
        self.registry = registry
        self.key = key
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._refusals = Throttle()
        self._guard = Guard(seats(), header_timeout)
        self._peers: weakref.WeakKeyDictionary[asyncio.BaseTransport, Peer] = weakref.WeakKeyDictionary()

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0: any free one, read back into ``port``)."""
        self._session = aiohttp.ClientSession(
            trust_env=True,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT),
        )
        app = web.Application(middlewares=[_errors_as_json], client_max_size=MAX_BODY)
        app.router.add_route("*", "/{provider}/{tail:.*}", self.forward)
        app.router.add_route("*", "/{provider}", self.forward)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        try:
            sock = socket.create_server((self.host, self.port), family=_family(self.host), backlog=socket.SOMAXCONN)
            await GuardedSite(self._runner, sock, self._guard, access_log=None).start()
        except OSError as exc:
            await self.stop()
            raise BrokerError(
                f"the proxy cannot listen on {self.host}:{self.port}: {exc.strerror or exc}",
                "pick another port: broker serve --proxy-port PORT, or [proxy] port in the config",
            ) from None
        self.port = int(sock.getsockname()[1])
        log.info("proxy listening on %s", self.base_url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def client_answer(self, provider: Provider, account: str | None = None) -> dict[str, Any]:
        """What a tool needs to use ``provider`` through the proxy, shaped like a token answer.

        Without an account the proxy serves the provider's default one, whichever that is
        at each request; ``/NAME@ACCOUNT`` pins one.
        """
        self._check_allowed(provider)
        target = quote(provider.name, safe="") + ("" if account is None else "@" + quote(account, safe="@"))
        return {
            "provider": provider.name,
            "account": account,
            "access_token": self.key,
            "token_type": "Bearer",
            "expires_at": None,
            "expires_in": None,
            "base_url": f"{self.base_url}/{target}",
            "api": provider.api,
            "headers": {},
            "auth": "x-api-key" if provider.api == "anthropic" else "bearer",
            "source": "proxy",
        }

    # --- one request -------------------------------------------------------------------------

    def _target(self, segment: str) -> tuple[str, str | None]:
        """``NAME`` or ``NAME@ACCOUNT`` (the first ``@``; a provider named with an ``@`` still works)."""
        if segment in self.registry():
            return segment, None
        name, at, account = segment.partition("@")
        return (name, account) if at and account else (segment, None)

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """``/NAME/TAIL?QUERY`` -> ``BASE_URL/TAIL?QUERY`` with NAME's fresh token and headers."""
        started = time.monotonic()
        name, account = self._target(request.match_info["provider"])
        path, _, query = request.raw_path.partition("?")  # raw: the client's percent-encoding is kept
        tail = path.split("/", 2)[2] if path.count("/") >= 2 else ""
        shown = printable(f"/{name}/{tail}")[:SHOWN_PATH]  # for log lines: never the query string
        if not holds_key(request.headers, self.key, query):
            refusal = "proxy refused %s %s: no or wrong proxy key"
            self._refusals.log(log, logging.WARNING, refusal, request.method, shown)
            refused = error_response(
                Forbidden(
                    "the proxy needs its key (Authorization: Bearer, x-api-key or api-key)",
                    f"run: broker env {name} --proxy",
                ),
                status=401,
            )
            refused.force_close()  # a key-less connection gets one answer, not a seat
            return refused
        self._guard.trust(request.protocol)
        provider = self.registry().get(name)
        self._check_allowed(provider)
        if climbs_out(tail):
            raise BadRequest("the path may not contain '.' or '..' segments, however encoded")
        provider, credential = await self.fresh(name, account, MIN_TTL, self._peer(request))
        served = provider.served(credential)
        base_url = served.get("base_url")
        if not base_url:
            raise BadRequest(f"{name} has no base URL", f"set base_url under [providers.{name}] in the config")
        query = _query(query_without_key(query, self.key), served.get("query") or {})
        url = URL(f"{str(base_url).rstrip('/')}/{tail}" + query, encoded=True)
        headers = _upstream_headers(request.headers, served, credential.access_token, self.key)
        body = await request.read()
        assert self._session is not None
        try:
            upstream = await self._session.request(
                request.method,
                url,
                headers=headers,
                data=body or None,
                proxy=getattr(provider, "proxy", None),
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = _reason(exc)
            log.warning("proxy %s %s -> upstream %s unreachable: %s", request.method, shown, url.host, reason)
            down = UpstreamUnavailable(
                f"{name}: the upstream at {url.host} did not answer ({reason})",
                "check that the service is up and reachable from this machine (network, HTTPS_PROXY)",
            )
            return error_response(down, status=502)

        def done(sent: int) -> None:
            log.info("proxy %s %s account=%s -> %d, %d bytes, %.0f ms", request.method, shown, credential.account,
                     upstream.status, sent, 1000 * (time.monotonic() - started))  # fmt: skip

        return await _relay(request, upstream, shown, done)

    def _check_allowed(self, provider: Provider) -> None:
        if not provider.proxy_allowed:
            raise Forbidden(
                f"{provider.name} is not served through the proxy: its terms allow only its own client",
                f"use {provider.name}'s own CLI; broker keeps its login fresh for it",
            )
        if restricted(provider.callers):  # TCP tells no pid: the proxy cannot tell its callers apart
            raise Forbidden(
                f"{provider.name} is not served through the proxy: its callers are limited",
                f"use broker token from an allowed program, or drop callers under [providers.{provider.name}]",
            )

    def _peer(self, request: web.Request) -> Peer:
        """The connection's peer, for the audit: TCP gives an address, not a process."""
        transport = request.transport
        if transport is None:
            return Peer("proxy")
        peer = self._peers.get(transport)
        if peer is None:
            host, port = transport.get_extra_info("peername")[:2]
            peer = self._peers[transport] = Peer("proxy", address=f"{host}:{port}")
        return peer


async def _relay(
    request: web.Request, upstream: aiohttp.ClientResponse, shown: str, done: Callable[[int], None]
) -> web.StreamResponse:
    """Stream the upstream's answer to the client piece by piece, as each piece arrives."""
    sent, finished = 0, False
    try:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for header, value in upstream.headers.items():
            if header.lower() not in HOP_BY_HOP:  # no Content-Length: the answer goes out chunked
                response.headers.add(header, value)
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
                sent += len(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("proxy %s %s: upstream broke off after %d bytes: %s", request.method, shown, sent, _reason(exc))
            if request.transport is not None:
                request.transport.close()  # the client must see a cut answer, not a complete one
            return response
        done(sent)  # before the last chunk: a client holding the whole answer finds the log line written
        await response.write_eof()
        finished = True
    finally:
        if finished:
            upstream.release()
        else:
            upstream.close()  # client gone or upstream cut: drop the connection, which cancels upstream
    return response


def _upstream_headers(
    incoming: Mapping[str, str], served: Mapping[str, Any], token: str, proxy_key: str
) -> CIMultiDict[str]:
    """The client's headers without hop-by-hop, auth or proxy-key-carrying ones; the provider's auth and headers."""
    provider_headers: Mapping[str, str] = served.get("headers") or {}
    named_by_connection = {h.strip().lower() for h in incoming.get("Connection", "").split(",") if h.strip()}
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


def _query(client_query: str, required: Mapping[str, str]) -> str:
    """The client's query string as sent, plus the provider's parameters it does not set itself."""
    given = {name for name, _ in parse_qsl(client_query, keep_blank_values=True)}
    extra = urlencode({k: v for k, v in required.items() if k not in given})
    joined = "&".join(part for part in (client_query, extra) if part)
    return f"?{joined}" if joined else ""


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


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


def _reason(exc: BaseException) -> str:
    """Why an upstream failed, in words safe to log and answer with (they may quote the upstream)."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return upstream_text(exc.os_error.strerror or exc.os_error)
    return upstream_text(exc) or type(exc).__name__


@web.middleware
async def _errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Errors as the socket API's JSON body, which OpenAI and Anthropic SDKs also read (``error.message``)."""
    try:
        return await handler(request)
    except BrokerError as exc:
        log.warning("proxy %s %s -> %d %s", request.method, request.path, exc.status, exc.code)
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        hint = "the proxy serves http://HOST:PORT/PROVIDER/... (see: broker env PROVIDER --proxy)"
        body = {"error": {"code": "bad_request", "message": exc.reason, "hint": hint}}
        return web.json_response(body, status=exc.status)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("proxy: internal error on %s %s", request.method, request.path)
        return error_response(BrokerError("internal error in the proxy", "see the daemon's log"))
