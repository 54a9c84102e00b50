"""The upstream's answer back to the client, as it arrives, and the account of what each request did.

A whole answer (a completion, an error) goes out in one write with its length; anything
else (SSE, a long stream) piece by piece as it arrives. A side that breaks off is
recorded (``Exchange.cut_short``): a client sees a cut answer as cut, never as complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from broker.core.errors import UpstreamUnavailable
from broker.core.sanitize import upstream_text
from broker.daemon.proxy.rewrite import HOP_BY_HOP
from broker.daemon.server import error_response

CLIENT_CLOSED = 499
"""The status logged and counted when the client hung up before any answer (nginx's convention)."""


@dataclass
class Exchange:
    """What one proxied request did, for its log line and the metrics."""

    method: str
    shown: str
    """The path as a log line shows it."""
    provider: str
    """The metrics label: the provider, or "" for a name the registry does not know."""
    account: str | None = None
    status: int = 0
    sent: int = 0
    received: int = 0
    cut_by: str = ""
    """``client`` or ``upstream`` when that side broke the answer off."""
    ending: str = ""
    """Why the answer is not whole, for the log line."""
    logged: bool = False
    started: float = field(default_factory=time.monotonic)

    def cut_short(self, by: str, why: str) -> None:
        if not self.cut_by:
            self.cut_by, self.ending = by, f"{why} after {self.received} bytes"
        if by == "client" and not self.status:
            self.status = CLIENT_CLOSED  # before the upstream answered


class _Streamed(web.StreamResponse):
    """A streamed answer whose head goes out with its first piece, in one write (aiohttp's opt-in, as ``Response``)."""

    _send_headers_immediately = False


async def relay(
    request: web.Request, upstream: aiohttp.ClientResponse, exchange: Exchange, done: Callable[[], None]
) -> web.StreamResponse:
    """The upstream's answer: in one piece when it came whole with its head, else piece by piece as it arrives."""
    finished = False
    headers = CIMultiDict((h, v) for h, v in upstream.headers.items() if h.lower() not in HOP_BY_HOP)
    response: web.StreamResponse = _Streamed(status=upstream.status, reason=upstream.reason, headers=headers)
    try:
        try:
            first = await upstream.content.readany()
            if upstream.content.at_eof():  # a whole answer (a completion, an error): one write, with its length
                exchange.received = len(first)
                done()
                finished = True
                return web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=first)
            await response.prepare(request)  # no Content-Length: the answer goes out chunked
            await response.write(first)
            exchange.received += len(first)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
                exchange.received += len(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            exchange.cut_short("upstream", f"upstream broke off ({reason(exc)})")
            if not response.prepared:  # nothing sent yet: the client can still be told
                exchange.status = 502
                down = UpstreamUnavailable(f"{exchange.provider or 'the provider'}: the upstream broke off its answer")
                return error_response(down, status=502)
            if request.transport is not None:
                request.transport.close()  # the client must see a cut answer, not a complete one
            return response
        done()  # before the last chunk: a client holding the whole answer finds the log line written
        await response.write_eof()
        finished = True
    except ConnectionResetError:  # the client went away while a piece was being written
        exchange.cut_short("client", "client hung up")
        return response
    finally:
        if finished:
            upstream.release()
        else:
            upstream.close()  # client gone or upstream cut: drop the connection, which cancels upstream
    return response


def reason(exc: BaseException) -> str:
    """Why an upstream failed, in words safe to log and answer with (they may quote the upstream)."""
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return upstream_text(exc.os_error.strerror or exc.os_error)
    return upstream_text(exc) or type(exc).__name__
