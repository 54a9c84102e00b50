"""The environment variables each API style's ecosystem reads, from a token answer.

Every style also gets the ``BROKER_*`` variables, so a script can use any provider
the same way.
"""

from __future__ import annotations

import json
from typing import Any

OPENAI_STYLES = {"openai-chat", "openai-responses"}


def variables(token: dict[str, Any]) -> dict[str, str]:
    """Name → value for one token answer of the socket API."""
    secret = str(token["access_token"])
    base_url = token.get("base_url") or ""
    api = token.get("api") or ""
    headers = token.get("headers") or {}
    values = {
        "BROKER_PROVIDER": str(token.get("provider", "")),
        "BROKER_ACCESS_TOKEN": secret,
        "BROKER_BASE_URL": base_url,
        "BROKER_API": api,
        "BROKER_HEADERS": json.dumps(headers, separators=(",", ":")),
    }
    if api in OPENAI_STYLES:
        values.update(OPENAI_API_KEY=secret, OPENAI_BASE_URL=base_url)
    elif api == "anthropic":
        key = "ANTHROPIC_API_KEY" if token.get("auth") == "x-api-key" else "ANTHROPIC_AUTH_TOKEN"
        values.update({key: secret, "ANTHROPIC_BASE_URL": base_url})
        if headers:
            values["ANTHROPIC_CUSTOM_HEADERS"] = "\n".join(f"{k}: {v}" for k, v in headers.items())
    elif api.startswith("gemini"):
        values.update(GEMINI_API_KEY=secret, GOOGLE_GEMINI_BASE_URL=base_url)
    return {k: v for k, v in values.items() if v}
