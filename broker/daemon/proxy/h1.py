"""HTTP/1.1 as the proxy reads it: request heads, answer heads and chunked bodies, strictly.

The proxy sits between a local tool and a provider, so what it accepts is also what it
may pass on: anything two servers could read differently is refused (400) rather than
guessed at. A request with both ``Content-Length`` and ``Transfer-Encoding`` (the
request-smuggling shape), a length that is not all digits or given twice, a transfer
coding other than ``chunked``, a chunk size that is not hex, bare ``\\r`` or ``\\n``
line ends, folded header lines, whitespace before a header's colon. RFC 9112.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from broker.core.errors import BadRequest

MAX_HEAD = 64 * 1024
"""Bytes a request head may take; aiohttp's per-line limit is 8 KiB, a head this size is no client."""
MAX_HEADERS = 128
MAX_CHUNK_LINE = 4096
"""A chunk-size line with its extensions, or a trailer line."""
HEAD_END = b"\r\n\r\n"

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*(.*?)[ \t]*")
_TARGET = re.compile(rb"/[^\x00-\x20\x7f]*")
"""Origin form only: the proxy is no forward proxy."""
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS = re.compile(rb"[0-9]{1,18}")
_VERSIONS = {b"HTTP/1.1": (1, 1), b"HTTP/1.0": (1, 0)}
_NO_BODY_STATUSES = frozenset({204, 304})


class Malformed(BadRequest):
    """A request the proxy will not read (400, or ``status`` when more precise)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message, "send a plain HTTP/1.1 request: http://HOST:PORT/PROVIDER/...")
        self.answer_status = status


@dataclass
class Head:
    """A request or answer head: its first line's parts and its headers, as sent (latin-1)."""

    first: tuple[str, str, str]
    """``(method, target, version)`` of a request; ``(version, status, reason)`` of an answer."""
    headers: list[tuple[str, str]]
    fields: dict[str, list[str]]
    """The values by lower-case name, read once."""
    version: tuple[int, int]
    length: int | None = None
    """``Content-Length``, when the body is framed by it."""
    chunked: bool = False
    connection: frozenset[str] = frozenset()
    """The ``Connection`` header's tokens, lower case: the headers they name are hop-by-hop too."""
    keep_alive: bool = True

    def get(self, name: str, default: str = "") -> str:
        """The first header called ``name`` (lower case)."""
        values = self.fields.get(name)
        return values[0] if values else default


def parse_request(raw: bytes) -> Head:
    """A request head (without its final empty line): ``Malformed`` for anything not plainly HTTP/1.1."""
    lines = _lines(raw)
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not _TARGET.fullmatch(parts[1]):
        raise Malformed("the request line is not 'METHOD /PATH HTTP/1.1' (no spaces or control characters)")
    version = _VERSIONS.get(parts[2])
    if version is None:
        raise Malformed("only HTTP/1.1 and HTTP/1.0 are spoken here", status=505)
    head = Head((parts[0].decode(), parts[1].decode("latin-1"), parts[2].decode()), *_headers(lines[1:]), version)
    _persistence(head)
    _frame(head, request=True)
    return head


def parse_answer(raw: bytes, method: str) -> Head:
    """An upstream's answer head; ``ValueError`` when it is not HTTP/1.x (the upstream then counts as broken)."""
    lines = _lines(raw)
    version_text, _, rest = lines[0].partition(b" ")
    status_text, _, reason = rest.partition(b" ")
    version = _VERSIONS.get(version_text)
    if version is None or not (len(status_text) == 3 and status_text.isdigit()):
        raise ValueError("the upstream's answer is not HTTP/1.1")
    first = (version_text.decode(), status_text.decode(), reason.decode("latin-1"))
    head = Head(first, *_headers(lines[1:]), version)
    _persistence(head)  # for every answer: a 204 or 304 may close the connection too
    status = int(status_text)
    if method == "HEAD" or status < 200 or (method == "CONNECT" and status < 300) or status in _NO_BODY_STATUSES:
        head.length = 0
    else:
        _frame(head, request=False)
    return head


