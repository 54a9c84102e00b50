"""One client connection to the proxy: its requests read, their answers written, one at a time.

An asyncio protocol, not a server framework: the request head is parsed once
(``broker.daemon.proxy.h1``), the body read whole (as aiohttp's ``request.read()`` did),
and the upstream's answer written as it arrives, its head together with its first
piece (one write for a whole answer). While the client's socket is full, the upstream
is not read (``pause_writing``), so a long stream costs no memory. A client that hangs
up cancels its request's task, and with it the upstream connection.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

from broker.core.errors import BrokerError
from broker.daemon.callers import Peer
from broker.daemon.proxy.h1 import HEAD_END, MAX_HEAD, Chunks, Head, Malformed, parse_request
from broker.daemon.proxy.stream import Exchange
from broker.daemon.proxy.upstream import Upstream, UpstreamBroke

if TYPE_CHECKING:
    from broker.daemon.proxy.guard import Guard

MAX_BODY = 64 * 1024 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class TryAgain(Exception):
    """A reused upstream connection was closed before it answered: send the request on another."""


Serve = Callable[[bytes], Coroutine[Any, Any, None]]
"""A request admitted on its head, to be served once its body is in."""


class Requests(Protocol):
    """What the proxy does with a request (``AuthProxy``)."""

    def admit(self, connection: ClientConnection, head: Head) -> Serve | None:
        """Check a request from its head alone; ``None`` when it was answered already (refused)."""


class ClientConnection(asyncio.Protocol):
    """A client's connection: requests in, answers out, one exchange at a time."""

    def __init__(self, requests: Requests, guard: Guard, everyone: set[ClientConnection]) -> None:
        self.requests = requests
        self.guard = guard
        self._everyone = everyone
        """The proxy's open connections, which it closes when it stops."""
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        """Kept: on Python 3.11 each ``get_running_loop()`` is a ``getpid`` system call."""
        self._buffer = bytearray()
        """What the client sent that is not read yet (a bytearray: a 64 MiB body arrives in many pieces)."""
        self._head: Head | None = None
        self._serve: Serve | None = None
        self._chunks: Chunks | None = None
        self._task: asyncio.Task[None] | None = None
        self._upstream: Upstream | None = None
        self._exchange: Exchange | None = None
        self._answered: asyncio.Future[None] | None = None
        self._head_out = b""
        """The answer's head, held until its first piece so both go out in one write."""
        self._on_answer: Callable[[float], None] | None = None
        self._last: Callable[[], None] | None = None
        self._peer: Peer | None = None
        self._asked = 0.0

    # --- asyncio's side ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:  # asyncio sets it only on sockets made with IPPROTO_TCP, which accept()'s are not
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._everyone.add(self)
        self.guard.opened(self)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._task is None:
            self._advance()
        elif len(self._buffer) > MAX_HEAD and self.transport is not None:
            self.transport.pause_reading()  # a client sending ahead waits until this answer is done

    def eof_received(self) -> bool | None:
        return None  # a client that stops sending has hung up (as aiohttp's server has it)

    def connection_lost(self, exc: Exception | None) -> None:
        self._everyone.discard(self)
        self.guard.trust(self)
        if self._upstream is not None:
            self._upstream.abandon()
            self._upstream = None
        if self._task is not None:
            self._task.cancel()

    def pause_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.pause()

    def resume_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.resume()

    # --- reading requests ----------------------------------------------------------------------

    def _advance(self) -> None:
        """Read as much of the next request as has arrived; start serving it once whole."""
        if self.transport is None or self.transport.is_closing():
            return
        try:
            if self._head is None and not self._read_head():
                return
            body = self._read_body()
        except Malformed as exc:
            self.answer_error(exc, status=exc.answer_status, close=True)
            return
        if body is None:
            return
        assert self._serve is not None
        self._task = self._loop.create_task(self._serve(body))
        self._task.add_done_callback(self._served)

    def _read_head(self) -> bool:
        end = self._buffer.find(HEAD_END)
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                raise Malformed(f"the request head is over {MAX_HEAD // 1024} KiB", status=431)
            return False
        head = parse_request(bytes(self._buffer[:end]))
        del self._buffer[: end + 4]
        if head.version == (1, 0):
            head.keep_alive = False  # an HTTP/1.0 client gets its answer, then the close
        if head.length is not None and head.length > MAX_BODY:
            raise Malformed(f"the request body is over {MAX_BODY // 1024 // 1024} MiB", status=413)
        self._serve = self.requests.admit(self, head)
        if self._serve is None:
            return False
        self._head = head
        if head.chunked:
            self._chunks = Chunks(keep=True)
        if head.get("expect").lower() == "100-continue" and (head.chunked or head.length) and self.transport:
            self.transport.write(CONTINUE)
        return True

    def _read_body(self) -> bytes | None:
        head = self._head
        assert head is not None
        if self._chunks is not None:
            try:
                used = self._chunks.feed(bytes(self._buffer))  # all of it until the last chunk
            except ValueError as exc:
                raise Malformed(f"the chunked body is malformed: {exc}") from None
            del self._buffer[:used]
            if self._chunks.size > MAX_BODY:
                raise Malformed(f"the request body is over {MAX_BODY // 1024 // 1024} MiB", status=413)
            if not self._chunks.done:
                return None
            assert self._chunks.payload is not None
            body, self._chunks = b"".join(self._chunks.payload), None
            return body
        length = head.length or 0
        if len(self._buffer) < length:
            return None
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        return body

    def _served(self, task: asyncio.Task[None]) -> None:
        """The answer is out: the next request may be read (keep-alive), or the connection ends."""
        head, self._task, self._head = self._head, None, None
        if self.transport is None or self.transport.is_closing():
            return
        if task.cancelled() or head is None or not head.keep_alive:
            self.transport.close()
            return
        self.transport.resume_reading()
        if self._buffer:
            self._advance()

    # --- writing answers -----------------------------------------------------------------------

    @property
    def client_version(self) -> tuple[int, int]:
        return self._head.version if self._head is not None else (1, 1)

    def peer(self) -> Peer:
        """The connection's peer, for the audit: TCP gives an address, not a process."""
        if self._peer is None:
            peername = self.transport.get_extra_info("peername") if self.transport else None
            address = f"{peername[0]}:{peername[1]}" if peername else None
            self._peer = Peer("proxy", address=address) if address else Peer("proxy")
        return self._peer

    async def relay(
        self, upstream: Upstream, method: str, request: bytes, exchange: Exchange, answered: Callable[[float], None],
        last: Callable[[], None],
    ) -> None:  # fmt: skip
        """Send ``request`` on ``upstream`` and write its answer here; ``TryAgain``, ``UpstreamBroke``.

        ``answered`` is told how long the head took; ``last`` is called before the answer's
        last piece goes out, so a client holding the whole answer finds its log line written.
        """
        self._upstream, self._exchange = upstream, exchange
        self._answered = self._loop.create_future()
        self._on_answer, self._last, self._head_out = answered, last, b""
        self._asked = self._loop.time()
        upstream.send(method, request, self, self.client_version)
        try:
            await self._answered
        finally:
            self._upstream = self._answered = None

    def begin(self, status: int, head: bytes) -> None:
        assert self._exchange is not None and self._on_answer is not None
        self._exchange.status = status
        self._on_answer(self._loop.time() - self._asked)
        self._head_out = head

    def piece(self, data: bytes, *, last: bool) -> None:
        assert self._exchange is not None and self.transport is not None
        self._exchange.received += len(data)
        if last:
            self._upstream = None  # back in the pool: no longer this connection's to pause
            assert self._last is not None
            self._last()
        if self._head_out:
            data, self._head_out = self._head_out + data, b""
        self.transport.write(data)
        if last and self._answered is not None and not self._answered.done():
            self._answered.set_result(None)

    def broke(self, why: str, *, again: bool) -> None:
        exchange, answered = self._exchange, self._answered
        assert exchange is not None
        self._upstream = None
        if answered is None or answered.done():
            return
        if self._head_out or not exchange.status:  # nothing sent yet: the client can still be told
            self._head_out = b""
            answered.set_exception(TryAgain() if again else UpstreamBroke(why))
            return
        exchange.cut_short("upstream", f"upstream broke off ({why})")
        if self._last is not None:
            self._last()  # logged before the client sees the cut
        if self.transport is not None:
            self.transport.close()  # the client must see a cut answer, not a complete one
        answered.set_result(None)

    def answer_error(self, exc: BrokerError, *, status: int | None = None, close: bool = False) -> None:
        """The error as the socket API's JSON body, which OpenAI's and Anthropic's SDKs also read."""
        if self.transport is None or self.transport.is_closing():
            return
        status = status or exc.status
        body = json.dumps(exc.to_wire()).encode()
        close = close or self._head is None or not self._head.keep_alive
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n"
        )
        self.transport.write(head.encode() + body)
        if close:
            self._head = None
            self.transport.close()
