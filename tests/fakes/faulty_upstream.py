"""An OAuth 2.0 token endpoint on loopback that fails on purpose, one fault at a time.

A plain HTTP/1.1 server on raw sockets (keep-alive, Content-Length bodies), because
some faults cannot be made with a WSGI server: closing the connection in the middle
of an answer, or never answering at all. When no fault is queued it is a faithful
RFC 6749 §6 refresh endpoint: form body, public client (``client_id``), rotating
single-use refresh tokens, §5.1 answers with ``Cache-Control: no-store`` and §5.2
errors (``invalid_request``, ``unsupported_grant_type``, ``invalid_grant``).

Faults (``inject(kind, count)`` queues them; ``always(kind)`` makes one permanent):

- ``500``: HTTP 500 with a plain-text body.
- ``429``: HTTP 429 with ``Retry-After`` (seconds) and a §5.2-shaped JSON body.
- ``hang``: reads the request and never answers (until ``hang_seconds`` or ``stop()``).
- ``reset``: starts a 200 answer, then resets the connection (RST) mid-body.
- ``invalid_json``: HTTP 200 whose body is not JSON (a captive portal's page).
- ``slow``: answers correctly, after ``slow_seconds``.

``counts`` holds one counter per fault served and per outcome of real refreshes
(``refreshed``, ``reused``, ``unknown``). Expiries come from ``now``, so a test with a
fake clock can tell whether a token it was served had expired in its own time.
"""

from __future__ import annotations

import json
import secrets
import socket
import socketserver
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from urllib.parse import parse_qsl

FAULTS = ("500", "429", "hang", "reset", "invalid_json", "slow")
CLIENT_ID = "broker-test"
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class Issued:
    """One access token as the upstream issued it, in the upstream's (the test's) time."""

    refresh_token: str
    issued_at: float
    expires_at: float


