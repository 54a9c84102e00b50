"""A simulated Claude Code rewrites its file while broker refreshes the same login.

Many rounds of: the CLI rewriting the file (by rename, or in place in pieces so broker
can catch it half-written) at the same moment broker's refresh comes due, and now and
then the CLI refreshing on its own first. Through all of it no refresh token may be
redeemed twice, the file must end every round parseable and holding a live refresh
token, and broker must serve what the file holds.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tests.fakes.refresh_server import RefreshServer
from tests.followed_harness import RaceSide, SimulatedCli, race
from tests.test_followed_claude import KEY, Claude, start

ROUNDS = 60


class SimulatedClaudeCode(SimulatedCli):
    """Does what Claude Code does to ``.credentials.json``, on the same (fake) clock as broker."""

    def __init__(self, claude: Claude, rng: random.Random) -> None:
        super().__init__(claude.path, rng)
        self.claude = claude

    def touch_settings(self) -> None:
        """Rewrite the file without refreshing: other fields change, the tokens are what it read."""
        doc = self.read()
        doc.setdefault("mcpOAuth", {})["touched"] = self.rng.random()
        self.rewrite(doc, in_place=self.rng.random() < 0.5)

    def refresh(self, server: RefreshServer) -> None:
        """Claude Code refreshing on its own (its clock said so, or a person ran /login)."""
        doc = self.read()
        oauth = doc["claudeAiOauth"]
        access, refresh = server.redeem(oauth["refreshToken"])
        oauth.update(accessToken=access, refreshToken=refresh, expiresAt=int((self.claude.clock.now() + 3600) * 1000))
        self.rewrite(doc, in_place=True)


def refresh_token_in(doc: dict[str, Any]) -> str:
    return str(doc["claudeAiOauth"]["refreshToken"])


async def test_no_refresh_token_is_lost_or_reused_while_the_cli_rewrites_its_file(short_tmp: Path):
    claude, server = await start(short_tmp)
    rng = random.Random(8628)
    cli = SimulatedClaudeCode(claude, rng)
    side = RaceSide(claude.daemon, claude.clock, KEY, claude.path, refresh_token_in)
    try:
        claude.write(claude.doc(*server.issue(), 3600))
        await claude.changed()
        tally = await race(
            side, cli, rounds=ROUNDS, rng=rng, touch=cli.touch_settings, cli_refresh=lambda: cli.refresh(server)
        )
        final = cli.read()["claudeAiOauth"]
        assert server.counts["reused"] == 0
        assert final["refreshToken"] in server.live
        assert (await claude.token())["access_token"] == final["accessToken"]
        assert final["accessToken"] in server.access
        assert tally.cli_refreshes > 5 and tally.broker_refreshes > 30
        assert server.counts["refreshed"] == tally.cli_refreshes + tally.broker_refreshes
    finally:
        await claude.daemon.stop()
        server.stop()
