"""Property-based requests against the live daemon: never a 5xx, always the documented answer.

Requests are well-formed HTTP/1.1 (bytes that are not HTTP are the HTTP layer's business,
see ``test_bad_input``) with generated methods, paths, query strings and bodies. Logins of
a configured provider wait for a person, so the broad run never starts one; a separate run
starts them, reads the first event and hangs up, and the daemon must cancel each.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import pytest
from broker.providers.registry import BUILTINS
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.conftest import DaemonProcess, acme_config
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import device_login
from tests.test_openapi import SPEC, LoginStream, call, template_of

CONFIGURED = {"acme", "acme-pkce", *BUILTINS}
"""Providers a login would really start for: the broad run keeps away from their logins."""

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def segment(text: str) -> str:
    """Percent-encode one path segment; dots too, so no ``.``/``..`` segment gets normalised away."""
    return quote(text, safe="").replace(".", "%2E")


NAMES = st.one_of(
    st.sampled_from(["acme", "acme-pkce", "claude", "nope", "ACME", "redirect", "..", "a/b", "%", "{x}"]), st.text()
)
WORDS = st.sampled_from(
    ["v1", "token", "login", "redirect", "health", "providers", "credentials", "refresh", "proxy", ""]
)


@st.composite
def paths(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        template = draw(st.sampled_from(sorted(SPEC["paths"])))
        return "/".join(segment(draw(NAMES)) if part.startswith("{") else part for part in template.split("/"))
    return "/" + "/".join(draw(st.lists(st.one_of(WORDS, st.text(max_size=12).map(segment)), max_size=5)))


QUERY_VALUES = st.one_of(
    st.text(max_size=20),
    st.integers(-(10**6), 10**6).map(str),
    st.floats().map(str),
    st.sampled_from(["1", "true", "nan", "-inf", "1e309", "1_0", " 5 ", "", "alice@example.com"]),
)
QUERIES = st.lists(st.tuples(st.sampled_from(["account", "min_ttl", "all", "x"]), QUERY_VALUES), max_size=3).map(
    lambda pairs: urlencode(pairs, quote_via=quote)
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
BODY_FIELDS = st.sampled_from(["account", "flow", "secret", "enterprise_url", "login_id", "url", "bogus"])
BODIES = st.one_of(
    st.none(),
    st.dictionaries(BODY_FIELDS, JSON, max_size=4).map(lambda body: json.dumps(body).encode()),
    JSON.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=64),
    st.sampled_from([b"", b"null", b"\xef\xbb\xbf{}", b"[" * 50_000, b"{" * 70_000]),
)
METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])


def starts_a_login(method: str, path: str) -> bool:
    if method != "POST" or template_of(path) != "/v1/login/{provider}":
        return False
    return unquote(path.split("/")[3]) in CONFIGURED


@pytest.fixture
def fuzzed(daemon: DaemonProcess, oauth: FakeOAuthServer) -> DaemonProcess:
    """A daemon with a logged-in account, so tokens, refreshes and logouts really happen."""
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    return daemon


def test_generated_requests_never_get_a_5xx_or_an_undocumented_answer(fuzzed: DaemonProcess):
    @FUZZ
    @given(method=METHODS, path=paths(), query=QUERIES, body=BODIES)
    def request(method: str, path: str, query: str, body: bytes | None) -> None:
        assume(not starts_a_login(method, path))
        answer = call(fuzzed, method, f"{path}?{query}" if query else path, body)  # checked against the document
        assert answer.status < 500, answer.body

    request()
    assert call(fuzzed, "GET", "/v1/health").json()["status"] == "ok"
    assert fuzzed.process is not None and fuzzed.process.poll() is None
    assert "Traceback" not in fuzzed.log()


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False  # accepted while the listener was closing
    return False


def wait_until_refused(daemon: DaemonProcess, port: int, within: float = 10.0) -> None:
    """Until nothing listens on ``port``; each try waits on a round trip to the daemon, not a sleep."""
    deadline = time.monotonic() + within
    while not refuses(port):
        assert time.monotonic() < deadline, f"the login's listener on port {port} outlived its client"
        call(daemon, "GET", "/v1/health")


LOGIN_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "account": st.none() | st.text(max_size=30),
        "flow": st.sampled_from([None, "device", "pkce", "pat", ""]),
        "secret": st.none() | st.text(max_size=30),
        "enterprise_url": st.none() | st.text(max_size=30),
    },
)


def test_logins_abandoned_after_their_first_event_are_cancelled(daemon: DaemonProcess, oauth: FakeOAuthServer):
    pkce = acme_config(oauth, flow="pkce").replace("[providers.acme]", "[providers.acme-pkce]")
    daemon.write_config(acme_config(oauth) + pkce)
    daemon.start()

    @settings(FUZZ, max_examples=20)
    @given(provider=st.sampled_from(["acme", "acme-pkce"]), body=LOGIN_BODIES)
    def abandon(provider: str, body: dict[str, Any]) -> None:
        default = {"acme": "device", "acme-pkce": "pkce"}[provider]
        if body.get("secret") or body.get("enterprise_url") or (body.get("flow") or default) != default:
            refused = call(daemon, "POST", f"/v1/login/{provider}", json.dumps(body).encode())
            assert (refused.status, refused.code) == (400, "bad_request"), "what acme does not take: refused at once"
            return
        login = LoginStream(daemon, provider, body)  # checks the status and every event against the document
        try:
            first = login.event()
        finally:
            login.close()
        flow = body.get("flow") or {"acme": "device", "acme-pkce": "pkce"}[provider]
        expected = {("acme", "device"): "verify", ("acme-pkce", "pkce"): "open"}.get((provider, flow), "error")
        assert first["event"] == expected, first
        if first["event"] == "open":
            port = urlsplit(parse_qs(urlsplit(first["url"]).query)["redirect_uri"][0]).port
            assert port is not None
            wait_until_refused(daemon, port)

    abandon()
    assert call(daemon, "GET", "/v1/health").json()["status"] == "ok"
    listed = call(daemon, "GET", "/v1/providers").json()["providers"]
    assert all(p["accounts"] == [] for p in listed if p["name"] in ("acme", "acme-pkce")), "no abandoned login finished"
    assert "Traceback" not in daemon.log()