class FaultyUpstream:
    def __init__(
        self,
        *,
        lifetime: float = 3600,
        rotate: bool = True,
        now: Callable[[], float] = time.time,
        retry_after: float = 1.0,
        hang_seconds: float = 60.0,
        slow_seconds: float = 0.5,
    ) -> None:
        self.lifetime = lifetime
        self.rotate = rotate
        self.now = now
        self.retry_after = retry_after
        self.hang_seconds = hang_seconds
        self.slow_seconds = slow_seconds
        self.counts: Counter[str] = Counter()
        """Per fault kind served, and ``refreshed`` / ``reused`` / ``unknown`` for real refreshes."""
        self.live: set[str] = set()
        self.spent: set[str] = set()
        self.access: dict[str, Issued] = {}
        """Every access token issued, with its expiry in ``now``'s time."""
        self.lock = threading.Condition(threading.RLock())
        self._faults: deque[str] = deque()
        self._always: str | None = None
        self._gate_open = True
        self._gate_after_commit = False
        self._held = 0
        self._requests = 0
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FaultyUpstream has not been started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    def start(self) -> Self:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.upstream = self
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving; hanging and held requests end at once."""
        self._stopping.set()
        self.release()
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        thread.join()
        server.server_close()
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- knobs (thread-safe) -------------------------------------------------------------------

    def issue(self) -> tuple[str, str]:
        """A fresh (access, refresh) pair, as a completed login would hold."""
        with self.lock:
            return self._mint()

    def inject(self, kind: str, count: int = 1) -> None:
        """Answer the next ``count`` token requests with fault ``kind`` (after those already queued)."""
        assert kind in FAULTS, kind
        with self.lock:
            self._faults.extend([kind] * count)

    def always(self, kind: str | None) -> None:
        """Answer every token request with ``kind`` once the queue is empty; ``None`` heals."""
        assert kind is None or kind in FAULTS, kind
        with self.lock:
            self._always = kind

    def heal(self) -> None:
        with self.lock:
            self._faults.clear()
            self._always = None

    def hold(self, *, after_commit: bool = False) -> None:
        """Keep token answers waiting until ``release()``.

        ``after_commit``: the refresh is done (the old refresh token is already spent) and
        only the answer waits, as when a process dies between the upstream's rotation and
        its own write.
        """
        with self.lock:
            self._gate_open, self._gate_after_commit = False, after_commit

    def release(self) -> None:
        with self.lock:
            self._gate_open = True
            self.lock.notify_all()

    def wait_held(self, count: int = 1, timeout: float = 10.0) -> None:
        """Return once ``count`` token requests wait at the gate."""
        with self.lock:
            if not self.lock.wait_for(lambda: self._held >= count, timeout):
                raise TimeoutError(f"{self._held} of {count} token requests reached the upstream")

    def wait_count(self, name: str, count: int, timeout: float = 10.0) -> None:
        """Return once ``counts[name]`` reached ``count``."""
        with self.lock:
            if not self.lock.wait_for(lambda: self.counts[name] >= count, timeout):
                raise TimeoutError(f"counts[{name!r}] is {self.counts[name]}, not {count}")

    @property
    def requests(self) -> int:
        """Token requests received so far, whatever their answer."""
        with self.lock:
            return self._requests

    def tokens(self) -> set[str]:
        """Every access and refresh token this upstream ever issued."""
        with self.lock:
            return set(self.access) | self.live | self.spent

    # -- serving -------------------------------------------------------------------------------

    def _mint(self) -> tuple[str, str]:
        refresh = f"fu-rt-{secrets.token_urlsafe(24)}"
        self.live.add(refresh)
        return self._mint_access(refresh), refresh

    def _mint_access(self, refresh: str) -> str:
        access, now = f"fu-at-{secrets.token_urlsafe(24)}", self.now()
        self.access[access] = Issued(refresh, now, now + self.lifetime)
        return access

    def _next_fault(self) -> str | None:
        with self.lock:
            self._requests += 1
            kind = self._faults.popleft() if self._faults else self._always
            if kind is not None:
                self.counts[kind] += 1
                self.lock.notify_all()
            return kind

    def _wait_gate(self, *, after_commit: bool) -> None:
        with self.lock:
            if self._gate_open or self._gate_after_commit != after_commit:
                return
            self._held += 1
            self.lock.notify_all()
            try:
                self.lock.wait_for(lambda: self._gate_open or self._stopping.is_set())
            finally:
                self._held -= 1

    def _refresh(self, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        """RFC 6749 §6 with single-use refresh tokens."""
        with self.lock:
            if form.get("grant_type") != "refresh_token":
                self.counts["bad_request"] += 1
                return 400, {"error": "unsupported_grant_type"}
            token = form.get("refresh_token")
            if not token or form.get("client_id") != CLIENT_ID:
                self.counts["bad_request"] += 1
                return 400, {"error": "invalid_request", "error_description": "refresh_token and client_id required"}
            if token in self.spent:
                self.counts["reused"] += 1
                self.lock.notify_all()
                return 400, {"error": "invalid_grant", "error_description": "refresh token already used"}
            if token not in self.live:
                self.counts["unknown"] += 1
                self.lock.notify_all()
                return 400, {"error": "invalid_grant", "error_description": "unknown refresh token"}
            if self.rotate:
                self.live.discard(token)
                self.spent.add(token)
                access, fresh = self._mint()
            else:
                access, fresh = self._mint_access(token), token
            self.counts["refreshed"] += 1
            self.lock.notify_all()
        answer: dict[str, object] = {"access_token": access, "token_type": "Bearer", "expires_in": int(self.lifetime)}
        if self.rotate:
            answer["refresh_token"] = fresh
        return 200, answer


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    upstream: FaultyUpstream


class _Handler(socketserver.StreamRequestHandler):
    """HTTP/1.1 with keep-alive, just enough for a token endpoint and its faults."""

    server: _Server
    timeout = 30

    def handle(self) -> None:
        while not self.server.upstream._stopping.is_set():
            try:
                request = self._read_request()
            except (OSError, ValueError):
                return
            if request is None:
                return
            method, path, body = request
            if not self._answer(method, path, body):
                return

    def _read_request(self) -> tuple[str, str, bytes] | None:
        line = self.rfile.readline(8192)
        if not line:
            return None
        method, path, _ = line.decode("latin-1").split(" ", 2)
        length = 0
        while (header := self.rfile.readline(8192)) not in (b"\r\n", b"\n", b""):
            name, _, value = header.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length > MAX_BODY:
            raise ValueError("body too large")
        return method, path.split("?", 1)[0], self.rfile.read(length)

    def _answer(self, method: str, path: str, body: bytes) -> bool:
        """Answer one request; False when the connection must end."""
        upstream = self.server.upstream
        if path != "/token":
            self._send(404, {"error": "not_found"})
            return True
        if method != "POST":
            self._send(405, {"error": "method_not_allowed"})
            return True
        upstream._wait_gate(after_commit=False)
        fault = upstream._next_fault()
        if fault == "500":
            self._send_raw(500, b"internal server error\n", "text/plain")
            return True
        if fault == "429":
            headers = {"Retry-After": f"{upstream.retry_after:g}"}
            self._send(429, {"error": "rate_limited", "error_description": "slow down"}, headers)
            return True
        if fault == "hang":
            upstream._stopping.wait(upstream.hang_seconds)
            return False
        if fault == "reset":
            self._reset_mid_answer()
            return False
        if fault == "invalid_json":
            self._send_raw(200, b"<html><body>Sign in to the Wi-Fi</body></html>", "text/html")
            return True
        if fault == "slow":
            upstream._stopping.wait(upstream.slow_seconds / 2)
        form = dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
        status, answer = upstream._refresh(form)
        upstream._wait_gate(after_commit=True)
        if upstream._stopping.is_set():
            return False
        if fault == "slow":
            self._trickle(status, answer, upstream.slow_seconds / 2)
        else:
            self._send(status, answer)
        return True

    def _send(self, status: int, body: dict[str, object], headers: dict[str, str] | None = None) -> None:
        extra = {"Cache-Control": "no-store", "Pragma": "no-cache", **(headers or {})}
        self._send_raw(status, json.dumps(body).encode(), "application/json", extra)

    def _trickle(self, status: int, body: dict[str, object], pause: float) -> None:
        """The head and half the body, a pause, then the rest: a slow link or a loaded server."""
        data = self._encode(status, json.dumps(body).encode(), "application/json", {"Cache-Control": "no-store"})
        cut = len(data) - len(json.dumps(body)) // 2
        self.wfile.write(data[:cut])
        self.wfile.flush()
        self.server.upstream._stopping.wait(pause)
        self.wfile.write(data[cut:])
        self.wfile.flush()

    def _send_raw(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.wfile.write(self._encode(status, body, content_type, headers))
        self.wfile.flush()

    @staticmethod
    def _encode(status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> bytes:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Content-Type: {content_type}"]
        lines += [f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items()), "", ""]
        return "\r\n".join(lines).encode() + body

    def _reset_mid_answer(self) -> None:
        """Promise a body, send part of it, then RST (SO_LINGER 0 and close)."""
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"
        self.wfile.write(head + b'{"access_token": "fu-partial')
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.wfile.close()
        self.connection.close()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
}
