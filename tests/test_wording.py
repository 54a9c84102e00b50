"""Every sentence broker builds from a provider's data reads right: no doubled words, no wrong article.

Sentences assembled from data go wrong where nobody looks ("needs a OpenAI API key",
"Google Gemini API API key"). This renders, for every built-in and for each kind of
config entry, what a person can see: descriptions, login commands and options, hints,
refusals, the CLI's prompts and the messages about followed CLI files.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from broker.providers.base import LoginRequest, Provider
from broker.providers.registry import build_registry

from broker.cli.cmd_login import _check_options, _secret
from broker.cli.readme import render_table
from broker.core.config import ConfigSource, Section, parse
from broker.core.errors import BrokerError
from broker.daemon import hints
from broker.daemon.credentials import CredentialSet
from broker.followed.catalog import files_of
from broker.followed.files import FollowedFiles
from broker.store.file_store import FileStore
from broker.store.keys import FileKey

CONFIG = """
[providers.acme]
type = "oauth"
flow = "device"
token_endpoint = "https://id.acme.example/token"
device_authorization_endpoint = "https://id.acme.example/device"
client_id = "acme"

[providers.mygateway]
type = "apikey"
base_url = "https://llm.example.com/v1"
"""
DOUBLED = re.compile(r"(?<![-\w])(\w+)\s+\1\b", re.IGNORECASE)
"""A word said twice; not an option's last word and its value (``--enterprise-url URL``)."""
ARTICLE = re.compile(r"\b(an?)\s+[`'\"(]*([\w.-]+)", re.IGNORECASE)
LETTERS_SAID_WITH_A_VOWEL = set("AEFHILMNORSX")
"""A, E, F (ef), H (aitch), I, L (el), M, N, O, R, S, X: "an API", "an LLM", "an SDK"."""


def wants_an(word: str) -> bool:
    """Whether ``word`` is said starting with a vowel sound (a few English rules, enough for broker's words)."""
    if len(word) > 1 and (word.isupper() or (word[0].islower() and word[1].isupper())):  # API, URL, xAI
        return word[0].upper() in LETTERS_SAID_WITH_A_VOWEL
    lower = word.lower()
    if lower.startswith(("uni", "use", "usa", "usu", "one", "eu", "ur")):
        return False
    if lower.startswith(("hour", "honest", "heir")):
        return True
    return lower[0] in "aeiou"


def slips(text: str) -> list[str]:
    found = [f"doubled {m.group(0)!r}" for m in DOUBLED.finditer(text)]
    for match in ARTICLE.finditer(text):
        article, word = match.group(1).lower(), match.group(2)
        if (article == "an") != wants_an(word):
            found.append(f"{match.group(0)!r} should be {'an' if wants_an(word) else 'a'} {word}")
    return found


def test_the_checker_catches_the_slips_it_is_for():
    assert slips("openai needs a OpenAI API key") == ["'a OpenAI' should be an OpenAI"]
    assert slips("a Google Gemini API API key") == ["doubled 'API API'"]
    assert not slips("an API key, a URL, an LLM, a user, an xAI key, a LiteLLM proxy key, an hour")


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings(item)


def registry_for(home: Path) -> list[Provider]:
    source = ConfigSource(None, CONFIG)
    return list(build_registry(Section((), parse(source), source).section("providers")))


def refusal(provider: Provider, request: LoginRequest) -> list[str]:
    try:
        provider.check_login_request(request)
        if provider.cli_login is not None or not provider.needs_credential:
            asyncio.run(provider.login(None, request))  # type: ignore[arg-type]  # refused before any use
    except BrokerError as exc:
        return [exc.message, exc.hint]
    return []


def cli_sentences(provider: Provider) -> list[str]:
    """What ``broker login`` says about this provider before the daemon runs anything."""
    described = {**provider.describe(), "accounts": []}
    said = []
    for flags in ({"flow": "device"}, {"enterprise_url": "https://x.example"}, {"token_stdin": True}):
        args = SimpleNamespace(provider=provider.name, flow=None, enterprise_url=None, token_stdin=False, account=None)
        vars(args).update(flags)
        try:
            _check_options(args, described)  # type: ignore[arg-type]
        except BrokerError as exc:
            said += [exc.message, exc.hint]
    try:
        _secret(SimpleNamespace(provider=provider.name, token_stdin=False), described)  # type: ignore[arg-type]
    except BrokerError as exc:
        said += [exc.message, exc.hint]
    return said


def file_sentences(provider: Provider, home: Path) -> list[str]:
    """A followed file's messages when it is broken, and its CLI's login."""
    said = []
    for spec in files_of(provider, {"HOME": str(home)}):
        spec.path.parent.mkdir(parents=True, exist_ok=True)
        spec.path.write_text('{"cut": ')
        state = FollowedFiles([spec]).read(spec.path)
        assert state.problem is not None
        said += [spec.cli, spec.login_hint, state.problem.message, state.problem.hint]
    return said


def sentences(provider: Provider, home: Path, credentials: CredentialSet) -> list[str]:
    said = list(strings(provider.describe()))
    said += [provider.login_hint(), provider.login_hint("work"), *provider.login_options()]
    for request in (LoginRequest(flow="device"), LoginRequest(enterprise_url="https://x"), LoginRequest(secret="k")):
        said += refusal(provider, request)
    said += refusal(provider, LoginRequest())
    for account in (None, "work"):
        error = hints.not_logged_in(provider, account, credentials)
        said += [error.message, error.hint, hints.relogin(provider, account, credentials)]
    said += cli_sentences(provider)
    said += file_sentences(provider, home)
    return [text for text in said if text]


@pytest.fixture
def credentials(tmp_path: Path) -> CredentialSet:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    return CredentialSet(FileStore(state, FileKey(state / "key")))


@pytest.mark.parametrize("name", [p.name for p in registry_for(Path("/nonexistent"))])
def test_every_sentence_about_a_provider_reads_right(name: str, tmp_path: Path, credentials: CredentialSet):
    provider = next(p for p in registry_for(tmp_path) if p.name == name)
    said = sentences(provider, tmp_path / "home", credentials)
    assert len(said) > 8
    problems = [f"{problem} in: {text}" for text in said for problem in slips(text)]
    assert not problems, "\n".join(problems)


def test_the_readme_table_reads_right():
    problems = [problem for line in render_table().splitlines() for problem in slips(line)]
    assert not problems
