# ruff: noqa: F401, F811 (the proxy fixtures of test_proxy are imported and used as parameters)
"""The proxy's own HTTP/1.1: what it refuses to read, and how it keeps and loses connections.

Requests are written byte for byte on a socket to the real daemon's proxy port. The
upstream here is a raw socket server (``RawUpstream``), so the test decides exactly when
an upstream connection answers, stays open, or drops, and counts the connections made.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
from collections.abc import Callable, Container, Iterator
from urllib.parse import urlsplit

import pytest

from tests.conftest import DaemonProcess
from tests.fakes.llm_upstream import FakeLLM
from tests.fakes.tls_intercept import InterceptingProxy, TestCA
from tests.helpers import wait_for
from tests.test_proxy import (
    KEY,
    PROXY,
    Proxied,
    call,
    login_key,
    proxied,
    proxy_answer,
    read_then_hang_up,
    shared_proxy,
)
from tests.test_proxy_observability import metrics

ANSWER = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "choices": []}).encode()
COMPLETE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(ANSWER), ANSWER)
CUT = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'10\r\ndata: {"n": 1}\n\n\r\n'
)
"""A stream's head and first event, after which the upstream hangs up."""

Reply = Callable[[int, bytes], bytes | None]
"""``(request number on this connection, request) -> bytes to answer``, or ``None``: close without answering."""


class RawUpstream:
    """An upstream that speaks HTTP/1.1 by hand; ``connections`` counts what the proxy opened."""

    def __init__(self, reply: Reply, *, hang_up_after: Container[int] = ()) -> None:
        self.reply = reply
        self.hang_up_after = hang_up_after
        """The request numbers (on each connection) after whose answer the upstream closes the connection."""
        self.connections = 0
        self.dropped = threading.Event()
        """The proxy closed a connection."""
        self.requests: list[bytes] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            received, number = b"", 0
            while True:
                while b"\r\n\r\n" not in received:
                    piece = conn.recv(65536)
                    if not piece:
                        self.dropped.set()
                        return
                    received += piece
                head, _, received = received.partition(b"\r\n\r\n")
                length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head + b"\r\n")[1])  # type: ignore[index]
                while len(received) < length:
                    received += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + received[:length])
                received = received[length:]
                answer = self.reply(number, head)
                if answer is None:
                    return
                conn.sendall(answer)
                if number in self.hang_up_after:
                    return
                number += 1

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def serving(daemon: DaemonProcess) -> Iterator[Callable[..., tuple[RawUpstream, dict[str, str]]]]:
    """A daemon whose ``openai`` is a ``RawUpstream`` answering with ``reply``; the proxy's answer."""
    upstreams: list[RawUpstream] = []

    def start(reply: Reply, *, hang_up_after: Container[int] = ()) -> tuple[RawUpstream, dict[str, str]]:
        upstream = RawUpstream(reply, hang_up_after=hang_up_after)
        upstreams.append(upstream)
        daemon.write_config(f'{PROXY}\n[providers.openai]\nbase_url = "{upstream.url}/v1"\n')
        daemon.start()
        login_key(daemon, "openai")
        return upstream, proxy_answer(daemon, "openai")

    yield start
    for upstream in upstreams:
        upstream.close()


