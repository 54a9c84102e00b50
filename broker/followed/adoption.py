"""A followed CLI file around a refresh: adopt what the CLI wrote, and never redeem what it may redeem too.

The rules are the file's, so they live beside its formats: when a file's newer tokens
replace a refresh, when a CLI may be redeeming the same refresh token, how a dead login in
a file is revived. What belongs to the daemon is handed in: re-reading the file through
the live set (which wakes status streams) and the refresher's timing, which decides
whether a newer credential spares the refresh.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from broker.core.errors import LeftToCli, LoginRequired, RefreshFailed
from broker.core.model import Credential, CredentialKey
from broker.followed import cliprocs
from broker.followed.files import FileState, FollowedFiles, detached

log = logging.getLogger("broker.refresher")

Reread = Callable[[Path], Awaitable[tuple[FileState, bool]]]
"""Re-read a followed file into the daemon's live set; the file's state and whether it changed."""


async def newer_in_file(
    followed: FollowedFiles,
    reread: Reread,
    key: CredentialKey,
    credential: Credential,
    spares_refresh: Callable[[Credential], bool],
) -> Credential | None:
    """For a followed file: the CLI's newer credential when it already did the work.

    Re-read just before redeeming a refresh token: if the CLI refreshed first, its
    tokens are used (and its refresh token is not spent twice) when ``spares_refresh``
    says they are fresh enough; after a dead-grant answer any change counts, for the
    CLI may have logged in again.
    """
    state = followed.state_of(key)
    if state is None:
        return None
    state, _ = await reread(state.spec.path)
    latest = state.credential
    if latest is None:
        problem = state.problem
        raise LoginRequired(
            problem.message if problem else f"{key[0]}: {state.spec.path} is gone",
            problem.hint if problem and problem.hint else state.spec.login_hint,
        )
    if latest == credential:
        return None
    if spares_refresh(latest):
        log.info("using the tokens the CLI wrote provider=%s file=%s", key[0], state.spec.path)
        return latest
    return None


async def check_uncontested(
    followed: FollowedFiles, key: CredentialKey, credential: Credential, now: float, redeem_bound: float, asked: bool
) -> None:
    """Raise LeftToCli when the followed file's CLI may redeem this refresh token at the same moment.

    A CLI that takes no lock broker can take (Codex) redeems its refresh token only once
    its access token is within ``contested_within`` of expiry, after re-reading its file.
    While the token outlives that by more than broker's own requests can take
    (``redeem_bound``), broker's redeem and write-back land first, and the CLI finds them.
    Past that point (after a suspend, a stop, an outage) the CLI may start and redeem at
    any moment and nothing keeps it out: broker leaves the refresh to it and serves what it
    writes, and redeems only when a person asks (``broker refresh``) while no process of
    that CLI is running.
    """
    state = followed.state_of(key)
    spec = None if state is None else state.spec
    if spec is None or spec.contested_within is None or spec.mode != "lead":
        return
    left = credential.remaining(now)
    if left > spec.contested_within + redeem_bound:
        return
    running = await detached(cliprocs.running, spec.programs, spec.locate, spec.path)
    if asked and not running:
        return
    when = f"expires in {left:.0f} s" if left > 0 else "has expired"
    if running:
        who = f"{spec.cli} is running (pid {', '.join(map(str, running))}) and refreshes it itself"
        hint = f"use {spec.cli}: it refreshes the token on its next request, and broker serves what it writes"
    else:
        who = f"{spec.cli} refreshes it itself when it next runs, and may start at any moment"
        hint = (
            f"use {spec.cli} once, and broker serves what it writes; or, while no {spec.cli} runs, "
            f"run: broker refresh {key[0]} --account {key[1]}"
        )
    error = LeftToCli(
        f"{key[0]}: the token in {spec.path} {when}; {who}: broker never redeems a refresh token "
        f"{spec.cli} may redeem at the same moment",
        hint,
    )
    error.cli_running = bool(running)
    raise error


def dead_in_file(followed: FollowedFiles, key: CredentialKey, error: LoginRequired) -> LoginRequired:
    """A dead login of a followed file says which file, and how its CLI logs in again."""
    state = followed.state_of(key)
    if state is None:
        return error
    return LoginRequired(f"{error.message} (in {state.spec.path})", state.spec.login_hint)


def only_followed(followed: FollowedFiles, credential: Credential) -> RefreshFailed | None:
    """An expired token broker may not refresh because it only follows the CLI's file; ``None`` otherwise."""
    name = credential.provider
    state = followed.state_of(credential.key)
    if state is None or state.spec.mode != "follow":
        return None
    return RefreshFailed(
        f"{name}: the token in {state.spec.path} expired and broker only follows that file",
        f"let {state.spec.cli} refresh it ({state.spec.login_hint.removeprefix('run: ')}), "
        f"or set write_back = true under [providers.{name}]",
    )
