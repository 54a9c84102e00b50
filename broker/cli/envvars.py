"""The environment variables each API style's ecosystem reads, from a token answer.

Every style also gets the ``BROKER_*`` variables, so a script can use any provider
the same way. Providers whose key travels in Azure's ``api-key`` header get the
variables the openai SDK's ``AzureOpenAI`` reads instead of ``OPENAI_*``: a plain
OpenAI client would send that key as a bearer token, which Azure refuses. Servers
without auth get a placeholder key, because the SDKs refuse to start without one.

A tool must get exactly one credential: the provider's. So every variable of every
family in ``FAMILIES`` that this answer does not set is removed from the child's
environment (``broker exec``) or ``unset`` (``broker env``): a key left in
``~/.bashrc`` would otherwise travel with broker's base URL, or broker's token with
a base URL left there. And the OpenAI Agents SDK posts ``Bearer $OPENAI_API_KEY`` to
OpenAI's own trace endpoint whatever the base URL, so its tracing is turned off
whenever the base URL is not OpenAI's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

OPENAI_STYLES = {"openai-chat", "openai-responses"}
NO_KEY = "none"
"""The key given to SDKs for servers that take none (the SDKs insist on one)."""
OPENAI_HOST = "api.openai.com"
AGENTS_TRACING_OFF = "OPENAI_AGENTS_DISABLE_TRACING"

FAMILIES: dict[str, tuple[str, ...]] = {
    # openai-python/-node (key, base URL, organization, project, admin key), langchain-openai and LiteLLM
    # (OPENAI_API_BASE, OPENAI_ORGANIZATION, OPENAI_API_TYPE, OPENAI_PROXY), the Agents SDK (websocket URL),
    # Codex (CODEX_API_KEY, CODEX_ACCESS_TOKEN).
    "openai": (
        "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_CUSTOM_HEADERS", "OPENAI_ORG_ID",
        "OPENAI_ORGANIZATION", "OPENAI_PROJECT_ID", "OPENAI_ADMIN_KEY", "OPENAI_API_TYPE", "OPENAI_PROXY",
        "OPENAI_WEBSOCKET_BASE_URL", "CODEX_API_KEY", "CODEX_ACCESS_TOKEN",
    ),
    # AzureOpenAI() (key, endpoint, Entra token, API version), LiteLLM's AZURE_API_*.
    "azure": (
        "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_AD_TOKEN", "AZURE_OPENAI_API_VERSION",
        "OPENAI_API_VERSION", "AZURE_API_KEY", "AZURE_API_BASE", "AZURE_API_VERSION", "AZURE_AD_TOKEN",
    ),
    # anthropic-python/-sdk (key, bearer token, base URL, profiles, workload identity, Bedrock/Vertex/Foundry/AWS
    # hosts), Claude Code (its OAuth token and the switches that send it to another backend or socket).
    "anthropic": (
        "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "ANTHROPIC_CUSTOM_HEADERS",
        "ANTHROPIC_BETAS", "ANTHROPIC_UNIX_SOCKET", "ANTHROPIC_PROFILE", "ANTHROPIC_CONFIG_DIR",
        "ANTHROPIC_IDENTITY_TOKEN", "ANTHROPIC_IDENTITY_TOKEN_FILE", "ANTHROPIC_FEDERATION_RULE_ID",
        "ANTHROPIC_ORGANIZATION_ID", "ANTHROPIC_WORKSPACE_ID", "ANTHROPIC_AWS_API_KEY", "ANTHROPIC_AWS_BASE_URL",
        "ANTHROPIC_BEDROCK_BASE_URL", "ANTHROPIC_BEDROCK_MANTLE_BASE_URL", "ANTHROPIC_VERTEX_BASE_URL",
        "ANTHROPIC_VERTEX_PROJECT_ID", "ANTHROPIC_GOOGLE_CLOUD_BASE_URL", "ANTHROPIC_FOUNDRY_API_KEY",
        "ANTHROPIC_FOUNDRY_AUTH_TOKEN", "ANTHROPIC_FOUNDRY_BASE_URL", "ANTHROPIC_FOUNDRY_RESOURCE",
        "CLAUDE_CODE_OAUTH_TOKEN", "CLAUDE_CODE_OAUTH_REFRESH_TOKEN", "CLAUDE_CODE_API_BASE_URL",
        "CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX", "CLAUDE_CODE_USE_FOUNDRY", "CLAUDE_CODE_USE_GATEWAY",
        "CLAUDE_CODE_USE_MANTLE", "CLAUDE_CODE_USE_ANTHROPIC_AWS", "CLAUDE_CODE_USE_ANTHROPIC_GOOGLE_CLOUD",
        "AWS_BEARER_TOKEN_BEDROCK",
    ),
    # google-genai and Gemini CLI (API keys, base URLs, the Vertex and Code Assist switches, an access token).
    "gemini": (
        "GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL", "GOOGLE_VERTEX_BASE_URL",
        "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_GCA", "GOOGLE_CLOUD_ACCESS_TOKEN",
    ),
    "broker": ("BROKER_PROVIDER", "BROKER_ACCESS_TOKEN", "BROKER_BASE_URL", "BROKER_API", "BROKER_HEADERS"),
}  # fmt: skip
"""Every variable, by family, through which a client could pick up a credential, base URL or header set."""


def variables(token: dict[str, Any]) -> dict[str, str]:
    """Name → value for one token answer of the socket API."""
    secret = str(token["access_token"])
    base_url = token.get("base_url") or ""
    api = token.get("api") or ""
    auth = token.get("auth")
    headers = token.get("headers") or {}
    values = {
        "BROKER_PROVIDER": str(token.get("provider", "")),
        "BROKER_ACCESS_TOKEN": secret,
        "BROKER_BASE_URL": base_url,
        "BROKER_API": api,
        "BROKER_HEADERS": json.dumps(headers, separators=(",", ":")),
    }
    if auth == "none":
        secret = NO_KEY
    if api in OPENAI_STYLES and auth == "api-key":
        values.update(azure_variables(secret, base_url, token.get("query") or {}))
    elif api in OPENAI_STYLES:
        values.update(OPENAI_API_KEY=secret, OPENAI_BASE_URL=base_url)
        if headers:
            values["OPENAI_CUSTOM_HEADERS"] = header_lines(headers)
    elif api == "anthropic":
        key = "ANTHROPIC_API_KEY" if auth == "x-api-key" else "ANTHROPIC_AUTH_TOKEN"
        values.update({key: secret, "ANTHROPIC_BASE_URL": base_url})
        if headers:
            values["ANTHROPIC_CUSTOM_HEADERS"] = header_lines(headers)
    elif api == "gemini-code-assist":
        # Gemini CLI's own override: use this access token for Code Assist, skip its OAuth.
        values.update(GOOGLE_GENAI_USE_GCA="true", GOOGLE_CLOUD_ACCESS_TOKEN=secret)
    elif api.startswith("gemini"):
        values.update(GEMINI_API_KEY=secret, GOOGLE_GEMINI_BASE_URL=base_url)
    if _host(base_url) != OPENAI_HOST:
        values[AGENTS_TRACING_OFF] = "1"
    return {k: v for k, v in values.items() if v}


def cleared(values: Mapping[str, str]) -> list[str]:
    """The variables of ``FAMILIES`` that ``values`` does not set: a child must not see them."""
    return [name for family in FAMILIES.values() for name in family if name not in values]


def child_environment(environ: Mapping[str, str], values: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without any other credential, base URL or header set, with ``values`` set."""
    gone = set(cleared(values))
    return {**{k: v for k, v in environ.items() if k not in gone}, **values}


def azure_variables(secret: str, base_url: str, query: dict[str, str]) -> dict[str, str]:
    """``AzureOpenAI()``'s variables: the resource endpoint (the part before ``/openai``) and API version."""
    cut = base_url.find("/openai")
    return {
        "AZURE_OPENAI_API_KEY": secret,
        "AZURE_OPENAI_ENDPOINT": base_url[:cut] if cut > 0 else base_url,
        "OPENAI_API_VERSION": str(query.get("api-version") or ""),
    }


def header_lines(headers: dict[str, str]) -> str:
    """``Name: value`` lines, the format of ``ANTHROPIC_CUSTOM_HEADERS`` and ``OPENAI_CUSTOM_HEADERS``."""
    return "\n".join(f"{k}: {v}" for k, v in headers.items())


def _host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None
