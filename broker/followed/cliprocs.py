"""Which processes of a CLI are running, for the user broker runs as, on the file broker follows.

A CLI that redeems its refresh token without a lock broker could take (Codex) is told
apart only by running: broker then leaves a refresh it cannot make safely to that CLI.
``/proc`` tells which processes run; a process counts when it belongs to this user, its
name is one of the CLI's, and its own environment (``CODEX_HOME``, ``HOME``) points it at
the very file broker follows. Reading a few hundred small ``/proc`` files takes a few
milliseconds; it happens only when a refresh is contested, never on a client's request.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

PROC = Path("/proc")


def running(
    programs: tuple[str, ...], locate: Callable[[Mapping[str, str]], Path] | None, path: Path, proc: Path = PROC
) -> list[int]:
    """Process ids of the CLI named by ``programs`` that use ``path``; empty where /proc is not."""
    uid = os.getuid()
    found = []
    try:
        entries = list(proc.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != uid or not _is_one_of(entry, programs):
                continue
            if locate is not None and not _same_file(locate(_environment(entry)), path):
                continue
        except (OSError, ValueError):
            continue  # it ended meanwhile, or is not ours to read
        found.append(int(entry.name))
    return found


def _is_one_of(entry: Path, programs: tuple[str, ...]) -> bool:
    """Its name (``comm``) or the program or script it runs (``codex``, ``.../bin/gemini.js``)."""
    if (entry / "comm").read_text().strip() in programs:
        return True
    argv = (entry / "cmdline").read_bytes().split(b"\0")[:2]
    names = {os.path.basename(arg.decode(errors="replace")).removesuffix(".js") for arg in argv if arg}
    return not names.isdisjoint(programs)


def _environment(entry: Path) -> dict[str, str]:
    pairs = (item.partition(b"=") for item in (entry / "environ").read_bytes().split(b"\0") if item)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, _, value in pairs}


def _same_file(one: Path, other: Path) -> bool:
    return os.path.abspath(one) == os.path.abspath(other)
