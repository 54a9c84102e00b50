"""The auth-injecting local proxy: ``http://127.0.0.1:PORT/NAME[@ACCOUNT]/...`` -> NAME's API, with a fresh token.

For tools that take only a static base URL and key (Dify, LiteLLM, Ollama-style
clients): they get the proxy's address and its own key (``broker env NAME --proxy``);
the proxy swaps that key for the provider's current token and required headers on
every request and streams the answer back as it arrives (SSE included, ``stream``), so a token
that rotates every 25 minutes (Copilot) never reaches the tool.

- Loopback, plus the addresses ``[proxy] extra_addresses`` names (``broker.proxy_listen``).
  A key is required: the proxy's own, or a ``broker exec`` child's lease for the provider
  it asks for (``broker.proxy_leases``); without one, 401 ``unauthorized``, nothing
  forwarded, the connection closed. Until a connection shows a key,
  ``broker.proxy_guard`` keeps it short.
- The client's auth and hop-by-hop headers are dropped, and so is every header or query
  parameter carrying the proxy key; the provider's are set (``rewrite``).
- A path is checked as the upstream may read it: decoded (repeatedly), ``\\`` as ``/``,
  ``;parameters`` dropped; a ``.`` or ``..`` segment is refused (``rewrite``).
- A client that goes away cancels the handler (aiohttp's handler cancellation), and
  with it the upstream request.
- One log line per request, however it ends (a client that hangs up, an upstream that
  breaks off, an error): method, path, account, status, bytes, time, never a key or a
  query string; and the same in ``/metrics`` (``broker.metrics.ProxyMetrics``). Refused
  requests are all counted but logged at a bounded rate (``broker.log_throttle``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from broker.core.config import DEFAULT_HEADER_TIMEOUT
from broker.core.errors import BadRequest, BrokerError, Forbidden, Unauthorized, UpstreamUnavailable
from broker.core.model import Credential
from broker.core.sanitize import printable
from broker.daemon.caller_policy import restricted
from broker.daemon.callers import Peer
from broker.daemon.log_throttle import Throttle
from broker.daemon.metrics import ProxyMetrics
from broker.daemon.proxy.guard import Guard, GuardedSite, seats
from broker.daemon.proxy.keys import presented_keys, query_without_key, same_key
from broker.daemon.proxy.leases import Leases
from broker.daemon.proxy.listen import listening_socket, url_host
from broker.daemon.proxy.rewrite import climbs_out, upstream_headers, with_query
from broker.daemon.proxy.stream import Exchange, reason, relay
from broker.daemon.server import error_response
from broker.providers.base import Provider
from broker.providers.registry import Registry

log = logging.getLogger("broker.proxy")

MIN_TTL = 60.0
"""A token is refreshed first when less than this is left: a long stream outlives none."""
MAX_BODY = 64 * 1024 * 1024
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 600.0
"""Longest silence between two pieces of an answer (a model may think for minutes)."""
SHUTDOWN_TIMEOUT = 0.6
"""As the socket server's: the daemon stops both together and must be gone within 2 s."""
LOOPBACK_HOSTS = ("127.0.0.1", "::1")
SHOWN_PATH = 200
"""Characters of a request's path a log line shows."""

FreshToken = Callable[[str, str | None, float, Peer], Awaitable[tuple[Provider, Credential]]]
"""``(provider, account, min_ttl, peer) -> (provider, credential)``: what ``/v1/token`` serves."""


