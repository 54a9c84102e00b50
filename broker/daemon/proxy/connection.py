"""One client connection to the proxy: its requests read, their answers written, one at a time.

An asyncio protocol, not a server framework: the request head is parsed once
(``broker.daemon.proxy.h1``), the body read whole (as aiohttp's ``request.read()`` did),
and the upstream's answer written as it arrives, its head together with its first
piece (one write for a whole answer). While the client's socket is full, the upstream
is not read (``pause_writing``), so a long stream costs no memory.

The common request (its token in memory, an idle upstream connection) is sent from
``data_received`` itself and ends in callbacks (``Serve.now``): a task would cost it a
turn of the event loop before it goes out. Any other request is served by a task
(``Serve.later``), which may wait. A client that hangs up ends its request either way,
and with it the upstream connection.
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


class ClientGone(Exception):
    """The client hung up before its answer was out."""


Outcome = BaseException | None
"""How a relayed answer ended: ``None`` (all out), ``TryAgain``, ``UpstreamBroke`` or ``ClientGone``."""


class Serve(Protocol):
    """A request admitted on its head, to be served once its body is in."""

    def now(self, body: bytes) -> Callable[[BaseException], None] | None:
        """Send it without waiting for anything, or ``None`` (nothing done: use ``later``).

        Returns what to tell when it ends other than with its answer out: ``UpstreamBroke``
        (answer the client) or ``ClientGone`` (log it).
        """

    def later(self, body: bytes) -> Coroutine[Any, Any, None]:
        """Serve it in a task: what ``now`` cannot (a token to refresh, a connection to open, an error)."""


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
        self._body = b""
        """The request being served, kept for ``Serve.later`` when one sent ``now`` must go again."""
        self._serving = False
        """A request is read whole and not answered yet: what else arrives waits."""
        self._task: asyncio.Task[None] | None = None
        """The task serving the request (``Serve.later``); ``None`` while one is sent from here (``Serve.now``)."""
        self._ended: Callable[[BaseException], None] | None = None
        """``Serve.now``'s request: told how it ended when its answer is not all out."""
        self._settle: Callable[[Outcome], None] | None = None
        """Who is told how the exchange with the upstream ended: ``_settled_now``, or ``relay``'s task."""
        self._upstream: Upstream | None = None
        self._exchange: Exchange | None = None
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
        if not self._serving:
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
        else:
            self._settled(ClientGone())

    def pause_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.pause()

    def resume_writing(self) -> None:
        if self._upstream is not None:
            self._upstream.resume()

    # --- reading requests ----------------------------------------------------------------------

    def _advance(self) -> None:
        """Read as much of the next request as has arrived; start serving it once whole."""
        if self._serving or self.transport is None or self.transport.is_closing():
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
        self._serving, self._body = True, body
        self._ended = self._serve.now(body)
        if self._ended is None:
            self._later(body)

    def _later(self, body: bytes) -> None:
        assert self._serve is not None
        self._task = self._loop.create_task(self._serve.later(body))
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
        self._task = None
        self._next(cut=task.cancelled())

    def _settled_now(self, outcome: Outcome) -> None:
        """How a request sent from ``data_received`` (``Serve.now``) ended."""
        ended, self._ended = self._ended, None
        assert ended is not None
        if isinstance(outcome, TryAgain):
            self._later(self._body)  # a kept connection the upstream had closed meanwhile: the task path retries
            return
        if outcome is not None:
            ended(outcome)
        if not isinstance(outcome, ClientGone):
            self._next(cut=False, soon=True)

    def _next(self, *, cut: bool, soon: bool = False) -> None:
        """The answer is out: the next request may be read (keep-alive), or the connection ends.

        ``soon``: from inside an upstream's callback, a request already waiting is read on the loop's next turn.
        """
        head, self._head, self._serving, self._body = self._head, None, False, b""
        if self.transport is None or self.transport.is_closing():
            return
        if cut or head is None or not head.keep_alive:
            self.transport.close()
            return
        self.transport.resume_reading()
        if self._buffer:
            if soon:
                self._loop.call_soon(self._advance)
            else:
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

    def send(
        self, upstream: Upstream, method: str, request: bytes, exchange: Exchange, answered: Callable[[float], None],
        last: Callable[[], None],
    ) -> None:  # fmt: skip
        """Send ``request`` on ``upstream``; its answer is written here, and its end told to ``Serve.now``'s caller.

        ``answered`` is told how long the head took; ``last`` is called before the answer's
        last piece goes out, so a client holding the whole answer finds its log line written.
        """
        self._relay(upstream, method, request, exchange, answered, last, self._settled_now)

    async def relay(
        self, upstream: Upstream, method: str, request: bytes, exchange: Exchange, answered: Callable[[float], None],
        last: Callable[[], None],
    ) -> None:  # fmt: skip
        """``send``, for a task: returns once the answer is out; raises ``TryAgain``, ``UpstreamBroke``."""
        answer_out = self._loop.create_future()

        def settle(outcome: Outcome) -> None:
            if answer_out.done():  # cancelled: the client hung up
                return
            if outcome is None:
                answer_out.set_result(None)
            else:
                answer_out.set_exception(outcome)

        self._relay(upstream, method, request, exchange, answered, last, settle)
        try:
            await answer_out
        finally:
            self._upstream = self._settle = None

    def _relay(
        self, upstream: Upstream, method: str, request: bytes, exchange: Exchange, answered: Callable[[float], None],
        last: Callable[[], None], settle: Callable[[Outcome], None],
    ) -> None:  # fmt: skip
        self._upstream, self._exchange, self._settle = upstream, exchange, settle
        self._on_answer, self._last, self._head_out = answered, last, b""
        self._asked = self._loop.time()
        upstream.send(method, request, self, self.client_version)

    def _settled(self, outcome: Outcome) -> None:
        """The exchange ended: told once, to whoever waits for it."""
        settle, self._settle, self._upstream = self._settle, None, None
        if settle is not None:
            settle(outcome)

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
        if last:
            self._settled(None)

    def broke(self, why: str, *, again: bool) -> None:
        exchange = self._exchange
        assert exchange is not None
        self._upstream = None
        if self._settle is None:
            return
        if self._head_out or not exchange.status:  # nothing sent yet: the client can still be told
            self._head_out = b""
            self._settled(TryAgain() if again else UpstreamBroke(why))
            return
        exchange.cut_short("upstream", f"upstream broke off ({why})")
        if self._last is not None:
            self._last()  # logged before the client sees the cut
        if self.transport is not None:
            self.transport.close()  # the client must see a cut answer, not a complete one
        self._settled(None)

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
