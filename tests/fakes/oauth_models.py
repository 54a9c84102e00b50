"""In-memory storage and authlib grant/endpoint subclasses behind ``FakeOAuthServer``.

The model classes implement authlib's mixins (``ClientMixin``, ``AuthorizationCodeMixin``,
``TokenMixin``, ``DeviceCredentialMixin``).  The grant and endpoint subclasses only supply
storage and policy hooks: the request validation and the RFC error responses are authlib's.
Every grant reaches the store through ``self.server.store`` and runs under the store's lock
(the HTTP views hold it).  All timestamps come from ``time.monotonic()``.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin, OAuth2Request, TokenMixin
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError, UnauthorizedClientError
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc8628 import (
    DEVICE_CODE_GRANT_TYPE,
    DeviceAuthorizationEndpoint,
    DeviceCodeGrant,
    DeviceCredentialMixin,
)

SCOPES = "openid profile email offline_access"
GRANT_TYPES = ("authorization_code", "refresh_token", DEVICE_CODE_GRANT_TYPE)
#: Accepted wherever a client authenticates; each client accepts only its own kind (see Client).
CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
#: RFC 6749 §4.1.2: codes are short-lived (10 minutes at most is RECOMMENDED).
CODE_LIFETIME = 600
#: RFC 8252 §7.3 loopback hosts (localhost too, as the project asks, despite §8.3).
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback_redirect_uri(uri: str) -> bool:
    """RFC 8252 §7.3: http on a loopback host, any port and path; no fragment (RFC 6749 §3.1.2)."""
    try:
        parts = urlsplit(uri)
        _ = parts.port  # raises ValueError for a malformed port
    except ValueError:
        return False
    return parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS and parts.username is None and "#" not in uri


def normalise_user_code(user_code: str) -> str:
    """RFC 8628 §6.1: compare user codes case-insensitively, ignoring punctuation."""
    return "".join(ch for ch in user_code.upper() if ch.isalnum())


@dataclass
class Client(ClientMixin):
    """A registered client; ``client_secret=None`` makes it public (auth method "none")."""

    client_id: str
    client_secret: str | None = None
    scope: str = SCOPES
    grant_types: tuple[str, ...] = GRANT_TYPES

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # loopback ports vary, so every authorization request must name its redirect_uri

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return self.scope  # RFC 6749 §3.3: the pre-defined default when scope is omitted
        allowed = self.scope.split()
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return is_loopback_redirect_uri(redirect_uri)

    def check_client_secret(self, client_secret: str) -> bool:
        if self.client_secret is None:
            return False
        return secrets.compare_digest(self.client_secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.client_secret is None:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class AuthorizationCode(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: str
    code_challenge: str
    code_challenge_method: str
    expires_at: float = field(default_factory=lambda: time.monotonic() + CODE_LIFETIME)

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return time.monotonic() >= self.expires_at


@dataclass
class Token(TokenMixin):
    """One token response. ``family`` is shared by all tokens descending from one grant."""

    client: Client
    user: str
    scope: str
    access_token: str
    expires_in: int
    refresh_token: str | None = None
    family: str = field(default_factory=lambda: secrets.token_hex(8))
    issued_at: float = field(default_factory=time.monotonic)
    access_revoked: bool = False
    refresh_revoked: bool = False

    def check_client(self, client: ClientMixin) -> bool:
        return bool(client.get_client_id() == self.client.client_id)

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.monotonic() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.access_revoked

    def get_user(self) -> str:
        return self.user

    def get_client(self) -> Client:
        return self.client


@dataclass
class DeviceCredential(DeviceCredentialMixin):
    device_code: str
    user_code: str
    client_id: str
    scope: str | None
    interval: float
    expires_at: float
    last_poll: float | None = None
    #: (user, approved) once the user has decided; None while pending.
    decision: tuple[str | None, bool] | None = None

    def get_client_id(self) -> str:
        return self.client_id

    def get_scope(self) -> str | None:
        return self.scope

    def get_user_code(self) -> str:
        return self.user_code

    def is_expired(self) -> bool:
        return time.monotonic() >= self.expires_at


class Store:
    """All server state, guarded by ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.clients = {c.client_id: c for c in (Client("broker-cli"), Client("broker-secret", "s3cret"))}
        self.codes: dict[str, AuthorizationCode] = {}
        self.by_access: dict[str, Token] = {}
        self.by_refresh: dict[str, Token] = {}
        self.devices: dict[str, DeviceCredential] = {}  # by device_code
        self.by_user_code: dict[str, DeviceCredential] = {}  # by normalised user_code

    def device(self, user_code: str) -> DeviceCredential:
        """The pending device authorization for ``user_code``; KeyError if unknown or redeemed."""
        return self.by_user_code[normalise_user_code(user_code)]

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """Record a token response; a refresh keeps the family of the token it refreshed."""
        previous = request.refresh_token
        record = Token(
            request.client,
            request.user,
            token.get("scope", ""),
            token["access_token"],
            token["expires_in"],
            token.get("refresh_token"),
        )
        if isinstance(previous, Token):
            record.family = previous.family
        self.by_access[record.access_token] = record
        if record.refresh_token:
            self.by_refresh[record.refresh_token] = record


