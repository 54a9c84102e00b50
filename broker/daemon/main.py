"""Wires the parts into one daemon: store, credentials, refresher, logins, server.

Its life: ``start`` (systemd hears READY=1 / STATUS=), ``reload`` (SIGHUP, see
``broker.daemon.process``), ``stop`` (STOPPING=1). An edited config file is reloaded
without SIGHUP: the file is watched, and a request naming a provider the daemon does
not know first catches up with the file as it is now.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import aiohttp
from aiohttp import web

from broker.core import paths
from broker.core.clock import Clock, SystemClock
from broker.core.config import Settings, load_settings
from broker.core.errors import ConfigError, StoreError
from broker.core.model import CredentialKey
from broker.daemon.api import Api
from broker.daemon.audit import FILE_NAME as AUDIT_FILE
from broker.daemon.audit import AuditTrail
from broker.daemon.credentials import CredentialSet
from broker.daemon.inflight import InFlight
from broker.daemon.journal import SECRET_NAME as JOURNAL_SECRET
from broker.daemon.journal import Journal
from broker.daemon.logins import Logins
from broker.daemon.metrics import Metrics
from broker.daemon.proxy.keys import load_or_create_key
from broker.daemon.proxy.relay import AuthProxy
from broker.daemon.proxy_api import ProxyRoutes
from broker.daemon.refresher import Refresher
from broker.daemon.sdnotify import notify, systemd_socket
from broker.daemon.server import MAX_REQUEST_BYTES, bind_unix_socket, guarded_routes
from broker.flows.http import new_session
from broker.followed.catalog import followed_files
from broker.followed.files import FollowedFiles
from broker.followed.format import FollowedFile
from broker.followed.watcher import Watcher
from broker.providers.base import ProviderContext
from broker.providers.registry import Registry, build_registry
from broker.store.base import Store
from broker.store.select import open_store

log = logging.getLogger("broker.daemon")

SHUTDOWN_TIMEOUT = 0.6
"""aiohttp waits this long twice on stop: for handlers to finish, then for cancelled ones.

