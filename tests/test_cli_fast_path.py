"""``broker token``'s fast parser never disagrees with argparse, the one definition of the CLI.

The fast path (``broker.cli.fast``) exists only for speed; whatever it accepts must mean
exactly what argparse makes of it, and whatever it is unsure of it hands to argparse.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from broker.cli.fast import fast_args
from broker.cli.main import parse

WORDS = [
    "token", "codex", "x", "status", "--json", "--account", "--account=b", "-a", "a", "--acc",
    "--min-ttl", "--min-ttl=1", "5", "-5", "nan", "1e400", "--socket", "--socket=/t", "/s",
    "--config", "--config=", "/c", "--no-color", "--", "-h", "--help", "",
]  # fmt: skip


def argparse_reading(argv: list[str]) -> dict[str, Any] | None:
    """What argparse makes of ``argv``; None when it refuses it (usage error or help)."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            return vars(parse(list(argv)))
        except SystemExit:
            return None


def check_agrees(argv: list[str]) -> None:
    fast = fast_args(argv)
    if fast is None:
        return
    assert comparable(vars(fast)) == comparable(argparse_reading(argv)), argv


def comparable(reading: dict[str, Any] | None) -> dict[str, Any] | None:
    """NaN (``--min-ttl nan``) equals itself here, as both parsers read it alike."""
    if reading is None:
        return None
    return {key: "nan" if value != value else value for key, value in reading.items()}


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=7))
def test_whatever_the_fast_parser_accepts_argparse_reads_the_same(argv: list[str]) -> None:
    check_agrees(argv)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=5))
@example(["--min-ttl", "token", "--min-ttl=1"])  # a bad value followed by a good one: argparse refuses
def test_token_forms_agree(rest: list[str]) -> None:
    check_agrees(["token", "codex", *rest])


def test_common_forms_take_the_fast_path() -> None:
    """The forms scripts use are read without argparse (else the fast path is dead code)."""
    for argv in (
        ["token", "codex"],
        ["token", "codex", "--json", "--account", "work", "--min-ttl", "300"],
        ["--socket", "/run/b.sock", "token", "codex", "--min-ttl=30"],
        ["token", "codex", "--no-color", "--config=/c.toml"],
    ):
        assert fast_args(argv) is not None, argv
        check_agrees(argv)


def test_values_that_look_like_options_go_to_argparse() -> None:
    """``--account -x`` is a usage error to argparse; the fast path must not read it as a name."""
    for argv in (["token", "codex", "--account", "-x"], ["--socket", "--json", "token", "codex"]):
        assert fast_args(argv) is None, argv
