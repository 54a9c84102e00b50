"""README's provider table, generated from the registry: ``python -m broker.cli.readme [--check]``.

The table sits between ``<!-- providers:start -->`` and ``<!-- providers:end -->``;
``tests/test_readme_providers.py`` fails when it differs from what the registry says,
so a provider cannot be added or changed without the README following.
"""

from __future__ import annotations

import sys
from pathlib import Path

from broker.core.config import ConfigSource, Section
from broker.providers.base import Provider
from broker.providers.registry import CONFIG_TYPES, build_registry

START, END = "<!-- providers:start -->", "<!-- providers:end -->"
README = Path(__file__).resolve().parents[2] / "README.md"
HEADER = (
    "| provider | what | how it logs in | API style | auth | default base URL |\n| --- | --- | --- | --- | --- | --- |"
)
FLOWS = {
    "device": "device code",
    "pkce": "browser (PKCE)",
    "pat": "personal access token",
    "apikey": "API key (hidden prompt or `--key-stdin`)",
    "file": "follows its CLI's login file",
}
AUTH = {
    "bearer": "`Authorization: Bearer`",
    "x-api-key": "`x-api-key`",
    "api-key": "`api-key` header, `api-version` query",
    "none": "none",
}
CONFIG_ROWS = {
    "oauth": ("any OAuth 2.0 server", "`flow`: device code or browser (PKCE)", "from `api`", "`Authorization: Bearer`"),
    "apikey": (
        "any OpenAI- or Anthropic-compatible endpoint",
        "API key (hidden prompt or `--key-stdin`)",
        "`api`: `openai-chat` or `anthropic`",
        "`auth_header`: `bearer`, `x-api-key` or `api-key`",
    ),
}
"""Rows for ``[providers.NAME] type = ...`` entries, which the registry holds only as factories."""


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def provider_row(provider: Provider) -> str:
    described = provider.describe()
    flows = [FLOWS.get(flow, flow) for flow in described.get("flows") or []]
    login = " or ".join(flows) if flows else "none (local server)"
    base_url = described.get("base_url")
    auth = AUTH.get(str(described.get("auth")), str(described.get("auth")))
    headers = described.get("headers")
    if isinstance(headers, dict) and headers:
        auth += " + " + ", ".join(f"`{name}`" for name in headers)
    cells = [
        f"`{provider.name}`",
        described.get("description") or "",
        login,
        f"`{described.get('api')}`",
        auth,
        f"`{base_url}`" if base_url else ("from the config" if described.get("setup") else "from the login"),
    ]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def render_table() -> str:
    """The whole table: every built-in provider, then one row per config type."""
    empty = Section((), {}, ConfigSource(None, ""))
    rows = [provider_row(provider) for provider in build_registry(empty)]
    for kind in CONFIG_TYPES:
        what, login, api, auth = CONFIG_ROWS.get(kind, (f"`type = {kind}` entries", "see below", "", ""))
        rows.append(
            f'| any `[providers.NAME]` with `type = "{kind}"` | {what} | {login} | {api} | {auth} | `base_url` |'
        )
    return "\n".join([HEADER, *rows])


def replace_table(text: str, table: str) -> str:
    """``text`` with the part between the markers replaced by ``table``."""
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"README.md lacks the {START} / {END} markers")
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str]) -> int:
    text = README.read_text()
    updated = replace_table(text, render_table())
    if "--check" in argv:
        if updated != text:
            print("README.md's provider table is stale: run python -m broker.cli.readme", file=sys.stderr)
            return 1
        return 0
    if updated != text:
        README.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
