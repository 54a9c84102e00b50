"""Minting Vertex AI tokens from gcloud's ADC file, with a real watchdog observer on a temp HOME.

The daemon runs in-process so the test moves its clock; the fake of Google's token
endpoint checks the refresh grant's client and verifies service-account assertions
with the public half of an RSA key generated here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.client import Client
from broker.core.config import load_settings
from broker.core.errors import BrokerError, NotLoggedIn
from broker.daemon.main import Daemon
from broker.daemon.refresher import Status
from broker.daemon.refresher.timing import refresh_lead
from tests.conftest import isolated_env
from tests.fakes.clock import FakeClock
from tests.fakes.google_token import JWT_BEARER, GoogleTokenServer

KEY = ("vertex", "adc")
CHANGE_TIMEOUT = 5.0
GOOGLE_VARIABLES = (
    "GEMINI_CLI_HOME",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CLOUDSDK_CONFIG",
    "GOOGLE_CLOUD_PROJECT",
    "GCLOUD_PROJECT",
)
GCLOUD_CLIENT = ("764086051850-6qr4p6gpi6hn506pt8ejuq83di341hur.apps.googleusercontent.com", "gcloud-public-secret")
SERVICE_ACCOUNT = "svc@sa-project.iam.gserviceaccount.com"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


@dataclass(frozen=True)
class KeyPair:
    private_pem: str
    public_pem: bytes


def new_key() -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyPair(private.decode(), public)


@pytest.fixture(scope="module")
def keys() -> tuple[KeyPair, KeyPair]:
    return new_key(), new_key()


@dataclass
class Vertex:
    daemon: Daemon
    clock: FakeClock
    google: GoogleTokenServer
    path: Path
    socket: Path
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8))

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        def call() -> Any:
            with Client(self.socket, timeout=30) as client:
                if path.startswith("/v1/login/"):
                    return list(client.stream(method, path, body or {}))
                return client.request(method, path, body)

        return await asyncio.get_running_loop().run_in_executor(self.pool, call)

    async def token(self, query: str = "") -> Any:
        return await self.call("GET", f"/v1/token/vertex{query}")

    async def minted(self, count: int) -> Status:
        return await asyncio.wait_for(self.daemon.refresher.wait_attempts(KEY, count), CHANGE_TIMEOUT)

    async def changed(self) -> None:
        await asyncio.wait_for(self.daemon.credentials.wait_changed(), CHANGE_TIMEOUT)

    def advance_to_refresh(self) -> float:
        """Move the clock to the latest instant the refresh timer may be due at; the time left then."""
        credential = self.daemon.credentials.get(KEY)
        assert credential is not None and credential.expires_at is not None
        due = credential.expires_at - refresh_lead(credential, self.daemon.refresher.margin)
        self.clock.advance_to(due)
        return credential.expires_at - due


def authorized_user(refresh_token: str, quota_project: str | None = "quota-project") -> dict[str, Any]:
    """As ``gcloud auth application-default login`` writes it."""
    doc = {
        "account": "",
        "client_id": GCLOUD_CLIENT[0],
        "client_secret": GCLOUD_CLIENT[1],
        "refresh_token": refresh_token,
        "type": "authorized_user",
        "universe_domain": "googleapis.com",
    }
    if quota_project:
        doc["quota_project_id"] = quota_project
    return doc


def service_account(private_pem: str, key_id: str = "kid-1") -> dict[str, Any]:
    """As the Cloud console's "create key" downloads it."""
    return {
        "type": "service_account",
        "project_id": "sa-project",
        "private_key_id": key_id,
        "private_key": private_pem,
        "client_email": SERVICE_ACCOUNT,
        "client_id": "112233445566778899",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com",
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


async def start(
    root: Path,
    *,
    config: str = "",
    adc: dict[str, Any] | None = None,
    refresh_tokens: tuple[str, ...] = (),
    keys: tuple[KeyPair, ...] = (),
    **env_extra: str,
) -> tuple[Vertex, GoogleTokenServer]:
    """A daemon on a temp HOME, optionally with an ADC file in place and Google knowing its secrets."""
    clock = FakeClock()
    google = GoogleTokenServer(now=clock.now).start()
    google.add_client(*GCLOUD_CLIENT)
    for token in refresh_tokens:
        google.refresh_tokens[token] = GCLOUD_CLIENT[0]  # as the sign-in would have left it
    for index, key in enumerate(keys, 1):
        google.add_service_account(SERVICE_ACCOUNT, f"kid-{index}", key.public_pem)
    env = {k: v for k, v in isolated_env(root).items() if k not in GOOGLE_VARIABLES}
    env.update(env_extra)
    Path(env["BROKER_CONFIG"]).write_text(f'[providers.vertex.endpoints]\ntoken = "{google.token_url}"\n' + config)
    path = Path(env["HOME"]) / ".config" / "gcloud" / "application_default_credentials.json"
    if adc is not None:
        write_json(path, adc)
    daemon = Daemon(load_settings(env), clock=clock, env=env)
    await daemon.start()
    return Vertex(daemon, clock, google, path, Path(env["BROKER_SOCKET"])), google


@pytest.fixture
async def vertex(short_tmp: Path) -> AsyncIterator[Vertex]:
    harness, google = await start(short_tmp)
    yield harness
    await harness.daemon.stop()
    google.stop()


async def test_authorized_user_is_minted_at_once_and_served_with_its_quota_project(vertex: Vertex):
    _, refresh_token = vertex.google.issue(GCLOUD_CLIENT[0])
    write_json(vertex.path, authorized_user(refresh_token))
    status = await vertex.minted(1)
    assert status.state == "ready", status.last_error
    token = await vertex.token()
    assert token["access_token"] in vertex.google.access and token["expires_in"] == 3599
    assert token["account"] == "adc" and token["source"] == str(vertex.path)
    assert token["api"] == "anthropic-vertex"
    assert token["base_url"] == (
        "https://us-east5-aiplatform.googleapis.com/v1/projects/quota-project/locations/us-east5"
        "/publishers/anthropic/models"
    )
    assert token["headers"] == {"x-goog-user-project": "quota-project"}
    (body,) = vertex.google.bodies
    assert body == {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": GCLOUD_CLIENT[0],
        "client_secret": GCLOUD_CLIENT[1],
    }


async def test_minted_token_is_renewed_before_it_expires(short_tmp: Path):
    adc = authorized_user("1//renewed", quota_project=None)
    vertex, google = await start(short_tmp, adc=adc, refresh_tokens=("1//renewed",))
    try:
        await vertex.minted(1)
        first = await vertex.token()
        left = vertex.advance_to_refresh()
        assert left >= 300, "the next token is minted well before the first one expires"
        status = await vertex.minted(2)
        assert status.state == "ready", status.last_error
        second = await vertex.token()
        assert second["access_token"] != first["access_token"] and second["expires_in"] == 3599
        assert second["headers"] == {}, "no quota project in the file: no x-goog-user-project"
        assert google.counts["refreshed"] == 2
    finally:
        await vertex.daemon.stop()
        google.stop()


async def test_service_account_mints_with_an_rs256_assertion_the_server_verifies(
    short_tmp: Path, keys: tuple[KeyPair, KeyPair]
):
    key, _ = keys
    vertex, google = await start(short_tmp, adc=service_account(key.private_pem), keys=(key,))
    try:
        status = await vertex.minted(1)
        assert status.state == "ready", status.last_error
        token = await vertex.token()
        assert google.access[token["access_token"]] == SERVICE_ACCOUNT
        assert token["base_url"].startswith("https://us-east5-aiplatform.googleapis.com/v1/projects/sa-project/")
        (verified,) = google.assertions
        assert verified["header"] == {"alg": "RS256", "typ": "JWT", "kid": "kid-1"}
        claims = verified["claims"]
        assert claims["iss"] == SERVICE_ACCOUNT and claims["scope"] == CLOUD_PLATFORM
        assert claims["aud"] == google.token_url, "the token endpoint the assertion is posted to"
        assert claims["iat"] == int(vertex.clock.now()) and claims["exp"] - claims["iat"] == 3600
        (body,) = google.bodies
        assert set(body) == {"grant_type", "assertion"} and body["grant_type"] == JWT_BEARER
    finally:
        await vertex.daemon.stop()
        google.stop()


async def test_service_account_key_the_server_does_not_know_is_a_dead_login(
    short_tmp: Path, keys: tuple[KeyPair, KeyPair]
):
    signing, registered = keys
    # kid-1 is known with another public key: the key in the file was deleted, say
    vertex, google = await start(short_tmp, adc=service_account(signing.private_pem), keys=(registered,))
    try:
        status = await vertex.minted(1)
        assert status.state == "login_required" and status.last_error is not None
        assert "Invalid JWT Signature" in status.last_error.message
        assert "gcloud auth application-default login" in status.last_error.hint
        assert google.counts["bad_assertion"] == 1 and google.counts["minted"] == 0
        with pytest.raises(BrokerError) as raised:
            await vertex.token()
        assert raised.value.code == "login_required"
    finally:
        await vertex.daemon.stop()
        google.stop()


@pytest.mark.parametrize("kind", ["authorized_user", "service_account"])
async def test_adc_file_is_never_written_however_many_tokens_are_minted(
    short_tmp: Path, keys: tuple[KeyPair, KeyPair], kind: str
):
    key, _ = keys
    adc = authorized_user("1//kept") if kind == "authorized_user" else service_account(key.private_pem)
    vertex, google = await start(short_tmp, adc=adc, refresh_tokens=("1//kept",), keys=(key,))
    before, stat_before = vertex.path.read_bytes(), vertex.path.stat()
    try:
        for count in range(1, 6):
            if count > 1:
                vertex.advance_to_refresh()
            status = await vertex.minted(count)
            assert status.state == "ready", status.last_error
        assert google.counts["refreshed"] + google.counts["minted"] == 5
        assert vertex.path.read_bytes() == before
        assert vertex.path.stat().st_mtime_ns == stat_before.st_mtime_ns
        assert sorted(p.name for p in vertex.path.parent.iterdir()) == [vertex.path.name], "no temp or lock file"
    finally:
        await vertex.daemon.stop()
        google.stop()


@pytest.mark.parametrize("kind", ["external_account", "impersonated_service_account"])
async def test_unsupported_credential_type_is_named_in_the_error(vertex: Vertex, kind: str):
    write_json(vertex.path, {"type": kind, "audience": "//iam.googleapis.com/projects/1/x"})
    await asyncio.wait_for(_file_state(vertex, "error"), CHANGE_TIMEOUT)
    (entry,) = (await _listing(vertex))["files"]
    assert repr(kind) in entry["error"]["message"] and "not support" in entry["error"]["message"]
    assert "gcloud auth application-default login" in entry["error"]["hint"]
    with pytest.raises(BrokerError) as raised:
        await vertex.token()
    assert kind in raised.value.message
    assert not vertex.google.bodies


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"type": "authorized_user", "client_id": "x", "client_secret": "y"}, "refresh_token"),
        ({"type": "service_account", "client_email": SERVICE_ACCOUNT, "private_key": "-----BEGIN"}, "private_key"),
        ({"client_id": "x"}, "type"),
    ],
    ids=["no-refresh-token", "bad-private-key", "no-type"],
)
async def test_incomplete_adc_file_names_the_missing_field(vertex: Vertex, content: dict[str, Any], message: str):
    write_json(vertex.path, content)
    await asyncio.wait_for(_file_state(vertex, "error"), CHANGE_TIMEOUT)
    (entry,) = (await _listing(vertex))["files"]
    assert message in entry["error"]["message"]
    assert "-----BEGIN" not in entry["error"]["message"]


