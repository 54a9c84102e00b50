"""Codex CLI's ``auth.json``: where it is, what it holds, how refreshed tokens go back in.

Codex redeems its refresh token only once the access token has less than 5 minutes
left (or an API request was refused), after re-reading this file; it sends the request first and locks
(``auth.json.lock``, ``auth.lock``) only around its write. No lock of its keeps it from
redeeming, so broker redeems only while the access token is still good for longer than
its own request can take (``broker.refresher``). A reader can catch the file
half-written; ``broker.followed`` keeps the last good credential then.
With ``cli_auth_credentials_store = "keyring"`` Codex keeps its login in the OS
keyring and deletes the file: logged in, but nothing here to follow.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from broker.core.model import Credential
from broker.followed.format import CliFormat, FileProblem, FollowedFile, file_path, home, optional_str, require
from broker.providers.codex import ACCOUNT_HEADER, API_KEY_API, API_KEY_BASE_URL, CodexProvider, account_id_of, jwt_time

ACCOUNT = "codex-cli"
CLI = "Codex CLI"
LOGIN_HINT = "run: codex login"
HOME_VARIABLE = "CODEX_HOME"
FILE_NAME = "auth.json"
REFRESHES_WITHIN = 300.0
"""Codex (0.171) refreshes once its access token has less than 5 minutes left, or none."""
LEAD = 600.0
"""broker refreshes first, with room for its own request on top of Codex's 5 minutes."""
PROGRAMS = ("codex",)
"""The native ``codex`` binary (the npm package's ``codex.js`` starts it)."""
TOKENS = "tokens"
API_KEY = "OPENAI_API_KEY"
API_KEY_MODE = "apikey"
"""``auth_mode`` of a file whose API key is the login, even beside leftover tokens."""


@dataclass(frozen=True)
class ChatGPTLogin:
    """``tokens`` of a ChatGPT sign-in, as Codex stores them."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    id_token: str | None = field(repr=False)
    account_id: str | None


@dataclass(frozen=True)
class ApiKeyLogin:
    """A file that holds only ``OPENAI_API_KEY``: a platform key, nothing to refresh."""

    api_key: str = field(repr=False)


def default_path(env: Mapping[str, str]) -> Path:
    return file_path(env, HOME_VARIABLE, home(env) / ".codex", FILE_NAME)


def credential_in(doc: Mapping[str, Any], provider: CodexProvider) -> Credential:
    """The file's ChatGPT login, or its plain OpenAI API key, as the provider serves it."""
    login = read(doc)
    if isinstance(login, ApiKeyLogin):
        return Credential(
            provider=provider.name,
            account=ACCOUNT,
            access_token=login.api_key,
            base_url=API_KEY_BASE_URL,
            api=API_KEY_API,
        )
    account_id = login.account_id or account_id_of(login.id_token) or account_id_of(login.access_token)
    extra = {"id_token": login.id_token, "account_id": account_id}
    return Credential(
        provider=provider.name,
        account=ACCOUNT,
        access_token=login.access_token,
        refresh_token=login.refresh_token,
        expires_at=jwt_time(login.access_token, "exp"),
        issued_at=jwt_time(login.access_token, "iat"),
        api=provider.api,
        headers={ACCOUNT_HEADER: account_id} if account_id else {},
        extra={k: v for k, v in extra.items() if v},
    )


def read(doc: Mapping[str, Any]) -> ChatGPTLogin | ApiKeyLogin:
    """The login the file holds; FileProblem when it holds none broker can use."""
    tokens = doc.get(TOKENS)
    api_key = doc.get(API_KEY)
    has_key = isinstance(api_key, str) and bool(api_key)
    if isinstance(tokens, dict) and not (has_key and doc.get("auth_mode") == API_KEY_MODE):
        return ChatGPTLogin(
            access_token=require(tokens, "access_token", str, TOKENS),
            refresh_token=optional_str(tokens, "refresh_token"),
            id_token=optional_str(tokens, "id_token"),
            account_id=optional_str(tokens, "account_id"),
        )
    if has_key:
        return ApiKeyLogin(str(api_key))
    if tokens is not None and not isinstance(tokens, dict):
        raise FileProblem(f"{TOKENS} is not an object")
    raise FileProblem(f"the file holds neither ChatGPT {TOKENS} nor an {API_KEY}")


def merge(doc: dict[str, Any], credential: Credential) -> dict[str, Any]:
    """New tokens and ``last_refresh`` into Codex's JSON; every other field kept."""
    tokens = doc.get(TOKENS)
    if not isinstance(tokens, dict):
        tokens = doc[TOKENS] = {}
    tokens["access_token"] = credential.access_token
    if credential.refresh_token:
        tokens["refresh_token"] = credential.refresh_token
    for name in ("id_token", "account_id"):
        value = credential.extra.get(name)
        if isinstance(value, str) and value:
            tokens[name] = value
    doc["last_refresh"] = rfc3339(credential.issued_at or time.time())
    return doc


def rfc3339(epoch: float) -> str:
    """UTC with microseconds and ``Z``, as Codex writes ``last_refresh``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


FORMAT = CliFormat(
    ACCOUNT,
    CLI,
    LOGIN_HINT,
    merge,
    lead=LEAD,
    contested_within=REFRESHES_WITHIN,
    programs=PROGRAMS,
    locate=default_path,
)


def files(provider: CodexProvider, env: Mapping[str, str]) -> tuple[FollowedFile, ...]:
    return (
        FORMAT.file(provider, provider.follow.file or default_path(env), partial(credential_in, provider=provider)),
    )
