"""Which provider follows which CLI files: the one place that pairs providers with formats.

Providers know nothing of files. A built-in whose service also has a CLI of its own
(Claude Code, Codex, Gemini CLI, Qwen Code, the Copilot editors, gcloud) is followed
through that CLI's format module here, at the paths the environment gives, unless its
config says ``follow = false``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from broker.followed import claude, codex, copilot, gcloud, gemini, qwen
from broker.followed.format import FollowedFile
from broker.providers.base import Provider
from broker.providers.claude import ClaudeProvider
from broker.providers.codex import CodexProvider
from broker.providers.copilot import CopilotProvider
from broker.providers.gemini import GeminiProvider
from broker.providers.qwen import QwenProvider
from broker.providers.vertex import VertexProvider

Files = Callable[[Any, Mapping[str, str]], tuple[FollowedFile, ...]]
"""A format's ``files(provider, env)``, for a provider of the class it is paired with."""

FORMATS: tuple[tuple[type[Provider], Files], ...] = (
    (ClaudeProvider, claude.files),
    (CodexProvider, codex.files),
    (CopilotProvider, copilot.files),
    (GeminiProvider, gemini.files),
    (QwenProvider, qwen.files),
    (VertexProvider, gcloud.files),
)
"""Each provider class whose service has a CLI of its own, with that CLI's format."""


def files_of(provider: Provider, env: Mapping[str, str]) -> tuple[FollowedFile, ...]:
    """The CLI files ``provider`` follows, at their effective paths; none for most providers."""
    if not provider.follow.enabled:
        return ()
    return next((files(provider, env) for kind, files in FORMATS if isinstance(provider, kind)), ())


def followed_files(providers: Iterable[Provider], env: Mapping[str, str]) -> list[FollowedFile]:
    """Every file the configured providers follow, in the providers' order."""
    return [spec for provider in providers for spec in files_of(provider, env)]
