"""Wire facts in the config: what a built-in takes, what it refuses, what ``broker providers`` shows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from broker.providers.registry import build_registry
from broker.providers.wire import platform_facts, semantic

from broker.core.config import ConfigSource, Section, parse
from broker.core.errors import ConfigError


def described(text: str, name: str) -> dict[str, Any]:
    source = ConfigSource(Path("/etc/broker.toml"), text)
    providers = Section(("providers",), parse(source).get("providers", {}), source)
    return build_registry(providers).get(name).describe()


def refusal(text: str, name: str) -> str:
    with pytest.raises(ConfigError) as refused:
        described(text, name)
    return f"{refused.value} {refused.value.hint}"


def test_an_empty_value_drops_a_default_and_a_new_name_is_added():
    qwen = described('[providers.qwen.headers]\nX-DashScope-CacheControl = ""\nX-Team = "ml"\n', "qwen")
    assert "X-DashScope-CacheControl" not in qwen["headers"]
    assert qwen["headers"]["X-Team"] == "ml" and qwen["headers"]["X-DashScope-AuthType"] == "qwen-oauth"


def test_a_version_moves_every_value_that_names_it():
    qwen = described('[providers.qwen.versions]\nqwen_code = "0.30.0"\n', "qwen")
    assert qwen["headers"]["User-Agent"].startswith("QwenCode/0.30.0 (")
    assert qwen["headers"]["X-DashScope-UserAgent"] == qwen["headers"]["User-Agent"]


def test_a_fact_the_provider_does_not_have_is_refused_with_the_keys_it_has():
    message = refusal('[providers.qwen.authorize_params]\nfoo = "bar"\n', "qwen")
    assert "providers.qwen.authorize_params: unknown key" in message and "token_headers" in message


def test_an_unknown_version_name_is_refused_naming_the_known_one():
    message = refusal('[providers.codex.versions]\ncodx = "1.0"\n', "codex")
    assert "providers.codex.versions.codx: unknown key" in message and '"codex"' in message


def test_a_stray_brace_is_refused_at_its_key():
    message = refusal('[providers.claude.token_headers]\nUser-Agent = "axios/{axios"\n', "claude")
    assert "/etc/broker.toml:2: providers.claude.token_headers.User-Agent" in message


def test_platform_facts_are_named_as_the_official_clients_name_them():
    facts = platform_facts()
    assert set(facts) == {"os", "os_version", "arch", "node_platform", "node_arch"}
    assert facts["node_arch"] != "x86_64", "Node says x64"
    assert (semantic("22.04"), semantic("12"), semantic("15.6.1")) == ("22.4.0", "12.0.0", "15.6.1")
