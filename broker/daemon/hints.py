"""Hints that name a command which works for that provider and that account.

A hint is what a person acts on, so it must never lead in a circle: a login a CLI owns
(Claude Code's file, ``codex-cli``) is fixed by that CLI's own login, not by ``broker
login``; a login of another account than the default names it with ``--account``; an
account that does not exist is answered with the ones that do. ``tests/test_hints.py``
follows each error code's hint and runs the command it names.
"""

from __future__ import annotations

from broker.core.errors import NotLoggedIn
from broker.daemon.credentials import CredentialSet
from broker.providers.base import Provider


def relogin(provider: Provider, account: str | None, credentials: CredentialSet) -> str:
    """How to sign ``account`` (else the provider) in again."""
    if account is not None:
        state = credentials.followed.state_of((provider.name, account))
        if state is not None:
            return state.spec.login_hint
        if account == credentials.default_account(provider.name, provider.follow.prefer == "file"):
            account = None
    return provider.login_hint(account)


def not_logged_in(provider: Provider, account: str | None, credentials: CredentialSet) -> NotLoggedIn:
    """No credential for ``account`` (or none at all): the accounts there are, and how to add this one."""
    name = provider.name
    held = credentials.accounts(name, provider.follow.prefer == "file")
    if account is None:
        for state in credentials.followed.states.values():  # a followed file is the reason: say what is wrong
            if state.spec.provider == name and state.problem is not None:
                return NotLoggedIn(f"{name}: not logged in; {state.problem.message}", state.problem.hint)
        return NotLoggedIn(f"{name}: not logged in", provider.login_hint())
    if not held:
        return NotLoggedIn(f"{name}: no login for account {account!r}", provider.login_hint(account))
    login = provider.login_hint(account)
    login = f"; to sign in as {account}, {login}" if login.startswith("run: broker login") else f"; {login}"
    return NotLoggedIn(
        f"{name}: no login for account {account!r}",
        f"{name}'s accounts: {', '.join(held)} (pass one with --account){login}",
    )
