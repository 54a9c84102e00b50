"""The refresh journal's files as a SIGKILL at any moment may leave them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker.daemon.journal import Journal

ANSWER = {"status": 200, "headers": {}, "text": "{}", "url": "https://auth.example/token", "digest": "d"}


class Killed(BaseException):
    """The process died here (SIGKILL cannot be caught: nothing after this point runs)."""


def test_a_discard_cut_short_after_any_step_never_leaves_a_mark_without_its_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # A mark without an answer means "a request went out and its answer was lost": the
    # restarted daemon then calls the login uncertain. After a handled refresh that is
    # false, so no point inside discard() may leave that state behind.
    real_unlink = Path.unlink
    for steps in range(3):
        journal = Journal(tmp_path / f"j{steps}.sealed", tmp_path / f"j{steps}.lock", os.urandom(32))
        journal.mark_sending()
        journal.write(ANSWER)
        done = 0

        def unlink_then_die(path: Path, missing_ok: bool = False, *, left: int = steps) -> None:
            nonlocal done
            if done == left:
                raise Killed
            done += 1
            real_unlink(path, missing_ok=missing_ok)

        monkeypatch.setattr(Path, "unlink", unlink_then_die)
        try:
            journal.discard()
        except Killed:
            pass
        monkeypatch.setattr(Path, "unlink", real_unlink)
        assert not (journal.was_sending() and journal.read() is None), f"killed after {steps} step(s)"
    assert journal.read() is None and not journal.was_sending(), "a whole discard forgets both"
