"""gcloud's application default credentials (ADC): where the file is and what it holds.

Nothing in the file expires on a schedule: it holds either a user's refresh token
(``authorized_user``, from ``gcloud auth application-default login``) or a service
account's private key (``service_account``). broker never writes it; the provider mints
short-lived access tokens from what it holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from broker.core.model import Credential
from broker.followed.format import CliFormat, FileProblem, FollowedFile, file_path, home, optional_str, require
from broker.providers import google_jwt
from broker.providers.vertex import LOGIN_HINT, SUPPORTED, VertexProvider, base_url_of

ACCOUNT = "adc"
CLI = "gcloud"
FILE_NAME = "application_default_credentials.json"
EXPLICIT_VARIABLE = "GOOGLE_APPLICATION_CREDENTIALS"
CONFIG_VARIABLE = "CLOUDSDK_CONFIG"
PROJECT_VARIABLES = ("GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT")
"""google-auth's order: the environment's project beats the one in the credentials file."""
LEAD = 300.0
NOT_MINTED = 0.0
"""The expiry of a credential fresh from the file: no access token yet, so the refresher mints at once."""


def default_path(env: Mapping[str, str]) -> Path:
    explicit = env.get(EXPLICIT_VARIABLE)
    if explicit:
        return Path(explicit).expanduser()
    return file_path(env, CONFIG_VARIABLE, home(env) / ".config" / "gcloud", FILE_NAME)


def credential_in(doc: Mapping[str, Any], provider: VertexProvider, env_project: str | None) -> Credential:
    """What the file holds to mint from, at the models URL of the project that wins."""
    where = "the ADC file"
    kind = require(doc, "type", str, where)
    quota_project = optional_str(doc, "quota_project_id")
    token_uri = optional_str(doc, "token_uri")
    if token_uri is not None and not token_uri.startswith("https://"):
        raise FileProblem(f"{where}: token_uri is not an https:// URL; broker sends no secret in clear text")
    extra: dict[str, Any] = {"type": kind, "token_uri": token_uri}
    refresh_token: str | None = None
    if kind == "authorized_user":
        extra["client_id"] = require(doc, "client_id", str, where)
        extra["client_secret"] = require(doc, "client_secret", str, where)
        refresh_token = require(doc, "refresh_token", str, where)
    elif kind == "service_account":
        extra["client_email"] = require(doc, "client_email", str, where)
        extra["private_key"] = require(doc, "private_key", str, where)
        extra["private_key_id"] = optional_str(doc, "private_key_id")
        try:
            google_jwt.load_rsa_key(extra["private_key"])
        except ValueError as exc:
            raise FileProblem(f"{where}: private_key is {exc}") from None
    else:
        raise FileProblem(
            f"{where} holds credentials of type {kind!r}, which broker does not support "
            f"(it mints tokens from {' and '.join(SUPPORTED)} files)",
            f"{LOGIN_HINT}, or point {EXPLICIT_VARIABLE} at a service account key file",
        )
    project = provider.project or env_project or optional_str(doc, "project_id") or quota_project
    forced = provider.forced_base_url
    return Credential(
        provider=provider.name,
        account=ACCOUNT,
        access_token="",
        refresh_token=refresh_token,
        expires_at=NOT_MINTED,
        base_url=forced or (base_url_of(provider.region, project, provider.publisher) if project else None),
        api=provider.api,
        headers={"x-goog-user-project": quota_project} if quota_project else {},
        extra=extra,
    )


FORMAT = CliFormat(ACCOUNT, CLI, LOGIN_HINT, merge=None, lead=LEAD)


def files(provider: VertexProvider, env: Mapping[str, str]) -> tuple[FollowedFile, ...]:
    env_project = next((env[name] for name in PROJECT_VARIABLES if env.get(name)), None)
    parse = partial(credential_in, provider=provider, env_project=env_project)
    return (FORMAT.file(provider, provider.follow.file or default_path(env), parse),)
