"""Qwen Code's ``oauth_creds.json``: where it is, what it holds, how refreshed tokens go back in.

Qwen Code refreshes under its own lock, ``oauth_creds.lock`` beside the file (taken by
exclusive create, stale after 10 s), and deletes the file when a refresh fails: broker
takes the same lock, so the two never redeem one refresh token twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.core.model import Credential
from broker.followed.format import FileProblem, file_path, home, require

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


def read(doc: Mapping[str, Any]) -> QwenLogin:
    expiry_ms = doc.get("expiry_date")
    if not isinstance(expiry_ms, int | float) or isinstance(expiry_ms, bool):
        raise FileProblem("expiry_date is missing or not a number")
    return QwenLogin(
        access_token=require(doc, "access_token", str, FILE_NAME),
        refresh_token=_optional_str(doc, "refresh_token"),
        token_type=_optional_str(doc, "token_type") or "Bearer",
        expires_at=expiry_ms / 1000,
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
