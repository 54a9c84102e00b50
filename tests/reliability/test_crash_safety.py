"""SIGKILL at random moments while refreshes rotate the refresh token, 200 times over.

The daemon is a real process on the file store, killed with SIGKILL while a client
asks it to refresh again and again, then started again. After every kill: the store
parses, the login is there, and the restarted daemon holds a refresh token the server
still honours, also when the kill fell between the server's rotation and the store's
write (the refresh helper journaled the answer; the restart replays it). No refresh
token is ever sent twice. A kill of the helper too loses such a login: the restarted
daemon then says so (``login_required``, naming the cut-short refresh) before it is ready.

Starting ``broker serve`` costs about two seconds of imports here, so each daemon is
forked from a process that imported broker once: the daemon itself (event loop, store,
socket) starts from nothing each time, as after a crash.
"""

from __future__ import annotations

import os
import random
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from broker.client import Client
from broker.core.errors import DaemonUnavailable
from broker.core.model import Credential
from tests.conftest import READY_TIMEOUT, DaemonProcess, acme_config
from tests.fakes.faulty_upstream import FaultyUpstream
from tests.fakes.oauth_server import FakeOAuthServer
from tests.reliability.conftest import acme_config as faulty_acme_config
from tests.reliability.conftest import file_store, seeded_credential

KILLS = 200
REFRESHES_PER_WINDOW = 2
"""A kill falls uniformly within this many refreshes' time after the refresh loop starts."""

ZYGOTE = r"""
import os, signal, sys
import broker.cli.cmd_serve, broker.daemon.main  # the slow imports, once
from broker.cli.main import main

signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
log_path = sys.argv[1]
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        os.environ["NOTIFY_SOCKET"] = line.strip()
        null, log = os.open(os.devnull, os.O_RDONLY), os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(null, 0), os.dup2(log, 1), os.dup2(log, 2)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        code = 70
        try:
            code = main(["serve", "--log-level", "debug"])
        finally:
            os._exit(code)  # never back into this loop
    print(pid, flush=True)
"""


