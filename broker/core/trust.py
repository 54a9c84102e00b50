"""Who is on the other end of broker's socket, and whose directories hold it.

Both sides apply the same two rules. The peer's uid, from the kernel (``SO_PEERCRED``),
is the caller's own: the daemon serves only its user, and a client talks only to its
user's daemon (a socket another user created first, in a ``/tmp`` fallback, gets no
login key and hands out no token). The directory of the socket (and of the state) is
the user's and nobody else can write to it, so nobody else can swap what is in it.

broker sets the mode only of directories it creates; one that exists is checked, never
chmodded: it may be a shared directory or the user's home.

Standard library only, one ``getsockopt`` and one ``stat`` per check: the fast client
path runs this on every ``broker token``.
"""

import os
import socket
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

_UCRED_SIZE = 12
"""``struct ucred``: pid, uid, gid, each 32 bits."""


class Untrusted(Exception):
    """The socket's peer or directory is not the user's own; the message says whose it is."""


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the process on the other end of a Unix socket, as the kernel saw it at connect()."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED_SIZE)
    return tuple(int.from_bytes(data[i : i + 4], sys.byteorder) for i in (0, 4, 8))  # type: ignore[return-value]


def owner(uid: int) -> str:
    """``uid 1001 (mallory)``: a uid with its user name, when it has one."""
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def directory_problem(directory: "str | Path", uid: int) -> str | None:
    """Why ``directory`` cannot hold broker's socket or files safely; ``None`` when it can."""
    info = os.stat(directory)
    if info.st_uid != uid:
        return f"{directory} belongs to {owner(info.st_uid)}, not to you ({owner(uid)})"
    if info.st_mode & 0o022:
        return f"{directory} can be written by others (mode {info.st_mode & 0o7777:04o})"
    return None


def check_daemon(sock: socket.socket, path: str) -> None:
    """Before a client sends anything: the peer and the socket's directory are the user's own."""
    uid = os.getuid()
    peer_uid = peer_credentials(sock)[1]
    if peer_uid != uid:
        raise Untrusted(f"{path} is served by {owner(peer_uid)}, not by you ({owner(uid)})")
    problem = directory_problem(os.path.dirname(path) or ".", uid)
    if problem is not None:
        raise Untrusted(problem)


def ensure_private_dir(directory: "Path") -> None:
    """Create ``directory`` (and missing parents) 0700, or check one that exists; raise ``Untrusted``."""
    missing = []
    level = directory
    while not level.exists():
        missing.append(level)
        level = level.parent
    for level in reversed(missing):
        try:
            level.mkdir(mode=0o700)
        except FileExistsError:  # someone else was quicker: checked below like any existing one
            continue
        os.chmod(level, 0o700)  # the umask may have taken bits; this one is ours
    problem = directory_problem(directory, os.getuid())
    if problem is not None:
        raise Untrusted(problem)