class S256CodeChallenge(CodeChallenge):
    """RFC 7636 with S256 mandatory: no challenge, or method plain/absent, is invalid_request (§4.4.1)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]

    def validate_code_challenge(self, grant: AuthorizationCodeGrant, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: missing 'code_challenge'.")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("Only code_challenge_method=S256 is supported.")
        super().validate_code_challenge(grant, redirect_uri)


class CodeGrant(AuthorizationCodeGrant):
    """RFC 6749 §4.1; public clients authenticate with "none" and must then send code_verifier."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        data = request.payload.data
        self.server.store.codes[code] = AuthorizationCode(
            code,
            request.client.get_client_id(),
            request.payload.redirect_uri,
            request.scope,
            request.user,
            data["code_challenge"],
            data["code_challenge_method"],
        )

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        item: AuthorizationCode | None = self.server.store.codes.get(code)
        if item is None or item.client_id != client.client_id or item.is_expired():
            return None
        return item

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        self.server.store.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: AuthorizationCode) -> str:
        return authorization_code.user


class RefreshGrant(RefreshTokenGrant):
    """RFC 6749 §6; with rotation the old refresh token is revoked (its access token is not)."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    @property
    def INCLUDE_NEW_REFRESH_TOKEN(self) -> bool:  # authlib reads this class attribute
        return bool(self.server.rotate_refresh_tokens)

    def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
        token: Token | None = self.server.store.by_refresh.get(refresh_token)
        return token if token is not None and not token.refresh_revoked else None

    def authenticate_user(self, refresh_token: Token) -> str:
        return refresh_token.user

    def revoke_old_credential(self, refresh_token: Token) -> None:
        if self.server.rotate_refresh_tokens:
            refresh_token.refresh_revoked = True


class DeviceGrant(DeviceCodeGrant):
    """RFC 8628 §3.4-3.5; a device code is deleted once redeemed."""

    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def query_device_credential(self, device_code: str) -> DeviceCredential:
        credential: DeviceCredential | None = self.server.store.devices.get(device_code)
        if credential is None:  # RFC 6749 §5.2: an invalid (unknown or used) grant
            raise InvalidGrantError("Unknown or already redeemed 'device_code'.")
        return credential

    def query_user_grant(self, user_code: str) -> tuple[str | None, bool] | None:
        store: Store = self.server.store
        return store.device(user_code).decision

    def should_slow_down(self, credential: DeviceCredential) -> bool:
        """Too fast: less than ``interval`` seconds since this device code's previous poll."""
        now = time.monotonic()
        previous, credential.last_poll = credential.last_poll, now
        return previous is not None and now - previous < credential.interval

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        response: tuple[int, dict[str, Any], list[tuple[str, str]]] = super().create_token_response()
        credential: DeviceCredential = self.request.credential
        self.server.store.devices.pop(credential.device_code, None)
        self.server.store.by_user_code.pop(normalise_user_code(credential.user_code), None)
        return response


class DeviceEndpoint(DeviceAuthorizationEndpoint):
    """RFC 8628 §3.1-3.2 device authorization endpoint."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def __init__(self, server: Any, interval: float, lifetime: int) -> None:
        super().__init__(server)
        self.INTERVAL = int(interval) if float(interval).is_integer() else interval
        self.EXPIRES_IN = lifetime

    def authenticate_client(self, request: OAuth2Request) -> Client:
        client: Client = super().authenticate_client(request)
        if not client.check_grant_type(DEVICE_CODE_GRANT_TYPE):
            raise UnauthorizedClientError("The client may not use the device authorization grant.")
        return client

    def get_verification_uri(self) -> str:
        return f"{self.server.issuer}/device"

    def save_device_credential(self, client_id: str, scope: str | None, data: dict[str, Any]) -> None:
        store: Store = self.server.store
        credential = DeviceCredential(
            data["device_code"], data["user_code"], client_id, scope, self.INTERVAL, time.monotonic() + self.EXPIRES_IN
        )
        store.devices[credential.device_code] = credential
        store.by_user_code[normalise_user_code(credential.user_code)] = credential


class Revocation(RevocationEndpoint):
    """RFC 7009: an access token alone, or a refresh token with every token of its grant (§2.1)."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        store: Store = self.server.store
        return store.by_access.get(token_string) or store.by_refresh.get(token_string)

    def revoke_token(self, token: Token, request: OAuth2Request) -> None:
        if request.form["token"] == token.access_token:
            token.access_revoked = True
            return
        for other in self.server.store.by_access.values():
            if other.family == token.family:
                other.access_revoked = other.refresh_revoked = True


class BearerValidator(BearerTokenValidator):
    """RFC 6750 bearer validation against the store (unknown, expired, revoked -> invalid_token)."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store

    def authenticate_token(self, token_string: str) -> Token | None:
        return self.store.by_access.get(token_string)
