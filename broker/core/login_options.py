"""Which ``broker login`` options a provider takes, decided in one place for the daemon and the CLI.

The daemon refuses a login that asks for what the provider does not have (``--device``
of an API key, ``--enterprise-url`` of Codex) instead of ignoring it; the CLI asks the
same question first, so it never prompts for a key only to be refused. Stdlib only.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


def offered(flows: Sequence[str], *, secret: bool, enterprise_url: bool) -> tuple[str, ...]:
    """The options as a person types them; none for a provider whose login is another CLI's, or that has none."""
    if not flows or tuple(flows) == ("file",):
        return ()
    options = ["--account NAME", "--force", "--json"]
    if len(flows) > 1:
        options.append(f"--flow {'|'.join(flows)}")
        if "device" in flows:
            options.append("--device")
    if "pkce" in flows:
        options.append("--no-browser")
    if secret:
        options.append("--token-stdin (--key-stdin)")
    if enterprise_url:
        options.append("--enterprise-url URL")
    return tuple(options)


def refused(
    flows: Sequence[str],
    *,
    secret: bool,
    enterprise_url: bool,
    flow: str | None,
    given_url: str | None,
    given_secret: object,
) -> str | None:
    """What was asked that the provider does not take (``--device, --enterprise-url``); ``None``: nothing."""
    given = []  # an empty value is no value, as the providers read it
    if flow and flow not in flows:
        given.append("--device" if flow == "device" else f"--flow {flow}")
    if given_url and not enterprise_url:
        given.append("--enterprise-url")
    if given_secret and not secret:
        given.append("--token-stdin")
    return ", ".join(given) or None
