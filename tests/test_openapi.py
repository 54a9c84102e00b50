"""``broker/openapi.json`` describes the socket API the daemon really serves.

The document's routes are the server's routes, and every answer of the live daemon
(status, content type, JSON body, each NDJSON login event) validates against the
document's schemas (JSON Schema 2020-12, ``$ref`` resolved into ``components``).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import quote, unquote

import pytest
from aiohttp import web
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from broker.daemon.api import Api
from broker.daemon.proxy_api import ProxyRoutes
from tests.conftest import DaemonProcess, acme_config
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import device_login, without_lasting

SPEC: dict[str, Any] = json.loads(resources.files("broker").joinpath("openapi.json").read_text())
SPEC_URI = "urn:broker:socket-api:openapi"
REGISTRY: Registry[Any] = Registry().with_resource(SPEC_URI, Resource.from_contents(SPEC, DRAFT202012))
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
NOBODY = 65534


# -- the document ------------------------------------------------------------------------------


def pointer(*parts: str) -> str:
    """A JSON pointer fragment (RFC 6901) into the document."""
    return "#/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


def lookup(fragment: str) -> Any:
    node: Any = SPEC
    for part in fragment.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


@cache
def validator(fragment: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": SPEC_URI + fragment}, registry=REGISTRY)


def validate(instance: Any, fragment: str) -> None:
    errors = sorted(validator(fragment).iter_errors(instance), key=str)
    assert not errors, f"{json.dumps(instance)[:500]} does not match {fragment}: {errors[0].message}"


def documented_operations() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in SPEC["paths"].items() for method in item if method in METHODS}


PATH_PATTERNS = {
    p["name"]: p["schema"].get("pattern", ".") for p in SPEC["components"]["parameters"].values() if p["in"] == "path"
}


def template_of(raw_path: str) -> str | None:
    """The document's path a raw request path is routed to, as aiohttp routes it.

    aiohttp matches percent-decoded segments, but a ``%2F`` stays inside its segment; a
    path parameter matches what its documented pattern allows.
    """
    segments = raw_path.split("/")
    for template in SPEC["paths"]:
        parts = template.split("/")
        if len(parts) == len(segments) and all(
            re.search(PATH_PATTERNS[part[1:-1]], unquote(segment)) if part.startswith("{") else part == unquote(segment)
            for part, segment in zip(parts, segments, strict=True)
        ):
            return template
    return None


def response_fragment(method: str, raw_path: str, status: int) -> str:
    """Where the document describes this answer; fails on an undocumented status."""
    template = template_of(raw_path)
    if template is None:
        expected = pointer("components", "responses", "NotFound")
        assert status == 404, f"{method} {raw_path}: no such path in the document, but HTTP {status}"
        return expected
    item = SPEC["paths"][template]
    if method.lower() not in item:
        assert status == 405, f"{method} {raw_path}: method not documented for {template}, but HTTP {status}"
        return pointer("components", "responses", "MethodNotAllowed")
    responses = item[method.lower()]["responses"]
    assert str(status) in responses, f"{method} {template}: HTTP {status} is not documented ({sorted(responses)})"
    fragment = pointer("paths", template, method.lower(), "responses", str(status))
    ref = lookup(fragment).get("$ref")
    return str(ref) if ref else fragment


# -- talking to the daemon ---------------------------------------------------------------------


@dataclass
class Answer:
    method: str
    path: str
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        return str(self.json()["error"]["code"])


def connect(daemon: DaemonProcess, timeout: float = 30) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("broker", timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(daemon.socket_path))
    conn.sock = sock
    return conn


def call(daemon: DaemonProcess, method: str, path: str, body: bytes | dict[str, Any] | None = None) -> Answer:
    """One request; the answer, already checked against the document."""
    payload = json.dumps(body).encode() if isinstance(body, dict) else body
    conn = connect(daemon)
    try:
        conn.request(method, path, body=payload)
        response = conn.getresponse()
        answer = Answer(
            method,
            path,
            response.status,
            response.getheader("Content-Type", "").split(";")[0].strip(),
            response.read(),
        )
    finally:
        conn.close()
    conforms(answer)
    return answer


def conforms(answer: Answer) -> None:
    """The answer's status, content type and body are what the document says."""
    method = "GET" if answer.method == "HEAD" else answer.method
    fragment = response_fragment(method, answer.path.partition("?")[0], answer.status)
    if answer.method == "HEAD":
        assert answer.body == b""
        return
    content = lookup(fragment)["content"]
    assert answer.content_type in content, f"{answer.method} {answer.path}: {answer.content_type} not in {content}"
    schema = f"{fragment}/content/{answer.content_type.replace('/', '~1')}/schema"
    if answer.content_type == "application/json":
        validate(answer.json(), schema)
    elif answer.content_type == "application/x-ndjson":
        for line in answer.body.splitlines():
            validate(json.loads(line), schema)
    else:
        validate(answer.body.decode(), schema)


