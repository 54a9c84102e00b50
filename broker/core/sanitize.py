"""Text broker did not write (an upstream's error, a redirect's query) made safe to log, keep and print.

- Control characters go (line breaks become spaces): no escape sequence reaches a
  terminal, no forged line reaches a log.
- Token-shaped strings are masked: a server that echoes the refresh token it was sent
  must not put it into the log, ``broker status`` or a terminal.
- Length is capped: an HTML error page is not a message.

Standard library only (``json`` loads ``re`` anyway): the CLI prints through it too.
"""

from __future__ import annotations

import re

MAX_CHARS = 300
TOKEN_PREFIXES = (
    *("sk-", "xai-", "gsk_", "AIza", "ya29.", "eyJ"),  # Anthropic/OpenAI, xAI, Groq, Google keys and tokens, JWTs
    *("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-"),  # GitHub, GitLab
    "brk-proxy-",  # broker's own proxy key
)
"""Beginnings of well-known secrets."""
MIN_PREFIXED = 16
MIN_GENERIC = 24
SHOWN = 4
"""Characters of a masked token left visible, enough to tell which kind of token was echoed."""
_RUN = re.compile(r"[A-Za-z0-9_.~+=-]{%d,}" % min(MIN_PREFIXED, MIN_GENERIC))  # noqa: UP031
"""Candidates: runs of token characters (not ``/`` or ``:``, so URLs and paths split into short parts)."""


def printable(text: str) -> str:
    """``text`` without control or format characters; line breaks and tabs become spaces."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else " " if c.isspace() else "" for c in text)


def upstream_text(text: object, limit: int = MAX_CHARS) -> str:
    """Printable, token-shaped strings masked, at most ``limit`` characters."""
    cleaned = _RUN.sub(_mask_match, printable(str(text)))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _mask_match(match: re.Match[str]) -> str:
    run = match.group()
    return run[:SHOWN] + "***" if token_shaped(run) else run


def token_shaped(run: str) -> bool:
    """A well-known secret's beginning, or a long mix of letters and digits that is no host name."""
    if len(run) >= MIN_PREFIXED and run.startswith(TOKEN_PREFIXES):
        return True
    if len(run) < MIN_GENERIC:
        return False
    has_digit = any(c.isdigit() for c in run)
    has_letter = any(c.isalpha() for c in run)
    host_like = "." in run and run == run.lower()
    return has_digit and has_letter and not host_like
