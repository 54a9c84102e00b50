"""Vertex AI with tokens minted from gcloud's application default credentials (ADC).

The ADC file is gcloud's, and nothing in it expires on a schedule: it holds either a
user's refresh token (``authorized_user``, from ``gcloud auth application-default
login``) or a service account's private key (``service_account``). So broker never
writes it; it mints an access token from it (one hour) and keeps that in memory,
minting the next one ahead of expiry (``broker.followed.gcloud`` reads the file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from broker.flows import refresh
from broker.flows.errors import OAuthError
from broker.flows.token import OAuthClient, TokenSet, request_token
from broker.providers import google_jwt
from broker.providers.base import LoginContext, LoginRequest, ProviderContext, renewed
from broker.providers.builtin import Builtin
from broker.providers.table import Table
from broker.providers.upstream_errors import to_broker_error

from broker.core.config import Section
from broker.core.errors import BadRequest, BrokerError, RefreshFailed
from broker.core.model import Credential

DESCRIPTION = "Claude on Vertex AI, with tokens minted from gcloud's application default credentials"
API = "anthropic-vertex"
"""Anthropic Messages at ``{base_url}/{model}:rawPredict`` with ``anthropic_version`` in the body."""
OTHER_PUBLISHER_API = "vertex"
ENDPOINTS = {"token": "https://oauth2.googleapis.com/token"}
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
REGION = "us-east5"
PUBLISHER = "anthropic"
TOKEN_LIFETIME = 3600
SUPPORTED = ("authorized_user", "service_account")
TABLE = Table(forced_base_url=True, endpoint_keys=tuple(ENDPOINTS), own=("region", "project", "publisher"))
LOGIN_HINT = "run: gcloud auth application-default login"
_NAME_PART = re.compile(r"[a-z0-9][a-z0-9-]*")
_PROJECT = re.compile(r"[a-z0-9][a-z0-9.:-]*")


@dataclass(kw_only=True)
class VertexProvider(Builtin):
    table = TABLE
    flows = ("file",)
    cli_login = LOGIN_HINT
    description = DESCRIPTION
    endpoint_overrides: dict[str, str]
    """``[providers.vertex.endpoints] token``: wins over the file's ``token_uri``."""
    forced_base_url: str | None
    region: str
    project: str | None
    publisher: str
    api: str = field(init=False)
    """Anthropic's style for Anthropic's models, Vertex's own for any other publisher's."""
    base_url: str | None = field(init=False)
    """Only when the config fixes it (``base_url``, or ``project``); else each file's project decides."""

    def __post_init__(self) -> None:
        self.api = API if self.publisher == PUBLISHER else OTHER_PUBLISHER_API
        self.base_url = self.forced_base_url or (
            base_url_of(self.region, self.project, self.publisher) if self.project else None
        )

    @classmethod
    def own_fields(cls, section: Section) -> dict[str, Any]:
        project = section.optional_text("project")
        return {
            "region": _checked(section, "region", section.text("region", REGION), _NAME_PART),
            "publisher": _checked(section, "publisher", section.text("publisher", PUBLISHER), _NAME_PART),
            "project": None if project is None else _checked(section, "project", project, _PROJECT),
        }

    async def login(self, ctx: LoginContext, request: LoginRequest) -> Credential:
        raise BadRequest(
            "Vertex AI uses gcloud's application default credentials; broker mints tokens from them",
            f"{LOGIN_HINT} (or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file)",
        )

    async def refresh(self, ctx: ProviderContext, credential: Credential) -> Credential:
        """Mint a new access token from what the file holds; the file itself is never touched."""
        now = ctx.now()
        endpoint = self.endpoint_overrides.get("token") or credential.extra.get("token_uri") or ENDPOINTS["token"]
        try:
            tokens = await self._mint(ctx, credential, endpoint, now)
        except OAuthError as exc:
            raise _refusal(exc, self.name, credential) from None
        return renewed(credential, tokens, expires_at=tokens.expires_at or now + TOKEN_LIFETIME)

    def can_refresh(self, credential: Credential) -> bool:
        return credential.extra.get("type") in SUPPORTED

    def describe(self) -> dict[str, Any]:
        template = _models_url(self.region, "{project}", self.publisher)
        return {
            **super().describe(),
            "base_url": self.base_url or template,
            "endpoints": {**ENDPOINTS, **self.endpoint_overrides},
            "region": self.region,
            "project": self.project,
            "publisher": self.publisher,
            "note": "broker mints 1-hour tokens from the ADC file (at its token_uri unless endpoints.token is set) "
            "and never writes it",
        }

    async def _mint(self, ctx: ProviderContext, credential: Credential, endpoint: str, now: float) -> TokenSet:
        http = ctx.http(proxy=self.proxy)
        extra = credential.extra
        if extra.get("type") == "service_account":
            try:
                key = google_jwt.load_rsa_key(str(extra.get("private_key", "")))
            except ValueError as exc:
                raise OAuthError("invalid_grant", f"the service account's private_key is {exc}") from None
            claims = google_jwt.bearer_claims(str(extra["client_email"]), endpoint, SCOPE, now)
            assertion = google_jwt.sign_rs256(key, claims, extra.get("private_key_id"))
            # The assertion is the client's authentication: no client_id goes with it (RFC 7523 §3.1).
            return await request_token(
                http, endpoint, OAuthClient(""), google_jwt.GRANT_TYPE, {"assertion": assertion}, now=now
            )
        client = OAuthClient(str(extra["client_id"]), str(extra["client_secret"]), auth_method="client_secret_post")
        return await refresh.refresh(http, endpoint, client, credential.refresh_token, now=now)


def base_url_of(region: str, project: str, publisher: str = PUBLISHER) -> str:
    """Vertex's models URL of one publisher in one project; ``global`` has no regional host."""
    return _models_url(region, quote(project, safe=":"), publisher)


def _models_url(region: str, project_part: str, publisher: str) -> str:
    host = "aiplatform.googleapis.com" if region == "global" else f"{region}-aiplatform.googleapis.com"
    return f"https://{host}/v1/projects/{project_part}/locations/{region}/publishers/{publisher}/models"


def _checked(section: Section, key: str, value: str, pattern: re.Pattern[str]) -> str:
    """A config value that becomes part of a URL: plain names only."""
    if not pattern.fullmatch(value):
        raise section.error(key, f"is not a valid {key} name (lowercase letters, digits and dashes)")
    return value


def _refusal(exc: OAuthError, provider: str, credential: Credential) -> BrokerError:
    """Google's refusal, with a hint about the ADC file rather than about broker's config."""
    if exc.error in ("invalid_client", "unauthorized_client", "invalid_scope"):
        fix = (
            "create a new key for the service account"
            if credential.extra.get("type") == "service_account"
            else LOGIN_HINT
        )
        return RefreshFailed(f"{provider}: Google refused the ADC file's credentials ({exc})", fix)
    return to_broker_error(exc, provider, "refresh")