class LoginStream:
    """A login over the raw socket: its NDJSON events one at a time; closing cancels it."""

    EVENT = pointer("components", "schemas", "LoginEvent")

    def __init__(self, daemon: DaemonProcess, provider: str, body: dict[str, Any] | None = None) -> None:
        self.conn = connect(daemon)
        self.conn.request("POST", f"/v1/login/{quote(provider, safe='')}", body=json.dumps(body or {}).encode())
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()
        assert self.response.getheader("Content-Type", "").startswith("application/x-ndjson")
        response_fragment("POST", f"/v1/login/{provider}", 200)

    def event(self) -> dict[str, Any]:
        line = self.response.readline()
        assert line, "the stream ended early"
        event: dict[str, Any] = json.loads(line)
        validate(event, self.EVENT)
        validate(event, pointer("components", "schemas", f"{str(event['event']).capitalize()}Event"))
        return event

    def rest(self) -> bytes:
        """Whatever follows the last event read: must be nothing once done/error was sent."""
        return self.response.read()

    def close(self) -> None:
        self.conn.close()


# -- the document itself -----------------------------------------------------------------------


def test_every_server_route_is_documented_and_every_documented_operation_is_served():
    api = Api(**{f.name: None for f in dataclasses.fields(Api)})  # routes() only binds handlers
    app = web.Application()
    app.add_routes([*api.routes(), *ProxyRoutes(api, None, None).routes()])  # type: ignore[arg-type]
    routes = [(route.method, route.resource.canonical) for route in app.router.routes() if route.resource]
    served = {(method, path) for method, path in routes if method != "HEAD"}
    assert served == documented_operations()
    heads = {path for method, path in routes if method == "HEAD"}
    assert heads == {path for method, path in served if method == "GET"}, "HEAD answers exactly the GET paths"


def test_every_path_parameter_is_declared_by_its_operation():
    for path, item in SPEC["paths"].items():
        wanted = {part[1:-1] for part in path.split("/") if part.startswith("{")}
        for method, operation in item.items():
            params = [lookup(p["$ref"]) if "$ref" in p else p for p in operation.get("parameters", [])]
            declared = {p["name"] for p in params if p["in"] == "path"}
            assert declared == wanted, f"{method} {path}"
            assert all(p["required"] for p in params if p["in"] == "path")


def test_document_is_openapi_3_1_with_valid_2020_12_schemas_and_resolvable_refs():
    assert SPEC["openapi"].startswith("3.1.")
    assert SPEC["jsonSchemaDialect"] == "https://json-schema.org/draft/2020-12/schema"
    for name, schema in SPEC["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
        validator(pointer("components", "schemas", name))

    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(SPEC)
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/"), ref
        assert lookup(ref) is not None


def test_error_code_enum_is_every_code_the_daemon_can_send():
    from broker.core import errors

    codes = {cls.code for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.BrokerError)}
    enum = set(SPEC["components"]["schemas"]["ErrorCode"]["enum"])
    assert enum == codes | {"not_found", "method_not_allowed"}


def test_error_bodies_must_have_code_message_and_hint():
    body = pointer("components", "schemas", "ErrorBody")
    validate({"error": {"code": "not_logged_in", "message": "m", "hint": ""}}, body)
    for wrong in (
        {"error": {"code": "not_logged_in", "message": "m"}},
        {"error": {"code": "made_up", "message": "m", "hint": ""}},
        {"message": "m"},
    ):
        assert not validator(body).is_valid(wrong)


# -- the live daemon ---------------------------------------------------------------------------


@pytest.fixture
def served(daemon: DaemonProcess, oauth: FakeOAuthServer) -> DaemonProcess:
    """acme (device grant) and acme-pkce (code grant) against the fake server."""
    pkce = acme_config(oauth, flow="pkce").replace("[providers.acme]", "[providers.acme-pkce]")
    daemon.write_config(acme_config(oauth) + pkce)
    return daemon.start()


