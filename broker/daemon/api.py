"""Handlers of socket API v1 (see ``broker/openapi.json``)."""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from broker import __version__
from broker.core.clock import Clock
from broker.core.errors import BadRequest, BrokerError, ConfigError, NotLoggedIn, StoreError, UnknownProvider
from broker.core.model import Credential, CredentialKey
from broker.daemon import hints
from broker.daemon.audit import AuditTrail
from broker.daemon.caller_policy import allows, refusal, restricted
from broker.daemon.callers import Peer
from broker.daemon.credentials import CredentialSet
from broker.daemon.log_throttle import Throttle
from broker.daemon.logins import Logins
from broker.daemon.metrics import Metrics
from broker.daemon.refresher import WAIT_LIMIT, Refresher
from broker.daemon.server import peer_of, read_json
from broker.daemon.status_view import StatusView, wire
from broker.providers.base import LoginRequest, Provider
from broker.providers.registry import Registry

if TYPE_CHECKING:
    from broker.daemon.proxy.relay import AuthProxy

log = logging.getLogger("broker.api")

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
    proxy: AuthProxy | None = None
    """The auth-injecting local proxy, when it runs."""
    audit: AuditTrail | None = None
    config_catch_up: Callable[[], Awaitable[None]] | None = None
    """Reloads the config when its file changed since it was read (the daemon's ``catch_up``)."""
    config_state: Callable[[], tuple[Path | None, ConfigError | None]] = lambda: (None, None)
    """The config file the daemon reads, and why its current text was refused (``None``: it was not)."""
    _refusals: Throttle = field(default_factory=Throttle)
    _encoded: dict[CredentialKey, tuple[Credential, Provider, int | None, bytes]] = field(default_factory=dict)

    @functools.cached_property
    def view(self) -> StatusView:
        """How ``/v1/providers`` and the refresh and login answers describe accounts."""
        return StatusView(self.registry, self.credentials, self.refresher, self.clock)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/health", self.health),
            web.get("/v1/token/{provider}", self.token),
            web.get("/v1/providers", self.providers),
            web.post("/v1/login/{provider}", self.login),
            web.post("/v1/login/{provider}/redirect", self.login_redirect),
            web.delete("/v1/credentials/{provider}", self.logout),
            web.post("/v1/refresh/{provider}", self.refresh),
            web.get("/v1/proxy/{provider}", self.proxy_client),
            web.get("/v1/audit", self.audit_entries),
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
                **self._config_fields(),
                "time": time.time(),
            }
        )

    def _config_fields(self) -> dict[str, Any]:
        path, error = self.config_state()
        return {"config": None if path is None else str(path), "config_error": wire(error)}

    async def provider(self, name: str) -> Provider:
        """The provider named ``name``; an unknown name first makes the daemon catch up with an edited config."""
        try:
            return self.registry().get(name)
        except UnknownProvider as unknown:
            if self.config_catch_up is not None:
                await self.config_catch_up()
            if name in self.registry():
                return self.registry().get(name)
            path, error = self.config_state()
            if error is not None:
                unknown.hint = (
                    f"the config file does not load, so the daemon still runs its previous one: {error.message}; "
                    "fix it and the daemon reloads it by itself"
                )
            elif path is not None:
                unknown.hint = unknown.hint.replace("to the config", f"to {path}")
            raise

    async def token(self, request: web.Request) -> web.Response:
        min_ttl, account = DEFAULT_MIN_TTL, None
        if "?" in request.raw_path:  # most clients send none: parsing an empty query costs aiohttp a MultiDict
            query = request.query
            min_ttl = _number(query.get("min_ttl"), "min_ttl", DEFAULT_MIN_TTL)
            account = query.get("account")
        name = request.match_info["provider"]
        provider, credential = await self.fresh_token(name, account, min_ttl, peer_of(request))
        body = self.token_bytes(provider, credential)
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    async def fresh_token(
        self, name: str, account: str | None, min_ttl: float, peer: Peer
    ) -> tuple[Provider, Credential]:
        """What ``/v1/token`` and the proxy serve to ``peer``, if its ``callers`` let it; audited."""
        provider = await self.provider(name)
        if restricted(provider.callers):
            self._check_caller(provider, peer)
        if not provider.needs_credential:
            return provider, provider.keyless_credential()
        credential = await self.refresher.fresh(self.key_of(provider, account), min_ttl)
        if self.audit is not None:
            self.audit.handed_out(peer, credential)
        return provider, credential

    def held_token(
        self, name: str, account: str | None, min_ttl: float, peer: Peer
    ) -> tuple[Provider, Credential] | None:
        """``fresh_token`` when nothing needs waiting for or refusing: a known provider without
        ``callers``, and its token in memory with ``min_ttl`` left; else ``None`` (ask ``fresh_token``)."""
        registry = self.registry()
        if name not in registry:
            return None
        provider = registry.get(name)
        if restricted(provider.callers):
            return None
        if not provider.needs_credential:
            return provider, provider.keyless_credential()
        try:
            key = self.key_of(provider, account)
        except BrokerError:
            return None
        credential = self.refresher.held(key, min_ttl)
        if credential is None:
            return None
        if self.audit is not None:
            self.audit.handed_out(peer, credential)
        return provider, credential

    def _check_caller(self, provider: Provider, peer: Peer) -> None:
        callers = provider.callers or ()
        if not allows(callers, peer.caller):
            refused = refusal(provider.name, callers, peer.caller, provider.terms)
            self._refusals.log(log, logging.WARNING, "refused %s: %s", provider.name, refused.message)
            raise refused

    async def audit_entries(self, request: web.Request) -> web.Response:
        """``GET /v1/audit[?provider=&since=&fingerprint=]``: the audit trail's entries, oldest first."""
        if self.audit is None:
            raise BadRequest("this daemon keeps no audit trail")
        query = request.query
        since = query.get("since")
        entries = await self.audit.entries(
            provider=query.get("provider"),
            since=None if since is None else _epoch(since),
            fingerprint=query.get("fingerprint"),
        )
        return web.json_response({"entries": entries})

    async def proxy_client(self, request: web.Request) -> web.Response:
        """The proxy's base URL for a provider and its key, shaped like a token answer."""
        provider = await self.provider(request.match_info["provider"])
        if self.proxy is None or self.proxy.key is None:
            raise BadRequest(
                "the auth proxy is off", "start it with: broker serve --proxy-port PORT (or [proxy] port in the config)"
            )
        account = request.query.get("account")
        answer = self.proxy.client_answer(provider, account)
        self.require_login(provider, account)
        return web.json_response(answer)

    def require_login(self, provider: Provider, account: str | None) -> None:
        """Not logged in: say so now, not at the tool's first request through the proxy."""
        if provider.needs_credential and self.credentials.get(self.key_of(provider, account)) is None:
            raise hints.not_logged_in(provider, account, self.credentials)

    async def providers(self, request: web.Request) -> web.Response:
        """Every provider with its accounts and followed files: ``broker status`` and ``broker providers``."""
        listed = await self.view.providers(probe=request.query.get("probe") != "0")
        return web.json_response(
            {
                "providers": listed,
                "store": self.store_description(),
                "store_error": wire(self.credentials.load_error),
                **self._config_fields(),
            }
        )

    async def login(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["provider"]
        provider = await self.provider(name)
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
        provider.check_login_request(login)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"})
        await response.prepare(request)

        async def emit(event: dict[str, Any]) -> None:
            await response.write(json.dumps(event).encode() + b"\n")

        try:
            credential = await self.logins.run(name, login, emit)
        except BrokerError as exc:
            await emit({"event": "error", **exc.to_wire()["error"]})
        except Exception:
            # The stream has started: the error must be an event, not a second response.
            log.exception("login crashed provider=%s", name)
            await emit({"event": "error", **BrokerError("internal error", "see the daemon's log").to_wire()["error"]})
        else:
            await emit(
                {"event": "done", "provider": name, "account": credential.account, **self.view.lasting(credential)}
            )
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
        await self.registry_or_stored(name)
        accounts = self.credentials.accounts(name)
        if request.query.get("all") in ("1", "true"):
            chosen = accounts
        elif "account" in request.query:
            chosen = [request.query["account"]]
        elif len(accounts) > 1:
            raise BadRequest(
                f"{name} has several accounts: {', '.join(accounts)}",
                f"run: broker logout {name} --account {accounts[0]} (or --all)",
            )
        else:
            chosen = accounts
        deleted = []
        for account in chosen:
            if await self.credentials.delete((name, account)):
                self.refresher.forget((name, account))
                self._encoded.pop((name, account), None)
                deleted.append(account)
        if not deleted:
            raise NotLoggedIn(
                f"{name}: nothing to log out" + (f" as {chosen[0]!r}" if chosen else ""),
                f"{name} has {', '.join(accounts)}: pass one with --account" if accounts else "",
            )
        return web.json_response({"provider": name, "deleted": deleted})

    async def refresh(self, request: web.Request) -> web.Response:
        provider = await self.provider(request.match_info["provider"])
        if not provider.needs_credential:
            raise BadRequest(
                f"{provider.name} is a local server without auth: there is nothing to refresh",
                "run: broker status (it says whether the server answers)",
            )
        key = self.key_of(provider, request.query.get("account"))
        credential = self.credentials.get(key)
        if credential is None:
            raise hints.not_logged_in(provider, key[1], self.credentials)
        if not provider.can_refresh(credential):
            raise BadRequest(
                f"{provider.name}: the {key[1]} credential does not expire: there is nothing to refresh",
                f"run: broker token {provider.name}" + (f" --account {key[1]}" if request.query.get("account") else ""),
            )
        fresh = await self.refresher.refresh_now(key, WAIT_LIMIT, asked=True)
        self.refresher.ensure_watched(key)
        return web.json_response(self.view.account_state(fresh, provider))

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(len(self.credentials.all())), content_type="text/plain")

    async def registry_or_stored(self, name: str) -> None:
        """Logging out of a provider removed from the config must still work."""
        if name not in self.registry() and not self.credentials.accounts(name):
            await self.provider(name)

    def key_of(self, provider: Provider, account: str | None) -> CredentialKey:
        if account is None:
            account = self.credentials.default_account(provider.name, provider.follow.prefer == "file")
            if account is None:
                unreadable = self.credentials.load_error
                if unreadable is None:
                    raise hints.not_logged_in(provider, None, self.credentials)
                login = f" ({provider.login_hint()})" if unreadable.hint.endswith("log in again") else ""
                raise StoreError(unreadable.message, unreadable.hint + login)
        return provider.name, account

    def token_bytes(self, provider: Provider, credential: Credential) -> bytes:
        """The encoded token answer, reused while credential, provider and ``expires_in`` hold.

        Thousands of requests a second ask for the same few credentials; only
        ``expires_in`` moves, once a second, so one encoding serves them all.
        """
        expires_at = credential.expires_at
        expires_in = None if expires_at is None else max(0, int(expires_at - self.clock.now()))
        cached = self._encoded.get(credential.key)
        if cached is not None and cached[0] is credential and cached[1] is provider and cached[2] == expires_in:
            return cached[3]
        body = {
            "provider": credential.provider,
            "account": credential.account,
            "access_token": credential.access_token,
            "token_type": credential.token_type,
            "expires_at": None if expires_at is None else int(expires_at),
            "expires_in": expires_in,
            **provider.served(credential),
            "source": credential.source,
        }
        encoded = json.dumps(body).encode()
        self._encoded[credential.key] = (credential, provider, expires_in, encoded)
        return encoded


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


def _epoch(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise BadRequest("since must be a time in seconds since the epoch") from None


def _optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value
