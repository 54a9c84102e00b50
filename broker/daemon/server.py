"""The socket API's HTTP server: aiohttp on a Unix socket, peers checked by uid.

The daemon binds the socket itself (dir 0700, socket 0600) or takes the one systemd
passes; either way the listening socket reaches aiohttp through ``SockSite``, so there
is one server code path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from broker.core.errors import BadRequest, BrokerError, DaemonUnavailable, Forbidden
from broker.core.trust import Untrusted, ensure_private_dir, peer_credentials
from broker.daemon.callers import Peer, Ucred
from broker.daemon.log_throttle import Throttle

log = logging.getLogger("broker.server")

MAX_REQUEST_BYTES = 64 * 1024
_OWN_UID = os.getuid()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_refusals = Throttle()


_peers: weakref.WeakKeyDictionary[asyncio.BaseTransport, Peer] = weakref.WeakKeyDictionary()
"""Each open connection's peer: SO_PEERCRED is fixed at connect(), so one read a connection will do."""


def peer_of(request: web.Request) -> Peer:
    """The process on the other end of the Unix socket: pid and uid from SO_PEERCRED, the rest on demand."""
    transport = request.transport
    if transport is None:
        return Peer("socket")
    try:
        return _peers[transport]
    except KeyError:
        peer = _read_peer(transport)
    _peers[transport] = peer
    return peer


def _read_peer(transport: asyncio.BaseTransport) -> Peer:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return Peer("socket")
    pid, uid, _ = peer_credentials(sock)
    return Peer("socket", Ucred(pid, uid))


def guarded_routes(routes: list[web.RouteDef]) -> list[web.RouteDef]:
    """``routes`` behind the peer check and JSON errors, plus a JSON 404/405 for any other request.

    Each handler is wrapped once, here, instead of by a middleware: aiohttp runs every
    middleware (and one of its own that comes with them) as a wrapper per request,
    which cost the token route a tenth of its throughput.
    """
    wrapped = [web.route(route.method, route.path, _guard(route.handler), **route.kwargs) for route in routes]
    return [*wrapped, web.route("*", r"/{unrouted:[\s\S]*}", _guard(_no_route))]


def _guard(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        """Peers of another uid are refused; every failure becomes the API's JSON error body.

        No blanket timeout: the only wait that could last (a refresh in flight) is
        bounded where it happens (``Refresher.fresh``); the fast path pays nothing.
        """
        ucred = peer_of(request).ucred
        uid = ucred.uid if ucred else None
        if uid != _OWN_UID:
            _refusals.log(log, logging.WARNING, "refused a peer with uid=%s", uid)
            return error_response(Forbidden("only the user who runs the daemon may use it"))
        try:
            return await handler(request)
        except BrokerError as exc:
            return error_response(exc)
        except web.HTTPRequestEntityTooLarge:
            return error_response(BadRequest(f"request body over {MAX_REQUEST_BYTES} bytes"), status=413)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "bad_request")
            body = {"error": {"code": code, "message": exc.reason, "hint": "see the socket API in README.md"}}
            allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return web.json_response(body, status=exc.status, headers=allow)
        except TimeoutError:
            return error_response(DaemonUnavailable("the request took too long", "try again"), status=504)
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            return error_response(BrokerError("internal error", "see the daemon's log"))

    return guarded


async def _no_route(request: web.Request) -> web.StreamResponse:
    """The catch-all route: 405 when another method would have matched the path, else 404."""
    allowed: set[str] = set()
    catch_all = request.match_info.route.resource
    for resource in request.app.router.resources():
        if resource is not catch_all:
            allowed |= (await resource.resolve(request))[1]
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def error_response(exc: BrokerError, status: int | None = None) -> web.Response:
    return web.json_response(exc.to_wire(), status=status or exc.status)


async def read_json(request: web.Request) -> dict[str, object]:
    """A JSON object body, or ``{}`` for an empty body; anything else is bad_request."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("the request body is not JSON") from None
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def bind_unix_socket(path: Path) -> socket.socket:
    """A listening socket at ``path`` in a 0700 directory, itself 0600.

    A stale socket left by a killed daemon is replaced; a live one is an error, so
    two daemons never fight over one path.
    """
    ensure_socket_dir(path.parent)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise DaemonUnavailable(f"{path} exists and is not a socket", "remove it or set BROKER_SOCKET")
        if _answers(path):
            raise DaemonUnavailable(f"another broker daemon already listens on {path}", "stop it first")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(socket.SOMAXCONN)  # a burst of clients must not meet EAGAIN: non-blocking connects fail at once
    sock.setblocking(False)
    return sock


def ensure_socket_dir(directory: Path) -> None:
    """The socket's directory: made 0700, or one that exists checked (``broker.trust``), never chmodded."""
    try:
        ensure_private_dir(directory)
    except Untrusted as exc:
        raise DaemonUnavailable(
            f"cannot listen there: {exc}",
            "set BROKER_SOCKET (or [daemon] socket) to a path in a directory only you can write to",
        ) from None


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True