@pytest.fixture
def logged_in(served: DaemonProcess, oauth: FakeOAuthServer) -> DaemonProcess:
    device_login(served, oauth)
    return served


def test_health_providers_metrics_head_and_unknown_routes_answer_as_documented(served: DaemonProcess):
    health = call(served, "GET", "/v1/health")
    assert (health.status, health.json()["status"], health.json()["store_error"]) == (200, "ok", None)
    listed = call(served, "GET", "/v1/providers").json()
    states = {p["name"]: p["state"] for p in listed["providers"]}
    assert states["acme"] == states["acme-pkce"] == "logged_out"
    metrics = call(served, "GET", "/metrics")
    assert metrics.content_type == "text/plain" and b"broker_credentials 0" in metrics.body
    assert call(served, "HEAD", "/v1/health").status == 200
    assert call(served, "GET", "/v1/nothing-here").code == "not_found"
    assert call(served, "GET", "/v1/health/").code == "not_found"
    assert call(served, "PUT", "/v1/token/acme").code == "method_not_allowed"
    assert call(served, "GET", "/v1/login/acme").code == "method_not_allowed"
    assert call(served, "GET", "/v1/proxy/acme").code == "bad_request", "the auth proxy is off"


def test_token_and_provider_state_of_a_login_match_the_document(logged_in: DaemonProcess, oauth: FakeOAuthServer):
    token = call(logged_in, "GET", "/v1/token/acme").json()
    assert token["account"] == "alice@example.com" and oauth.valid_access_token(token["access_token"])
    assert 0 < token["expires_in"] <= 3600 and token["base_url"] == "https://llm.acme.example/v1"
    again = call(logged_in, "GET", "/v1/token/acme?min_ttl=3599.99&account=alice%40example.com").json()
    assert again["access_token"] == token["access_token"], "min_ttl counts up to half a lifetime: no refresh"
    assert call(logged_in, "GET", "/v1/token/acme?min_ttl=-1").code == "bad_request"
    assert call(logged_in, "GET", "/v1/token/acme?min_ttl=86401").code == "bad_request"
    assert call(logged_in, "GET", "/v1/token/acme?min_ttl=soon").code == "bad_request"
    assert call(logged_in, "GET", "/v1/token/acme?account=nobody").code == "not_logged_in"
    assert call(logged_in, "GET", "/v1/token/acme-pkce").code == "not_logged_in"
    assert call(logged_in, "GET", "/v1/token/nope").code == "unknown_provider"

    listed = call(logged_in, "GET", "/v1/providers").json()
    acme = next(p for p in listed["providers"] if p["name"] == "acme")
    assert acme["state"] == "ready" and [a["account"] for a in acme["accounts"]] == ["alice@example.com"]
    assert acme["accounts"][0]["expires_at"] == again["expires_at"]


def test_refresh_answers_and_its_upstream_errors_match_the_document(logged_in: DaemonProcess, oauth: FakeOAuthServer):
    state = call(logged_in, "POST", "/v1/refresh/acme")
    assert (state.status, state.json()["state"], state.json()["last_error"]) == (200, "ready", None)
    assert call(logged_in, "POST", "/v1/refresh/acme?account=nobody").code == "not_logged_in"
    assert call(logged_in, "POST", "/v1/refresh/acme-pkce").code == "not_logged_in"
    assert call(logged_in, "POST", "/v1/refresh/nope").code == "unknown_provider"

    oauth.fail_next("/token", status=400, body='{"error": "invalid_scope"}')
    refused = call(logged_in, "POST", "/v1/refresh/acme")
    assert (refused.status, refused.code) == (502, "refresh_failed")
    oauth.fail_next("/token", count=3, status=503)
    down = call(logged_in, "POST", "/v1/refresh/acme")
    assert (down.status, down.code) == (503, "upstream_unavailable")
    oauth.revoke_all_refresh_tokens()
    dead = call(logged_in, "POST", "/v1/refresh/acme")
    assert (dead.status, dead.code) == (401, "login_required")
    listed = call(logged_in, "GET", "/v1/providers").json()["providers"]
    account = next(p for p in listed if p["name"] == "acme")["accounts"][0]
    assert account["state"] == "login_required" and account["last_error"]["code"] == "login_required"


