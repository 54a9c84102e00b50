"""Runs logins inside the daemon; the CLI only relays the events.

A code-grant login waits for its redirect on a loopback listener; on a machine with
no browser the person pastes the redirected URL into the CLI, which posts it here by
the login's id.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable

from broker.core.errors import BadRequest, StoreError
from broker.core.model import Credential
from broker.daemon.credentials import CredentialSet
from broker.daemon.refresher import Refresher
from broker.flows.errors import FlowError, RedirectError
from broker.flows.pkce import PkceLogin
from broker.providers.base import Emit, LoginContext, LoginRequest, ProviderContext
from broker.providers.registry import Registry
from broker.providers.upstream_errors import to_broker_error

log = logging.getLogger("broker.login")


class Logins:
    def __init__(
        self,
        registry: Callable[[], Registry],
        credentials: CredentialSet,
        refresher: Refresher,
        context: ProviderContext,
    ) -> None:
        self.registry = registry
        self.credentials = credentials
        self.refresher = refresher
        self.context = context
        self._pending: dict[str, PkceLogin] = {}

    async def run(self, provider_name: str, request: LoginRequest, emit: Emit) -> Credential:
        """Run the provider's login to the end and keep the credential."""
        provider = self.registry().get(provider_name)
        mine: list[str] = []

        def register(login: PkceLogin) -> str:
            login_id = secrets.token_urlsafe(16)
            self._pending[login_id] = login
            mine.append(login_id)
            return login_id

        ctx = LoginContext(
            session=self.context.session,
            now=self.context.now,
            sleep=self.context.sleep,
            timeout=self.context.timeout,
            emit=emit,
            register_pkce=register,
        )
        log.info("login started provider=%s", provider_name)
        try:
            credential = await provider.login(ctx, request)
        except FlowError as exc:
            error = to_broker_error(exc, provider_name, "login", provider.login_hint(request.account))
            log.warning("login failed provider=%s code=%s: %s", provider_name, error.code, error.message)
            raise error from None
        except asyncio.CancelledError:
            log.info("login cancelled provider=%s: the client went away (Ctrl-C)", provider_name)
            raise
        finally:
            for login_id in mine:
                self._pending.pop(login_id, None)
        try:
            credential = await self.credentials.login(credential)
        except StoreError:
            self.refresher.watch(credential.key)
            raise
        self.refresher.watch(credential.key)
        log.info("login done provider=%s account=%s", provider_name, credential.account)
        return credential

    def submit_redirect(self, login_id: str, url: str) -> None:
        """A pasted redirect URL for a pending code-grant login."""
        login = self._pending.get(login_id)
        if login is None:
            raise BadRequest("no login in progress with that id", "start the login again with broker login")
        try:
            login.submit_redirect(url)
        except RedirectError as exc:
            raise BadRequest(str(exc), "paste the whole address the browser was sent to") from None
