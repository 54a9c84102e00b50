"""``broker doctor``'s checks: what broker needs, looked at from outside the daemon.

Each check works while the daemon is down (it reads the config, the files and the
keyring itself) and asks the daemon only where one answers. A check ends ``ok``,
``warn`` (worth knowing, nothing broken) or ``fail`` (something does not work), with
the command or edit that fixes it.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from broker import __version__
from broker.cli.service_units import SERVICE_UNIT, SOCKET_UNIT, detect, render_service, user_unit_dir
from broker.client import Client
from broker.core import locations, paths
from broker.core.config import Settings, load_settings
from broker.core.errors import BrokerError, ConfigError, DaemonUnavailable
from broker.followed.catalog import followed_files
from broker.followed.files import FollowedFiles
from broker.providers.registry import Registry, build_registry

CLOCK_SKEW = 5.0
"""Seconds between this machine's clock and the daemon's beyond which expiries disagree (a forwarded socket)."""
START_DAEMON = "run: broker serve   (or: systemctl --user start broker.socket)"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    """``ok``, ``warn`` or ``fail``."""
    detail: str
    fix: str = ""

    def as_json(self) -> dict[str, str]:
        return asdict(self)


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def warn(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, "warn", detail, fix)


def fail(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, "fail", detail, fix)


@dataclass
class Context:
    """What the checks share: the environment, the config as read, and the daemon's answer if any."""

    env: Mapping[str, str]
    socket_path: str
    settings: Settings | None = None
    registry: Registry | None = None
    health: dict[str, Any] | None = None


def run_checks(env: Mapping[str, str], socket_path: str | None = None) -> list[Check]:
    context = Context(env, socket_path or "")
    checks = [_config(context)]
    for check in (_socket, _permissions, _store, _keyring, _followed_files, _proxy, _clock, _unit):
        checks += list(check(context))
    return checks


def _config(context: Context) -> Check:
    env = context.env
    try:
        context.settings = load_settings(env)
        context.registry = build_registry(context.settings.root.section("providers"))
    except ConfigError as exc:
        context.socket_path = context.socket_path or _socket_anyway(env)
        return fail("config", exc.message, exc.hint)
    context.socket_path = context.socket_path or str(context.settings.socket_path)
    path = context.settings.config_path
    count = len(list(context.registry))
    if path is None:
        return ok("config", f"no file ({paths.config_path(env)[0]}): defaults, {count} providers")
    return ok("config", f"{path}: {count} providers")


def _socket_anyway(env: Mapping[str, str]) -> str:
    """The socket a client would use even though the config as a whole is refused."""
    try:
        return locations.socket_path(env)
    except ConfigError:
        return paths.default_socket_path(env)


def _socket(context: Context) -> Iterator[Check]:
    path = Path(context.socket_path)
    directory = path.parent
    try:
        info = directory.stat()
    except OSError:
        yield fail("socket", f"{directory} does not exist: no daemon has run here", START_DAEMON)
        return
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        yield fail(
            "socket",
            f"{directory} is {stat.filemode(info.st_mode)}, owner uid {info.st_uid}: others may reach the socket",
            f"run: chmod 700 {directory}",
        )
    try:
        with Client(path, timeout=3.0) as daemon:
            context.health = daemon.request("GET", "/v1/health")
    except DaemonUnavailable as exc:
        yield fail("daemon", exc.message, START_DAEMON)
        return
    except BrokerError as exc:
        yield fail("daemon", f"{path}: {exc.message}", exc.hint)
        return
    health = context.health
    assert health is not None
    detail = f"broker {health['version']}, pid {health['pid']}, on {path}"
    if health["version"] != __version__:
        yield warn("daemon", f"{detail}; this client is broker {__version__}", "restart the daemon after an upgrade")
    else:
        yield ok("daemon", detail)
    error = health.get("config_error")
    if error:
        yield fail("daemon config", f"the daemon runs its previous config: {error['message']}", error.get("hint", ""))
    elif context.settings is not None and health.get("config") not in (None, str(_config_file(context))):
        yield warn(
            "daemon config",
            f"the daemon reads {health['config']}, this shell {_config_file(context)}",
            "set the same BROKER_CONFIG for both",
        )


def _config_file(context: Context) -> Path:
    assert context.settings is not None
    return context.settings.config_path or Path(paths.config_path(context.env)[0])


def _permissions(context: Context) -> Iterator[Check]:
    if context.settings is None:
        return
    state = context.settings.state_dir
    if not state.exists():
        yield ok("permissions", f"{state} does not exist yet (the daemon makes it, 0700)")
        return
    loose = [(path, mode) for path, mode in _modes(state) if mode & 0o077 and (path == state or path.suffix != ".lock")]
    if loose:
        path, mode = loose[0]
        want = "700" if path.is_dir() else "600"
        yield fail(
            "permissions",
            f"{path} is {stat.filemode(mode)}: others can read what broker keeps there"
            + (f" ({len(loose) - 1} more)" if len(loose) > 1 else ""),
            f"run: chmod -R go-rwx {state}" if len(loose) > 1 else f"run: chmod {want} {path}",
        )
    else:
        yield ok("permissions", f"{state} and everything in it: owner only")