An in-flight request gets up to 1.2 s; with the interpreter's exit, SIGTERM-to-exit stays under 2 s.
"""


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        store: Store | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.store = store
        self._registry: Registry = build_registry(settings.root.section("providers"))
        self.env = os.environ if env is None else env
        self._watcher: Watcher | None = None
        self._runner: web.AppRunner | None = None
        self.proxy: AuthProxy | None = None
        self._session: aiohttp.ClientSession | None = None
        self._stopped = asyncio.Event()
        self.socket_path: Path | None = None
        self._reloading: asyncio.Task[None] | None = None
        self.config_error: ConfigError | None = None
        """Why the config file as it is now was refused; the daemon serves the one it read before."""
        self._config_seen = _identity(self.config_file)
        self._config_watcher: Watcher | None = None

    def registry(self) -> Registry:
        return self._registry

    @property
    def config_file(self) -> Path:
        """The file the config comes from, whether it exists yet or not."""
        return Path(paths.config_path(self.env)[0])

    async def start(self, sock: socket.socket | None = None) -> None:
        try:
            await self._start(sock)
        except BaseException:
            await self._close_servers()  # a refused start (socket in use) leaves no session or thread behind
            await self._release()
            raise

    async def _start(self, sock: socket.socket | None) -> None:
        if self.store is None:
            self.store = await asyncio.to_thread(open_store, self.settings.store_backend, self.settings.state_dir)
        self.credentials = CredentialSet(self.store, FollowedFiles(self._followed_files()))
        await self.credentials.load()
        self._session = new_session()
        context = ProviderContext(
            session=self._session, now=self.clock.now, sleep=self.clock.sleep, timeout=self.settings.http_timeout
        )
        self.metrics = Metrics()
        self.audit = AuditTrail(self.settings.state_dir / AUDIT_FILE, self.clock)
        self.refresher = Refresher(
            self.credentials,
            self.registry,
            context,
            self.clock,
            margin=self.settings.refresh_margin,
            metrics=self.metrics,
            inflight=InFlight(self.settings.state_dir),
            journals=await self._journals(),
            audit=self.audit,
        )
        self.logins = Logins(self.registry, self.credentials, self.refresher, context)
        store = self.store
        api = Api(
            self.registry,
            self.credentials,
            self.refresher,
            self.logins,
            self.metrics,
            self.clock,
            store.describe,
            audit=self.audit,
            config_catch_up=self.catch_up,
            config_state=lambda: (self.settings.config_path or self.config_file, self.config_error),
        )
        self.proxy = api.proxy = await self._proxy(api)
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.add_routes(guarded_routes([*api.routes(), *ProxyRoutes(api, self.proxy, store).routes()]))
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await self._runner.setup()
        if self.proxy.key is not None:
            await self.proxy.start()
        if sock is None:
            sock = systemd_socket()
        if sock is None:
            self.socket_path = self.settings.socket_path
            sock = bind_unix_socket(self.socket_path)
        await self._check_cut_short()  # before any client or timer could redeem a token the last run spent
        site = web.SockSite(self._runner, sock, backlog=socket.SOMAXCONN)  # aiohttp listens again: 128 by default
        await site.start()
        self.refresher.watch_all()
        self._start_watcher()
        self._config_watcher = Watcher([self.config_file], self._config_changed)
        self._config_watcher.start()
        count = len(self.credentials.all())
        log.info("ready socket=%s store=%s credentials=%d", self.socket_path or "systemd", store.name, count)
        notify("READY=1", f"STATUS=serving {count} credential(s), store: {store.name}")

    async def _journals(self) -> Callable[[CredentialKey], Journal] | None:
        """Each credential's refresh journal, sealed with a key kept in the store; none without a store."""
        store, state_dir = self.store, self.settings.state_dir
        if store is None or self.credentials.load_error is not None:
            return None
        try:
            key = await asyncio.to_thread(_journal_key, store)
        except StoreError as exc:
            log.warning("refreshes go out unjournaled: %s", exc.message)
            return None
        return lambda credential: Journal.of(state_dir, key, credential)

    async def _check_cut_short(self) -> None:
        """Before READY: the logins whose refresh the last run left unfinished are checked, once."""
        inflight = self.refresher.inflight
        assert inflight is not None
        left = await asyncio.to_thread(inflight.left_over)
        if left:
            await self.refresher.check_cut_short(left)
            await asyncio.to_thread(inflight.forget_left_over)

    async def _proxy(self, api: Api) -> AuthProxy:
        """The auth proxy: on, with its key from the store, when ``--proxy-port`` or ``[proxy] port`` asks for it.

        Otherwise it has no key of its own and listens, on loopback only, from the first ``broker exec`` lease on.
        """
        settings, store = self.settings, self.store
        assert store is not None
        configured = settings.proxy_port is not None
        return AuthProxy(
            api.fresh_token,
            api.held_token,
            self.registry,
            await load_or_create_key(store) if configured else None,
            host=settings.proxy_host,
            port=settings.proxy_port or 0,
            extra_addresses=settings.proxy_extra_addresses if configured else (),
            header_timeout=settings.proxy_header_timeout,
            metrics=self.metrics.proxy,
        )

    def _followed_files(self) -> list[FollowedFile]:
        return followed_files(self._registry, self.env)

    def _start_watcher(self) -> None:
        self._watcher = Watcher(self.credentials.followed.states, self._file_changed)
        self._watcher.start()

    async def _file_changed(self, path: Path) -> None:
        """A followed file changed on disk: serve what it holds now, and plan its refresh."""
        state, changed = await self.credentials.reread(path)
        key = (state.spec.provider, state.spec.account)
        if state.problem is not None:
            log.warning("followed file unusable provider=%s: %s", key[0], state.problem.message)
        if changed:
            if state.credential is None:
                self.refresher.forget(key)
            else:
                self.refresher.watch(key)

    async def _config_changed(self, path: Path) -> None:
        await self.catch_up()

    async def catch_up(self) -> None:
        """Reload when the config file is not the one last read, and wait for it to take effect."""
        if _identity(self.config_file) != self._config_seen:
            self.reload()
        if self._reloading is not None:
            await asyncio.wait([self._reloading])  # its failure is logged; the caller only waits

    async def stop(self) -> None:
        notify("STOPPING=1")
        log.info("stopping")
        await self._close_servers()
        await self._release()
        if self.socket_path is not None:
            self.socket_path.unlink(missing_ok=True)
        self._stopped.set()

    async def _close_servers(self) -> None:
        servers = [self._runner.cleanup()] if self._runner is not None else []
        if self.proxy is not None:
            servers.append(self.proxy.stop())
        await asyncio.gather(*servers)  # in-flight requests of both finish in the same window

    async def _release(self) -> None:
        """Watchers, reloads, timers, the audit trail and the HTTP session: what runs beside the servers."""
        await asyncio.gather(*(w.stop() for w in (self._watcher, self._config_watcher) if w is not None))
        if self._reloading is not None:
            self._reloading.cancel()
            await asyncio.gather(self._reloading, return_exceptions=True)
        if hasattr(self, "refresher"):
            await self.refresher.close()
        if hasattr(self, "audit"):
            await self.audit.flush()
        if self._session is not None:
            await self._session.close()

    def reload(self) -> asyncio.Task[None] | None:
        """SIGHUP: re-read the config; a bad file keeps the old one running.

        Returns the task that finishes the reload (the followed files), ``None`` if the config was refused.
        """
        notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        self._config_seen = _identity(self.config_file)
        try:
            settings = load_settings(self.env)
            registry = build_registry(settings.root.section("providers"))
        except ConfigError as exc:
            self.config_error = exc
            log.error("reload failed, keeping the old config: %s", exc)
            notify("READY=1", f"STATUS=config reload failed, still serving the old one: {exc}")
            return None
        self.config_error = None
        self.settings, self._registry = settings, registry
        self.refresher.margin = settings.refresh_margin
        self.refresher.context.timeout = settings.http_timeout  # logins share this context
        previous = self._reloading
        self._reloading = asyncio.get_running_loop().create_task(self._refollow(previous), name="reload followed files")
        return self._reloading

    async def _refollow(self, previous: asyncio.Task[None] | None = None) -> None:
        """The followed CLI files the new config names: new ones read and watched, dropped ones let go.

        One reload at a time: a watcher's and a SIGHUP's may come together.
        """
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        specs = self._followed_files()
        before = set(self.credentials.followed.states)
        for key in await self.credentials.refollow(specs):
            self.refresher.forget(key)
        if set(self.credentials.followed.states) != before and self._watcher is not None:
            await self._watcher.stop()
            self._start_watcher()
        for path in list(self.credentials.followed.states):
            await self._file_changed(path)  # new files read; a change the old watcher dropped is seen
        for credential in self.credentials.all():
            self.refresher.ensure_watched(credential.key)
        count = len(self.credentials.all())
        log.info("config reloaded providers=%d followed_files=%d", len(list(self._registry)), len(specs))
        notify("READY=1", f"STATUS=serving {count} credential(s), config reloaded")


def _identity(path: Path) -> tuple[int, int, int] | None:
    """What tells one version of a file from another without reading it; ``None``: no file."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _journal_key(store: Store) -> bytes:
    encoded = store.get_secret(JOURNAL_SECRET)
    if encoded is None:
        encoded = base64.b64encode(secrets.token_bytes(32)).decode()
        store.set_secret(JOURNAL_SECRET, encoded)
    return base64.b64decode(encoded)
