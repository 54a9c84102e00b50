"""Connections to the providers' APIs: opened once, kept open between requests, reused.

Each is an asyncio protocol that writes one request and passes the answer's bytes to the
client's side (an ``Answer``) as they arrive, reading only what it must: the head (to
drop hop-by-hop headers and learn the framing) and the chunk sizes or the length (to
know where the answer ends, so the connection can serve the next request). No request
or response objects, no task per read. An outbound HTTP proxy (the provider's ``proxy``,
or ``HTTP(S)_PROXY``) gets the request in absolute form (``http://``) or a ``CONNECT``
tunnel (``https://``).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

from yarl import URL

from broker.daemon.proxy.h1 import HEAD_END, Chunks, Head, parse_answer

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 600.0
"""Longest silence between two pieces of an answer (a model may think for minutes)."""
IDLE_TIMEOUT = 15.0
"""An idle connection is closed after this (aiohttp's choice): servers drop theirs after 5 s to minutes."""
SWEEP = 1.0
"""Seconds between two checks of the timeouts."""
MAX_ANSWER_HEAD = 128 * 1024
MAX_IDLE = 64
"""Idle connections kept per upstream."""
ANSWER_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-connection", "te", "trailer", "upgrade"}
)


class UpstreamBroke(Exception):
    """The upstream could not be reached, or broke off its answer: ``str()`` says why, safe to log."""


class Answer(Protocol):
    """The client's side of one exchange, which an upstream's answer is written into.

    ``broke(why, again=True)``: a kept connection closed before answering; the request may go on a new one.
    """

    def begin(self, status: int, head: bytes) -> None: ...
    def piece(self, data: bytes, *, last: bool) -> None: ...
    def broke(self, why: str, *, again: bool) -> None: ...


@dataclass(frozen=True)
class Route:
    """Where a request goes: the upstream's origin, and the HTTP proxy in between, if any."""

    scheme: str
    host: str
    port: int
    via: URL | None = None
    via_authorization: str | None = None
    """``Proxy-Authorization`` for ``via``: from its URL's credentials (or ``~/.netrc``, as aiohttp reads it)."""

    @classmethod
    def of(cls, url: URL, via: URL | None, via_auth: str | None = None) -> Route:
        port = url.port or (443 if url.scheme == "https" else 80)
        if via is not None and via.user is not None:
            via_auth = "Basic " + base64.b64encode(f"{via.user}:{via.password or ''}".encode()).decode()
        return cls(url.scheme, url.raw_host or "", port, via, via_auth)


