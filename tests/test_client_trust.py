"""A client talks only to its user's daemon: a squatter of another uid gets no key and hands out no token.

Without ``XDG_RUNTIME_DIR`` the socket falls back to ``/tmp/broker-$UID``, which another
user can create first. The squatter here is a real process of uid 65534 listening where
the client looks; it records every byte it receives and answers like a daemon would.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.client import aget_token, get_token
from broker.core.errors import DaemonUnavailable
from tests.conftest import isolated_env

NOBODY = "65534"
AS_NOBODY = ["setpriv", "--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"]
KEY = "sk-test-" + "k" * 40

SQUATTER = r"""
import os, socket, sys
path, record = sys.argv[1], sys.argv[2]
os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
listener = socket.socket(socket.AF_UNIX)
listener.bind(path)
os.chmod(path, 0o777)
listener.listen(16)
print("listening", flush=True)
answer = b'{"access_token": "stolen", "base_url": "http://evil.example"}'
while True:
    conn, _ = listener.accept()
    conn.settimeout(2)
    try:
        data = conn.recv(65536)
    except OSError:
        data = b""
    with open(record, "ab") as out:
        out.write(data)
    if data:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer)
    conn.close()
"""

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a process as another uid")


@dataclass
class Squatter:
    socket_path: Path
    record: Path

    def received(self) -> bytes:
        return self.record.read_bytes()


@pytest.fixture
def squatter(short_tmp: Path) -> Iterator[Squatter]:
    """uid 65534 listening at ``<tmp>/shared/broker-0/broker.sock``, in a directory it created itself."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 that uid 65534 may run")
    shared = short_tmp / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    os.chmod(short_tmp, 0o755)
    record = shared / "received"
    record.touch()
    os.chmod(record, 0o666)
    path = shared / f"broker-{os.getuid()}" / "broker.sock"
    process = subprocess.Popen(
        [*AS_NOBODY, python, "-c", SQUATTER, str(path), str(record)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "listening"
    yield Squatter(path, record)
    process.kill()
    process.wait()


def client_env(root: Path, socket_path: Path) -> dict[str, str]:
    root.mkdir(mode=0o700)
    return {**isolated_env(root), "BROKER_SOCKET": str(socket_path)}


def broker(env: dict[str, str], *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args], env=env, input=input, capture_output=True, text=True, timeout=30
    )


def assert_refused(result: subprocess.CompletedProcess[str], squatter: Squatter) -> None:
    assert result.returncode == 69, result.stderr
    assert result.stdout == ""
    assert f"refusing to talk to {squatter.socket_path}" in result.stderr
    assert "uid 65534 (nobody)" in result.stderr


def test_no_key_and_no_token_request_reach_a_squatter_of_another_uid(squatter: Squatter, short_tmp: Path):
    env = client_env(short_tmp / "me", squatter.socket_path)

    login = broker(env, "login", "openai", "--key-stdin", input=KEY)
    token = broker(env, "token", "openai")
    exported = broker(env, "env", "openai")

    for result in (login, token, exported):
        assert_refused(result, squatter)
    assert "stolen" not in token.stdout + exported.stdout
    with pytest.raises(DaemonUnavailable, match="uid 65534"):
        get_token("openai", socket_path=squatter.socket_path)
    with pytest.raises(DaemonUnavailable, match="uid 65534"):
        asyncio.run(aget_token("openai", socket_path=squatter.socket_path))
    assert squatter.received() == b"", "the squatter got bytes from a client"


def test_a_link_from_a_directory_of_mine_to_a_squatter_is_refused_by_the_peer_check(
    squatter: Squatter, short_tmp: Path
):
    """The socket's directory is mine and closed to others; only the kernel's word on the peer is left."""
    mine = short_tmp / "me" / "run"
    env = client_env(short_tmp / "me", mine / "broker.sock")
    (mine / "broker.sock").symlink_to(squatter.socket_path)

    token = broker(env, "token", "openai")

    assert token.returncode == 69
    assert "is served by uid 65534 (nobody), not by you (uid 0 (root))" in token.stderr
    assert squatter.received() == b""
