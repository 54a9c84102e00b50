"""The auth-injecting local proxy: ``http://127.0.0.1:PORT/NAME[@ACCOUNT]/...`` -> NAME's API, with a fresh token.

For tools that take only a static base URL and key (Dify, LiteLLM, Ollama-style
clients): they get the proxy's address and its own key (``broker env NAME --proxy``);
the proxy swaps that key for the provider's current token and required headers on
every request and streams the answer back as it arrives (SSE included, ``stream``), so a token
that rotates every 25 minutes (Copilot) never reaches the tool.

- Loopback, plus the addresses ``[proxy] extra_addresses`` names (``listen``).
  A key is required: the proxy's own, or a ``broker exec`` child's lease for the provider
  it asks for (``leases``); without one, 401 ``unauthorized``, nothing
  forwarded, the connection closed. Until a connection shows a key, ``guard`` keeps it short.
- HTTP/1.1 is spoken by hand on both sides (``connection``, ``upstream``, ``h1``): aiohttp's
  server and client objects were most of a proxied request's cost.
- The client's auth and hop-by-hop headers are dropped, and so is every header or query
  parameter carrying the proxy key; the provider's are set (``rewrite``).
- A path is checked as the upstream may read it: decoded (repeatedly), ``\\`` as ``/``,
  ``;parameters`` dropped; a ``.`` or ``..`` segment is refused (``rewrite``).
- A client that goes away cancels its request, and with it the upstream request.
- One log line per request, however it ends (a client that hangs up, an upstream that
  breaks off, an error): method, path, account, status, bytes, time, never a key or a
  query string; and the same in ``/metrics`` (``broker.metrics.ProxyMetrics``). Refused
  requests are all counted but logged at a bounded rate (``broker.log_throttle``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from multidict import CIMultiDict

from broker.core.config import DEFAULT_HEADER_TIMEOUT
from broker.core.errors import BadRequest, BrokerError, Forbidden, Unauthorized, UpstreamUnavailable
from broker.core.model import Credential
from broker.core.sanitize import printable, upstream_text
from broker.daemon.caller_policy import restricted
from broker.daemon.callers import Peer
from broker.daemon.log_throttle import Throttle
from broker.daemon.metrics import ProxyMetrics
from broker.daemon.proxy.connection import ClientConnection, ClientGone, TryAgain
from broker.daemon.proxy.destinations import Destinations
from broker.daemon.proxy.guard import Doorway, Guard, seats
from broker.daemon.proxy.h1 import Head
from broker.daemon.proxy.keys import presented_keys, query_without_key, same_key
from broker.daemon.proxy.leases import Leases
from broker.daemon.proxy.listen import listening_socket, url_host
from broker.daemon.proxy.rewrite import climbs_out, upstream_headers, upstream_request, with_query
from broker.daemon.proxy.stream import Exchange
from broker.daemon.proxy.upstream import Pool, Route, UpstreamBroke
from broker.providers.base import Provider
from broker.providers.registry import Registry

log = logging.getLogger("broker.proxy")

MIN_TTL = 60.0
"""A token is refreshed first when less than this is left: a long stream outlives none."""
LOOPBACK_HOSTS = ("127.0.0.1", "::1")
SHOWN_PATH = 200
"""Characters of a request's path a log line shows."""

FreshToken = Callable[[str, str | None, float, Peer], Awaitable[tuple[Provider, Credential]]]
"""``(provider, account, min_ttl, peer) -> (provider, credential)``: what ``/v1/token`` serves."""
HeldToken = Callable[[str, str | None, float, Peer], tuple[Provider, Credential] | None]
"""``FreshToken`` when it need not wait (the token in memory has ``min_ttl`` left), else ``None``."""


@dataclass
class Admitted:
    """A request whose head passed the key check: what serving it needs from the head (a ``Serve``)."""

    proxy: AuthProxy
    connection: ClientConnection
    headers: CIMultiDict[str]
    exchange: Exchange
    name: str
    account: str | None
    tail: str
    query: str
    key: str
    hop_by_hop: frozenset[str]
    """The client's ``Connection`` tokens: the headers they name stay here."""

    def now(self, body: bytes) -> Callable[[BaseException], None] | None:
        return self.proxy.serve_now(self, body)

    def later(self, body: bytes) -> Coroutine[Any, Any, None]:
        return self.proxy.serve(self, body)


