"""Sanity tests for tests/fakes/oauth_server.py, driven with plain urllib."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes.oauth_server import FakeOAuthServer

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REDIRECT = "http://127.0.0.1:53117/callback"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def call(
    url: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    """GET (form=None) or form-POST; returns (status, parsed JSON body or text, headers)."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with _opener.open(req, timeout=10) as resp:
            status, body, hdrs = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        status, body, hdrs = err.code, err.read(), dict(err.headers)
    try:
        return status, json.loads(body), hdrs
    except ValueError:
        return status, body.decode(), hdrs


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize(srv: FakeOAuthServer, **params: str) -> tuple[int, dict[str, str], Any]:
    """GET /authorize; returns (status, query of the Location header, body)."""
    status, body, headers = call(f"{srv.url}/authorize?{urllib.parse.urlencode(params)}")
    location = headers.get("Location", "")
    return status, dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query)), body


def code_params(challenge: str, **extra: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": "broker-cli",
        "redirect_uri": REDIRECT,
        "state": "xyz",
        "scope": "openid offline_access",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }


def start_device(srv: FakeOAuthServer, client_id: str = "broker-cli") -> dict[str, Any]:
    status, body, _ = call(f"{srv.url}/device_authorization", {"client_id": client_id, "scope": "openid"})
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def poll(srv: FakeOAuthServer, device_code: str) -> tuple[int, Any]:
    status, body, _ = call(
        f"{srv.url}/token", {"grant_type": DEVICE_GRANT, "device_code": device_code, "client_id": "broker-cli"}
    )
    return status, body


