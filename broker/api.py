"""Handlers of socket API v1 (see ``broker/openapi.json``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from broker import __version__
from broker.clock import Clock
from broker.credentials import CredentialSet
from broker.errors import BadRequest, BrokerError, NotLoggedIn
from broker.logins import Logins
from broker.metrics import Metrics
from broker.model import Credential, CredentialKey
from broker.refresher import Refresher
from broker.server import read_json
from providers.base import LoginRequest, Provider
from providers.registry import Registry

DEFAULT_MIN_TTL = 60.0
LOGIN_FIELDS = {"account", "flow", "secret", "enterprise_url"}


@dataclass
class Api:
    registry: Callable[[], Registry]
    credentials: CredentialSet
    refresher: Refresher
    logins: Logins
    metrics: Metrics
    clock: Clock
    store_description: Callable[[], str]

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/health", self.health),
            web.get("/v1/token/{provider}", self.token),
            web.get("/v1/providers", self.providers),
            web.post("/v1/login/{provider}", self.login),
            web.post("/v1/login/{provider}/redirect", self.login_redirect),
            web.delete("/v1/credentials/{provider}", self.logout),
            web.post("/v1/refresh/{provider}", self.refresh),
            web.get("/metrics", self.prometheus),
        ]

    async def health(self, request: web.Request) -> web.Response:
        error = self.credentials.load_error
        return web.json_response(
            {
                "status": "degraded" if error else "ok",
                "version": __version__,
                "pid": os.getpid(),
                "store": self.store_description(),
                "store_error": None if error is None else error.to_wire()["error"],
            }
        )

    async def token(self, request: web.Request) -> web.Response:
        min_ttl = _number(request.query.get("min_ttl"), "min_ttl", DEFAULT_MIN_TTL)
        provider, key = self._resolve(request)
        credential = await self.refresher.fresh(key, min_ttl)
        return web.json_response(self._token_body(provider, credential))

    async def providers(self, request: web.Request) -> web.Response:
        registry = self.registry()
        listed = []
        for provider in registry:
            accounts = [self._account_state(c) for c in self.credentials.all() if c.provider == provider.name]
            listed.append({**provider.describe(), "state": _overall(accounts), "accounts": accounts})
        orphans = [c for c in self.credentials.all() if c.provider not in registry]
        for credential in orphans:
            state = self._account_state(credential)
            state.update(state="error", last_error={"code": "unknown_provider", "message": "no longer configured"})
            listed.append({"name": credential.provider, "state": "error", "accounts": [state]})
        error = self.credentials.load_error
        return web.json_response(
            {
                "providers": listed,
                "store": self.store_description(),
                "store_error": None if error is None else error.to_wire()["error"],
            }
        )

    async def login(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["provider"]
        self.registry().get(name)
        body = await read_json(request)
        unknown = set(body) - LOGIN_FIELDS
        if unknown:
            raise BadRequest(
                f"unknown field(s) {', '.join(sorted(unknown))}", f"allowed: {', '.join(sorted(LOGIN_FIELDS))}"
            )
        login = LoginRequest(
            account=_optional_str(body, "account"),
            flow=_optional_str(body, "flow"),
            secret=_optional_str(body, "secret"),
            enterprise_url=_optional_str(body, "enterprise_url"),
        )
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"})
        await response.prepare(request)

        async def emit(event: dict[str, Any]) -> None:
            await response.write(json.dumps(event).encode() + b"\n")

        try:
            credential = await self.logins.run(name, login, emit)
        except BrokerError as exc:
            await emit({"event": "error", **exc.to_wire()["error"]})
        else:
            await emit({"event": "done", "provider": name, "account": credential.account})
        await response.write_eof()
        return response

    async def login_redirect(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        login_id, url = _optional_str(body, "login_id"), _optional_str(body, "url")
        if not login_id or not url:
            raise BadRequest("login_id and url are required")
        self.logins.submit_redirect(login_id, url)
        return web.json_response({"accepted": True})

    async def logout(self, request: web.Request) -> web.Response:
        name = request.match_info["provider"]
        self.registry_or_stored(name)
        accounts = self.credentials.accounts(name)
        if request.query.get("all") in ("1", "true"):
            chosen = accounts
        elif "account" in request.query:
            chosen = [request.query["account"]]
        elif len(accounts) > 1:
            raise BadRequest(f"{name} has several accounts: {', '.join(accounts)}", "pass --account NAME or --all")
        else:
            chosen = accounts
        deleted = []
        for account in chosen:
            if await self.credentials.delete((name, account)):
                self.refresher.forget((name, account))
                deleted.append(account)
        if not deleted:
            raise NotLoggedIn(f"{name}: nothing to log out", f"accounts: {', '.join(accounts) or 'none'}")
        return web.json_response({"provider": name, "deleted": deleted})

    async def refresh(self, request: web.Request) -> web.Response:
        provider, key = self._resolve(request)
        credential = self.credentials.get(key)
        if credential is not None and not provider.can_refresh(credential):
            raise BadRequest(f"{provider.name} tokens do not expire and have nothing to refresh")
        fresh = await self.refresher.refresh_now(key)
        self.refresher.ensure_watched(key)
        return web.json_response(self._account_state(fresh))

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(len(self.credentials.all())), content_type="text/plain")

    def registry_or_stored(self, name: str) -> None:
        """Logging out of a provider removed from the config must still work."""
        if name not in self.registry() and not self.credentials.accounts(name):
            self.registry().get(name)

    def _resolve(self, request: web.Request) -> tuple[Provider, CredentialKey]:
        name = request.match_info["provider"]
        provider = self.registry().get(name)
        account = request.query.get("account")
        if account is None:
            accounts = self.credentials.accounts(name)
            if not accounts:
                raise self.credentials.load_error or NotLoggedIn(f"{name}: not logged in", f"run: broker login {name}")
            account = accounts[0]
        return provider, (name, account)

    def _token_body(self, provider: Provider, credential: Credential) -> dict[str, Any]:
        now = self.clock.now()
        expires_at = credential.expires_at
        return {
            "provider": credential.provider,
            "account": credential.account,
            "access_token": credential.access_token,
            "token_type": credential.token_type,
            "expires_at": None if expires_at is None else int(expires_at),
            "expires_in": None if expires_at is None else max(0, int(expires_at - now)),
            **provider.served(credential),
            "source": credential.source,
        }

    def _account_state(self, credential: Credential) -> dict[str, Any]:
        status = self.refresher.status(credential.key)
        now = self.clock.now()
        state = status.state
        if state == "ready" and credential.remaining(now) <= 0:
            state = "expired"
        error = status.last_error
        return {
            "account": credential.account,
            "state": state,
            "expires_at": None if credential.expires_at is None else int(credential.expires_at),
            "expires_in": None if credential.expires_at is None else int(credential.expires_at - now),
            "next_refresh_at": None if status.next_refresh_at is None else int(status.next_refresh_at),
            "source": credential.source,
            "last_error": None if error is None else error.to_wire()["error"],
        }


def _overall(accounts: list[dict[str, Any]]) -> str:
    return str(accounts[0]["state"]) if accounts else "logged_out"


def _number(raw: str | None, name: str, default: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number of seconds") from None
    if not 0 <= value <= 86400:
        raise BadRequest(f"{name} must be between 0 and 86400")
    return value


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value
