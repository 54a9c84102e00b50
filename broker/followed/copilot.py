"""The Copilot editors' sign-in files, ``apps.json`` and ``hosts.json`` in ``github-copilot``.

Editors (the VS Code family, JetBrains, copilot.vim, copilot.lua) keep the GitHub token
of their Copilot sign-in there, keyed by host (``hosts.json``) or by ``host:app id``
(``apps.json``), and rewrite it only at sign-in and sign-out. The token does not expire,
so broker only reads it and mints Copilot tokens from it; it never writes these files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from broker.core.model import Credential
from broker.followed.format import CliFormat, FileProblem, FollowedFile, home, optional_str, require
from broker.providers.copilot import CLIENT_ID, MODELS, CopilotProvider

CLI = "your Copilot editor"
LOGIN_HINT = "sign in to Copilot in your editor again"
DIRECTORY = "github-copilot"
NOT_MINTED = 0.0
"""The expiry of a credential fresh from an editor's file: no Copilot token yet, so the refresher mints at once."""
MINT_LEAD = 60.0
"""The least lead for a minted token; Copilot's own ``refresh_in`` usually asks for more."""


@dataclass(frozen=True)
class EditorFile:
    name: str
    account: str


FILES = (EditorFile("apps.json", "editor-apps"), EditorFile("hosts.json", "editor-hosts"))
"""The newer editors' file first: its account is listed first when both exist."""


@dataclass(frozen=True)
class EditorLogin:
    github_token: str = field(repr=False)
    user: str | None
    app_id: str | None


def credential_in(doc: Mapping[str, Any], provider: CopilotProvider, account: str) -> Credential:
    """The file's GitHub token for the provider's host, as a login of model A not yet exchanged."""
    host = provider.host.url.split("://", 1)[1]
    login = read(doc, host, (provider.client_id, CLIENT_ID))
    return Credential(
        provider=provider.name,
        account=account,
        access_token="",
        expires_at=NOT_MINTED,
        api=provider.api,
        extra={
            "github_token": login.github_token,
            "github_user": login.user,
            "enterprise_url": provider.host.enterprise_url,
            "login_model": MODELS[True],
            "client_id": login.app_id or CLIENT_ID,
        },
    )


def directory(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/github-copilot`` when that is an absolute path, as the editors decide, else ~/.config's."""
    config = env.get("XDG_CONFIG_HOME", "")
    return (Path(config) if config and Path(config).is_absolute() else home(env) / ".config") / DIRECTORY


def account_of(path: Path) -> str:
    """The account a file's login is served as: named after the file, apps.json's for any other name."""
    return next((f.account for f in FILES if f.name == path.name), FILES[0].account)


def read(doc: Mapping[str, Any], host: str, app_ids: Sequence[str]) -> EditorLogin:
    """The sign-in for ``host`` (``github.com``, ``ghe.example.com``), the given app ids preferred.

    Both files' key styles are read, so a file broker is pointed at works whatever its name.
    """
    mine = {key: entry for key, entry in doc.items() if _host_matches(key, host)}
    if not mine:
        others = sorted({_host_of(key) for key in doc})
        listed = f" (it has: {', '.join(others)})" if others else " (it is empty: signed out?)"
        raise FileProblem(
            f"no entry for {host}{listed}",
            f"sign in to Copilot for {host} in your editor, or set enterprise_url under "
            "[providers.copilot] to the host the file is for",
        )
    key = next((k for app in app_ids for k in mine if k == f"{host}:{app}"), next(iter(mine)))
    entry = mine[key]
    where = f"entry {key!r}"
    if not isinstance(entry, dict):
        raise FileProblem(f"{where} is not an object")
    app_id = entry.get("githubAppId")
    return EditorLogin(
        github_token=require(entry, "oauth_token", str, where),
        user=optional_str(entry, "user"),
        app_id=app_id if isinstance(app_id, str) and app_id else _app_of(key, host),
    )


def _host_matches(key: str, host: str) -> bool:
    """``host`` itself (hosts.json) or ``host:APP_ID`` (apps.json); ``host:8443`` is another host."""
    return key == host or (key.startswith(host + ":") and _is_app_id(key[len(host) + 1 :]))


def _is_app_id(text: str) -> bool:
    return bool(text) and ":" not in text and not text.isdigit()


def _host_of(key: str) -> str:
    host, _, app = key.rpartition(":")
    return host if host and _is_app_id(app) else key


def _app_of(key: str, host: str) -> str | None:
    return key[len(host) + 1 :] or None


FORMAT = CliFormat(FILES[0].account, CLI, LOGIN_HINT, merge=None, lead=MINT_LEAD)


def files(provider: CopilotProvider, env: Mapping[str, str]) -> tuple[FollowedFile, ...]:
    """The editors' apps.json and hosts.json (or the one ``file`` names): Copilot tokens are minted from them.

    Their tokens are the Copilot app's, usable only through the exchange: none with ``exchange = false``.
    """
    if not provider.exchange:
        return ()
    given = provider.follow.file
    paths = (given,) if given else tuple(directory(env) / f.name for f in FILES)
    return tuple(_editor_file(provider, path) for path in paths)


def _editor_file(provider: CopilotProvider, path: Path) -> FollowedFile:
    account = account_of(path)
    return FORMAT.file(provider, path, partial(credential_in, provider=provider, account=account), account=account)