class ForkedDaemons:
    """``broker serve`` processes forked from one that has imported broker already."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.zygote = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, str(daemon.log_path)],
            env=daemon.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.pid: int | None = None

    def start(self) -> int:
        assert self.zygote.stdin is not None and self.zygote.stdout is not None
        notify_path = self.daemon.root / f"notify-{os.urandom(4).hex()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
            listener.bind(str(notify_path))
            listener.settimeout(READY_TIMEOUT)
            self.zygote.stdin.write(f"{notify_path}\n")
            self.pid = int(self.zygote.stdout.readline())
            try:
                while b"READY=1" not in listener.recv(4096):
                    pass
            except TimeoutError:
                raise AssertionError(f"daemon not ready:\n{self.daemon.log()[-3000:]}") from None
            finally:
                notify_path.unlink(missing_ok=True)
        return self.pid

    def kill(self) -> None:
        """SIGKILL, then wait until the process is gone (a pidfd turns readable at its exit)."""
        assert self.pid is not None
        pidfd = os.pidfd_open(self.pid)
        try:
            os.kill(self.pid, signal.SIGKILL)
            readable, _, _ = select.select([pidfd], [], [], 10)
            assert readable, "the killed daemon did not exit"
        finally:
            os.close(pidfd)
        self.pid = None

    def close(self) -> None:
        if self.pid is not None:
            self.kill()
        self.zygote.communicate(timeout=10)


def refresh_until_killed(socket_path: Path, started: threading.Event, completed: list[int]) -> None:
    """POST /v1/refresh again and again until the daemon stops answering; adds how many completed."""
    done = 0
    with Client(socket_path, timeout=10) as client:
        started.set()
        while True:
            try:
                client.request("POST", "/v1/refresh/acme")
            except DaemonUnavailable:
                completed.append(done)
                return
            done += 1


def refresh_time(socket_path: Path) -> float:
    """How long one refresh takes here (the store's key may sit in a keyring over D-Bus): the median of five."""
    times = []
    with Client(socket_path, timeout=30) as client:
        for _ in range(5):
            start = time.monotonic()
            client.request("POST", "/v1/refresh/acme")
            times.append(time.monotonic() - start)
    return sorted(times)[2]


def account_entry(client: Client) -> dict[str, Any]:
    """The account as ``broker status`` shows it: state and last error."""
    listing = client.request("GET", "/v1/providers")
    (account,) = next(p for p in listing["providers"] if p["name"] == "acme")["accounts"]
    return dict(account)


def device_login(socket_path: Path, oauth: FakeOAuthServer) -> str:
    with Client(socket_path, timeout=30) as client:
        events = client.stream("POST", "/v1/login/acme", {})
        oauth.approve(next(events)["user_code"])
        done = next(events)
        assert done["event"] == "done", done
        return str(done["account"])


def the_login(daemon: DaemonProcess, account: str) -> Credential:
    """What the store file holds, read as a restarted daemon reads it: it must parse and hold the login."""
    (credential,) = file_store(daemon.state_dir).load()
    assert credential.key == ("acme", account) and credential.refresh_token
    return credential


def sent_refresh_tokens(oauth: FakeOAuthServer) -> Counter[str]:
    return Counter(
        form["refresh_token"]
        for method, path, form in oauth.requests
        if path == "/token" and form.get("grant_type") == "refresh_token"
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_sigkill_during_refreshes_leaves_a_parsable_store_and_the_login(
    daemon: DaemonProcess, oauth: FakeOAuthServer
):
    daemon.write_config(acme_config(oauth))
    forked = ForkedDaemons(daemon)
    rng = random.Random(5)
    completed = 0
    try:
        forked.start()
        account = device_login(daemon.socket_path, oauth)
        window = REFRESHES_PER_WINDOW * refresh_time(daemon.socket_path)
        for _ in range(KILLS):
            started, outcome = threading.Event(), list[int]()
            driver = threading.Thread(
                target=refresh_until_killed, args=(daemon.socket_path, started, outcome), daemon=True
            )
            driver.start()
            assert started.wait(10)
            time.sleep(rng.uniform(0, window))  # the random moment of the kill, not a wait for anything
            forked.kill()
            driver.join(10)
            assert outcome, "the refresh loop ended with the daemon"
            completed += outcome[0]

            the_login(daemon, account)  # the store as the kill left it parses and holds the login
            forked.start()  # ready only once a refresh the kill cut short has been finished or checked
            now = the_login(daemon, account)
            with Client(daemon.socket_path) as client:
                state = account_entry(client)
                served = client.request("GET", "/v1/token/acme")
            assert state["state"] == "ready", state["last_error"]  # the whole entry is long
            assert served["access_token"] == now.access_token
            assert oauth.valid_access_token(served["access_token"])
            assert oauth.valid_refresh_token(now.refresh_token or ""), "the login holds a live refresh token"
    finally:
        forked.close()

    assert completed > 0, "refreshes completed between kills: the kills fell at every point of one"
    sent = sent_refresh_tokens(oauth)
    assert [token for token, times in sent.items() if times > 1] == [], "no refresh token was sent twice"
    log = daemon.log()
    assert "Traceback" not in log
    for path in daemon.state_dir.rglob("*"):  # a kill mid-write may leave a temp file: never readable by others
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path.name
    recovered = log.count("recovering the answer of the refresh cut short")
    warnings.warn(
        f"{recovered} of {KILLS} SIGKILLs fell while a refresh was under way; "
        "each restart finished it from the refresh helper's journal",
        stacklevel=1,
    )


def helpers_of(pid: int) -> list[int]:
    """The refresh helpers (``python -m broker.daemon.redeem``) that process ``pid`` started."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or f"\nPPid:\t{pid}\n" not in (entry / "status").read_text():
                continue
            if b"broker.daemon.redeem" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def gone(pid: int, *, kill: bool = False) -> None:
    """Return once ``pid`` has exited (its pidfd turns readable), SIGKILLing it first if ``kill``."""
    pidfd = os.pidfd_open(pid)
    try:
        if kill:
            os.kill(pid, signal.SIGKILL)
        assert select.select([pidfd], [], [], 10)[0], f"process {pid} did not exit"
    finally:
        os.close(pidfd)


def kill_after_the_upstream_rotated(
    daemon: DaemonProcess, upstream: FaultyUpstream, *, helper_too: bool = False
) -> Credential:
    """Start the daemon, SIGKILL it once the upstream has rotated the refresh token but before its
    answer arrives (and its refresh helper with it, if ``helper_too``); the login as the store
    then holds it, its refresh token now spent."""
    file_store(daemon.state_dir).put(seeded_credential(upstream, time.time()))
    daemon.write_config(faulty_acme_config(upstream))
    daemon.start()
    upstream.hold(after_commit=True)
    refresh = daemon.popen("refresh", "acme")
    upstream.wait_held(1)  # the upstream has rotated; its answer has not left yet
    assert daemon.process is not None
    helpers = helpers_of(daemon.process.pid)
    assert len(helpers) == 1, "the refresh request went out through one helper"
    gone(daemon.process.pid, kill=True)
    daemon.process.wait()
    daemon.process = None
    if helper_too:
        gone(helpers[0], kill=True)
        upstream.release()
    else:
        upstream.release()
        gone(helpers[0])  # the helper, orphaned, gets the answer and journals it
    refresh.communicate(timeout=30)
    assert refresh.returncode == 69, "the client saw the daemon go away"
    assert upstream.counts["refreshed"] == 1, "the killed daemon's refresh reached the upstream"
    return the_login(daemon, "alice")


def test_a_kill_after_the_upstream_rotated_keeps_the_login(daemon: DaemonProcess):
    with FaultyUpstream() as upstream:
        stored = kill_after_the_upstream_rotated(daemon, upstream)
        assert stored.refresh_token in upstream.spent, "the store still holds the token the upstream rotated"
        (sealed,) = (daemon.state_dir / "journal").glob("*.sealed")
        assert stat.S_IMODE(sealed.stat().st_mode) == 0o600
        assert not any(token.encode() in sealed.read_bytes() for token in upstream.tokens()), "sealed, not plain"
        daemon.start()  # replays the answer the helper journaled, before it is ready
        with Client(daemon.socket_path) as client:
            entry = account_entry(client)
            served = client.request("GET", "/v1/token/acme")
        assert entry["state"] == "ready", entry
        recovered = the_login(daemon, "alice")
        assert recovered.refresh_token in upstream.live, "the rotated refresh token was kept"
        assert served["access_token"] == recovered.access_token
        assert upstream.counts["reused"] == 0, "the spent refresh token was never sent again"
        assert not (daemon.state_dir / "refreshing.json").exists()
        assert not list((daemon.state_dir / "journal").glob("*.sealed")), "the journal is cleared once stored"
        again = daemon.cli("refresh", "acme")
        assert again.returncode == 0, again.stderr


def test_a_login_lost_with_the_helper_too_is_reported_before_the_restarted_daemon_is_ready(
    daemon: DaemonProcess,
):
    with FaultyUpstream() as upstream:
        stored = kill_after_the_upstream_rotated(daemon, upstream, helper_too=True)
        assert (daemon.state_dir / "refreshing.json").exists(), "the cut-short refresh is on record"
        daemon.start()
        with Client(daemon.socket_path) as client:
            entry = account_entry(client)
        assert entry["state"] == "uncertain"
        assert "in the middle of its last refresh" in entry["last_error"]["message"]
        assert "broker refresh" in entry["last_error"]["hint"]
        assert upstream.counts["reused"] == 0, "a request that may have spent the token is not sent again by itself"
        assert the_login(daemon, "alice") == stored, "the login is kept until a check says it is dead"
        checked = daemon.cli("refresh", "acme")
        assert checked.returncode == 3, checked.stderr  # a person's check: the upstream says the token was spent
        assert upstream.counts["reused"] == 1
        with Client(daemon.socket_path) as client:
            assert account_entry(client)["state"] == "login_required"
        assert not (daemon.state_dir / "refreshing.json").exists()
