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

A connection that presented the key is a tool of the owner; keep-alive applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import socket
from collections.abc import Callable
from typing import Protocol

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


class Door(Protocol):
    """A client connection as the guard sees it: something to close."""

    transport: asyncio.Transport | None


class Guard:
    """Key-less connections, each with the timer that closes it, and whether a seat is free."""

    def __init__(self, seats: int, header_timeout: float) -> None:
        self.seats = seats
        self.header_timeout = header_timeout
        self._waiting: dict[Door, asyncio.TimerHandle] = {}
        self._free = asyncio.Event()
        self._free.set()
        self._full = Throttle()

    async def seat(self) -> None:
        """Return once a key-less connection may be let in."""
        await self._free.wait()

    def opened(self, connection: Door) -> None:
        loop = asyncio.get_running_loop()
        self._waiting[connection] = loop.call_later(self.header_timeout, self._close, connection)
        if len(self._waiting) >= self.seats:
            self._free.clear()
            message = "proxy: %d connections without the key; accepting no more until they end"
            self._full.log(log, logging.WARNING, message, len(self._waiting))

    def trust(self, connection: Door) -> None:
        """A request on ``connection`` presented the key (or it closed): its seat is free."""
        timer = self._waiting.pop(connection, None)
        if timer is not None:
            timer.cancel()
            self._free.set()

    def _close(self, connection: Door) -> None:
        self.trust(connection)
        if connection.transport is not None:
            connection.transport.close()


class Doorway:
    """A listening socket's accept loop, which waits for a free seat before each accept."""

    def __init__(self, sock: socket.socket, guard: Guard, protocol: Callable[[], asyncio.Protocol]) -> None:
        self._sock = sock
        self._guard = guard
        self._protocol = protocol
        self._accepting: asyncio.Task[None] | None = None
        self._failures = Throttle(limit=1)

    def start(self) -> None:
        self._sock.setblocking(False)
        self._accepting = asyncio.get_running_loop().create_task(self._accept(), name="proxy accept")

    async def stop(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        self._sock.close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
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
                await loop.connect_accepted_socket(self._protocol, conn)
            except OSError:
                conn.close()
