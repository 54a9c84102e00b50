"""Where broker's files are by default, and how a path value of the config expands.

The client's fast path and the daemon both start here, so daemon and clients agree on
every path. Standard library only (``os``), and nothing of broker.
"""

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping


def home(env: "Mapping[str, str]") -> str:
    return env.get("HOME") or os.path.expanduser("~")


def tilde(value: str, env: "Mapping[str, str]") -> str:
    """``~`` and ``~/x`` from ``$HOME`` of ``env``; ``~user`` as the system says."""
    if value == "~" or value.startswith("~/"):
        return home(env) + value[1:]
    return os.path.expanduser(value)


def xdg(env: "Mapping[str, str]", name: str, fallback: str) -> str:
    """An XDG base directory; relative values are ignored, as the spec says."""
    value = env.get(name, "")
    return value if os.path.isabs(value) else os.path.join(home(env), fallback)


def default_config_path(env: "Mapping[str, str]") -> str:
    """``$XDG_CONFIG_HOME/broker/config.toml`` (``~/.config/broker/config.toml``)."""
    return os.path.join(xdg(env, "XDG_CONFIG_HOME", ".config"), "broker", "config.toml")


def config_path(env: "Mapping[str, str]") -> tuple[str, bool]:
    """The config file to read, and whether ``BROKER_CONFIG`` named it (then it must exist)."""
    explicit = env.get("BROKER_CONFIG")
    if explicit:
        return os.path.abspath(tilde(explicit, env)), True
    return default_config_path(env), False


def default_socket_path(env: "Mapping[str, str]") -> str:
    """``$XDG_RUNTIME_DIR/broker/broker.sock``, else ``/tmp/broker-$UID/broker.sock``.

    Not ``$TMPDIR``: the daemon and every client must agree on the path without talking.
    """
    runtime = env.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        return os.path.join(runtime, "broker", "broker.sock")
    return f"/tmp/broker-{os.getuid()}/broker.sock"  # noqa: S108


def expand_path(value: str, env: "Mapping[str, str]") -> str:
    """``~``, then ``$VAR`` and ``${VAR}``; an unset variable is an error, not a literal.

    Raises ValueError saying what is wrong. Written without ``re``: the fast path avoids it.
    """
    value = tilde(value, env)
    out, start = [], 0
    while (dollar := value.find("$", start)) >= 0:
        out.append(value[start:dollar])
        name, end = _variable_at(value, dollar)
        if name is None:
            out.append("$")
            start = dollar + 1
            continue
        if not env.get(name):
            raise ValueError(f'${name} is not set (in "{value}")')
        out.append(env[name])
        start = end
    expanded = "".join(out) + value[start:]
    if "\0" in expanded:
        raise ValueError("must not contain a NUL character")
    if not os.path.isabs(expanded):
        raise ValueError(f'must be an absolute path after expanding ~ and $VARS (got "{expanded}")')
    return expanded


def _variable_at(value: str, dollar: int) -> tuple[str | None, int]:
    """The variable named at ``value[dollar]`` (``$NAME`` or ``${NAME}``) and where it ends."""
    if value.startswith("${", dollar):
        close = value.find("}", dollar)
        return (value[dollar + 2 : close], close + 1) if close >= 0 else (None, dollar + 1)
    end = dollar + 1
    while end < len(value) and (value[end].isascii() and (value[end].isalnum() or value[end] == "_")):
        end += 1
    name = value[dollar + 1 : end]
    return (name, end) if name and not name[0].isdigit() else (None, dollar + 1)
