"""The proxy's door: a connection that has not shown the proxy key gets little time and few seats.

Any local user can connect to the proxy's port. A thousand half-sent requests held open
by another user once used up the daemon's file descriptors, and with them the owner's
Unix socket: every ``broker token`` hung. So until a request on it presents the key:

- a connection must finish a request within ``[proxy] header_timeout`` seconds (10),
  else it is closed; a request refused for a missing or wrong key closes it too;
- it holds one of at most ``seats`` places (a quarter of the open-files limit, at most
  ``MAX_UNTRUSTED``). While all are taken the proxy accepts nobody: newcomers wait in
  the kernel's queue, costing the daemon neither descriptors nor time. (Closing the
  oldest instead let a flood that reconnects at once keep both processes busy: the
  owner's ``broker token`` then took ten times as long.)

A connection that presented the key is a tool of the owner; aiohttp's keep-alive applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
from typing import Any

from aiohttp import web

from broker.daemon.log_throttle import Throttle

log = logging.getLogger("broker.proxy")

MAX_UNTRUSTED = 256
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_RETRY = 1.0
"""Seconds to wait after accept() failed for want of resources (asyncio's own choice)."""


def seats() -> int:
    """How many key-less connections may wait at once: well inside the open-files limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(8, min(MAX_UNTRUSTED, soft // 4))


class Guard:
    """Key-less connections, each with the timer that closes it, and whether a seat is free."""

    def __init__(self, seats: int, header_timeout: float) -> None:
        self.seats = seats
        self.header_timeout = header_timeout
        self._waiting: dict[web.RequestHandler, asyncio.TimerHandle] = {}
        self._free = asyncio.Event()
        self._free.set()
        self._full = Throttle()

    async def seat(self) -> None:
        """Return once a key-less connection may be let in."""
        await self._free.wait()

    def opened(self, handler: web.RequestHandler) -> None:
        loop = asyncio.get_running_loop()
        self._waiting[handler] = loop.call_later(self.header_timeout, self._close, handler)
        if len(self._waiting) >= self.seats:
            self._free.clear()
            message = "proxy: %d connections without the key; accepting no more until they end"
            self._full.log(log, logging.WARNING, message, len(self._waiting))

    def trust(self, handler: web.RequestHandler) -> None:
        """A request on ``handler``'s connection presented the key (or it closed): its seat is free."""
        timer = self._waiting.pop(handler, None)
        if timer is not None:
            timer.cancel()
            self._free.set()

    def _close(self, handler: web.RequestHandler) -> None:
        self.trust(handler)
        handler.force_close()
        if handler.transport is not None:
            handler.transport.close()


class GuardedHandler(web.RequestHandler):
    """aiohttp's connection handler, reporting to the guard when it opens and closes."""

    def __init__(self, guard: Guard, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.guard.opened(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.guard.trust(self)
        super().connection_lost(exc)


class GuardedSite(web.BaseSite):
    """aiohttp's ``SockSite`` with an accept loop of its own, which waits for a free seat."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, guard: Guard, **handler_args: Any) -> None:
        super().__init__(runner)
        self._sock = sock
        self._guard = guard
        self._handler_args = handler_args
        self._accepting: asyncio.Task[None] | None = None
        self._failures = Throttle(limit=1)

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        self._sock.setblocking(False)
        self._accepting = asyncio.get_running_loop().create_task(self._accept(), name="proxy accept")

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        self._sock.close()
        await super().stop()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None

        def handler() -> GuardedHandler:
            return GuardedHandler(self._guard, server, loop=loop, **self._handler_args)

        while True:
            await self._guard.seat()
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    continue  # the client gave up before we got to it
                self._failures.log(log, logging.ERROR, "proxy: cannot accept connections: %s", exc.strerror)
                await asyncio.sleep(ACCEPT_RETRY)
                continue
            try:
                await loop.connect_accepted_socket(handler, conn)
            except OSError:
                conn.close()
