"""A minimal HTTP/1.1 client over a Unix socket, for the fast client path.

``http.client`` costs about 40 ms of imports (email, ssl) on every ``broker token``:
more than the rest of the command. The daemon speaks plain HTTP/1.1 with JSON or
chunked NDJSON bodies, so this reads exactly that and nothing more.
"""

import io
import socket

from broker.core.trust import Untrusted, check_daemon

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

MAX_HEADER_BYTES = 64 * 1024


class ProtocolError(Exception):
    """The peer did not answer with well-formed HTTP/1.1."""


class Response:
    def __init__(self, status: int, headers: dict[str, str], reader: io.BufferedReader) -> None:
        self.status = status
        self.headers = headers
        self._reader = reader

    def _readline(self) -> bytes:
        return self._reader.readline(MAX_HEADER_BYTES)

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self._reader.read(size - len(data))
            if not chunk:
                raise ProtocolError("the connection closed in the middle of a body")
            data += chunk
        return data

    def chunks(self) -> "Iterator[bytes]":
        """The body, piece by piece as it arrives."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = self._readline()
                if not size_line:
                    raise ProtocolError("the connection closed in the middle of a chunked body")
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self._readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                yield self._read(size)
                self._readline()
        elif "content-length" in self.headers:
            length = int(self.headers["content-length"])
            if length:
                yield self._read(length)
        else:
            while chunk := self._reader.read(65536):
                yield chunk

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def lines(self) -> "Iterator[bytes]":
        """Complete lines of an NDJSON body, each as soon as it is whole."""
        pending = b""
        for chunk in self.chunks():
            pending += chunk
            *whole, pending = pending.split(b"\n")
            yield from whole
        if pending:
            yield pending


class Connection:
    """One keep-alive connection to the daemon's socket."""

    def __init__(self, path: str, timeout: float | None) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._reader: io.BufferedReader | None = None
        self._closing = False

    def connect(self) -> None:
        """Connect, then check who answers (``broker.trust``) before anything is sent."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
            check_daemon(sock, self.path)
        except (OSError, Untrusted):
            sock.close()
            raise
        self._sock = sock
        self._reader = sock.makefile("rb")

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, method: str, target: str, body: bytes | None = None) -> Response:
        if self._closing:
            self.close()
            self._closing = False
        if self._sock is None:
            self.connect()
        assert self._sock is not None and self._reader is not None
        head = f"{method} {target} HTTP/1.1\r\nHost: broker\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self._sock.sendall(head.encode("latin-1") + b"\r\n" + (body or b""))
        return self._read_head(self._reader)

    def _read_head(self, reader: io.BufferedReader) -> Response:
        status_line = reader.readline(MAX_HEADER_BYTES)
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise ProtocolError("the peer did not answer with HTTP/1.1")
        headers: dict[str, str] = {}
        while True:
            line = reader.readline(MAX_HEADER_BYTES)
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise ProtocolError("the connection closed in the middle of the headers")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        self._closing = headers.get("connection", "").lower() == "close"
        return Response(int(parts[1]), headers, reader)
