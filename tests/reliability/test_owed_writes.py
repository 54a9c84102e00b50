"""A refresh whose new tokens cannot be written at once never sends its spent refresh token again.

Each test makes the write after the upstream's rotation fail or wait (a full disk, a
read-only state dir, the CLI's lock held past broker's wait, a SIGTERM in between) or
leaves the request without an answer, against upstreams that count every reuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.client import Client
from tests.conftest import DaemonProcess
from tests.fakes.clock import FakeClock
from tests.fakes.faulty_upstream import FaultyUpstream
from tests.helpers import owed_written
from tests.reliability.conftest import KEY, WAIT, Rig, file_store, seeded_credential, start_rig
from tests.reliability.conftest import acme_config as faulty_acme_config
from tests.reliability.test_crash_safety import account_entry, gone, helpers_of, the_login


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tiny filesystem of its own at ``path`` (root only: CI runs as root)."""
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)])
    if mounted.returncode != 0:
        if os.environ.get("BROKER_REQUIRE_SYSTEM_TOOLS") == "1":
            pytest.fail("cannot mount a tmpfs (CI runs as root and must)")
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(directory: Path) -> Path:
    """Write until the disk is full; the file that fills it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)
    return filler


def read_only(directory: Path) -> None:
    """Lay a read-only copy of ``directory`` over it (a remount would be refused: files are open)."""
    copy = directory.with_name(directory.name + "-ro")
    shutil.copytree(directory, copy)
    subprocess.run(["mount", "--bind", str(copy), str(directory)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)


async def refresh_during(rig: Rig, fault: object) -> str:
    """A person's refresh; ``fault()`` happens once the upstream has rotated and before its answer arrives.

    What the refresh answered (its error code, or ``ok``)."""
    rig.upstream.hold(after_commit=True)
    asked = asyncio.ensure_future(rig.call("POST", "/v1/refresh/acme"))
    await asyncio.to_thread(rig.upstream.wait_held, 1)
    fault()  # type: ignore[operator]
    rig.upstream.release()
    try:
        await asyncio.wait_for(asked, WAIT)
    except Exception as exc:
        return str(getattr(exc, "code", exc))
    return "ok"


async def settled(rig: Rig) -> None:
    """Once the owed tokens are in the store."""
    await owed_written(rig.clock, rig.daemon.refresher.owed(KEY), WAIT)


@pytest.mark.parametrize("fault", ["full", "read-only"])
async def test_a_state_dir_that_refuses_writes_during_a_refresh_loses_no_token_and_reuses_none(
    short_tmp: Path, fault: str
):
    state = short_tmp / "state-fs"
    with tmpfs(state, "1m"), FaultyUpstream() as upstream:
        (short_tmp / "rig").mkdir()
        rig = await start_rig(short_tmp / "rig", upstream, FakeClock(), state_dir=state / "broker")
        old = rig.credential
        try:
            filler: list[Path] = []
            if fault == "full":
                answer = await refresh_during(rig, lambda: filler.append(fill(state)))
            else:
                answer = await refresh_during(rig, lambda: read_only(state / "broker"))
            assert answer == "store_error"
            live = rig.credential
            assert live.refresh_token in upstream.live and live.refresh_token != old.refresh_token
            assert (await rig.token())["access_token"] == live.access_token, "the new tokens are served"
            assert rig.stored() == old, "the store could not take them"
            assert (await rig.cli("token", "acme")).returncode == 0
            assert upstream.counts["reused"] == 0 and upstream.counts["refreshed"] == 1

            for path in filler:
                path.unlink()
            if fault == "read-only":
                subprocess.run(["umount", str(state / "broker")], check=True)
            await settled(rig)
            assert rig.stored() == live, "written on the timer once the disk takes it"
            assert not (state / "broker" / "refreshing.json").exists()
            assert list((state / "broker" / "journal").glob("*.sealed")) == []
            assert (await rig.account())["state"] == "ready"
            assert upstream.counts["reused"] == 0
        finally:
            await rig.daemon.stop()


async def test_a_request_that_got_no_answer_is_not_sent_again_by_itself(short_tmp: Path):
    with FaultyUpstream() as upstream:
        rig = await start_rig(short_tmp, upstream, FakeClock(), timeout=0.5)
        try:
            upstream.inject("hang")
            error = await rig.error("POST", "/v1/refresh/acme")
            assert error.code == "refresh_uncertain"
            account = await rig.account()
            assert account["state"] == "uncertain"
            assert "broker refresh" in account["last_error"]["hint"]
            assert upstream.requests == 1, "no quick retry of a request that may have spent the token"
            rig.clock.advance(rig.credential.expires_at - rig.clock.now() + 1)  # the timer's moment, and past it
            with contextlib.suppress(Exception):
                await rig.token()  # a client's request does not send it either
            assert upstream.requests == 1
            assert (await rig.cli("refresh", "acme")).returncode == 0, "a person's check sends it once"
            assert upstream.requests == 2 and upstream.counts["reused"] == 0
            assert (await rig.account())["state"] == "ready"
        finally:
            await rig.daemon.stop()


def test_sigterm_between_the_answer_and_the_write_keeps_the_answer_for_the_next_start(daemon: DaemonProcess):
    with FaultyUpstream() as upstream:
        file_store(daemon.state_dir).put(seeded_credential(upstream, time.time()))
        daemon.write_config(faulty_acme_config(upstream))
        daemon.start()
        upstream.hold(after_commit=True)
        refresh = daemon.popen("refresh", "acme")
        upstream.wait_held(1)  # rotated; the answer waits
        assert daemon.process is not None
        (helper,) = helpers_of(daemon.process.pid)
        started = time.monotonic()
        daemon.process.send_signal(signal.SIGTERM)
        assert daemon.process.wait(timeout=5) == 0
        assert time.monotonic() - started < 2.0, "SIGTERM stops the daemon within 2 s"
        daemon.process = None
        upstream.release()
        gone(helper)  # the helper gets the answer and journals it
        refresh.communicate(timeout=30)
        assert list((daemon.state_dir / "journal").glob("*.sealed")), "the stop kept the journal"
        daemon.start()
        with Client(daemon.socket_path) as client:
            assert account_entry(client)["state"] == "ready"
        recovered = the_login(daemon, "alice")
        assert recovered.refresh_token in upstream.live, "the rotated refresh token was kept"
        assert upstream.counts["reused"] == 0 and upstream.counts["refreshed"] == 1