def refresh(srv: FakeOAuthServer, refresh_token: str) -> tuple[int, Any]:
    status, body, _ = call(
        f"{srv.url}/token", {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": "broker-cli"}
    )
    return status, body


def device_tokens(srv: FakeOAuthServer) -> dict[str, Any]:
    flow = start_device(srv)
    srv.approve(flow["user_code"])
    status, body = poll(srv, flow["device_code"])
    assert status == 200, body
    return body  # type: ignore[no-any-return]


@pytest.fixture
def srv() -> Iterator[FakeOAuthServer]:
    with FakeOAuthServer(device_interval=0.05) as server:
        yield server


def test_metadata_and_lifecycle() -> None:
    server = FakeOAuthServer().start()
    host, port = urllib.parse.urlsplit(server.url)[1].split(":")
    assert host == "127.0.0.1" and server.issuer == server.url
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        status, meta, _ = call(server.url + path)
        assert status == 200
        assert meta["issuer"] == server.url
        assert meta["token_endpoint"] == f"{server.url}/token"
        assert meta["device_authorization_endpoint"] == f"{server.url}/device_authorization"
        assert meta["code_challenge_methods_supported"] == ["S256"]
        assert DEVICE_GRANT in meta["grant_types_supported"]
    assert call(server.url + "/device?user_code=ABCD-EFGH")[0] == 200
    server.stop()
    server.stop()  # idempotent
    names = [t.name for t in threading.enumerate()]
    assert not [n for n in names if "fake-oauth-server" in n or "process_request" in n], names
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", int(port)), timeout=1):
        pass


def test_device_flow_pending_slow_down_and_tokens() -> None:
    with FakeOAuthServer(device_interval=0.5) as srv:
        flow = start_device(srv)
        assert flow["interval"] == 0.5 and flow["expires_in"] == 600
        assert flow["verification_uri"] == f"{srv.url}/device"
        assert flow["verification_uri_complete"].endswith("user_code=" + flow["user_code"])
        assert poll(srv, flow["device_code"]) == (400, {"error": "authorization_pending"})
        assert poll(srv, flow["device_code"])[1]["error"] == "slow_down"  # immediately again: too fast
        time.sleep(0.55)
        assert poll(srv, flow["device_code"])[1]["error"] == "authorization_pending"
        srv.approve(flow["user_code"].lower(), user="bob")  # RFC 8628 §6.1: case-insensitive
        status, token = poll(srv, flow["device_code"])
        assert status == 200
        assert token["token_type"] == "Bearer" and token["expires_in"] == 3600 and token["scope"] == "openid"
        assert srv.valid_access_token(token["access_token"]) and srv.valid_refresh_token(token["refresh_token"])
        assert poll(srv, flow["device_code"])[1]["error"] == "invalid_grant"  # redeemed once only
        status, info, _ = call(f"{srv.url}/userinfo", headers={"Authorization": "Bearer " + token["access_token"]})
        assert (status, info) == (200, {"sub": "bob", "email": "bob@example.com", "preferred_username": "bob"})


def test_device_flow_denied_and_expired(srv: FakeOAuthServer) -> None:
    denied, expired = start_device(srv), start_device(srv)
    srv.deny(denied["user_code"])
    srv.expire(expired["user_code"])
    assert poll(srv, denied["device_code"])[1]["error"] == "access_denied"
    assert poll(srv, expired["device_code"])[1]["error"] == "expired_token"
    with FakeOAuthServer(device_interval=0.01, device_code_lifetime=1) as short:
        flow = start_device(short)
        time.sleep(1.05)
        assert poll(short, flow["device_code"]) == (400, {"error": "expired_token"})


def test_confidential_client_auth(srv: FakeOAuthServer) -> None:
    for headers, extra in (
        (basic("broker-secret", "s3cret"), {}),
        ({}, {"client_id": "broker-secret", "client_secret": "s3cret"}),
    ):
        status, flow, _ = call(f"{srv.url}/device_authorization", {"scope": "openid", **extra}, headers)
        assert status == 200, flow
        srv.approve(flow["user_code"])
        status, body, _ = call(
            f"{srv.url}/token", {"grant_type": DEVICE_GRANT, "device_code": flow["device_code"], **extra}, headers
        )
        assert status == 200, body
    bad = [
        ({"client_id": "broker-secret", "client_secret": "nope"}, {}),
        ({}, basic("broker-secret", "nope")),
        ({"client_id": "nobody"}, {}),
        ({}, basic("nobody", "s3cret")),
        ({"client_id": "broker-secret"}, {}),
    ]  # a confidential client must authenticate
    for form, headers in bad:
        status, body, _ = call(f"{srv.url}/token", {"grant_type": DEVICE_GRANT, "device_code": "x", **form}, headers)
        assert (status, body["error"]) == (401, "invalid_client"), (form, headers)


def test_authorization_code_with_pkce(srv: FakeOAuthServer) -> None:
    verifier, challenge = pkce()
    status, query, _ = authorize(srv, **code_params(challenge))
    assert status == 302 and query["state"] == "xyz"
    form = {
        "grant_type": "authorization_code",
        "code": query["code"],
        "redirect_uri": REDIRECT,
        "client_id": "broker-cli",
    }
    wrong = secrets.token_urlsafe(48)
    assert call(f"{srv.url}/token", {**form, "code_verifier": wrong})[1]["error"] == "invalid_grant"
    assert call(f"{srv.url}/token", form)[1]["error"] == "invalid_request"  # no verifier
    status, token, _ = call(f"{srv.url}/token", {**form, "code_verifier": verifier})
    assert status == 200 and token["scope"] == "openid offline_access" and token["refresh_token"]
    assert call(f"{srv.url}/token", {**form, "code_verifier": verifier})[1]["error"] == "invalid_grant"  # reuse
    # any loopback port is accepted, for the confidential client too
    _, query, _ = authorize(
        srv, **code_params(challenge, client_id="broker-secret", redirect_uri="http://localhost:1/cb")
    )
    status, token, _ = call(
        f"{srv.url}/token",
        {
            "grant_type": "authorization_code",
            "code": query["code"],
            "redirect_uri": "http://localhost:1/cb",
            "code_verifier": verifier,
        },
        basic("broker-secret", "s3cret"),
    )
    assert status == 200, token


def test_authorization_request_errors(srv: FakeOAuthServer) -> None:
    _, challenge = pkce()
    params = code_params(challenge)
    no_pkce = {k: v for k, v in params.items() if not k.startswith("code_challenge")}
    for bad in (no_pkce, {**params, "code_challenge_method": "plain"}, {**no_pkce, "code_challenge": challenge}):
        status, query, _ = authorize(srv, **bad)
        assert (status, query["error"], query["state"]) == (302, "invalid_request", "xyz")
    for uri in ("https://127.0.0.1:5000/cb", "http://example.com:5000/cb", "http://127.0.0.1.evil.com/cb"):
        status, query, body = authorize(srv, **{**params, "redirect_uri": uri})
        assert (status, query, body["error"]) == (400, {}, "invalid_request"), uri  # never redirected to
    assert authorize(srv, **{**params, "client_id": "nobody"})[2]["error"] == "invalid_client"
    status, query, _ = authorize(srv, **{**params, "scope": "openid admin"})
    assert (status, query["error"]) == (302, "invalid_scope")
    srv.deny_authorizations = True
    status, query, _ = authorize(srv, **params)
    assert (status, query["error"], query["state"]) == (302, "access_denied", "xyz")
    assert "code" not in query


def test_refresh_rotation(srv: FakeOAuthServer) -> None:
    first = device_tokens(srv)
    status, second = refresh(srv, first["refresh_token"])
    assert status == 200 and second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert refresh(srv, first["refresh_token"]) == (400, {"error": "invalid_grant"})
    assert srv.valid_access_token(first["access_token"])  # old access token lives until it expires
    assert not srv.valid_refresh_token(first["refresh_token"])
    srv.revoke_all_refresh_tokens()
    assert refresh(srv, second["refresh_token"])[1]["error"] == "invalid_grant"
    assert srv.grant_counts["refresh_token"] == 3 and srv.grant_counts[DEVICE_GRANT] == 1


def test_refresh_without_rotation() -> None:
    with FakeOAuthServer(device_interval=0.01, rotate_refresh_tokens=False) as server:
        first = device_tokens(server)
        for _ in range(2):
            status, body = refresh(server, first["refresh_token"])
            assert status == 200 and "refresh_token" not in body


def test_other_token_errors(srv: FakeOAuthServer) -> None:
    status, body, _ = call(
        f"{srv.url}/token", {"grant_type": "password", "username": "a", "password": "b", "client_id": "broker-cli"}
    )
    assert (status, body["error"]) == (400, "unsupported_grant_type")
    first = device_tokens(srv)
    status, body, _ = call(
        f"{srv.url}/token",
        {
            "grant_type": "refresh_token",
            "client_id": "broker-cli",
            "refresh_token": first["refresh_token"],
            "scope": "admin",
        },
    )
    assert body["error"] == "invalid_scope"


def test_userinfo_rejects_bad_expired_and_revoked_tokens() -> None:
    with FakeOAuthServer(device_interval=0.01, access_token_lifetime=0) as server:
        token = device_tokens(server)
        assert token["expires_in"] == 0 and not server.valid_access_token(token["access_token"])
        for value in (token["access_token"], "made-up"):
            status, body, headers = call(f"{server.url}/userinfo", headers={"Authorization": "Bearer " + value})
            assert (status, body["error"]) == (401, "invalid_token")
            assert headers["WWW-Authenticate"].startswith("Bearer")
    with FakeOAuthServer(device_interval=0.01) as server:
        token = device_tokens(server)
        status, _, _ = call(f"{server.url}/revoke", {"token": token["access_token"], "client_id": "broker-cli"})
        assert status == 200 and not server.valid_access_token(token["access_token"])
        assert call(f"{server.url}/userinfo", headers={"Authorization": "Bearer " + token["access_token"]})[0] == 401


def test_fault_injection_and_request_log(srv: FakeOAuthServer) -> None:
    srv.fail_next("/device_authorization", count=2, status=503, body="busy")
    assert call(f"{srv.url}/device_authorization", {"client_id": "broker-cli"})[:2] == (503, "busy")
    assert call(f"{srv.url}/device_authorization", {"client_id": "broker-cli"})[0] == 503
    assert call(f"{srv.url}/device_authorization", {"client_id": "broker-cli"})[0] == 200
    assert [r[:2] for r in srv.requests] == [("POST", "/device_authorization")] * 3
    assert srv.requests[0][2] == {"client_id": "broker-cli"}


def test_tokens_are_random(srv: FakeOAuthServer) -> None:
    tokens = [device_tokens(srv) for _ in range(3)]
    values = [t[k] for t in tokens for k in ("access_token", "refresh_token")]
    assert len(set(values)) == len(values) and all(len(v) >= 40 for v in values)
