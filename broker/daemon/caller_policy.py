"""``[providers.NAME] callers``: which of the user's processes may take a provider's tokens.

Each entry names callers one way; any match lets the caller in:

- ``"claude"``: a program name, the base name of the executable, argv[0] or the script
  of the caller or of any process that started it;
- ``"/opt/agent/bin/run"``: the same, by absolute path;
- ``"unit:agent.service"``: the systemd unit (service or scope) the caller runs in;
- ``"cgroup:/user.slice/..."``: the caller's cgroup, or one below it;
- ``"*"``: any process of the user (the default for every provider but two).

Claude's and Gemini CLI's logins default to their own CLIs (``["claude"]``,
``["gemini"]``): their providers allow those logins only there. See ``broker.callers``
for what such a policy can and cannot stop.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from broker.core.errors import Forbidden
from broker.daemon.callers import Caller

ANYONE = "*"


def restricted(callers: Sequence[str] | None) -> bool:
    """True when ``callers`` lets in less than every process of the user."""
    return callers is not None and ANYONE not in callers


def allows(callers: Sequence[str], caller: Caller | None) -> bool:
    if ANYONE in callers:
        return True
    if caller is None:  # the process is gone already: nothing to tell it by
        return False
    return any(_matches(entry, caller) for entry in callers)


def _matches(entry: str, caller: Caller) -> bool:
    if entry.startswith("unit:"):
        return caller.unit == entry[5:]
    if entry.startswith("cgroup:"):
        path = entry[7:].rstrip("/")
        return caller.cgroup is not None and (caller.cgroup == path or caller.cgroup.startswith(path + "/"))
    if entry.startswith("/"):
        return any(entry in process.paths for process in caller.chain)
    return any(entry in process.names for process in caller.chain)


def refusal(provider: str, callers: Sequence[str], caller: Caller | None, terms: str | None) -> Forbidden:
    """The ``forbidden`` a refused caller gets: who it is, and the setting that decides."""
    who = caller.describe() if caller else "a process that has exited"
    setting = f"[providers.{provider}] callers = {json.dumps(list(callers))}"
    hint = f'{terms + "; " if terms else ""}to let this program in, add its name (or "unit:NAME") to {setting}'
    return Forbidden(f"{provider} is not served to this caller ({who})", hint)
