"""Qwen Code's ``oauth_creds.json``: where it is, what it holds, how refreshed tokens go back in.

Qwen Code refreshes under its own lock, ``oauth_creds.lock`` beside the file (taken by
exclusive create, stale after 10 s), and deletes the file when a refresh fails: broker
takes the same lock, so the two never redeem one refresh token twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from broker.core.model import Credential
from broker.followed.format import CliFormat, CliLock, FollowedFile, file_path, home, ms_timestamp, require
from broker.providers.qwen import QwenProvider, base_url_for

ACCOUNT = "qwen-code"
CLI = "Qwen Code"
LOGIN_HINT = "run: qwen, then /auth"
HOME_VARIABLE = "QWEN_HOME"
FILE_NAME = "oauth_creds.json"
LOCK_NAME = "oauth_creds.lock"
LOCK_STALE = 10.0


@dataclass(frozen=True)
class QwenLogin:
    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    token_type: str
    expires_at: float
    resource_url: str | None


def default_path(env: Mapping[str, str]) -> Path:
    return file_path(env, HOME_VARIABLE, home(env) / ".qwen", FILE_NAME)


def lock_path(path: Path) -> Path:
    """Qwen Code's lock lives beside its file, whatever directory that is."""
    return path.with_name(LOCK_NAME)


def credential_in(doc: Mapping[str, Any], provider: QwenProvider) -> Credential:
    """The file's login, at the API host its ``resource_url`` names."""
    login = read(doc)
    return Credential(
        provider=provider.name,
        account=ACCOUNT,
        access_token=login.access_token,
        refresh_token=login.refresh_token,
        expires_at=login.expires_at,
        token_type=login.token_type,
        base_url=base_url_for(login.resource_url),
        api=provider.api,
        extra={"resource_url": login.resource_url} if login.resource_url else {},
    )


def read(doc: Mapping[str, Any]) -> QwenLogin:
    expires_at = ms_timestamp(doc, "expiry_date", "expiry_date")
    return QwenLogin(
        access_token=require(doc, "access_token", str, FILE_NAME),
        refresh_token=_optional_str(doc, "refresh_token"),
        token_type=_optional_str(doc, "token_type") or "Bearer",
        expires_at=expires_at,
        resource_url=_optional_str(doc, "resource_url"),
    )


def merge(doc: dict[str, Any], credential: Credential) -> dict[str, Any]:
    """New tokens into Qwen Code's JSON (expiry in whole milliseconds); other fields kept."""
    doc["access_token"] = credential.access_token
    if credential.refresh_token:
        doc["refresh_token"] = credential.refresh_token
    doc["token_type"] = credential.token_type
    if credential.expires_at is not None:
        doc["expiry_date"] = int(credential.expires_at * 1000)
    resource_url = credential.extra.get("resource_url")
    if isinstance(resource_url, str) and resource_url:
        doc["resource_url"] = resource_url
    return doc


def _optional_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    return value if isinstance(value, str) and value.strip() else None


FORMAT = CliFormat(ACCOUNT, CLI, LOGIN_HINT, merge)


def files(provider: QwenProvider, env: Mapping[str, str]) -> tuple[FollowedFile, ...]:
    path = provider.follow.file or default_path(env)
    lock = CliLock(lock_path(path), "create", LOCK_STALE)
    return (FORMAT.file(provider, path, partial(credential_in, provider=provider), refresh_locks=(lock,)),)
