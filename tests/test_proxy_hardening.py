# ruff: noqa: F401, F811 (the proxy fixtures of test_proxy are imported and used as parameters)
"""The proxy reads paths as the upstream will, keeps its key on the machine, and cannot be made to flood its log.

Everything here goes through the real daemon's proxy port; the fake upstream records
what reached it, so "not forwarded" and "stripped" are observations.
"""

from __future__ import annotations

import json
import socket
import threading
from urllib.parse import urlsplit

import pytest

from broker.daemon.proxy.guard import MAX_UNTRUSTED
from tests.conftest import DaemonProcess
from tests.reliability.test_dos import soft_file_limit
from tests.test_proxy import KEY, Proxied, call, login_key, proxied, proxy_answer, shared_proxy

REFUSED_REQUESTS = 5000


@pytest.mark.parametrize(
    "climb",
    [
        "/../admin",
        "/%2e%2e/admin",
        "/..%2fadmin",
        "/%2e%2e%2fadmin",
        "/..%5cadmin",
        "/..\\admin",
        "/..;/admin",
        "/%252e%252e%252fadmin",
        "/v1/%2E/x",
        "/ok%00/x",
    ],
)
def test_a_path_that_climbs_out_in_any_spelling_is_refused(proxied: Proxied, climb: str):
    key = proxied.answer["access_token"]
    status, _, body = call(proxied.answer["base_url"] + climb, headers={"Authorization": f"Bearer {key}"})
    assert status == 400, body
    assert "'.' or '..'" in json.loads(body)["error"]["message"]
    assert proxied.llm.requests == []


def test_dots_inside_names_are_no_climb(proxied: Proxied):
    key = proxied.answer["access_token"]
    call(proxied.answer["base_url"] + "/models/gpt-4.1..preview", headers={"x-api-key": key})
    assert [seen.path for seen in proxied.llm.requests] == ["/v1/models/gpt-4.1..preview"]


def test_the_proxy_key_in_the_query_is_accepted_and_never_forwarded(proxied: Proxied):
    """Gemini's clients send their key as ``?key=``; other places a client may echo it are emptied too."""
    key = proxied.answer["access_token"]
    url = proxied.answer["base_url"] + f"/chat/completions?key={key}&trace=on&echo={key}"
    status, _, body = call(url, headers={"X-Echo": f"token {key}"})
    assert status == 200, body
    [seen] = proxied.llm.requests
    assert seen.query == {"trace": "on"}
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    assert not any(key in value for value in [*seen.headers.values(), *seen.query.values()])


def refuse_many(base_url: str, count: int, path_size: int) -> list[int]:
    """``count`` key-less requests with long paths, from a few threads; the statuses."""
    parts = urlsplit(base_url)
    request = f"GET {parts.path}/{'x' * path_size} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
    statuses: list[int] = []

    def send(n: int) -> None:
        for _ in range(n):
            with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
                sock.sendall(request)
                answer = b"".join(iter(lambda: sock.recv(65536), b""))  # the proxy closes a refused connection
            statuses.append(int(answer.split(b" ", 2)[1]))

    threads = [threading.Thread(target=send, args=(count // 4,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_thousands_of_refused_requests_write_a_few_log_lines(proxied: Proxied):
    before = proxied.daemon.log_path.stat().st_size

    statuses = refuse_many(proxied.answer["base_url"], REFUSED_REQUESTS, path_size=4000)

    added = proxied.daemon.log_path.read_bytes()[before:].decode()
    refused_lines = [line for line in added.splitlines() if "proxy refused" in line]
    assert statuses == [401] * REFUSED_REQUESTS
    assert 1 <= len(refused_lines) <= 10
    assert max(len(line) for line in refused_lines) < 400, "a line quoted a whole 4,000-character path"
    assert len(added) < 16 * 1024
    assert proxied.llm.requests == []


def half_sent(address: tuple[str, int]) -> socket.socket:
    sock = socket.create_connection(address, timeout=30)
    sock.sendall(b"POST /openai/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le")
    return sock


def test_a_connection_that_does_not_finish_its_request_in_time_is_closed(daemon: DaemonProcess):
    daemon.write_config("[proxy]\nport = 0\nheader_timeout = 0.5\n")
    daemon.start()
    port = urlsplit(proxy_answer(daemon, "ollama")["base_url"]).port
    assert port is not None
    with half_sent(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        assert sock.recv(65536) == b"", "the daemon kept a half-sent request open"


def test_key_less_connections_get_a_limited_number_of_seats(daemon: DaemonProcess):
    daemon.write_config("[proxy]\nport = 0\nheader_timeout = 60\n")
    daemon.start()
    answer = proxy_answer(daemon, "ollama")
    port = urlsplit(answer["base_url"]).port
    assert port is not None and daemon.process is not None
    waiting = [half_sent(("127.0.0.1", port)) for _ in range(300)]
    try:
        with pytest.raises(TimeoutError):  # queued by the kernel, not accepted: nobody answers
            with socket.create_connection(("127.0.0.1", port), timeout=5) as late:
                late.settimeout(1)
                late.sendall(b"GET /ollama/models HTTP/1.1\r\nHost: x\r\n\r\n")
                late.recv(1)
    finally:
        for sock in waiting:
            sock.close()
    seats = max(8, min(MAX_UNTRUSTED, soft_file_limit(daemon.process.pid) // 4))
    assert f"proxy: {seats} connections without the key; accepting no more until they end" in daemon.log()
    status, _, _ = call(answer["base_url"] + "/models", method="GET", body=None, headers={"x-api-key": "wrong"})
    assert status == 401, "seats came free when the waiting connections ended"


def test_a_web_page_can_neither_use_nor_read_the_proxy(proxied: Proxied):
    """A page's fetch() carries an Origin and no key; its CORS preflight carries no key either."""
    url = proxied.answer["base_url"] + "/chat/completions"
    page = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    preflight = call(url, method="OPTIONS", body=None, headers=page)
    simple = call(url, headers={"Origin": "https://evil.example", "Content-Type": "text/plain"})
    for status, headers, _ in (preflight, simple):
        assert status == 401
        assert not any(name.lower().startswith("access-control-") for name in headers)
    assert proxied.llm.requests == []