class AuthProxy:
    """The proxy: its listeners, its own key (``None`` while only ``broker exec`` leases use it), its leases."""

    def __init__(
        self,
        fresh: FreshToken,
        held: HeldToken,
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
        self.held = held
        self.registry = registry
        self.key = key
        self.host = host
        self.port = port
        self.extra_addresses = tuple(extra_addresses)
        self.metrics = metrics or ProxyMetrics()
        self.leases = Leases()
        self._doors: list[Doorway] = []
        self._clients: set[ClientConnection] = set()
        self._pool = Pool()
        self._starting = asyncio.Lock()
        self._refusals = Throttle()
        self._guard = Guard(seats(), header_timeout)
        self._destinations = Destinations()

    @property
    def base_url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}"

    async def start(self) -> None:
        """Listen on ``host:port`` (port 0: any free one, read back into ``port``) and the extra addresses.

        Does nothing when it listens already (``broker exec`` starts a proxy that is off on demand).
        """
        async with self._starting:
            if not self._doors:
                await self._start()

    async def _start(self) -> None:
        host, port = self.host, self.port
        sockets = []
        try:
            sockets.append(listening_socket(host, port))
            self.port = int(sockets[0].getsockname()[1])
            for host, extra_port in self.extra_addresses:
                port = extra_port or self.port
                sockets.append(listening_socket(host, port, freebind=True))
        except OSError as exc:
            for opened in sockets:
                opened.close()
            raise BrokerError(
                f"the proxy cannot listen on {url_host(host)}:{port}: {exc.strerror or exc}",
                "pick another port or address: [proxy] port and extra_addresses in the config",
            ) from None
        self._doors = [Doorway(listener, self._guard, self._connection) for listener in sockets]
        for door in self._doors:
            door.start()
        shown = ", ".join(f"http://{url_host(h)}:{p or self.port}" for h, p in self.extra_addresses)
        log.info("proxy listening on %s%s", self.base_url, f" and {shown}" if shown else "")

    def _connection(self) -> ClientConnection:
        return ClientConnection(self, self._guard, self._clients)

    async def stop(self) -> None:
        self.leases.close()
        for door in self._doors:
            await door.stop()
        self._doors = []
        for client in list(self._clients):
            if client.transport is not None:
                client.transport.abort()
        self._pool.close()

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

    def admit(self, connection: ClientConnection, head: Head) -> Admitted | None:
        """The checks a request's head decides: the key (401 closes the connection), provider, path."""
        method, target, _ = head.first
        path, _, query = target.partition("?")  # raw: the client's percent-encoding is kept
        segments = path.split("/", 2)
        name, account = self._target(unquote(segments[1]))
        tail = segments[2] if len(segments) > 2 else ""
        exchange = Exchange(
            method,
            printable(f"/{name}/{tail}")[:SHOWN_PATH],  # for log lines: never the query string
            name if name in self.registry() else "",  # a metrics label: never a name anyone may make up
        )
        headers = CIMultiDict(head.headers)
        try:
            key = self._authorize(headers, query, name, account)
        except Unauthorized as exc:
            refusal = "proxy refused %s %s: %s"
            self._refusals.log(log, logging.WARNING, refusal, method, exchange.shown, exc.message)
            self.metrics.record(exchange.provider, exc.status)
            connection.answer_error(exc, close=True)  # a key-less connection gets one answer, not a seat
            return None
        self._guard.trust(connection)
        try:
            self.check_allowed(self.registry().get(name))
            if climbs_out(tail):
                raise BadRequest("the path may not contain '.' or '..' segments, however encoded")
        except BrokerError as exc:
            exchange.status = exc.status
            connection.answer_error(exc, close=True)  # its body is not read: the connection cannot go on
            self._done(exchange)
            return None
        return Admitted(self, connection, headers, exchange, name, account, tail, query, key, head.connection)

    def serve_now(self, admitted: Admitted, body: bytes) -> Callable[[BaseException], None] | None:
        """``serve`` without a task, for the common request: a token in memory, an idle upstream connection.

        Anything else (a refresh to wait for, a connection to open, an error to answer)
        returns ``None`` having sent nothing, and ``serve`` does it the general way.
        """
        connection, exchange = admitted.connection, admitted.exchange
        held = self.held(admitted.name, admitted.account, MIN_TTL, connection.peer())
        if held is None:
            return None
        try:
            route, request = self._request(admitted, *held, body)
        except Exception:  # serve answers it, or logs it as the internal error it is
            return None
        upstream = self._pool.idle(route)
        if upstream is None:
            return None

        def ended(outcome: BaseException) -> None:
            if isinstance(outcome, UpstreamBroke):
                self._unreachable(admitted, route, outcome)
            elif isinstance(outcome, ClientGone):
                exchange.cut_short("client", "client hung up")
            self._done(exchange)

        connection.send(upstream, exchange.method, request, exchange, *self._hooks(exchange))
        return ended

    async def serve(self, admitted: Admitted, body: bytes) -> None:
        """``/NAME/TAIL?QUERY`` -> ``BASE_URL/TAIL?QUERY`` with NAME's fresh token and headers; one log line."""
        connection, exchange = admitted.connection, admitted.exchange
        try:
            await self._pass(admitted, body)
        except BrokerError as exc:
            exchange.status = exc.status
            connection.answer_error(exc)
        except asyncio.CancelledError:
            exchange.cut_short("client", "client hung up")
            raise
        except Exception:
            exchange.status = 500
            log.exception("proxy: internal error on %s %s", exchange.method, exchange.shown)
            connection.answer_error(BrokerError("internal error in the proxy", "see the daemon's log"))
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

    async def _pass(self, admitted: Admitted, body: bytes) -> None:
        connection, exchange = admitted.connection, admitted.exchange
        provider, credential = await self.fresh(admitted.name, admitted.account, MIN_TTL, connection.peer())
        route, request = self._request(admitted, provider, credential, body)
        answered, last = self._hooks(exchange)
        while True:
            try:
                upstream = await self._pool.connection(route)
                await connection.relay(upstream, exchange.method, request, exchange, answered, last)
                return
            except TryAgain:
                continue  # a kept connection the upstream had closed meanwhile
            except UpstreamBroke as exc:
                self._unreachable(admitted, route, exc)
                return

    def _request(
        self, admitted: Admitted, provider: Provider, credential: Credential, body: bytes
    ) -> tuple[Route, bytes]:
        """Where the request goes, and its bytes: the client's, with the provider's token and headers."""
        exchange = admitted.exchange
        exchange.account = credential.account
        served = provider.served(credential)
        base_url = served.get("base_url")
        if not base_url:
            name = admitted.name
            raise BadRequest(f"{name} has no base URL", f"set base_url under [providers.{name}] in the config")
        route, host, base_path = self._destinations.of(str(base_url), getattr(provider, "proxy", None))
        query = with_query(query_without_key(admitted.query, admitted.key), served.get("query") or {})
        headers = upstream_headers(admitted.headers, admitted.hop_by_hop, served, credential.access_token, admitted.key)
        target = f"{base_path}/{admitted.tail}{query}"
        exchange.sent = len(body)
        return route, upstream_request(exchange.method, target, host, headers, body, route)

    def _hooks(self, exchange: Exchange) -> tuple[Callable[[float], None], Callable[[], None]]:
        """What the relay tells: how long the answer's head took (metrics), and its last piece (the log line)."""

        def answered(seconds: float) -> None:
            self.metrics.upstream_answered(exchange.provider, seconds)

        def last() -> None:
            self._done(exchange)

        return answered, last

    def _unreachable(self, admitted: Admitted, route: Route, exc: UpstreamBroke) -> None:
        """The upstream failed before any of its answer was sent: the client gets a 502 that says so."""
        exchange = admitted.exchange
        why = upstream_text(str(exc)) or "connection closed"
        if exchange.status:  # it began an answer, then broke off before any of it was sent
            exchange.cut_short("upstream", f"upstream broke off ({why})")
            message = f"{exchange.provider or 'the provider'}: the upstream broke off its answer"
        else:
            exchange.ending = f"upstream {route.host} unreachable: {why}"
            message = f"{admitted.name}: the upstream at {route.host} did not answer ({why})"
        exchange.status = 502
        hint = "check that the service is up and reachable from this machine (network, HTTPS_PROXY)"
        admitted.connection.answer_error(UpstreamUnavailable(message, hint), status=502)

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
