"""What the built-in providers share: what they are is class data, what the config may change are fields.

A built-in is only ever made by ``from_config``, from its ``table``: the table says which
``[providers.NAME]`` keys it takes and their defaults, so a fact the config may change is
declared once, there. Facts no config changes (the API, the flows, the service's terms)
are class attributes, declared once, in the class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Self

from broker.providers.base import LoginContext, LoginRequest, Provider
from broker.providers.table import Table
from broker.providers.wire import Wire

from broker.core.config import Section
from broker.core.errors import BadRequest
from broker.core.model import Credential


@dataclass(kw_only=True)
class Builtin(Provider):
    """A provider broker knows by name, made from its ``table`` and its own keys."""

    table: ClassVar[Table]
    name: str
    proxy: str | None

    @classmethod
    def from_config(cls, name: str, section: Section) -> Self:
        return cls(name=name, **cls.table.read(section), **cls.own_fields(section))

    @classmethod
    def own_fields(cls, section: Section) -> dict[str, Any]:
        """The fields the provider's own keys (``table.own``) set; none by default."""
        return {}


@dataclass(frozen=True)
class OwnCli:
    """The CLI a service's terms allow its login in, and nowhere else (Claude Code, Gemini CLI)."""

    program: str
    """Its process name: the provider's default ``callers`` (what it starts, like Claude Code's apiKeyHelper, too)."""
    file: str
    """Where it keeps the login, which broker follows."""
    terms: str
    """The service's rule, in a sentence (``terms``), with what other tools can use instead, if anything."""


@dataclass(kw_only=True)
class OwnCliLogin(Builtin):
    """A login made in its own CLI, which broker keeps fresh for that CLI, follows in its file and never proxies."""

    cli: ClassVar[OwnCli]
    flows = ("file",)
    proxy_allowed = False
    base_url: str | None
    description: str
    endpoints: dict[str, str]
    wire: Wire

    def __post_init__(self) -> None:
        self.callers = (self.cli.program,)
        self.terms = self.cli.terms

    async def login(self, ctx: LoginContext, request: LoginRequest) -> Credential:
        raise BadRequest(
            f"{self.cli.terms}: sign in there; broker then keeps that login fresh",
            f"{self.login_hint()}; broker follows {self.cli.file} by itself",
        )

    def can_refresh(self, credential: Credential) -> bool:
        return bool(credential.refresh_token)

    def describe(self) -> dict[str, Any]:
        note = f"{self.cli.terms}: broker keeps it fresh there and the proxy does not serve it"
        return {**super().describe(), "endpoints": dict(self.endpoints), "note": note}
