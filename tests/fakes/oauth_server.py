"""A real OAuth 2.0 authorization server for tests, built on authlib's server components.

Requests are validated by authlib; ``oauth_models`` supplies in-memory storage and policy.
What is implemented:

- RFC 6749 §4.1 authorization code grant, §6 refresh grant, §5.1/§5.2 token and error responses,
  §4.1.2.1 error redirects (``access_denied`` with ``state``), §2.3.1 client authentication
  (``client_secret_basic`` and ``client_secret_post``; public clients use ``none``), §3.3 scopes.
  Any ``invalid_client`` from a POST endpoint is answered with 401 (§5.2 allows it).
- RFC 7636 PKCE, mandatory and S256 only: a missing challenge or ``plain`` is ``invalid_request``
  (§4.4.1), a wrong ``code_verifier`` is ``invalid_grant`` (§4.6).
- RFC 8628 §3.1-3.5 device authorization grant: ``authorization_pending``, ``slow_down``,
  ``access_denied``, ``expired_token``; a device code is redeemed once.
- RFC 8252 §7.3 loopback redirect URIs: any port on http://127.0.0.1, http://localhost or
  http://[::1]; other schemes and hosts are rejected with a 400 (never redirected to).
- RFC 6750 bearer tokens at /userinfo, RFC 7009 revocation at /revoke, RFC 8414 metadata at
  /.well-known/oauth-authorization-server (same document at /.well-known/openid-configuration).

Not implemented: ID tokens and JWKS (OIDC is limited to discovery and userinfo), dynamic client
registration, token introspection.

Policies:

- Every token response carries a refresh token (both clients may use the refresh_token grant),
  whether or not ``offline_access`` was requested.  Omitting ``scope`` grants all four scopes.
- With ``rotate_refresh_tokens`` a refresh returns a new refresh token and revokes the old one;
  without it the response has no refresh token and the old one stays usable.  Either way access
  tokens issued earlier stay valid until they expire.  Refresh tokens never expire.
  ``revoke_all_refresh_tokens()`` likewise leaves access tokens valid.
- ``slow_down`` when a device code is polled less than ``device_interval`` seconds after its
  previous poll (the first poll is never too fast); the server does not add the 5 s itself.
- ``requests`` and ``grant_counts`` include requests answered by ``fail_next`` faults.
- ``issue_refresh_tokens = False``: token responses carry no refresh token (a server that
  dropped ``offline_access``).
- ``iss_in_redirect = True``: RFC 9207, the metadata says
  ``authorization_response_iss_parameter_supported`` and every authorization response
  (code or error) carries ``iss``.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter, deque
from typing import Any, Self

from authlib.common.urls import add_params_to_uri
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from flask import Flask, Response, jsonify, request

from .loopback import ServedOnLoopback
from .oauth_models import (
    CLIENT_AUTH_METHODS,
    GRANT_TYPES,
    SCOPES,
    BearerValidator,
    CodeGrant,
    DeviceEndpoint,
    DeviceGrant,
    RefreshGrant,
    Revocation,
    S256CodeChallenge,
    Store,
)

__all__ = ["FakeOAuthServer"]


class _AuthServer(AuthorizationServer):
    """authlib's Flask authorization server over the in-memory ``Store``."""

    def __init__(self, store: Store, *, access_token_lifetime: int, rotate_refresh_tokens: bool) -> None:
        super().__init__()
        self.store = store
        self.issuer = ""
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.scopes_supported = SCOPES.split()
        self.access_token_lifetime = access_token_lifetime
        bearer = BearerTokenGenerator(_random_token(32), _random_token(48), access_token_lifetime)

        self.issue_refresh_tokens = True

        def generate(**kwargs: Any) -> dict[str, Any]:
            if not self.issue_refresh_tokens:
                kwargs["include_refresh_token"] = False
            token: dict[str, Any] = bearer(**kwargs)
            token["expires_in"] = self.access_token_lifetime  # authlib drops a zero lifetime
            return token

        self.register_token_generator("default", generate)

    def query_client(self, client_id: str) -> Any:
        return self.store.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        self.store.save_token(token, request)

    def handle_error_response(self, oauth_request: Any, error: OAuth2Error) -> Response:
        """RFC 6749 §5.2 allows 401 for invalid_client; use it on every POST endpoint."""
        if error.error == "invalid_client" and request.method == "POST":
            error.status_code = 401
        response: Response = super().handle_error_response(oauth_request, error)
        return response


