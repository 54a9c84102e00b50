"""The socket API's routes for the proxy's keys: ``broker exec``'s leases and the proxy's own key.

``POST /v1/exec/{provider}`` answers what a ``broker exec`` child should get. With
``via: auto`` (the CLI's default) that is a lease on the auth proxy (``broker.proxy_leases``)
whenever the proxy can serve the provider to that caller, so the child keeps working
for as long as it runs, across token expiry and key rotation, with the provider's
headers added for it; the proxy is started on demand for it, on loopback, when the
config has it off. The token itself goes to the child only when a lease cannot work or
would not help: a provider that needs no credential, Azure (whose SDK builds its own
paths), one the proxy does not serve (its terms, ``callers``), a caller the daemon
cannot watch (no pid, no pidfds), or a caller on another machine or network namespace
(an SSH-forwarded socket), whose loopback is not the daemon's.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from broker.core.errors import BadRequest, BrokerError, Forbidden
from broker.core.machine import machine_id
from broker.daemon.api import DEFAULT_MIN_TTL, Api
from broker.daemon.callers import Peer
from broker.daemon.proxy.keys import rotate_key
from broker.daemon.proxy.leases import supported
from broker.daemon.proxy.relay import AuthProxy
from broker.daemon.server import peer_of, read_json
from broker.providers.base import Provider
from broker.store.base import Store

VIA = ("auto", "proxy", "direct")
EXEC_FIELDS = {"account", "via", "machine"}
MACHINE = machine_id()


@dataclass
class ProxyRoutes:
    api: Api
    proxy: AuthProxy
    store: Store

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/exec/{provider}", self.exec_answer),
            web.get("/v1/proxy-key", self.proxy_key),
            web.post("/v1/proxy-key", self.rotate),
        ]

    async def exec_answer(self, request: web.Request) -> web.Response:
        """A lease on the proxy, shaped like ``/v1/proxy``'s answer, or the token answer itself."""
        body = await read_json(request)
        unknown = set(body) - EXEC_FIELDS
        if unknown:
            raise BadRequest(f"unknown field(s) {', '.join(sorted(unknown))}", f"allowed: {', '.join(EXEC_FIELDS)}")
        account, via, machine = body.get("account"), body.get("via", "auto"), body.get("machine", "")
        if account is not None and not isinstance(account, str):
            raise BadRequest("account must be a string")
        if via not in VIA or not isinstance(machine, str):
            raise BadRequest(f"via must be one of {', '.join(VIA)} and machine a string")
        name, peer = request.match_info["provider"], peer_of(request)
        provider = await self.api.provider(name)
        unleasable = self._unleasable(provider, peer, machine)
        if via == "direct" or (via == "auto" and (unleasable or not _worth_a_lease(provider))):
            provider, credential = await self.api.fresh_token(name, account, DEFAULT_MIN_TTL, peer)
            return web.Response(body=self.api.token_bytes(provider, credential), content_type="application/json")
        if unleasable is not None:
            raise unleasable
        self.api.require_login(provider, account)
        await self.proxy.start()
        assert peer.pid is not None
        try:
            key = self.proxy.leases.grant(peer.pid, provider.name, account)
        except ProcessLookupError:
            raise BadRequest("the asking process is gone") from None
        return web.json_response(self.proxy.client_answer(provider, account, key))

    def _unleasable(self, provider: Provider, peer: Peer, machine: str) -> BrokerError | None:
        """Why a lease cannot serve this caller, or ``None``."""
        try:
            self.proxy.check_allowed(provider)
        except Forbidden as refused:
            return refused
        direct = f"run: broker exec {provider.name} --direct -- COMMAND (the token itself, fresh for now)"
        if not supported() or peer.pid is None:
            return BadRequest("the daemon cannot watch the asking process here (no pidfd)", direct)
        if machine and MACHINE and machine != MACHINE:
            return BadRequest(
                "the caller runs on another machine or network namespace, where the proxy's loopback address "
                "does not lead to this daemon",
                direct,
            )
        return None

    async def proxy_key(self, request: web.Request) -> web.Response:
        """The proxy's own key (``broker proxy-key``)."""
        if self.proxy.key is None:
            raise BadRequest(
                "the auth proxy is off", "start it with: broker serve --proxy-port PORT (or [proxy] port in the config)"
            )
        return web.json_response({"key": self.proxy.key})

    async def rotate(self, request: web.Request) -> web.Response:
        """``broker proxy-key --rotate``: a new key, stored, in force at once; ``broker exec`` leases stay."""
        key = await rotate_key(self.store)
        if self.proxy.key is not None:
            self.proxy.key = key
        return web.json_response({"key": key})


def _worth_a_lease(provider: Provider) -> bool:
    """Whether ``auto`` leases: not for servers without auth (nothing to keep fresh), nor for Azure's
    ``api-key`` providers, whose SDK (``AzureOpenAI``) builds the deployment's path itself from an
    endpoint, which the proxy's per-provider base URL is not."""
    return provider.needs_credential and provider.auth != "api-key"
