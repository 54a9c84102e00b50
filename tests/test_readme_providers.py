"""README's provider table, ``broker providers`` and the registry tell the same story."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from broker.providers.registry import build_registry

from broker.cli.readme import END, README, START, render_table
from broker.core.config import ConfigSource, Section
from tests.conftest import DaemonProcess

PROVIDERS_MD = Path(__file__).resolve().parents[2] / "shared" / "providers.md"


def registry_names() -> list[str]:
    return [provider.name for provider in build_registry(Section((), {}, ConfigSource(None, "")))]


def test_readme_provider_table_is_the_one_the_registry_generates():
    text = README.read_text()
    assert START in text and END in text
    table = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert table == render_table(), "README.md's provider table is stale: run python -m broker.cli.readme"


def test_readme_table_has_a_row_for_every_provider_and_config_type():
    table = render_table()
    for name in registry_names():
        assert f"| `{name}` |" in table
    assert '`type = "oauth"`' in table and '`type = "apikey"`' in table


def test_broker_providers_lists_every_provider_with_api_style_auth_and_login(daemon: DaemonProcess):
    daemon.start()
    lines = daemon.cli("providers").stdout.splitlines()
    listed = {p["name"]: p for p in json.loads(daemon.cli("providers", "--json").stdout)}
    assert sorted(listed) == sorted(registry_names())
    for name, provider in listed.items():
        line = next(line for line in lines if line.split()[0] == name)
        assert provider["api"] in line and f"auth: {provider['auth']}" in line and "login: " in line
    assert "broker login openai (API key) [apikey]" in next(line for line in lines if line.startswith("openai "))
    assert "login: none (local server, no auth)" in next(line for line in lines if line.startswith("ollama "))
    assert listed["azure"]["auth"] == "api-key" and listed["anthropic"]["auth"] == "x-api-key"
    assert len({line.index(" auth: ") for line in lines}) == 1, "columns line up, the longest API style included"


@pytest.mark.skipif(not PROVIDERS_MD.exists(), reason="../shared/providers.md is not beside the repository")
def test_every_row_of_the_compatibility_table_in_providers_md_is_registered_as_documented():
    text = PROVIDERS_MD.read_text()
    section = text.split("## API-key providers and local servers", 1)[1]
    rows = re.findall(r"^\| (\S+)[^|]*\| `([^`]+)` \| (\S+) \|", section, re.MULTILINE)
    assert len(rows) >= 20
    registry = {p.name: p for p in build_registry(Section((), {}, ConfigSource(None, "")))}
    for name, base_url, api in rows:
        provider = registry[name]
        assert provider.api == api, name
        if "RESOURCE" not in base_url:
            assert provider.base_url == base_url, name


@pytest.mark.parametrize("block", re.findall(r"```toml\n(.*?)```", README.read_text(), re.S))
def test_every_config_example_in_the_readme_is_accepted(tmp_path: Path, block: str):
    from broker.core.config import load_settings

    config = tmp_path / "config.toml"
    config.write_text(block)
    settings = load_settings({"BROKER_CONFIG": str(config), "HOME": str(tmp_path)})
    build_registry(settings.root.section("providers"))