def _lines(raw: bytes) -> list[bytes]:
    if len(raw) > MAX_HEAD:
        raise Malformed(f"the request head is over {MAX_HEAD // 1024} KiB", status=431)
    lines = raw.split(b"\r\n")
    if raw.count(b"\n") != len(lines) - 1 or raw.count(b"\r") != len(lines) - 1:
        raise Malformed("a line of the head ends in a bare CR or LF")
    if len(lines) > MAX_HEADERS + 1:
        raise Malformed(f"more than {MAX_HEADERS} headers", status=431)
    if b"\0" in raw:
        raise Malformed("the head holds a NUL")
    return lines


def _headers(lines: list[bytes]) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    headers = []
    fields: dict[str, list[str]] = {}
    for line in lines:
        match = _HEADER.fullmatch(line)
        if match is None:
            raise Malformed("a header line is not 'Name: value' (no folding, no space before the colon)")
        name, value = match[1].decode(), match[2].decode("latin-1")
        headers.append((name, value))
        fields.setdefault(name.lower(), []).append(value)
    return headers, fields


def _persistence(head: Head) -> None:
    """Whether the connection stays open after this message (RFC 9112 §9.3), from ``Connection``."""
    head.connection = frozenset(token.strip().lower() for token in head.get("connection").split(","))
    head.keep_alive = "keep-alive" in head.connection if head.version == (1, 0) else "close" not in head.connection


def _frame(head: Head, *, request: bool) -> None:
    """How the body is delimited; an answer delimited by the close also ends the connection."""
    lengths = head.fields.get("content-length")
    codings = head.fields.get("transfer-encoding")
    if lengths and codings:
        raise Malformed("both Content-Length and Transfer-Encoding: the body's length is ambiguous")
    if codings:
        if len(codings) > 1 or codings[0].lower() != "chunked" or head.version == (1, 0):
            raise Malformed("the only transfer coding spoken here is a single 'chunked' (HTTP/1.1)")
        head.chunked = True
    elif lengths:
        if len(lengths) > 1 or not _DIGITS.fullmatch(lengths[0].encode("latin-1")):
            raise Malformed("Content-Length must be one number")
        head.length = int(lengths[0])
    elif request:
        head.length = 0  # a request without either has no body (RFC 9112 §6.3)
    else:
        head.keep_alive = False  # an answer without either ends when the upstream closes


class Chunks:
    """A chunked body read incrementally: where it ends, and its payload (RFC 9112 §7.1).

    ``feed`` returns how many of the bytes given belong to the body; the rest is the next
    message's. ``payload`` collects the data when asked to (a request's body), else only
    ``size`` counts it (an answer passed on as it came).
    """

    def __init__(self, *, keep: bool) -> None:
        self.done = False
        self.size = 0
        self.payload: list[bytes] | None = [] if keep else None
        self._left = -1
        """Data bytes left in the current chunk; -1 while reading a size line, -2 in the trailers."""
        self._line = b""

    def feed(self, data: bytes) -> int:
        """``ValueError`` for a malformed chunk: a size that is not hex, data not followed by CRLF."""
        at = 0
        while at < len(data) and not self.done:
            if self._left > 0:
                piece = data[at : at + self._left]
                at += len(piece)
                self._left -= len(piece)
                self.size += len(piece)
                if self.payload is not None:
                    self.payload.append(piece)
                if self._left == 0:
                    self._left = -3  # the CRLF after the data
                continue
            end = data.find(b"\n", at)
            if end < 0:
                self._line += data[at:]
                if len(self._line) > MAX_CHUNK_LINE:
                    raise ValueError("a chunk line is too long")
                return len(data)
            line, self._line = self._line + data[at : end + 1], b""
            at = end + 1
            self._line_read(line)
        return at

    def _line_read(self, line: bytes) -> None:
        if not line.endswith(b"\r\n") or len(line) > MAX_CHUNK_LINE:
            raise ValueError("a chunk line does not end in CRLF")
        line = line[:-2]
        if self._left == -3:
            if line:
                raise ValueError("a chunk's data is longer than its size")
            self._left = -1
        elif self._left == -2:
            self.done = not line  # trailers are read and dropped, up to the empty line
        else:
            size = line.split(b";", 1)[0].rstrip(b" \t")
            if not _HEX.fullmatch(size):
                raise ValueError("a chunk size is not a hex number")
            self._left = int(size, 16) or -2
