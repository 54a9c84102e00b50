"""broker's systemd user units, rendered for one installation.

One source for both copies: ``systemd/`` in the repo is this rendering with the generic
``%h/.local/bin/broker`` (pipx, ``pip install --user``), and ``broker install-service``
renders it with the command that starts the copy of broker it runs from, and writes it
where ``systemd --user`` looks. Stdlib only, and never needs root.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from broker.core.atomic import replace_atomically

SOCKET_UNIT = "broker.socket"
SERVICE_UNIT = "broker.service"
SOCKET_PATH = "%t/broker/broker.sock"
"""``$XDG_RUNTIME_DIR/broker/broker.sock``: where the daemon and every client look by default."""

STATE_DIR = "%h/.local/state/broker"
"""The daemon's default state dir, pinned: ``%S`` is ``~/.config`` before systemd 254, ``~/.local/state`` after."""
FOLLOWED_DIRS = (
    "%h/.codex",
    "%h/.claude",
    "%h/.gemini",
    "%h/.qwen",
    "%h/.kimi",
    "%h/.config/github-copilot",
    "%h/.config/gcloud",
)
"""Directories of the CLI files broker follows and writes back to (temp file + rename, locks)."""

ENABLE_COMMAND = "systemctl --user daemon-reload && systemctl --user enable --now broker.socket"
STOP_COMMAND = "systemctl --user stop broker.socket broker.service && systemctl --user daemon-reload"


@dataclass(frozen=True)
class Installation:
    """How systemd starts this copy of broker."""

    exec_start: str
    """``ExecStart=`` without the ``serve`` argument, already in systemd's quoting."""
    pythonpath: str | None = None
    """From a checkout that Python cannot import by itself: the checkout's root."""
    kind: str = "console script"
    files: tuple[str, ...] = ()
    """The paths the service must see: the program, and the checkout if any."""

    @property
    def hidden_by_private_tmp(self) -> bool:
        """``PrivateTmp=yes`` gives the service its own /tmp: a broker installed there is not found."""
        private = (Path("/tmp"), Path("/var/tmp"))  # noqa: S108 - checked, not used
        paths = [Path(os.path.realpath(f)) for f in self.files] + [Path(f) for f in self.files]
        return any(path.is_relative_to(tmp) for path in paths for tmp in private)


GENERIC = Installation("%h/.local/bin/broker")
"""What ``systemd/broker.service`` in the repo runs: the pipx / ``pip install --user`` script."""


def detect(executable: str = sys.executable) -> Installation:
    """The console script beside ``executable`` (venv, pipx), else ``executable -m broker``.

    ``-m broker`` gets ``PYTHONPATH`` only when that interpreter, started the way systemd
    starts it (no ``PYTHONPATH``, nothing from a working directory), would not import this very package.
    """
    script = Path(executable).parent / "broker"
    if script.is_file() and os.access(script, os.X_OK):
        return Installation(exec_quote(str(script)), files=(str(script),))
    package = Path(__file__).resolve().parents[1]
    command = " ".join(exec_quote(part) for part in (executable, "-m", "broker"))
    if _imports_from(executable) == package / "__init__.py":
        return Installation(command, kind="python -m broker", files=(executable,))
    root = str(package.parent)
    return Installation(command, pythonpath=root, kind="checkout", files=(executable, root))


def _imports_from(executable: str) -> Path | None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    probe = "import broker; print(broker.__file__)"
    try:
        done = subprocess.run(
            [executable, "-P", "-c", probe], env=env, cwd="/", capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return Path(lines[-1]).resolve() if done.returncode == 0 and lines else None


def exec_quote(arg: str) -> str:
    """One word of ``ExecStart=`` (systemd.service(5) "Command lines"), specifiers escaped."""
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def env_quote(name: str, value: str) -> str:
    """One ``Environment=`` assignment, quoted, with ``%`` escaped (``$`` is literal there)."""
    assignment = f"{name}={value}".replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return f'"{assignment}"'


def render_socket() -> str:
    return f"""\
[Unit]
Description=broker credential daemon socket

[Socket]
ListenStream={SOCKET_PATH}
SocketMode=0600
DirectoryMode=0700
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
"""


def render_service(installation: Installation = GENERIC) -> str:
    environment = [f'"BROKER_STATE_DIR={STATE_DIR}"']
    if installation.pythonpath:
        environment.append(env_quote("PYTHONPATH", installation.pythonpath))
    writable = " ".join(f"-{path}" for path in (STATE_DIR, "%t/broker", *FOLLOWED_DIRS))
    return f"""\
[Unit]
Description=broker: one daemon keeps every LLM credential fresh
Requires=broker.socket
After=broker.socket

[Service]
Type=notify
NotifyAccess=main
ExecStartPre=+mkdir -p -m 0700 {STATE_DIR}
ExecStart={installation.exec_start} serve
ExecReload=kill -HUP $MAINPID
Restart=on-failure
RestartSec=2s
RestartPreventExitStatus=78
TimeoutStopSec=5s
Environment={" ".join(environment)}
UMask=0077

# Sandbox: read-only system and home, writable only where broker writes.
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths={writable}
PrivateTmp=yes
PrivateDevices=yes
PrivateUsers=yes
PrivateMounts=yes
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
KeyringMode=private
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM

[Install]
Also=broker.socket
"""


# --- where the units go ----------------------------------------------------------------


def user_unit_dir(env: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CONFIG_HOME/systemd/user`` (``~/.config/systemd/user``): the user's own units."""
    config = env.get("XDG_CONFIG_HOME", "")
    base = Path(config) if os.path.isabs(config) else Path(env.get("HOME") or Path.home()) / ".config"
    return base / "systemd" / "user"


def install(directory: Path, installation: Installation) -> list[Path]:
    """Write both units (0644, atomically); returns the files that changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, text in ((SOCKET_UNIT, render_socket()), (SERVICE_UNIT, render_service(installation))):
        path = directory / name
        try:
            if path.read_text() == text:
                continue
        except OSError:
            pass
        replace_atomically(path, text.encode(), 0o644)
        changed.append(path)
    return changed


def uninstall(directory: Path) -> list[Path]:
    """Remove both units and their enablement links (what ``systemctl disable`` removes)."""
    removed = []
    links = [link for pattern in ("*.wants", "*.requires") for link in directory.glob(f"{pattern}/broker.*")]
    for path in [*links, directory / SOCKET_UNIT, directory / SERVICE_UNIT]:
        if path.name in (SOCKET_UNIT, SERVICE_UNIT) and (path.is_symlink() or path.exists()):
            path.unlink()
            removed.append(path)
    for emptied in {link.parent for link in links}:
        if not any(emptied.iterdir()):
            emptied.rmdir()
    return removed