async def test_deleted_file_makes_the_credential_disappear(vertex: Vertex):
    _, refresh_token = vertex.google.issue(GCLOUD_CLIENT[0])
    write_json(vertex.path, authorized_user(refresh_token))
    await vertex.minted(1)
    assert (await vertex.token())["access_token"]
    vertex.path.unlink()
    while vertex.daemon.credentials.get(KEY) is not None:
        await vertex.changed()
    with pytest.raises(NotLoggedIn):
        await vertex.token()


async def test_revoked_refresh_token_asks_for_gcloud_login_and_keeps_the_file(vertex: Vertex):
    write_json(vertex.path, authorized_user("1//revoked"))
    before = vertex.path.read_bytes()
    status = await vertex.minted(1)
    assert status.state == "login_required" and status.last_error is not None
    assert status.last_error.hint == "run: gcloud auth application-default login"
    assert vertex.google.counts["invalid_grant"] == 1
    assert vertex.path.read_bytes() == before


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({}, "home/.config/gcloud/application_default_credentials.json"),
        ({"CLOUDSDK_CONFIG": "{root}/gcloud-config"}, "gcloud-config/application_default_credentials.json"),
        (
            {"CLOUDSDK_CONFIG": "{root}/gcloud-config", "GOOGLE_APPLICATION_CREDENTIALS": "{root}/keys/sa.json"},
            "keys/sa.json",
        ),
    ],
    ids=["default", "cloudsdk-config", "google-application-credentials-wins"],
)
async def test_adc_file_location_follows_gcloud_and_google_auth(
    short_tmp: Path, keys: tuple[KeyPair, KeyPair], variables: dict[str, str], expected: str
):
    env = {name: value.format(root=short_tmp) for name, value in variables.items()}
    key, _ = keys
    vertex, google = await start(short_tmp, keys=(key,), **env)
    try:
        (entry,) = (await _listing(vertex))["files"]
        assert entry["path"] == str(short_tmp / expected) and entry["state"] == "missing"
        write_json(short_tmp / expected, service_account(key.private_pem))
        status = await vertex.minted(1)
        assert status.state == "ready", status.last_error
        assert (await vertex.token())["source"] == str(short_tmp / expected)
    finally:
        await vertex.daemon.stop()
        google.stop()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            '[providers.vertex]\nregion = "global"\nproject = "config-project"\n',
            "https://aiplatform.googleapis.com/v1/projects/config-project/locations/global/publishers/anthropic/models",
        ),
        (
            '[providers.vertex]\nregion = "europe-west1"\n',
            "https://europe-west1-aiplatform.googleapis.com/v1/projects/env-project/locations/europe-west1"
            "/publishers/anthropic/models",
        ),
    ],
    ids=["global-region-config-project", "regional-env-project"],
)
async def test_base_url_comes_from_region_and_project(short_tmp: Path, config: str, expected: str):
    adc = authorized_user("1//base-url")
    vertex, google = await start(
        short_tmp, config=config, adc=adc, refresh_tokens=("1//base-url",), GOOGLE_CLOUD_PROJECT="env-project"
    )
    try:
        await vertex.minted(1)
        assert (await vertex.token())["base_url"] == expected
    finally:
        await vertex.daemon.stop()
        google.stop()


async def test_login_points_to_gcloud(vertex: Vertex):
    (event,) = await vertex.call("POST", "/v1/login/vertex")
    assert event["event"] == "error" and event["code"] == "bad_request"
    assert "gcloud auth application-default login" in event["hint"]
    listing = await _listing(vertex)
    assert listing["flows"] == ["file"]
    assert listing["files"][0]["mode"] == "mint"


async def _listing(vertex: Vertex) -> dict[str, Any]:
    listing = await vertex.call("GET", "/v1/providers")
    return dict(next(p for p in listing["providers"] if p["name"] == "vertex"))


async def _file_state(vertex: Vertex, wanted: str) -> None:
    while True:
        state = vertex.daemon.credentials.followed.states[vertex.path]
        if (wanted == "error") == (state.problem is not None):
            return
        await vertex.daemon.credentials.wait_changed()