class AuthProxy:
    """The proxy: its listeners, its own key (``None`` while only ``broker exec`` leases use it), its leases."""

    def __init__(
        self,
        fresh: FreshToken,
        registry: Callable[[], Registry],
        key: str | None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        extra_addresses: Sequence[tuple[str, int | None]] = (),
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"the proxy listens on loopback only, not {host}")
        self.fresh = fresh
        self.registry = registry
        self.key = key
        self.host = host
        self.port = port
        self.extra_addresses = tuple(extra_addresses)
        self.metrics = metrics or ProxyMetrics()
        self.leases = Leases()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._starting = asyncio.Lock()
        self._refusals = Throttle()
        self._guard = Guard(seats(), header_timeout)
        self._peers: weakref.WeakKeyDictionary[asyncio.BaseTransport, Peer] = weakref.WeakKeyDictionary()
        self._routes: dict[tuple[str, str | None], tuple[URL | None, aiohttp.BasicAuth | None]] = {}

    @property
    def base_url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}"

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0: any free one, read back into ``port``) and the extra addresses.

        Does nothing when it listens already (``broker exec`` starts a proxy that is off on demand).
        """
        async with self._starting:
            if self._runner is None:
                await self._start()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(
            trust_env=False,  # HTTPS_PROXY and NO_PROXY are read once per upstream (``_route``), not per request
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT),
        )
        app = web.Application(middlewares=[_errors_as_json], client_max_size=MAX_BODY)
        app.router.add_route("*", "/{provider}/{tail:.*}", self.forward)
        app.router.add_route("*", "/{provider}", self.forward)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        host, port = self.host, self.port
        try:
            sock = listening_socket(host, port)
            self.port = int(sock.getsockname()[1])
            sockets = [sock]
            for host, extra_port in self.extra_addresses:
                port = extra_port or self.port
                sockets.append(listening_socket(host, port, freebind=True))
        except OSError as exc:
            await self.stop()
            raise BrokerError(
                f"the proxy cannot listen on {url_host(host)}:{port}: {exc.strerror or exc}",
                "pick another port or address: [proxy] port and extra_addresses in the config",
            ) from None
        for listener in sockets:
            await GuardedSite(self._runner, listener, self._guard, access_log=None).start()
        shown = ", ".join(f"http://{url_host(h)}:{p or self.port}" for h, p in self.extra_addresses)
        log.info("proxy listening on %s%s", self.base_url, f" and {shown}" if shown else "")

    async def stop(self) -> None:
        self.leases.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def client_answer(self, provider: Provider, account: str | None = None, key: str | None = None) -> dict[str, Any]:
        """What a tool needs to use ``provider`` through the proxy, shaped like a token answer.

        Without an account the proxy serves the provider's default one, whichever that is
        at each request; ``/NAME@ACCOUNT`` pins one. ``key``: a lease's instead of the proxy's own.
        """
        self.check_allowed(provider)
        target = quote(provider.name, safe="") + ("" if account is None else "@" + quote(account, safe="@"))
        return {
            "provider": provider.name,
            "account": account,
            "access_token": key or self.key,
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
        """``/NAME/TAIL?QUERY`` -> ``BASE_URL/TAIL?QUERY`` with NAME's fresh token and headers; one log line."""
        name, account = self._target(request.match_info["provider"])
        path, _, query = request.raw_path.partition("?")  # raw: the client's percent-encoding is kept
        tail = path.split("/", 2)[2] if path.count("/") >= 2 else ""
        exchange = Exchange(
            request.method,
            printable(f"/{name}/{tail}")[:SHOWN_PATH],  # for log lines: never the query string
            name if name in self.registry() else "",  # a metrics label: never a name anyone may make up
        )
        try:
            key = self._authorize(request.headers, query, name, account)
        except Unauthorized as exc:
            refusal = "proxy refused %s %s: %s"
            self._refusals.log(log, logging.WARNING, refusal, request.method, exchange.shown, exc.message)
            self.metrics.record(exchange.provider, exc.status)
            refused = error_response(exc)
            refused.force_close()  # a key-less connection gets one answer, not a seat
            return refused
        self._guard.trust(request.protocol)
        try:
            return await self._pass(request, exchange, name, account, tail, query, key)
        except BrokerError as exc:
            exchange.status = exc.status
            return error_response(exc)
        except asyncio.CancelledError:
            exchange.cut_short("client", "client hung up")
            raise
        except Exception:
            exchange.status = 500  # the middleware logs it and answers
            raise
        finally:
            self._done(exchange)

    def _authorize(self, headers: Mapping[str, str], query: str, name: str, account: str | None) -> str:
        """The key the request presented that opens ``name``: the proxy's own or a lease for it."""
        for presented in presented_keys(headers, query):
            if self.key is not None and same_key(presented, self.key):
                return presented
            lease = self.leases.find(presented)
            if lease is not None and lease.opens(name, account):
                return presented
            if lease is not None:
                raise Unauthorized(
                    f"this key opens only {lease.provider}{'@' + lease.account if lease.account else ''}",
                    f"run the tool with broker exec {name} -- TOOL",
                )
        raise Unauthorized(
            "the proxy needs its key (Authorization: Bearer, x-api-key or api-key): none or a wrong one was sent",
            f"run: broker env {name} --proxy (a key from broker exec ends with its process)",
        )

    async def _pass(
        self,
        request: web.Request,
        exchange: Exchange,
        name: str,
        account: str | None,
        tail: str,
        query: str,
        key: str,
    ) -> web.StreamResponse:
        provider = self.registry().get(name)
        self.check_allowed(provider)
        if climbs_out(tail):
            raise BadRequest("the path may not contain '.' or '..' segments, however encoded")
        provider, credential = await self.fresh(name, account, MIN_TTL, self._peer(request))
        exchange.account = credential.account
        served = provider.served(credential)
        base_url = served.get("base_url")
        if not base_url:
            raise BadRequest(f"{name} has no base URL", f"set base_url under [providers.{name}] in the config")
        query = with_query(query_without_key(query, key), served.get("query") or {})
        url = URL(f"{str(base_url).rstrip('/')}/{tail}" + query, encoded=True)
        headers = upstream_headers(request.headers, served, credential.access_token, key)
        body = await request.read()
        exchange.sent = len(body)
        assert self._session is not None
        via, via_auth = self._route(url, getattr(provider, "proxy", None))
        asked = time.monotonic()
        try:
            upstream = await self._session.request(
                request.method,
                url,
                headers=headers,
                data=body or None,
                proxy=via,
                proxy_auth=via_auth,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            why = reason(exc)
            exchange.status, exchange.ending = 502, f"upstream {url.host} unreachable: {why}"
            down = UpstreamUnavailable(
                f"{name}: the upstream at {url.host} did not answer ({why})",
                "check that the service is up and reachable from this machine (network, HTTPS_PROXY)",
            )
            return error_response(down, status=502)
        self.metrics.upstream_answered(exchange.provider, time.monotonic() - asked)
        exchange.status = upstream.status
        return await relay(request, upstream, exchange, lambda: self._done(exchange))

    def _route(self, url: URL, configured: str | None) -> tuple[URL | None, aiohttp.BasicAuth | None]:
        """The HTTP proxy to reach ``url`` through: the provider's, else the environment's.

        aiohttp's ``trust_env`` reads the environment and ``~/.netrc`` in a worker thread
        twice on every request, more than half of the proxy's CPU; the daemon's environment
        does not change while it runs, so each scheme and host is looked up once.
        """
        if configured:
            return URL(configured), None
        key = (url.scheme, url.host)
        route = self._routes.get(key)
        if route is None:
            try:
                route = self._routes[key] = get_env_proxy_for_url(url)
            except LookupError:
                route = self._routes[key] = (None, None)
        return route

    def _done(self, exchange: Exchange) -> None:
        """The request's one log line and its metrics; once, whichever way it ended."""
        if exchange.logged:
            return
        exchange.logged = True
        self.metrics.record(exchange.provider, exchange.status, sent=exchange.sent, received=exchange.received)
        if exchange.cut_by:
            self.metrics.cut_short[(exchange.provider, exchange.cut_by)] += 1
        level = logging.WARNING if exchange.ending else logging.INFO
        log.log(
            level,
            "proxy %s %s account=%s -> %d, %d bytes, %.0f ms%s",
            exchange.method,
            exchange.shown,
            exchange.account or "-",
            exchange.status,
            exchange.received,
            1000 * (time.monotonic() - exchange.started),
            f", {exchange.ending}" if exchange.ending else "",
        )

    def check_allowed(self, provider: Provider) -> None:
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