class Upstream(asyncio.Protocol):
    """One connection to an upstream; answers ``send``'s request into its ``Answer``."""

    def __init__(self, pool: Pool, route: Route) -> None:
        self.pool = pool
        self.route = route
        self.transport: asyncio.Transport | None = None
        self.reused = False
        self._answer: Answer | None = None
        self._method = ""
        self._buffer = b""
        self._head: Head | None = None
        self._left = 0
        self._chunks: Chunks | None = None
        self._client_version = (1, 1)
        self._heard = 0.0
        """When the upstream last sent a byte, or was last given a request or left idle."""
        self._heard_any = False
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.pool.opened(self)

    def send(self, method: str, data: bytes, answer: Answer, client_version: tuple[int, int]) -> None:
        assert self.transport is not None
        self._method, self._answer, self._client_version = method, answer, client_version
        self._head, self._buffer, self._chunks, self._heard_any = None, b"", None, False
        self._heard = self._loop.time()
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self._heard = self._loop.time()
        self._heard_any = True
        if self._answer is None:
            self.close()  # bytes nobody asked for: the connection is not in a state to reuse
            return
        if self._head is None:
            data = self._read_head(data)
            if self._head is None:
                return
        try:
            self._read_body(data)
        except ValueError as exc:
            self._fail(str(exc))

    def _read_head(self, data: bytes) -> bytes:
        """The answer's head, once whole (interim 1xx answers skipped); the bytes after it."""
        self._buffer += data
        while True:
            end = self._buffer.find(HEAD_END)
            if end < 0:
                if len(self._buffer) > MAX_ANSWER_HEAD:
                    self._fail("its answer's head is too large")
                return b""
            try:
                head = parse_answer(self._buffer[:end], self._method)
            except ValueError as exc:
                self._fail(str(exc))
                return b""
            rest, self._buffer = self._buffer[end + 4 :], b""
            if 100 <= int(head.first[1]) < 200:
                self._buffer = rest
                continue
            self._head = head
            self._begin(head)
            return rest

    def _begin(self, head: Head) -> None:
        """The head the client gets: the upstream's, without hop-by-hop headers, framed for the client."""
        assert self._answer is not None
        lines = [f"HTTP/1.1 {head.first[1]} {head.first[2]}"]
        lines += [
            f"{n}: {v}"
            for n, v in head.headers
            if n.lower() not in ANSWER_HOP_BY_HOP and n.lower() not in head.connection
        ]
        if head.chunked:
            self._chunks = Chunks(keep=self._client_version == (1, 0))
            if self._client_version == (1, 0):
                lines = [line for line in lines if not line.lower().startswith("transfer-encoding:")]
        elif head.length is None and self._client_version != (1, 0):
            lines.append("Transfer-Encoding: chunked")  # until the upstream closes: chunks, so the client can tell
        self._left = head.length if head.length is not None else -1
        self._answer.begin(int(head.first[1]), ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _read_body(self, data: bytes) -> None:
        assert self._answer is not None and self._head is not None
        if self._chunks is not None:
            used = self._chunks.feed(data)
            extra = used < len(data)
            if self._chunks.payload is not None:  # an HTTP/1.0 client: the payload alone, then close
                data, self._chunks.payload[:] = b"".join(self._chunks.payload), []
            else:
                data = data[:used]
            self._relay(data, self._chunks.done, extra)
        elif self._left >= 0:
            extra = len(data) > self._left
            data = data[: self._left]
            self._left -= len(data)
            self._relay(data, self._left == 0, extra)
        elif data and self._client_version != (1, 0):
            self._answer.piece(b"%x\r\n%b\r\n" % (len(data), data), last=False)
        elif data:
            self._answer.piece(data, last=False)

    def _relay(self, data: bytes, last: bool, extra: bool) -> None:
        """``extra``: bytes after the answer's end, which no request asked for: the connection is not reused."""
        answer = self._answer
        assert answer is not None and self._head is not None
        if last:
            self._finish(self._head.keep_alive and not extra)
        if data or last:
            answer.piece(data, last=last)

    def _finish(self, reusable: bool) -> None:
        self._answer = None
        self._heard = self._loop.time()
        if self._method == "CONNECT":
            return  # the tunnel is open: TLS starts on it
        if reusable and self.transport is not None and not self.transport.is_closing():
            self.reused = True
            self.pool.put(self)
        else:
            self.close()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.forget(self)
        if self._answer is None:
            return
        if self._head is not None and self._chunks is None and self._left < 0:  # an answer that ends with the close
            answer, self._answer = self._answer, None
            answer.piece(b"0\r\n\r\n" if self._client_version != (1, 0) else b"", last=True)
            return
        self._fail("connection closed" if exc is None else str(exc) or type(exc).__name__)

    def _fail(self, why: str) -> None:
        answer, self._answer = self._answer, None
        self.close()
        if answer is not None:
            answer.broke(why, again=self.reused and not self._heard_any)

    def check(self, now: float) -> None:
        """Give up on an answer silent for ``READ_TIMEOUT``; close a connection idle for ``IDLE_TIMEOUT``."""
        if self._answer is not None and now - self._heard >= READ_TIMEOUT:
            self._fail("timed out")
        elif self._answer is None and now - self._heard >= IDLE_TIMEOUT:
            self.close()

    def abandon(self) -> None:
        """The client went away: the answer goes nowhere, and the connection is dropped."""
        self._answer = None
        self.close()

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        """Drop the connection (which also cancels whatever the upstream was doing for it)."""
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Idle connections by route, taken last-in first-out (the warmest first).

    One timer, while any connection is open, checks them all every ``SWEEP`` seconds for
    the timeouts: a timer per request, armed and cancelled, cost more than the check.
    """

    def __init__(self) -> None:
        self._idle: defaultdict[Route, list[Upstream]] = defaultdict(list)
        self._connections: set[Upstream] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._ssl: ssl.SSLContext | None = None

    def opened(self, upstream: Upstream) -> None:
        self._connections.add(upstream)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for upstream in list(self._connections):
            upstream.check(now)
        self._sweeper = loop.call_later(SWEEP, self._sweep) if self._connections else None

    async def connection(self, route: Route) -> Upstream:
        """An idle connection on ``route``, or a new one; ``UpstreamBroke`` when it cannot be had."""
        upstream = self.idle(route)
        if upstream is not None:
            return upstream
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                return await self._open(route)
        except TimeoutError:
            raise UpstreamBroke("timed out") from None
        except OSError as exc:
            raise UpstreamBroke(str(exc.strerror or exc)) from None

    def idle(self, route: Route) -> Upstream | None:
        """An idle connection on ``route``, taken from the pool, if one is still open."""
        idle = self._idle.get(route)
        while idle:
            upstream = idle.pop()
            if upstream.transport is not None and not upstream.transport.is_closing():
                return upstream
        return None

    def put(self, upstream: Upstream) -> None:
        idle = self._idle[upstream.route]
        if len(idle) >= MAX_IDLE:
            upstream.close()
            return
        idle.append(upstream)

    def forget(self, upstream: Upstream) -> None:
        self._connections.discard(upstream)
        idle = self._idle.get(upstream.route)
        if idle and upstream in idle:
            idle.remove(upstream)

    def close(self) -> None:
        for upstream in list(self._connections):
            upstream.close()
        self._idle.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def _open(self, route: Route) -> Upstream:
        loop = asyncio.get_running_loop()
        tls = self._tls() if route.scheme == "https" else None
        if route.via is None:
            _, upstream = await loop.create_connection(
                lambda: Upstream(self, route),
                route.host,
                route.port,
                ssl=tls,
                server_hostname=route.host if tls else None,
            )
            return upstream
        via_port = route.via.port or (443 if route.via.scheme == "https" else 80)
        via_host = route.via.raw_host or ""
        transport, upstream = await loop.create_connection(lambda: Upstream(self, route), via_host, via_port)
        if tls is not None:  # a tunnel: CONNECT, then TLS inside it
            await _tunnel(transport, upstream, route)
            transport = await loop.start_tls(transport, upstream, tls, server_hostname=route.host) or transport
            upstream.transport = transport
        return upstream

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()  # honours SSL_CERT_FILE / SSL_CERT_DIR, as aiohttp's did
        return self._ssl


async def _tunnel(transport: asyncio.Transport, upstream: Upstream, route: Route) -> None:
    """``CONNECT host:port`` through the proxy; ``UpstreamBroke`` unless it answers 2xx."""
    assert route.via is not None
    authority = f"{route.host}:{route.port}" if ":" not in route.host else f"[{route.host}]:{route.port}"
    auth = route.via_authorization
    request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    request += f"Proxy-Authorization: {auth}\r\n" if auth else ""
    waiter = _HeadWaiter()
    upstream.send("CONNECT", (request + "\r\n").encode(), waiter, (1, 1))
    status = await waiter.status
    if not 200 <= status < 300:
        transport.close()
        raise UpstreamBroke(f"the HTTP proxy refused the tunnel ({status})")


class _HeadWaiter:
    """An ``Answer`` that only wants the status of a ``CONNECT``."""

    def __init__(self) -> None:
        self.status: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def begin(self, status: int, head: bytes) -> None:
        if not self.status.done():
            self.status.set_result(status)

    def piece(self, data: bytes, *, last: bool) -> None:
        pass

    def broke(self, why: str, *, again: bool) -> None:
        if not self.status.done():
            self.status.set_exception(UpstreamBroke(why))
