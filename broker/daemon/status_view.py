"""What ``/v1/providers`` says of each provider, account and followed file (``broker status``, ``broker providers``).

The shape is the socket API's (``broker/openapi.json``). An account's state adds
``expired`` to the refresher's states, and ``fix`` says what a person runs when the
account needs them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from broker.core.clock import Clock
from broker.core.errors import BrokerError, UnknownProvider
from broker.core.model import Credential
from broker.daemon import hints
from broker.daemon.credentials import CredentialSet
from broker.daemon.refresher import Refresher
from broker.providers.base import Provider
from broker.providers.registry import Registry


@dataclass
class StatusView:
    registry: Callable[[], Registry]
    credentials: CredentialSet
    refresher: Refresher
    clock: Clock

    async def providers(self, probe: bool) -> list[dict[str, Any]]:
        """Every provider with its accounts and followed files, then stored logins no provider claims."""
        registry = self.registry()
        probed = await self._probe(registry) if probe else {}
        listed = []
        for provider in registry:
            order = self.credentials.accounts(provider.name, provider.follow.prefer == "file")
            held = [self.credentials.get((provider.name, account)) for account in order]
            accounts = [self.account_state(credential, provider) for credential in held if credential is not None]
            files = self._files_of(provider.name)
            overall = probed.get(provider.name) or _overall(accounts)
            if overall == "logged_out" and any(f["state"] == "error" for f in files):
                overall = "error"
            listed.append(
                {
                    **provider.describe(),
                    "state": overall,
                    "default_account": order[0] if order else None,
                    "accounts": accounts,
                    "files": files,
                }
            )
        orphans = [c for c in self.credentials.all() if c.provider not in registry]
        for credential in orphans:
            state = self.account_state(credential)
            gone = UnknownProvider(
                f"{credential.provider} is no longer in the config",
                f"run: broker logout {credential.provider} --account {credential.account}",
            )
            state.update(state="error", last_error=gone.to_wire()["error"], fix=gone.hint)
            listed.append({"name": credential.provider, "state": "error", "default_account": None, "accounts": [state]})
        return listed

    def account_state(self, credential: Credential, provider: Provider | None = None) -> dict[str, Any]:
        status = self.refresher.status(credential.key)
        now = self.clock.now()
        state = status.state
        if state == "ready" and credential.remaining(now) <= 0:
            state = "expired"
        error = status.last_error
        default = provider is not None and credential.account == self.credentials.default_account(
            provider.name, provider.follow.prefer == "file"
        )
        return {
            "account": credential.account,
            "default": default,
            "state": state,
            **self.lasting(credential),
            "next_refresh_at": None if status.next_refresh_at is None else int(status.next_refresh_at),
            "source": credential.source,
            "last_error": wire(error),
            "fix": self._fix(credential, provider, state, error),
        }

    def lasting(self, credential: Credential) -> dict[str, Any]:
        """How long a login lasts: its expiry, and whether broker can renew it by itself."""
        expires_at = credential.expires_at
        return {
            "expires_at": None if expires_at is None else int(expires_at),
            "expires_in": None if expires_at is None else int(expires_at - self.clock.now()),
            "refreshable": credential.provider in self.registry() and self.refresher.refreshable(credential.key),
        }

    async def _probe(self, registry: Registry) -> dict[str, str]:
        """States servers report themselves (local servers: ``ready``/``unreachable``), asked at once."""
        providers = [p for p in registry if not p.needs_credential]
        states = await asyncio.gather(*(p.probe(self.refresher.context) for p in providers))
        return {p.name: state for p, state in zip(providers, states, strict=True) if state}

    def _files_of(self, name: str) -> list[dict[str, Any]]:
        """The CLI files a provider follows, each with what broker found there."""
        files = []
        for state in self.credentials.followed.states.values():
            if state.spec.provider != name:
                continue
            problem = state.problem
            files.append(
                {
                    "path": str(state.spec.path),
                    "cli": state.spec.cli,
                    "mode": state.spec.mode,
                    "account": state.spec.account,
                    "state": "error" if problem else ("ok" if state.credential else "missing"),
                    "error": None if problem is None else {"message": problem.message, "hint": problem.hint},
                }
            )
        return files

    def _fix(
        self, credential: Credential, provider: Provider | None, state: str, error: BrokerError | None
    ) -> str | None:
        """What the person runs when this account needs them; ``None`` when it does not."""
        if state in ("ready", "refreshing"):
            return None
        if error is not None and error.hint:
            return error.hint
        if provider is None:
            return None
        return hints.relogin(provider, credential.account, self.credentials)


def wire(error: BrokerError | None) -> dict[str, Any] | None:
    return None if error is None else error.to_wire()["error"]


def _overall(accounts: list[dict[str, Any]]) -> str:
    return str(accounts[0]["state"]) if accounts else "logged_out"
