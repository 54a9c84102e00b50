"""Tools on another machine reach the laptop's broker through OpenSSH Unix-socket forwarding.

A real sshd (Debian's openssh-server) runs on 127.0.0.1 with its own host key and config;
``ssh -R REMOTE:LOCAL`` forwards the daemon's socket the way ssh-agent forwarding does, and
the command on the far side runs ``broker token`` or curl against the forwarded socket. The
far side is this machine too, but everything it does goes through the SSH session.
"""

from __future__ import annotations

import getpass
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from tests.conftest import DaemonProcess, acme_config, isolated_env, read_event
from tests.fakes.oauth_server import FakeOAuthServer
from tests.test_systemd import assert_clean_log, require_tool

REPO = Path(__file__).resolve().parent.parent
SSHD_CONFIG = """\
ListenAddress 127.0.0.1
Port {port}
HostKey {root}/host_key
PidFile none
AuthorizedKeysFile {root}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
# the test's files live in a temp dir that StrictModes would refuse
StrictModes no
AllowStreamLocalForwarding yes
# what README asks of the remote host: a stale socket from the last session is replaced
StreamLocalBindUnlink yes
LogLevel VERBOSE
"""


@dataclass
class Sshd:
    """A private sshd on 127.0.0.1 and the ssh command line that reaches it."""

    root: Path
    port: int
    ssh: str

    def run(self, env: dict[str, str], forward: str, command: str) -> subprocess.CompletedProcess[str]:
        """``ssh -R forward HOST command``, failing when the forward cannot be set up."""
        argv = [
            self.ssh,
            "-F",
            "/dev/null",
            "-i",
            str(self.root / "client_key"),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.root / 'known_hosts'}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "StreamLocalBindUnlink=yes",
            "-p",
            str(self.port),
            "-R",
            forward,
            f"{getpass.getuser()}@127.0.0.1",
            command,
        ]
        clean = {k: v for k, v in env.items() if not k.startswith("SSH_")}
        return subprocess.run(argv, env=clean, capture_output=True, text=True, timeout=60)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def copy_output(source: IO[str], path: Path) -> None:
    with path.open("a") as log:
        for line in source:
            log.write(line)
            log.flush()


@pytest.fixture(scope="module")
def module_tmp() -> Iterator[Path]:
    """One short temp dir for the module's sshd and daemon (socket paths stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="bk-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def sshd(module_tmp: Path) -> Iterator[Sshd]:
    daemon_path = require_tool("sshd")
    ssh = require_tool("ssh")
    keygen = require_tool("ssh-keygen")
    privsep = Path("/run/sshd")  # sshd's privilege separation directory, made by its package's unit
    if not privsep.is_dir():
        if os.geteuid() != 0:
            pytest.skip("sshd needs /run/sshd, and only root may create it")
        privsep.mkdir(mode=0o755, parents=True)
    root = module_tmp / "sshd"
    root.mkdir(mode=0o700)
    for key in ("host_key", "client_key"):
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(root / key)], check=True, timeout=30)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    port = free_port()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {(root / 'host_key.pub').read_text()}")
    (root / "sshd_config").write_text(SSHD_CONFIG.format(port=port, root=root))
    process = subprocess.Popen(
        [daemon_path, "-D", "-e", "-f", str(root / "sshd_config")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    seen = []
    for line in process.stderr:  # bounded by the test timeout; ends if sshd exits
        seen.append(line)
        if f"Server listening on 127.0.0.1 port {port}." in line:
            break
    else:
        process.wait(timeout=10)
        pytest.fail(f"sshd did not start: {''.join(seen)}")
    threading.Thread(target=copy_output, args=(process.stderr, root / "sshd.log"), daemon=True).start()
    yield Sshd(root, port, ssh)
    process.terminate()
    process.wait(timeout=10)


@dataclass
class Laptop:
    """The near side: a daemon with an acme login, and the token it serves."""

    daemon: DaemonProcess
    oauth: FakeOAuthServer
    token: str


@pytest.fixture(scope="module")
def laptop(module_tmp: Path) -> Iterator[Laptop]:
    root = module_tmp / "laptop"
    root.mkdir(mode=0o700)
    daemon = DaemonProcess(root, isolated_env(root))
    with FakeOAuthServer(device_interval=0.05, access_token_lifetime=3600) as oauth:
        daemon.write_config(acme_config(oauth))
        daemon.start()
        try:
            login = daemon.popen("login", "acme", "--no-browser", "--json")
            oauth.approve(read_event(login)["user_code"])
            assert read_event(login)["event"] == "done"
            assert login.wait(timeout=10) == 0
            yield Laptop(daemon, oauth, daemon.request("GET", "/v1/token/acme")["access_token"])
        finally:
            daemon.stop()


def remote_socket(module_tmp: Path, name: str) -> Path:
    """The far side's end of the forward, like ``~/.broker.sock`` on a real remote host."""
    far = module_tmp / "far"
    far.mkdir(mode=0o700, exist_ok=True)
    return far / f"{name}.sock"


def far_side_broker(remote: Path, *args: str) -> str:
    """The command the remote shell runs: the same broker CLI, pointed at the forwarded socket."""
    command = ["env", f"BROKER_SOCKET={remote}", f"PYTHONPATH={REPO}", sys.executable, "-m", "broker", *args]
    return shlex.join(command)


def test_broker_token_on_the_far_side_of_ssh_gets_the_laptops_token(
    laptop: Laptop, sshd: Sshd, module_tmp: Path
) -> None:
    remote = remote_socket(module_tmp, "token")
    forward = f"{remote}:{laptop.daemon.socket_path}"
    done = sshd.run(laptop.daemon.env, forward, far_side_broker(remote, "token", "acme"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == laptop.token
    assert laptop.oauth.valid_access_token(done.stdout.strip())
    assert "refused a peer" not in laptop.daemon.log()
    assert_clean_log(laptop.daemon.log(), laptop.token)


def test_curl_on_the_far_side_of_ssh_gets_the_token_answer(laptop: Laptop, sshd: Sshd, module_tmp: Path) -> None:
    remote = remote_socket(module_tmp, "curl")
    curl = shlex.join(["curl", "-sS", "--unix-socket", str(remote), "http://broker/v1/token/acme"])
    done = sshd.run(laptop.daemon.env, f"{remote}:{laptop.daemon.socket_path}", curl)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["access_token"] == laptop.token
    assert answer["base_url"] == "https://llm.acme.example/v1"
    assert_clean_log(laptop.daemon.log(), laptop.token)


def test_forwarded_socket_on_the_far_side_is_private_to_the_user(laptop: Laptop, sshd: Sshd, module_tmp: Path) -> None:
    remote = remote_socket(module_tmp, "mode")
    stat = shlex.join(["stat", "-c", "%a %u", str(remote)])
    done = sshd.run(laptop.daemon.env, f"{remote}:{laptop.daemon.socket_path}", stat)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["600", str(os.getuid())]


def test_a_new_session_replaces_the_socket_the_last_one_left_behind(
    laptop: Laptop, sshd: Sshd, module_tmp: Path
) -> None:
    remote = remote_socket(module_tmp, "again")
    forward = f"{remote}:{laptop.daemon.socket_path}"
    assert sshd.run(laptop.daemon.env, forward, "true").returncode == 0
    assert remote.is_socket(), "sshd removed the socket; the README's StreamLocalBindUnlink advice is moot"
    again = sshd.run(laptop.daemon.env, forward, far_side_broker(remote, "token", "acme"))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == laptop.token