def test_logout_answers_and_its_errors_match_the_document(logged_in: DaemonProcess, oauth: FakeOAuthServer):
    device_login(logged_in, oauth, "acme", "--account", "second")
    several = call(logged_in, "DELETE", "/v1/credentials/acme")
    assert (several.status, several.code) == (400, "bad_request")
    assert call(logged_in, "DELETE", "/v1/credentials/acme?account=second").json()["deleted"] == ["second"]
    assert call(logged_in, "DELETE", "/v1/credentials/acme?account=second").code == "not_logged_in"
    assert call(logged_in, "DELETE", "/v1/credentials/nope").code == "unknown_provider"
    device_login(logged_in, oauth, "acme", "--account", "second")
    gone = call(logged_in, "DELETE", "/v1/credentials/acme?all=1").json()
    assert gone == {"provider": "acme", "deleted": ["alice@example.com", "second"]}
    assert call(logged_in, "DELETE", "/v1/credentials/acme?all=true").code == "not_logged_in"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def browser_sign_in(url: str) -> str:
    """Act as the browser at the authorization endpoint: where it is sent back to."""
    with pytest.raises(urllib.error.HTTPError) as redirect:
        urllib.request.build_opener(_NoRedirect).open(url, timeout=10)
    assert redirect.value.code == 302
    return str(redirect.value.headers["Location"])


def test_device_and_code_grant_logins_stream_documented_events(served: DaemonProcess, oauth: FakeOAuthServer):
    device = LoginStream(served, "acme", {"account": "work", "flow": "device"})
    try:
        verify = device.event()
        assert verify["event"] == "verify" and verify["verification_uri"] == f"{oauth.url}/device"
        oauth.approve(verify["user_code"])
        done = device.event()
        assert {k: done[k] for k in ("event", "provider", "account", "refreshable")} == {
            "event": "done",
            "provider": "acme",
            "account": "work",
            "refreshable": True,
        }
        assert device.rest() == b"", "done is the last line"
    finally:
        device.close()
    assert call(served, "GET", "/v1/token/acme").json()["account"] == "work"

    code_grant = LoginStream(served, "acme-pkce")
    redirect = "/v1/login/acme-pkce/redirect"
    try:
        opened = code_grant.event()
        assert opened["event"] == "open" and opened["login_id"]
        location = browser_sign_in(opened["url"])
        forged = location.replace("state=", "state=forged")
        wrong = call(served, "POST", redirect, {"login_id": opened["login_id"], "url": forged})
        assert (wrong.status, wrong.code) == (400, "bad_request")
        accepted = call(served, "POST", redirect, {"login_id": opened["login_id"], "url": location})
        assert accepted.json() == {"accepted": True}
        done = without_lasting(code_grant.event())
        assert done == {"event": "done", "provider": "acme-pkce", "account": "alice@example.com"}
    finally:
        code_grant.close()
    gone = call(served, "POST", redirect, {"login_id": opened["login_id"], "url": location})
    assert gone.code == "bad_request", "a finished login no longer takes a redirect"


REFUSED_BEFORE_THE_STREAM = [
    ("/v1/login/nope", b"{}", 404, "unknown_provider"),
    ("/v1/login/acme", b"{not json", 400, "bad_request"),
    ("/v1/login/acme", b'"a string"', 400, "bad_request"),
    ("/v1/login/acme", b'{"account": 7}', 400, "bad_request"),
    ("/v1/login/acme", b'{"password": "x"}', 400, "bad_request"),
    ("/v1/login/acme", b'{"flow": "pkce"}', 400, "bad_request"),
    ("/v1/login/acme", b'{"enterprise_url": "https://ghe.example.com"}', 400, "bad_request"),
    ("/v1/login/acme", b"[" * 50_000, 400, "bad_request"),
    ("/v1/login/acme", b" " * 70_000, 413, "bad_request"),
    ("/v1/login/acme/redirect", b"{}", 400, "bad_request"),
    ("/v1/login/acme/redirect", b'{"login_id": "nope", "url": "http://127.0.0.1/cb?code=x"}', 400, "bad_request"),
    ("/v1/login/acme/redirect", b'{"login_id": 1, "url": "x"}', 400, "bad_request"),
    ("/v1/login/acme/redirect", b"{" * 70_000, 413, "bad_request"),
]


