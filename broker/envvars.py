"""The environment variables each API style's ecosystem reads, from a token answer.

Every style also gets the ``BROKER_*`` variables, so a script can use any provider
the same way. Providers whose key travels in Azure's ``api-key`` header get the
variables the openai SDK's ``AzureOpenAI`` reads instead of ``OPENAI_*``: a plain
OpenAI client would send that key as a bearer token, which Azure refuses. Servers
without auth get a placeholder key, because the SDKs refuse to start without one.
"""

from __future__ import annotations

import json
from typing import Any

OPENAI_STYLES = {"openai-chat", "openai-responses"}
NO_KEY = "none"
"""The key given to SDKs for servers that take none (the SDKs insist on one)."""


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
    return {k: v for k, v in values.items() if v}


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
