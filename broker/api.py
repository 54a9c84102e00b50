"""Handlers of socket API v1 (see ``broker/openapi.json``)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from broker import __version__
from broker.audit import AuditTrail
from broker.caller_policy import allows, refusal, restricted
from broker.callers import Peer
from broker.clock import Clock
from broker.credentials import CredentialSet
from broker.errors import BadRequest, BrokerError, NotLoggedIn, UnknownProvider
from broker.log_throttle import Throttle
from broker.logins import Logins
from broker.metrics import Metrics
from broker.model import Credential, CredentialKey
from broker.proxy import AuthProxy
from broker.refresher import WAIT_LIMIT, Refresher
from broker.server import peer_of, read_json
from providers.base import LoginRequest, Provider
from providers.registry import Registry

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
    _refusals: Throttle = field(default_factory=Throttle)
    _encoded: dict[CredentialKey, tuple[Credential, Provider, int | None, bytes]] = field(default_factory=dict)

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
            }
        )

    async def token(self, request: web.Request) -> web.Response:
        min_ttl, account = DEFAULT_MIN_TTL, None
        if "?" in request.raw_path:  # most clients send none: parsing an empty query costs aiohttp a MultiDict
            query = request.query
            min_ttl = _number(query.get("min_ttl"), "min_ttl", DEFAULT_MIN_TTL)
            account = query.get("account")
        name = request.match_info["provider"]
        provider, credential = await self.fresh_token(name, account, min_ttl, peer_of(request))
        body = self._token_bytes(provider, credential)
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    async def fresh_token(
        self, name: str, account: str | None, min_ttl: float, peer: Peer
    ) -> tuple[Provider, Credential]:
        """What ``/v1/token`` and the proxy serve to ``peer``, if its ``callers`` let it; audited."""
        provider = self.registry().get(name)
        if restricted(provider.callers):
            self._check_caller(provider, peer)
        if not provider.needs_credential:
            return provider, provider.keyless_credential()
        credential = await self.refresher.fresh(self.key_of(provider, account), min_ttl)
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
        provider = self.registry().get(request.match_info["provider"])
        if self.proxy is None:
            raise BadRequest(
                "the auth proxy is off", "start it with: broker serve --proxy-port PORT (or [proxy] port in the config)"
            )
        account = request.query.get("account")
        answer = self.proxy.client_answer(provider, account)
        if provider.needs_credential:
            key = self.key_of(provider, account)  # not logged in: say so now, not at the tool's first request
            if self.credentials.get(key) is None:
                raise NotLoggedIn(
                    f"{provider.name}: no login for account {account!r}", f"run: broker login {provider.name}"
                )
        return web.json_response(answer)

    async def providers(self, request: web.Request) -> web.Response:
        registry = self.registry()
        probed = await self._probe(registry)
        listed = []
        for provider in registry:
            order = self.credentials.accounts(provider.name, provider.follow.prefer == "file")
            held = [self.credentials.get((provider.name, account)) for account in order]
            accounts = [self._account_state(credential) for credential in held if credential is not None]
            files = self._files_of(provider.name)
            overall = probed.get(provider.name) or _overall(accounts)
            if overall == "logged_out" and any(f["state"] == "error" for f in files):
                overall = "error"
            listed.append({**provider.describe(), "state": overall, "accounts": accounts, "files": files})
        orphans = [c for c in self.credentials.all() if c.provider not in registry]
        for credential in orphans:
            state = self._account_state(credential)
            state.update(state="error", last_error=UnknownProvider("no longer configured").to_wire()["error"])
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
        except Exception:
            # The stream has started: the error must be an event, not a second response.
            log.exception("login crashed provider=%s", name)
            await emit({"event": "error", **BrokerError("internal error", "see the daemon's log").to_wire()["error"]})
        else:
            await emit({"event": "done", "provider": name, "account": credential.account, **self._lasting(credential)})
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
                self._encoded.pop((name, account), None)
                deleted.append(account)
        if not deleted:
            raise NotLoggedIn(f"{name}: nothing to log out", f"accounts: {', '.join(accounts) or 'none'}")
        return web.json_response({"provider": name, "deleted": deleted})

    async def refresh(self, request: web.Request) -> web.Response:
        provider, key = self._resolve(request)
        credential = self.credentials.get(key)
        if credential is None:
            raise NotLoggedIn(f"{key[0]}: no login for account {key[1]!r}", f"run: broker login {key[0]}")
        if not provider.can_refresh(credential):
            raise BadRequest(f"{provider.name} tokens do not expire and have nothing to refresh")
        fresh = await self.refresher.refresh_now(key, WAIT_LIMIT, asked=True)
        self.refresher.ensure_watched(key)
        return web.json_response(self._account_state(fresh))

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(len(self.credentials.all())), content_type="text/plain")

    def registry_or_stored(self, name: str) -> None:
        """Logging out of a provider removed from the config must still work."""
        if name not in self.registry() and not self.credentials.accounts(name):
            self.registry().get(name)

    def _resolve(self, request: web.Request) -> tuple[Provider, CredentialKey]:
        return self.resolve(request.match_info["provider"], request.query.get("account"))

    def resolve(self, name: str, account: str | None) -> tuple[Provider, CredentialKey]:
        """The provider and the key of the asked account, else of the default one."""
        provider = self.registry().get(name)
        return provider, self.key_of(provider, account)

    def key_of(self, provider: Provider, account: str | None) -> CredentialKey:
        if account is None:
            account = self.credentials.default_account(provider.name, provider.follow.prefer == "file")
            if account is None:
                raise self.credentials.load_error or self._not_logged_in(provider.name)
        return provider.name, account

    async def _probe(self, registry: Registry) -> dict[str, str]:
        """States servers report themselves (local servers: ``ready``/``unreachable``), asked at once."""
        providers = [p for p in registry if not p.needs_credential]
        states = await asyncio.gather(*(p.probe(self.refresher.context) for p in providers))
        return {p.name: state for p, state in zip(providers, states, strict=True) if state}

    def _not_logged_in(self, name: str) -> NotLoggedIn:
        """No credential: say why when a followed file is the reason."""
        for state in self.credentials.followed.states.values():
            if state.spec.provider == name and state.problem is not None:
                return NotLoggedIn(f"{name}: not logged in; {state.problem.message}", state.problem.hint)
        return NotLoggedIn(f"{name}: not logged in", f"run: broker login {name}")

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

    def _token_bytes(self, provider: Provider, credential: Credential) -> bytes:
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

    def _lasting(self, credential: Credential) -> dict[str, Any]:
        """How long a login lasts: its expiry, and whether broker can renew it by itself."""
        expires_at = credential.expires_at
        return {
            "expires_at": None if expires_at is None else int(expires_at),
            "expires_in": None if expires_at is None else int(expires_at - self.clock.now()),
            "refreshable": credential.provider in self.registry() and self.refresher.refreshable(credential.key),
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
            **self._lasting(credential),
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