def _modes(directory: Path) -> Iterator[tuple[Path, int]]:
    yield directory, directory.stat().st_mode
    for path in sorted(directory.rglob("*")):
        try:
            yield path, path.lstat().st_mode
        except OSError:
            continue


def _store(context: Context) -> Iterator[Check]:
    if context.health is not None:
        error = context.health.get("store_error")
        if error:
            yield fail("store", error["message"], error.get("hint", ""))
        else:
            yield ok("store", context.health["store"])
        return
    if context.settings is None:
        return
    from broker.store.file_store import FILE_NAME

    backend, state = context.settings.store_backend, context.settings.state_dir
    held = (state / FILE_NAME).exists()
    yield ok("store", f"{backend}" + (f": {state / FILE_NAME} holds credentials" if held else ": nothing stored yet"))


def _keyring(context: Context) -> Iterator[Check]:
    from broker.store.select import viable_keyring

    backend, reason = viable_keyring()
    wanted = context.settings.store_backend if context.settings else "auto"
    if backend is not None:
        yield ok("keyring", reason)
    elif wanted == "keyring":
        yield fail("keyring", f"the keyring store is asked for, but {reason}", "set BROKER_STORE=file, or unlock it")
    else:
        yield ok("keyring", f"none ({reason}): the encrypted file store is used")


def _followed_files(context: Context) -> Iterator[Check]:
    if context.registry is None:
        return
    specs = followed_files(context.registry, context.env)
    files = FollowedFiles(specs)
    found = []
    for spec in specs:
        state = files.read(spec.path)
        if state.problem is not None:
            yield fail(f"file {spec.provider}", state.problem.message, state.problem.hint)
        elif state.credential is not None:
            found.append(f"{spec.path} ({spec.cli})")
    yield ok("followed files", ", ".join(found) if found else "none found (followed when they appear)")


def _proxy(context: Context) -> Iterator[Check]:
    if context.settings is None:
        return
    port, host = context.settings.proxy_port, context.settings.proxy_host
    if port is None:
        yield ok("proxy", "off (broker serve --proxy-port PORT, or [proxy] port)")
        return
    if port == 0:
        yield ok("proxy", f"on {host}, any free port")
        return
    listening = _accepts(host, port)
    if context.health is not None:
        if listening:
            yield ok("proxy", f"listening on {host}:{port}")
        else:
            yield fail("proxy", f"nothing listens on {host}:{port}", "see the daemon's log: the port may be taken")
    elif listening:
        yield fail("proxy", f"{host}:{port} is taken by another program: the daemon's proxy cannot start there", "")
    else:
        yield ok("proxy", f"{host}:{port} is free for the daemon")


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    return True


def _clock(context: Context) -> Iterator[Check]:
    synced = _ntp_synchronized()
    if synced is False:
        yield warn("clock", "the system clock is not synchronized (timedatectl)", "run: timedatectl set-ntp true")
    if context.health is not None and isinstance(context.health.get("time"), int | float):
        skew = context.health["time"] - time.time()
        if abs(skew) > CLOCK_SKEW:
            yield warn("clock", f"the daemon's clock is {skew:+.0f} s from this machine's: expiries will look off")
            return
    if synced is not False:
        yield ok("clock", "in sync" if synced else "no time service to ask")


def _ntp_synchronized() -> bool | None:
    try:
        done = subprocess.run(
            ["timedatectl", "show", "--property=NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=3,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = done.stdout.strip()
    return {"yes": True, "no": False}.get(value) if done.returncode == 0 else None


def _unit(context: Context) -> Iterator[Check]:
    directory = user_unit_dir(context.env)
    service, sock = directory / SERVICE_UNIT, directory / SOCKET_UNIT
    if not service.exists() and not sock.exists():
        yield ok("unit", f"no systemd units in {directory} (optional: broker install-service)")
        return
    if not service.exists() or not sock.exists():
        yield fail(
            "unit", f"only one of {SOCKET_UNIT} and {SERVICE_UNIT} is in {directory}", "run: broker install-service"
        )
        return
    program = _exec_start_program(service.read_text())
    if program is not None and not os.access(program.replace("%h", str(Path.home())), os.X_OK):
        yield fail("unit", f"{service} runs {program}, which is not there", "run: broker install-service")
    elif service.read_text() != render_service(detect()):
        yield warn("unit", f"{service} was written for another installation", "run: broker install-service")
    else:
        yield ok("unit", f"{service} and {sock}")


def _exec_start_program(unit: str) -> str | None:
    for line in unit.splitlines():
        if line.startswith("ExecStart="):
            words = line.removeprefix("ExecStart=").split()
            return words[0].strip('"') if words else None
    return None