def test_login_failures_are_json_errors_before_the_stream_and_error_events_after(
    served: DaemonProcess, oauth: FakeOAuthServer
):
    for path, body, status, code in REFUSED_BEFORE_THE_STREAM:
        refused = call(served, "POST", path, body)
        got = (refused.status, refused.content_type, refused.code)
        assert got == (status, "application/json", code), f"{path} {body[:40]!r}"

    denied = LoginStream(served, "acme")
    try:
        oauth.deny(denied.event()["user_code"])
        error = denied.event()
        assert (error["event"], error["code"]) == ("error", "login_failed")
        assert denied.rest() == b"", "error is the last line"
    finally:
        denied.close()
    assert call(served, "GET", "/v1/health").json()["status"] == "ok"


def test_proxy_client_answers_and_its_errors_match_the_document(daemon: DaemonProcess, oauth: FakeOAuthServer):
    pkce = acme_config(oauth, flow="pkce").replace("[providers.acme]", "[providers.acme-pkce]")
    daemon.write_config("[proxy]\nport = 0\n" + acme_config(oauth) + pkce)
    daemon.start()
    device_login(daemon, oauth)
    client = call(daemon, "GET", "/v1/proxy/acme").json()
    assert client["base_url"].startswith("http://127.0.0.1:") and client["base_url"].endswith("/acme")
    assert client["access_token"] != call(daemon, "GET", "/v1/token/acme").json()["access_token"]
    assert call(daemon, "GET", "/v1/proxy/acme-pkce").code == "not_logged_in"
    assert call(daemon, "GET", "/v1/proxy/nope").code == "unknown_provider"
    refused = call(daemon, "GET", "/v1/proxy/claude")
    assert (refused.status, refused.code) == (403, "forbidden"), "Claude's terms allow only Claude Code"


def test_unreadable_store_answers_with_documented_store_errors(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    daemon.stop()
    store_file = daemon.state_dir / "credentials.enc"
    store_file.write_bytes(store_file.read_bytes()[:-40] + b"garbage")
    daemon.start()
    health = call(daemon, "GET", "/v1/health").json()
    assert health["status"] == "degraded" and health["store_error"]["code"] == "store_error"
    assert call(daemon, "GET", "/v1/providers").json()["store_error"]["code"] == "store_error"
    token = call(daemon, "GET", "/v1/token/acme")
    assert (token.status, token.code) == (500, "store_error")


def test_credential_of_a_provider_dropped_from_the_config_is_listed_and_can_be_logged_out(
    daemon: DaemonProcess, oauth: FakeOAuthServer
):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    daemon.write_config("")
    daemon.restart()
    orphan = next(p for p in call(daemon, "GET", "/v1/providers").json()["providers"] if p["name"] == "acme")
    assert orphan["state"] == "error" and orphan["accounts"][0]["last_error"]["code"] == "unknown_provider"
    assert call(daemon, "GET", "/v1/token/acme").code == "unknown_provider"
    assert call(daemon, "DELETE", "/v1/credentials/acme").json()["deleted"] == ["alice@example.com"]


@pytest.fixture
def open_socket(logged_in: DaemonProcess) -> Iterator[DaemonProcess]:
    """The socket reachable by every uid, as systemd-socket-activate's 0644 socket would be."""
    for path in (logged_in.root, logged_in.root / "run", logged_in.socket_path.parent):
        os.chmod(path, 0o755)
    os.chmod(logged_in.socket_path, 0o666)
    yield logged_in


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")
def test_every_operation_refuses_another_uid_with_the_documented_403(open_socket: DaemonProcess):
    for method, path in sorted(documented_operations()):
        concrete = path.replace("{provider}", "acme")
        result = subprocess.run(
            ["curl", "-s", "-o", "-", "-w", "\n%{http_code} %{content_type}", "-X", method]
            + (["--data", "{}"] if method == "POST" else [])
            + ["--unix-socket", str(open_socket.socket_path), f"http://broker{concrete}"],
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            capture_output=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        body, _, tail = result.stdout.rpartition(b"\n")
        status, _, content_type = tail.decode().partition(" ")
        answer = Answer(method, concrete, int(status), content_type.split(";")[0], body)
        conforms(answer)
        assert (answer.status, answer.code) == (403, "forbidden")
    assert call(open_socket, "GET", "/v1/token/acme").status == 200
