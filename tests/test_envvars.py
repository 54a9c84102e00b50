"""The variables each API style's ecosystem reads, from one token answer."""

from __future__ import annotations

from typing import Any

import pytest

from broker.cli.envvars import variables

BASE = {"provider": "p", "access_token": "tok", "base_url": "https://x.example/v1", "headers": {}}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"api": "openai-chat", "auth": "bearer"},
            {"OPENAI_API_KEY": "tok", "OPENAI_BASE_URL": "https://x.example/v1"},
        ),
        ({"api": "openai-responses", "auth": "bearer"}, {"OPENAI_API_KEY": "tok"}),
        (
            {"api": "anthropic", "auth": "x-api-key"},
            {"ANTHROPIC_API_KEY": "tok", "ANTHROPIC_BASE_URL": "https://x.example/v1"},
        ),
        ({"api": "anthropic", "auth": "bearer"}, {"ANTHROPIC_AUTH_TOKEN": "tok"}),
        (
            {"api": "gemini-code-assist", "auth": "bearer"},
            {"GOOGLE_GENAI_USE_GCA": "true", "GOOGLE_CLOUD_ACCESS_TOKEN": "tok"},
        ),
        ({"api": "openai-chat", "auth": "none"}, {"OPENAI_API_KEY": "none"}),
    ],
)
def test_each_style_gets_the_variables_its_sdks_read(extra: dict[str, Any], expected: dict[str, str]):
    values = variables({**BASE, **extra})
    assert expected.items() <= values.items()
    assert values["BROKER_ACCESS_TOKEN"] == "tok" and values["BROKER_API"] == extra["api"]


def test_gemini_code_assist_token_is_not_offered_as_a_gemini_api_key():
    assert "GEMINI_API_KEY" not in variables({**BASE, "api": "gemini-code-assist", "auth": "bearer"})


def test_headers_travel_as_custom_header_lines():
    values = variables({**BASE, "api": "anthropic", "auth": "bearer", "headers": {"anthropic-beta": "oauth"}})
    assert values["ANTHROPIC_CUSTOM_HEADERS"] == "anthropic-beta: oauth"
