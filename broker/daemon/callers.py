"""Who is asking: the process on the other end of a connection, as the kernel describes it.

``SO_PEERCRED`` gives the pid that connected; ``/proc`` gives its executable, its command
line, the processes that started it (``broker token`` run by Claude Code's
``apiKeyHelper`` has ``claude`` among them) and its cgroup, whose path names its systemd
unit. Reading all that costs a few dozen system calls, so it is done once per connection,
and only when a provider's ``callers`` policy or the audit trail needs it. All of it is read
before the answer: a ``broker token`` exits as soon as it has it, and the ``sh -c`` that ran
it right after.

What this can and cannot tell: a process of another user cannot pass for the owner's
(the uid is the kernel's), but the owner's own processes choose their command lines and
can start a program named ``claude``. A ``callers`` policy keeps honest tools to the
providers' terms; it does not stop code of the same user that sets out to get around it
(that code can read the CLIs' credential files directly).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

MAX_ANCESTORS = 16
MAX_ARGS = 8
UNIT_SUFFIXES = (".service", ".scope")
COMMAND_OPTIONS = frozenset({"-c", "-e", "--eval"})
"""Options of shells and interpreters after which comes a command, not a script."""


@dataclass(frozen=True)
class Process:
    """One process as ``/proc`` shows it; fields are ``None`` where it may not be read."""

    pid: int
    exe: str | None
    argv: tuple[str, ...]

    @property
    def script(self) -> str | None:
        """The first argument that is no option: the script an interpreter runs (``node .../claude``).

        None after ``-c``/``-e``: what follows is a command string, then positional values.
        """
        for arg in self.argv[1:]:
            if arg in COMMAND_OPTIONS:
                return None
            if arg and not arg.startswith("-"):
                return arg
        return None

    @property
    def names(self) -> frozenset[str]:
        """What a ``callers`` name is compared with: the base names of the executable, argv[0] and the script."""
        found = {os.path.basename(path) for path in (self.exe, self.script) if path}
        if self.argv:
            found.add(os.path.basename(self.argv[0]).lstrip("-"))
        return frozenset(name for name in found if name)

    @property
    def paths(self) -> frozenset[str]:
        """What an absolute ``callers`` entry is compared with."""
        return frozenset(path for path in (self.exe, self.argv[0] if self.argv else None, self.script) if path)

    @property
    def name(self) -> str:
        """A short name for messages and the audit: the script's, else argv[0]'s, else the executable's."""
        for path in (self.script if self.exe and _interpreter(self.exe) else None, *self.argv[:1], self.exe):
            if path:
                return os.path.basename(path).lstrip("-")
        return "?"


@dataclass(frozen=True)
class Caller:
    """A connecting process, the processes that started it (nearest first), and its cgroup."""

    process: Process
    ancestors: tuple[Process, ...]
    cgroup: str | None

    @property
    def unit(self) -> str | None:
        """The systemd unit (service or scope) its cgroup path names, if any."""
        if not self.cgroup:
            return None
        return next((part for part in reversed(self.cgroup.split("/")) if part.endswith(UNIT_SUFFIXES)), None)

    @property
    def chain(self) -> tuple[Process, ...]:
        return (self.process, *self.ancestors)

    def describe(self) -> str:
        """``pid 4242 broker (/usr/bin/python3.11), started by sh < claude, unit app.slice``."""
        exe = f" ({self.process.exe})" if self.process.exe else ""
        started = " < ".join(p.name for p in self.ancestors[:4])
        text = f"pid {self.process.pid} {self.process.name}{exe}"
        if started:
            text += f", started by {started}"
        return text + (f", unit {self.unit}" if self.unit else "")

    def audit_fields(self) -> dict[str, Any]:
        return {
            "pid": self.process.pid,
            "exe": self.process.exe,
            "name": self.process.name,
            "unit": self.unit,
            "parents": [{"pid": p.pid, "name": p.name} for p in self.ancestors],
        }


class Ucred(NamedTuple):
    """The pid and uid the kernel gives for a Unix socket's peer (``SO_PEERCRED``), fixed at connect()."""

    pid: int
    uid: int


@dataclass
class Peer:
    """The other end of one connection: what the kernel said at connect(), and, on demand, who that is."""

    via: str
    """``socket`` (the Unix socket) or ``proxy``."""
    ucred: Ucred | None = None
    """The Unix socket's peers; ``None`` where the kernel names none (the proxy's TCP peers)."""
    address: str | None = None
    """The proxy's peers: ``127.0.0.1:PORT`` (TCP tells no pid)."""
    audited: set[str] = field(default_factory=set)
    """Fingerprints of tokens this connection was handed that the audit already holds."""

    @property
    def pid(self) -> int | None:
        return self.ucred.pid if self.ucred else None

    @cached_property
    def caller(self) -> Caller | None:
        return identify(self.pid) if self.pid else None

    def audit_fields(self) -> dict[str, Any]:
        caller = self.caller
        fields = caller.audit_fields() if caller else {"pid": self.pid, "exe": None, "unit": None}
        return {"via": self.via, **fields, **({"peer": self.address} if self.address else {})}


def identify(pid: int) -> Caller | None:
    """The process ``pid`` and its ancestors; ``None`` when it is gone already."""
    process, parent = _read(pid)
    if process is None:
        return None
    ancestors: list[Process] = []
    while parent > 1 and len(ancestors) < MAX_ANCESTORS:
        ancestor, parent = _read(parent)
        if ancestor is None:
            break
        ancestors.append(ancestor)
    return Caller(process, tuple(ancestors), _cgroup(pid))


def _read(pid: int) -> tuple[Process | None, int]:
    """The process and its parent's pid; ``(None, 0)`` when ``/proc`` no longer has it."""
    base = f"/proc/{pid}"
    try:
        stat = _read_file(f"{base}/stat")
        raw = _read_file(f"{base}/cmdline")
    except OSError:
        return None, 0
    parent = int(stat[stat.rindex(b")") + 2 :].split(None, 2)[1])  # after "(comm)": state, then ppid
    argv = tuple(arg.decode(errors="replace") for arg in raw.split(b"\0")[:MAX_ARGS] if arg)
    try:
        exe: str | None = os.readlink(f"{base}/exe").removesuffix(" (deleted)")
    except OSError:  # another user's process, or a kernel thread
        exe = None
    return Process(pid, exe, argv), parent


def _cgroup(pid: int) -> str | None:
    """The unified hierarchy's path; on a hybrid system, the named systemd hierarchy's when that says more."""
    try:
        lines = _read_file(f"/proc/{pid}/cgroup", 1 << 16).decode(errors="replace").splitlines()
    except OSError:
        return None
    paths = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        paths[controllers] = path
    unified, named = paths.get(""), paths.get("name=systemd")
    if unified and unified != "/":
        return unified
    return named or unified


def _read_file(path: str, limit: int = 4096) -> bytes:
    """The start of a ``/proc`` file (procfs answers in one read), without a buffered file object:
    this runs on every new connection."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def _interpreter(exe: str) -> bool:
    """Executables whose first argument is the program that really runs."""
    name = os.path.basename(exe)
    return name.startswith(("python", "node", "bun", "deno", "ruby", "perl", "bash", "sh", "dash", "zsh"))
