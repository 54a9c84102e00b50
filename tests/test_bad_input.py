"""Bad input gets a clear error and nothing is lost: requests, config files, store files."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys

import pytest

from tests.conftest import DaemonProcess, acme_config, isolated_env
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import device_login


def raw(daemon: DaemonProcess, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, object]]:
    conn = http.client.HTTPConnection("broker")
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.connect(str(daemon.socket_path))
    conn.request(method, path, body=body)
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    return response.status, payload


def test_unknown_provider_is_404_with_a_hint(daemon: DaemonProcess):
    daemon.start()
    status, body = raw(daemon, "GET", "/v1/token/nope")
    assert status == 404
    assert body["error"]["code"] == "unknown_provider"  # type: ignore[index]
    result = daemon.cli("token", "nope")
    assert result.returncode == 2
    assert "unknown_provider" in result.stderr and "broker providers" in result.stderr


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/login/acme", b"{not json", 400, "bad_request"),
        ("POST", "/v1/login/acme", b"[1, 2]", 400, "bad_request"),
        ("POST", "/v1/login/acme", b'{"account": 7}', 400, "bad_request"),
        ("POST", "/v1/login/acme", b'{"bogus": "x"}', 400, "bad_request"),
        ("POST", "/v1/login/acme/redirect", b'{"login_id": "nope", "url": "http://x"}', 400, "bad_request"),
        ("GET", "/v1/token/acme?min_ttl=soon", None, 400, "bad_request"),
        ("GET", "/v1/token/acme?min_ttl=-5", None, 400, "bad_request"),
        ("GET", "/v1/nothing-here", None, 404, "not_found"),
        ("PUT", "/v1/token/acme", None, 405, "method_not_allowed"),
        ("POST", "/v1/login/acme", b"x" * 100_000, 413, "bad_request"),
    ],
)
def test_malformed_requests_get_a_json_error_and_the_daemon_stays_up(
    daemon: DaemonProcess, oauth: FakeOAuthServer, method: str, path: str, body: bytes | None, status: int, code: str
):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    got_status, got = raw(daemon, method, path, body)
    assert (got_status, got["error"]["code"]) == (status, code)  # type: ignore[index]
    assert got["error"]["message"]  # type: ignore[index]
    assert daemon.request("GET", "/v1/health")["status"] == "ok"


def test_garbage_on_the_socket_does_not_take_the_daemon_down(daemon: DaemonProcess):
    daemon.start()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(daemon.socket_path))
        sock.sendall(b"\x00\xffNOT HTTP AT ALL\r\n\r\n")
        sock.recv(4096)
    assert daemon.request("GET", "/v1/health")["status"] == "ok"


def test_bad_config_names_file_line_and_key(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth).replace('flow = "device"', 'flow = "devcie"'))
    result = subprocess.run(
        [sys.executable, "-m", "broker", "serve"], env=daemon.env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 78
    line = daemon.config_path.read_text().splitlines().index('flow = "devcie"') + 1
    assert f"{daemon.config_path}:{line}: providers.acme.flow" in result.stderr
    assert "Traceback" not in result.stderr


def test_toml_syntax_error_names_the_line(daemon: DaemonProcess):
    daemon.write_config("[daemon]\nlog_level = \n")
    result = subprocess.run(
        [sys.executable, "-m", "broker", "serve"], env=daemon.env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 78
    assert f"{daemon.config_path}:2:" in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_store_is_reported_and_never_overwritten(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    daemon.stop()
    store_file = daemon.state_dir / "credentials.enc"
    corrupt = store_file.read_bytes()[:-40] + b"garbage"
    store_file.write_bytes(corrupt)

    daemon.start()
    health = daemon.request("GET", "/v1/health")
    assert health["status"] == "degraded"
    assert str(store_file) in health["store_error"]["message"]
    token = daemon.cli("token", "acme")
    assert token.returncode == 74
    assert "store_error" in token.stderr and "mv " in token.stderr
    status = daemon.cli("status")
    assert "store error" in status.stdout

    login = daemon.popen("login", "acme", "--no-browser", "--json")
    assert login.stdout is not None
    oauth.approve(json.loads(login.stdout.readline())["user_code"])
    failed = json.loads(login.stdout.readline())
    assert failed["event"] == "error" and failed["code"] == "store_error"
    assert store_file.read_bytes() == corrupt, "the unreadable store was written over"
    assert daemon.process is not None and daemon.process.poll() is None


def test_serve_without_any_config_file_starts(short_tmp):  # type: ignore[no-untyped-def]
    env = isolated_env(short_tmp)
    del env["BROKER_CONFIG"]
    daemon = DaemonProcess(short_tmp, env)
    try:
        daemon.start()
        assert daemon.request("GET", "/v1/health")["status"] == "ok"
        assert not (short_tmp / "config" / "broker").exists(), "no config file is written either"
    finally:
        daemon.stop()