def exchange(base_url: str, raw: bytes) -> bytes:
    """``raw`` written to the proxy as is; everything it answers until it closes."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(raw)
        return b"".join(iter(lambda: sock.recv(65536), b""))


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def chat(answer: dict[str, str], *, headers: str = "", body: bytes = b"{}") -> bytes:
    """A request to ``/chat/completions`` with the proxy key; ``headers`` replace the Content-Length."""
    path = urlsplit(answer["base_url"]).path
    framing = headers or f"Content-Length: {len(body)}\r\n"
    return (
        f"POST {path}/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {answer['access_token']}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n"
    ).encode() + body


# --- what the parser refuses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_line",
    [b"POST /openai/chat/completions\r\n", b"POST  /openai/x HTTP/1.1\r\n", b"GET http://evil/x HTTP/1.1\r\n",
     b"G\x01T /openai/x HTTP/1.1\r\n", b"GET /openai/x HTTP/9.9\r\n", b"GET /openai/x HTTP/1.1\n"],
    ids=["no-version", "two-spaces", "absolute-target", "control-in-method", "unknown-version", "bare-lf"],
)  # fmt: skip
def test_a_malformed_request_line_is_refused_and_the_connection_closed(proxied: Proxied, request_line: bytes):
    answer = exchange(proxied.answer["base_url"], request_line + b"Host: x\r\n\r\n")
    assert status_of(answer) in (400, 505)
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "bad_request"
    assert proxied.llm.requests == []


def test_an_oversized_head_is_431(proxied: Proxied):
    huge = chat(proxied.answer, headers="X-Filler: " + "a" * 70_000 + "\r\nContent-Length: 2\r\n", body=b"{}")
    answer = exchange(proxied.answer["base_url"], huge)
    assert status_of(answer) == 431
    assert proxied.llm.requests == []


@pytest.mark.parametrize(
    "framing",
    ["Content-Length: 2x\r\n", "Content-Length: -2\r\n", "Content-Length: 2\r\nContent-Length: 3\r\n",
     "Content-Length: +2\r\n", "Transfer-Encoding: gzip\r\n", "Transfer-Encoding: chunked, chunked\r\n",
     "Content-Length : 2\r\n", " Content-Length: 2\r\n"],
    ids=["letters", "negative", "twice", "plus-sign", "other-coding", "chunked-twice", "space-before-colon", "folded"],
)  # fmt: skip
def test_a_bad_content_length_or_transfer_coding_is_400(proxied: Proxied, framing: str):
    answer = exchange(proxied.answer["base_url"], chat(proxied.answer, headers=framing, body=b"{}"))
    assert status_of(answer) == 400, answer
    assert proxied.llm.requests == []


def test_content_length_and_transfer_encoding_together_is_400_and_nothing_is_smuggled(proxied: Proxied):
    """The classic smuggling shape: a front end reading one length and a back end the other."""
    smuggled = b"0\r\n\r\nGET /openai/models HTTP/1.1\r\nHost: x\r\n\r\n"
    framing = f"Content-Length: {len(smuggled)}\r\nTransfer-Encoding: chunked\r\n"
    answer = exchange(proxied.answer["base_url"], chat(proxied.answer, headers=framing, body=smuggled))
    assert status_of(answer) == 400
    assert len(re.findall(rb"HTTP/1\.1 \d{3} ", answer)) == 1, "the smuggled request was read"
    assert proxied.llm.requests == []


@pytest.mark.parametrize(
    "chunks",
    [b"zz\r\n{}\r\n0\r\n\r\n", b"2\r\n{}xx\r\n0\r\n\r\n", b"-2\r\n{}\r\n0\r\n\r\n", b"2\n{}\r\n0\r\n\r\n",
     b"1" * 40 + b"\r\n{}\r\n0\r\n\r\n"],
    ids=["not-hex", "data-longer-than-size", "negative", "bare-lf", "too-many-digits"],
)  # fmt: skip
def test_bad_chunk_sizes_are_400(proxied: Proxied, chunks: bytes):
    answer = exchange(
        proxied.answer["base_url"], chat(proxied.answer, headers="Transfer-Encoding: chunked\r\n", body=chunks)
    )
    assert status_of(answer) == 400, answer
    assert proxied.llm.requests == []


def test_a_chunked_request_body_is_forwarded_whole_with_its_length(proxied: Proxied):
    body = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}).encode()
    chunked = b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (10, body[:10], len(body) - 10, body[10:])
    raw = chat(proxied.answer, headers="Transfer-Encoding: chunked\r\nConnection: close\r\n", body=chunked)
    answer = exchange(proxied.answer["base_url"], raw)
    assert status_of(answer) == 200, answer
    [seen] = proxied.llm.requests
    assert seen.body == json.loads(body)


# --- connections -----------------------------------------------------------------------------------


def test_keep_alive_reuses_the_client_and_the_upstream_connection(serving):
    upstream, answer = serving(lambda number, head: COMPLETE)
    parts = urlsplit(answer["base_url"])
    client = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        sockets = set()
        for _ in range(5):
            client.request("POST", parts.path + "/chat/completions", body=b"{}",
                           headers={"Authorization": f"Bearer {answer['access_token']}"})  # fmt: skip
            response = client.getresponse()
            assert (response.status, response.read()) == (200, ANSWER)
            sockets.add(id(client.sock))
    finally:
        client.close()
    assert len(sockets) == 1, "the proxy closed a keep-alive client connection"
    assert upstream.connections == 1, "the proxy opened a new upstream connection per request"
    assert len(upstream.requests) == 5


def test_an_answer_without_a_body_that_says_close_ends_its_upstream_connection(serving):
    """A 204 with ``Connection: close`` (the upstream keeps the socket a moment): no second request goes on it."""
    numbers: list[int] = []

    def reply(number: int, head: bytes) -> bytes:
        numbers.append(number)
        return b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n" if number == 0 else COMPLETE

    upstream, answer = serving(reply)
    for _ in range(2):
        assert (
            status_of(exchange(answer["base_url"], chat(answer, headers="Content-Length: 2\r\nConnection: close\r\n")))
            == 204
        )
    assert numbers == [0, 0], "a request went on a connection the upstream had said it closes"
    assert upstream.connections == 2


def test_a_kept_connection_the_upstream_closed_is_replaced_without_the_client_noticing(serving):
    """An upstream that drops a kept connection just as the next request arrives: sent again on a new one."""
    upstream, answer = serving(lambda number, head: COMPLETE if number == 0 else None)
    for _ in range(3):
        assert (
            status_of(exchange(answer["base_url"], chat(answer, headers="Content-Length: 2\r\nConnection: close\r\n")))
            == 200
        )
    assert upstream.connections == 3


def warm(answer: dict[str, str]) -> None:
    """One whole exchange, which leaves the proxy an idle upstream connection: the next request goes out at once."""
    assert (
        status_of(exchange(answer["base_url"], chat(answer, headers="Content-Length: 2\r\nConnection: close\r\n")))
        == 200
    )


def proxy_lines(daemon: DaemonProcess) -> list[str]:
    return [line for line in daemon.log().splitlines() if "proxy POST /openai/chat/completions" in line]


@pytest.mark.parametrize("kept", [False, True], ids=["new-connection", "kept-connection"])
def test_an_upstream_hanging_up_mid_stream_cuts_the_clients_answer_and_is_logged(
    serving, daemon: DaemonProcess, kept: bool
):
    cut = int(kept)  # on a kept connection, the request after the warm-up's
    _, answer = serving(lambda number, head: CUT if number == cut else COMPLETE, hang_up_after={cut})
    if kept:
        warm(answer)
    raw = chat(answer, headers="Content-Length: 2\r\n", body=b"{}")
    parts = urlsplit(answer["base_url"])
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(raw)
        received = b"".join(iter(lambda: sock.recv(65536), b""))  # the proxy closes: the cut is visible
    assert received.startswith(b"HTTP/1.1 200 OK") and b'data: {"n": 1}' in received
    assert not received.endswith(b"0\r\n\r\n"), "a cut stream was ended as if it were whole"
    *_, line = lines = proxy_lines(daemon)
    assert len(lines) == 1 + cut
    assert re.search(r"-> 200, \d+ bytes, \d+ ms, upstream broke off \(connection closed\) after \d+ bytes", line)
    assert metrics(daemon)['broker_proxy_cut_short_total{provider="openai",by="upstream"}'] == 1


def test_an_upstream_hanging_up_before_its_answer_is_502(serving, daemon: DaemonProcess):
    _, answer = serving(lambda number, head: None)
    received = exchange(answer["base_url"], chat(answer, headers="Content-Length: 2\r\nConnection: close\r\n"))
    assert status_of(received) == 502
    error = json.loads(received.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "upstream_unavailable" and error["message"].startswith("openai: the upstream at 127.0.0.1")


def test_an_upstream_breaking_a_kept_connection_mid_head_is_502_not_sent_again(serving, daemon: DaemonProcess):
    """It had begun answering: the request may have run, so it is not repeated on another connection."""
    partial = b"HTTP/1.1 200 OK\r\nContent-Le"
    upstream, answer = serving(lambda number, head: partial if number == 1 else COMPLETE, hang_up_after={1})
    warm(answer)
    received = exchange(answer["base_url"], chat(answer, headers="Content-Length: 2\r\nConnection: close\r\n"))
    assert status_of(received) == 502
    error = json.loads(received.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["message"] == "openai: the upstream at 127.0.0.1 did not answer (connection closed)"
    assert (upstream.connections, len(upstream.requests)) == (1, 2)
    assert "-> 502" in proxy_lines(daemon)[-1]


def test_a_client_hanging_up_mid_stream_drops_the_kept_upstream_connection_and_is_logged(
    serving, daemon: DaemonProcess
):
    open_stream = CUT  # its head and first event; the rest never comes
    upstream, answer = serving(lambda number, head: open_stream if number == 1 else COMPLETE)
    warm(answer)
    read_then_hang_up(answer["base_url"], chat(answer, headers="Content-Length: 2\r\n"), b"data: ")
    assert upstream.dropped.wait(15), "the upstream connection outlived the client that hung up"
    wait_for(lambda: len(proxy_lines(daemon)) == 2)  # written as the request ends, after the upstream is dropped
    assert re.search(r"-> 200, \d+ bytes, \d+ ms, client hung up after \d+ bytes", proxy_lines(daemon)[-1])
    assert metrics(daemon)['broker_proxy_cut_short_total{provider="openai",by="client"}'] == 1


def test_requests_sent_back_to_back_on_one_connection_are_answered_in_order(serving):
    upstream, answer = serving(lambda number, head: COMPLETE)
    warm(answer)
    both = chat(answer, headers="Content-Length: 2\r\n") + chat(
        answer, headers="Content-Length: 2\r\nConnection: close\r\n"
    )
    received = exchange(answer["base_url"], both)
    assert received.count(b"HTTP/1.1 200 OK\r\n") == 2 and received.endswith(ANSWER)
    assert (upstream.connections, len(upstream.requests)) == (1, 3)


def test_expect_100_continue_is_answered_once_the_key_is_seen(proxied: Proxied):
    parts = urlsplit(proxied.answer["base_url"])
    body = json.dumps({"model": "fake-model", "messages": []}).encode()
    head = chat(proxied.answer, headers=f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n")
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head)
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert status_of(answer) == 200, answer
    [seen] = proxied.llm.requests
    assert "Expect" not in seen.headers, "the body went whole: the upstream has nothing to expect"


def test_an_https_upstream_behind_https_proxy_is_reached_through_one_kept_tunnel(daemon: DaemonProcess, tmp_path):
    """``HTTPS_PROXY``: a ``CONNECT`` tunnel, TLS inside it checked against ``SSL_CERT_FILE``, kept for the next one."""
    ca = TestCA(tmp_path)
    with FakeLLM(style="openai", key=KEY) as llm, InterceptingProxy(ca, {"api.example.test": llm.url}) as tunnel:
        daemon.write_config(f'{PROXY}\n[providers.openai]\nbase_url = "https://api.example.test/v1"\n')
        daemon.start(extra_env={"HTTPS_PROXY": tunnel.url, "NO_PROXY": "", "SSL_CERT_FILE": str(ca.cert_file)})
        login_key(daemon, "openai")
        answer = proxy_answer(daemon, "openai")
        for _ in range(2):
            status, _, body = call(answer["base_url"] + "/chat/completions",
                                   headers={"Authorization": f"Bearer {answer['access_token']}"})  # fmt: skip
            assert status == 200, body
        assert tunnel.connects == ["api.example.test"], "the tunnel was not kept for the second request"
        assert [seen.headers["Authorization"] for seen in llm.requests] == [f"Bearer {KEY}"] * 2
        assert llm.requests[0].headers["Host"] == "api.example.test"


def test_a_body_over_the_limit_is_413_before_it_is_sent(proxied: Proxied):
    answer = exchange(
        proxied.answer["base_url"], chat(proxied.answer, headers=f"Content-Length: {64 * 1024 * 1024 + 1}\r\n")
    )
    assert status_of(answer) == 413
    assert proxied.llm.requests == []


def test_an_http_proxys_credentials_go_to_it_and_no_further(daemon: DaemonProcess):
    with FakeLLM(style="openai", key=KEY) as forward:
        daemon.write_config(f'{PROXY}\n[providers.openai]\nbase_url = "http://upstream.invalid/v1"\n')
        daemon.start(extra_env={"HTTP_PROXY": forward.url.replace("http://", "http://me:s3cret@"), "NO_PROXY": ""})
        login_key(daemon, "openai")
        answer = proxy_answer(daemon, "openai")
        status, _, body = call(answer["base_url"] + "/chat/completions",
                               headers={"Authorization": f"Bearer {answer['access_token']}"})  # fmt: skip
        assert status == 200, body
        [seen] = forward.requests
        assert seen.headers["Proxy-Authorization"] == "Basic bWU6czNjcmV0"  # me:s3cret
        assert seen.headers["Host"] == "upstream.invalid"