def _random_token(nbytes: int) -> Any:
    """A generator for BearerTokenGenerator: ``nbytes`` random bytes, URL-safe."""
    return lambda **_: secrets.token_urlsafe(nbytes)


class FakeOAuthServer(ServedOnLoopback):
    """An OAuth 2.0 authorization server on an ephemeral 127.0.0.1 port (see the module docstring)."""

    def __init__(
        self,
        *,
        access_token_lifetime: int = 3600,
        device_interval: float = 5.0,
        device_code_lifetime: int = 600,
        rotate_refresh_tokens: bool = True,
        user: str = "alice",
    ) -> None:
        self.user = user
        self.deny_authorizations: bool = False
        self.iss_in_redirect: bool = False
        self.grant_counts: dict[str, int] = Counter()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._store = Store()
        self._lock = self._store.lock
        self._faults: dict[str, deque[tuple[int, str]]] = {}
        self.refresh_gate = threading.Event()
        """Cleared: refresh answers wait (the refresh token already spent) until it is set again."""
        self.refresh_gate.set()
        self.refresh_held = threading.Event()
        """Set once a refresh answer waits at the gate."""
        self._server = _AuthServer(
            self._store, access_token_lifetime=access_token_lifetime, rotate_refresh_tokens=rotate_refresh_tokens
        )
        self._server.register_grant(CodeGrant, [S256CodeChallenge(required=True)])
        self._server.register_grant(RefreshGrant)
        self._server.register_grant(DeviceGrant)
        self._server.register_endpoint(DeviceEndpoint(self._server, device_interval, device_code_lifetime))
        self._server.register_endpoint(Revocation)
        self._protector = ResourceProtector()
        self._protector.register_token_validator(BearerValidator(self._store))
        self._app = self._build_app()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return self.url

    def wsgi_app(self) -> Flask:
        return self._app

    def start(self) -> Self:
        """Bind and listen on 127.0.0.1:0, then serve from a thread; the URL is the issuer."""
        if self._httpd is not None:
            raise RuntimeError("FakeOAuthServer is already running")
        super().start()
        self._server.issuer = self.url
        return self

    # -- control knobs (thread-safe) -----------------------------------------------------------

    def approve(self, user_code: str, user: str | None = None) -> None:
        """The user (default: the constructor's) approves; the next poll gets tokens."""
        with self._lock:
            self._store.device(user_code).decision = (user or self.user, True)

    def deny(self, user_code: str) -> None:
        """The user denies; polls get ``access_denied``."""
        with self._lock:
            self._store.device(user_code).decision = (None, False)

    def expire(self, user_code: str) -> None:
        """Expire the device code now; polls get ``expired_token``."""
        with self._lock:
            self._store.device(user_code).expires_at = float("-inf")

    def set_access_token_lifetime(self, seconds: int) -> None:
        """Tokens issued from now on live ``seconds``."""
        with self._lock:
            self._server.access_token_lifetime = seconds

    def stop_issuing_refresh_tokens(self) -> None:
        """Token responses from now on carry no refresh token."""
        with self._lock:
            self._server.issue_refresh_tokens = False

    def fail_next(self, path: str, count: int = 1, status: int = 500, body: str = "oops") -> None:
        """Answer the next ``count`` requests to ``path`` with ``status``/``body`` (queued after
        faults already pending on that path)."""
        path = "/" + path.lstrip("/")
        with self._lock:
            self._faults.setdefault(path, deque()).extend([(status, body)] * count)

    def revoke_all_refresh_tokens(self) -> None:
        """Revoke every refresh token issued so far (access tokens stay valid)."""
        with self._lock:
            for token in self._store.by_refresh.values():
                token.refresh_revoked = True

    def valid_access_token(self, token: str) -> bool:
        """Issued here, not expired, not revoked."""
        with self._lock:
            record = self._store.by_access.get(token)
            return record is not None and not record.is_expired() and not record.is_revoked()

    def issued_refresh_tokens(self) -> list[str]:
        """Every refresh token issued so far."""
        with self._lock:
            return list(self._store.by_refresh)

    def valid_refresh_token(self, token: str) -> bool:
        """Issued here and not revoked (refresh tokens do not expire)."""
        with self._lock:
            record = self._store.by_refresh.get(token)
            return record is not None and not record.refresh_revoked

    # -- HTTP ------------------------------------------------------------------------------------

    def _metadata(self) -> dict[str, Any]:
        base = self.url
        return {
            "issuer": base,
            "authorization_endpoint": f"{base}/authorize",
            "token_endpoint": f"{base}/token",
            "device_authorization_endpoint": f"{base}/device_authorization",
            "userinfo_endpoint": f"{base}/userinfo",
            "revocation_endpoint": f"{base}/revoke",
            "scopes_supported": SCOPES.split(),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": list(GRANT_TYPES),
            "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
            "revocation_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
            "code_challenge_methods_supported": ["S256"],
            "subject_types_supported": ["public"],
            "claims_supported": ["sub", "email", "preferred_username"],
            "authorization_response_iss_parameter_supported": self.iss_in_redirect,
        }

    def _build_app(self) -> Flask:
        app = Flask(__name__)
        server, lock = self._server, self._lock

        @app.before_request
        def observe() -> Response | None:
            with lock:
                values = {**request.args.to_dict(), **request.form.to_dict()}
                self.requests.append((request.method, request.path, values))
                if request.method == "POST" and request.path == "/token":
                    self.grant_counts[request.form.get("grant_type", "")] += 1
                faults = self._faults.get(request.path)
                if faults:
                    status, body = faults.popleft()
                    return Response(body, status=status, mimetype="text/plain")
            return None

        @app.get("/.well-known/oauth-authorization-server")
        @app.get("/.well-known/openid-configuration")
        def metadata() -> Response:
            return jsonify(self._metadata())

        @app.route("/authorize", methods=["GET", "POST"])
        def authorize() -> Response:
            with lock:
                try:
                    grant = server.get_consent_grant(end_user=self.user)
                except OAuth2Error as error:
                    return server.handle_error_response(None, error)
                grant_user = None if self.deny_authorizations else self.user
                response: Response = server.create_authorization_response(grant=grant, grant_user=grant_user)
                if self.iss_in_redirect and response.location:
                    response.location = add_params_to_uri(response.location, [("iss", self.issuer)])
                return response

        @app.post("/token")
        def token() -> Response:
            with lock:
                response: Response = server.create_token_response()
            if request.form.get("grant_type") == "refresh_token" and not self.refresh_gate.is_set():
                self.refresh_held.set()  # a slow upstream: the token is rotated, its answer not yet out
                self.refresh_gate.wait(30)
            return response

        @app.post("/device_authorization")
        def device_authorization() -> Response:
            with lock:
                response: Response = server.create_endpoint_response(DeviceEndpoint.ENDPOINT_NAME)
                return response

        @app.post("/revoke")
        def revoke() -> Response:
            with lock:
                response: Response = server.create_endpoint_response(Revocation.ENDPOINT_NAME)
                return response

        @app.get("/device")
        def device_page() -> Response:
            user_code = request.args.get("user_code", "")
            prompt = f"confirm the code {user_code}" if user_code else "enter the code shown on your device"
            return Response(f"Signed in as {self.user}: {prompt}.\n", mimetype="text/plain")

        @app.route("/userinfo", methods=["GET", "POST"])
        def userinfo() -> Response:
            with lock:
                try:
                    user = self._protector.acquire_token().get_user()
                except OAuth2Error as error:
                    self._protector.raise_error_response(error)
            return jsonify({"sub": user, "email": f"{user}@example.com", "preferred_username": user})

        return app
