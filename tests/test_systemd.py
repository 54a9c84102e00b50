"""broker as a systemd user service: the units, socket activation, readiness and signals.

The units are checked by systemd's own ``systemd-analyze``; the daemon is started by
``systemd-socket-activate`` (the same LISTEN_FDS hand-over systemd does) and reports to a
NOTIFY_SOCKET the test listens on, as systemd would. A real ``systemd --user`` does not
run in CI. Missing tools skip these tests, unless BROKER_REQUIRE_SYSTEM_TOOLS=1.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from broker.providers.registry import build_registry

from broker.cli import service_units
from broker.core.config import load_settings
from broker.followed.catalog import followed_files
from tests.conftest import DaemonProcess, acme_config, read_event
from tests.fakes.oauth_server import FakeOAuthServer

REPO = Path(__file__).resolve().parent.parent
STOP_BOUND = 2.0
"""Seconds from SIGTERM to exit, in-flight requests included."""
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: \S")


def require_tool(name: str) -> str:
    """The tool's path; skip when it is missing, fail instead when CI says it must be there."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        message = f"{name} is not installed (Debian: systemd, openssh-server, openssh-client)"
        if os.environ.get("BROKER_REQUIRE_SYSTEM_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


class Notifications:
    """A NOTIFY_SOCKET the test reads, as systemd would (sd_notify(3) datagrams)."""

    def __init__(self, path: Path, timeout: float = 15.0) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(timeout)
        self.seen: list[str] = []

    def expect(self, assignment: str) -> list[str]:
        """Read datagrams until one carries ``assignment``; returns that datagram's lines."""
        while True:
            try:
                lines = self.sock.recv(65536).decode().splitlines()
            except TimeoutError:
                raise AssertionError(f"no {assignment} on NOTIFY_SOCKET; seen: {self.seen}") from None
            self.seen.extend(lines)
            if assignment in lines:
                return lines

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notifications(short_tmp: Path) -> Iterator[Notifications]:
    listener = Notifications(short_tmp / "notify")
    yield listener
    listener.close()


HANDOVER = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)
"""Puts the listening socket on fd 3 and execs argv with LISTEN_FDS, as systemd does."""


def serve(daemon: DaemonProcess, notify: Notifications, argv: list[str] | None = None) -> subprocess.Popen[bytes]:
    """The daemon behind systemd-socket-activate on its socket path, reporting to ``notify``.

    The test binds the socket first (0600 in a 0700 dir), as a socket unit does, and hands
    it over with LISTEN_FDS; the tool starts the daemon on the first connection.
    """
    launcher = require_tool("systemd-socket-activate")
    env = {**daemon.env, "NOTIFY_SOCKET": str(notify.path)}
    daemon.socket_path.parent.mkdir(mode=0o700, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(daemon.socket_path))
        daemon.socket_path.chmod(0o600)
        listener.listen(64)
        fd = listener.fileno()
        passed = [arg for name in sorted(env) for arg in ("-E", name)]
        command = argv or [sys.executable, "-m", "broker", "serve", "--log-level", "debug"]
        with daemon.log_path.open("ab") as log:
            daemon.process = subprocess.Popen(
                [sys.executable, "-c", HANDOVER, str(fd), launcher, *passed, *command],
                env=env,
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
    return daemon.process


def login(daemon: DaemonProcess, oauth: FakeOAuthServer) -> str:
    """A device login through the CLI; returns the access token the daemon then serves."""
    process = daemon.popen("login", "acme", "--no-browser", "--json")
    oauth.approve(read_event(process)["user_code"])
    assert read_event(process)["event"] == "done"
    assert process.wait(timeout=10) == 0
    token: str = daemon.request("GET", "/v1/token/acme")["access_token"]
    return token


def stop_and_time(process: subprocess.Popen[bytes]) -> tuple[int, float]:
    """SIGTERM, then the exit status and the seconds it took."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    status = process.wait(timeout=10)
    elapsed = time.monotonic() - started
    print(f"SIGTERM to exit: {elapsed:.2f}s")
    return status, elapsed


def assert_clean_log(log: str, *secrets: str) -> None:
    """One line an event with its level, and no secret anywhere."""
    for line in log.splitlines():
        if line.startswith(("Received ", "Listening on ", "Communication attempt on fd", "Execing ")):
            continue  # systemd-socket-activate's own lines
        assert LOG_LINE.match(line), f"not a one-line event with a level: {line!r}"
    for secret in secrets:
        assert secret and secret not in log, "a token reached the daemon's log"


# --- the unit files ---------------------------------------------------------------------


@pytest.fixture
def analyze_env(short_tmp: Path) -> dict[str, str]:
    """systemd-analyze --user needs XDG_RUNTIME_DIR; %h/.local/bin/broker must exist for verify."""
    home = short_tmp / "analyze-home"
    (home / ".local" / "bin").mkdir(parents=True)
    (home / ".local" / "bin" / "broker").symlink_to(Path(sys.executable).parent / "broker")
    runtime = short_tmp / "analyze-run"
    runtime.mkdir(mode=0o700)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}


def systemd_analyze(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("systemd-analyze")
    return subprocess.run([tool, *args], env=env, capture_output=True, text=True, timeout=60, cwd=env["HOME"])


def test_repo_units_are_the_units_broker_renders() -> None:
    assert (REPO / "systemd" / "broker.socket").read_text() == service_units.render_socket()
    assert (REPO / "systemd" / "broker.service").read_text() == service_units.render_service(service_units.GENERIC)


def test_repo_units_pass_systemd_analyze_verify_without_warnings(analyze_env: dict[str, str]) -> None:
    units = [str(REPO / "systemd" / name) for name in ("broker.socket", "broker.service")]
    done = systemd_analyze(analyze_env, "verify", "--user", "--man=no", *units)
    assert done.returncode == 0, done.stderr
    assert done.stdout + done.stderr == "", "systemd-analyze warned about the units"


def test_service_exposure_is_below_three(analyze_env: dict[str, str]) -> None:
    unit = str(REPO / "systemd" / "broker.service")
    done = systemd_analyze(analyze_env, "security", "--offline=true", "--user", "--no-pager", unit)
    match = re.search(r"Overall exposure level for broker\.service: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    print(f"exposure: {match.group(1)}")
    assert float(match.group(1)) < 3.0


def test_every_followed_cli_file_lies_in_a_directory_the_service_may_write() -> None:
    """A provider that follows a new CLI file needs its directory in ``ReadWritePaths=``."""
    env = {"HOME": "/home/me"}
    registry = build_registry(load_settings(env).root.section("providers"))
    writable = [Path(directory.replace("%h", "/home/me")) for directory in service_units.FOLLOWED_DIRS]
    files = followed_files(registry, env)
    followed = [path for f in files for path in (f.path, *(lock.path for lock in (*f.refresh_locks, *f.write_locks)))]
    assert followed, "no provider follows a file: this test would check nothing"
    assert [str(path) for path in followed if not any(path.is_relative_to(d) for d in writable)] == []


# --- broker install-service -------------------------------------------------------------


def unit_dir(daemon: DaemonProcess) -> Path:
    return Path(daemon.env["XDG_CONFIG_HOME"]) / "systemd" / "user"


def directive(unit: str, key: str) -> str:
    values = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{key}=")]
    assert len(values) == 1, f"{key}= appears {len(values)} times"
    return values[0]


def test_install_service_writes_both_units_and_prints_the_enable_command(
    daemon: DaemonProcess, analyze_env: dict[str, str]
) -> None:
    done = daemon.cli("install-service")
    assert done.returncode == 0, done.stderr
    assert done.stdout == service_units.ENABLE_COMMAND + "\n"
    directory = unit_dir(daemon)
    for name in ("broker.socket", "broker.service"):
        assert (directory / name).stat().st_mode & 0o777 == 0o644
    assert list(directory.glob(".*")) == [], "a temporary file was left behind"
    service = (directory / "broker.service").read_text()
    assert directive(service, "ExecStart") == f"{Path(sys.executable).parent / 'broker'} serve"
    verify = systemd_analyze(
        analyze_env, "verify", "--user", "--man=no", str(directory / "broker.socket"), str(directory / "broker.service")
    )
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")


def test_install_service_from_a_checkout_runs_python_m_broker_with_the_checkout_on_pythonpath(
    daemon: DaemonProcess, short_tmp: Path, analyze_env: dict[str, str]
) -> None:
    """An interpreter with no broker of its own and no console script beside it (a bare checkout)."""
    bare = short_tmp / "bare" / "python3"
    bare.parent.mkdir()
    bare.symlink_to(os.path.realpath(sys.executable))
    done = subprocess.run(
        [str(bare), "-m", "broker", "install-service"], env=daemon.env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    service = (unit_dir(daemon) / "broker.service").read_text()
    assert directive(service, "ExecStart") == f"{bare} -m broker serve"
    assert f'"PYTHONPATH={REPO}"' in directive(service, "Environment")
    assert "private /tmp hides" in done.stderr  # the test's checkout of python lives in /tmp
    verify = systemd_analyze(analyze_env, "verify", "--user", "--man=no", str(unit_dir(daemon) / "broker.service"))
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")


def test_install_service_uninstall_removes_units_and_enablement_links(daemon: DaemonProcess) -> None:
    assert daemon.cli("install-service").returncode == 0
    directory = unit_dir(daemon)
    (directory / "sockets.target.wants").mkdir()
    (directory / "sockets.target.wants" / "broker.socket").symlink_to("../broker.socket")
    done = daemon.cli("install-service", "--uninstall")
    assert done.returncode == 0, done.stderr
    assert done.stdout == service_units.STOP_COMMAND + "\n"
    assert list(directory.iterdir()) == []


def test_installed_exec_start_answers_its_first_request_on_the_socket_systemd_passes(
    daemon: DaemonProcess, notifications: Notifications
) -> None:
    assert daemon.cli("install-service").returncode == 0
    service = (unit_dir(daemon) / "broker.service").read_text()
    process = serve(daemon, notifications, shlex.split(directive(service, "ExecStart")))
    health = daemon.request("GET", "/v1/health")
    assert health["status"] == "ok"
    assert health["pid"] == process.pid, "LISTEN_PID must be the daemon's own pid"
    assert "ready socket=systemd" in daemon.log(), "the daemon bound a socket of its own"


# --- socket activation and readiness ----------------------------------------------------


def test_readiness_and_a_readable_status_reach_notify_socket(
    daemon: DaemonProcess, notifications: Notifications
) -> None:
    serve(daemon, notifications)
    assert daemon.request("GET", "/v1/health")["status"] == "ok"
    ready = notifications.expect("READY=1")
    status = next(line for line in ready if line.startswith("STATUS="))
    assert re.fullmatch(r"STATUS=serving 0 credential\(s\), store: file", status)


def test_sigterm_announces_stopping_and_exits_zero(daemon: DaemonProcess, notifications: Notifications) -> None:
    process = serve(daemon, notifications)
    assert daemon.request("GET", "/v1/health")["status"] == "ok"
    notifications.expect("READY=1")
    status, elapsed = stop_and_time(process)
    assert status == 0
    assert elapsed < STOP_BOUND
    notifications.expect("STOPPING=1")


# --- SIGTERM with work in flight --------------------------------------------------------


class HeldTokenEndpoint:
    """A token endpoint in front of the fake server that can hold one request until released.

    It records the secrets it relays, so a test can look for them in the daemon's log.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.holding = False
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.secrets: list[str] = []
        self.issued: list[str] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if endpoint.holding:
                    endpoint.holding = False
                    endpoint.arrived.set()
                    endpoint.release.wait(timeout=30)
                status, answer = endpoint.forward(body, self.headers.get("Authorization"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def forward(self, body: bytes, authorization: str | None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if authorization:
            headers["Authorization"] = authorization
        request = urllib.request.Request(self.upstream, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                status, answer = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, answer = exc.code, exc.read()
        if status == 200:
            tokens = json.loads(answer)
            self.issued.append(tokens["access_token"])
            self.secrets += [tokens["access_token"], tokens.get("refresh_token", "")]
        return status, answer

    def hold_next(self) -> None:
        self.holding = True

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def held(oauth: FakeOAuthServer) -> Iterator[HeldTokenEndpoint]:
    endpoint = HeldTokenEndpoint(f"{oauth.url}/token")
    yield endpoint
    endpoint.close()


def test_sigterm_lets_an_in_flight_refresh_finish_and_persist_within_two_seconds(
    daemon: DaemonProcess, notifications: Notifications, oauth: FakeOAuthServer, held: HeldTokenEndpoint
) -> None:
    daemon.write_config(acme_config(oauth, extra=f'token_endpoint = "{held.url}"'))
    process = serve(daemon, notifications)
    first = login(daemon, oauth)
    held.hold_next()
    answer: dict[str, Any] = {}
    client = threading.Thread(target=lambda: answer.update(daemon.request("POST", "/v1/refresh/acme")))
    client.start()
    assert held.arrived.wait(timeout=30), "the refresh never reached the token endpoint"

    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    notifications.expect("STOPPING=1")
    held.release.set()
    status = process.wait(timeout=10)
    elapsed = time.monotonic() - started
    print(f"SIGTERM to exit with a refresh in flight: {elapsed:.2f}s")
    client.join(timeout=10)

    assert status == 0
    assert elapsed < STOP_BOUND
    assert answer.get("state") == "ready", "the in-flight refresh was cut off"
    refreshed = held.issued[-1]
    assert refreshed != first and oauth.valid_access_token(refreshed)
    daemon.start()
    assert daemon.request("GET", "/v1/token/acme")["access_token"] == refreshed, (
        "the refresh was not persisted before exit"
    )
    assert_clean_log(daemon.log(), first, refreshed, *held.secrets)


def test_sigterm_stops_within_two_seconds_while_a_login_waits_for_the_user(
    daemon: DaemonProcess, notifications: Notifications, oauth: FakeOAuthServer
) -> None:
    daemon.write_config(acme_config(oauth))
    process = serve(daemon, notifications)
    pending = daemon.popen("login", "acme", "--no-browser", "--json")
    assert read_event(pending)["event"] == "verify"
    status, elapsed = stop_and_time(process)
    assert status == 0
    assert elapsed < STOP_BOUND
    pending.wait(timeout=10)
    assert pending.returncode != 0, "the login reported success from a stopped daemon"


# --- SIGHUP -----------------------------------------------------------------------------


BETA = """
[providers.beta]
type = "oauth"
client_id = "beta-cli"
token_endpoint = "https://id.beta.example/token"
device_authorization_endpoint = "https://id.beta.example/device"
scopes = ["openid"]
"""


def test_sighup_reloads_the_config_and_keeps_credentials_and_socket(
    daemon: DaemonProcess, notifications: Notifications, oauth: FakeOAuthServer
) -> None:
    daemon.write_config(acme_config(oauth))
    process = serve(daemon, notifications)
    token = login(daemon, oauth)
    notifications.expect("READY=1")
    assert "beta" not in [p["name"] for p in daemon.request("GET", "/v1/providers")["providers"]]

    daemon.write_config(acme_config(oauth) + BETA)
    process.send_signal(signal.SIGHUP)
    notifications.expect("RELOADING=1")
    ready = notifications.expect("READY=1")

    assert "STATUS=serving 1 credential(s), config reloaded" in ready
    assert "beta" in [p["name"] for p in daemon.request("GET", "/v1/providers")["providers"]]
    assert daemon.request("GET", "/v1/token/acme")["access_token"] == token
    assert daemon.request("GET", "/v1/health")["pid"] == process.pid
    assert process.poll() is None
    assert_clean_log(daemon.log(), token)


def test_sighup_with_a_broken_config_keeps_the_old_one_and_logs_why(
    daemon: DaemonProcess, notifications: Notifications, oauth: FakeOAuthServer
) -> None:
    daemon.write_config(acme_config(oauth))
    process = serve(daemon, notifications)
    token = login(daemon, oauth)
    notifications.expect("READY=1")

    daemon.write_config(acme_config(oauth) + "\n[providers.beta\n")
    process.send_signal(signal.SIGHUP)
    notifications.expect("RELOADING=1")
    ready = notifications.expect("READY=1")

    assert any(line.startswith("STATUS=config reload failed, still serving the old one:") for line in ready)
    assert re.search(r"ERROR broker\.daemon: reload failed, keeping the old config: \S*config\.toml:\d+:", daemon.log())
    assert "acme" in [p["name"] for p in daemon.request("GET", "/v1/providers")["providers"]]
    assert daemon.request("GET", "/v1/token/acme")["access_token"] == token
    assert_clean_log(daemon.log(), token)


# --- the sandbox ------------------------------------------------------------------------


MDWE_WRAPPER = (
    "import ctypes, os, sys\n"
    "if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:\n"  # PR_SET_MDWE, REFUSE_EXEC_GAIN
    "    sys.exit(97)\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)
"""Runs argv with writable+executable memory refused, inherited across exec (Linux 6.3+)."""


def test_daemon_serves_with_writable_executable_memory_refused(
    daemon: DaemonProcess, notifications: Notifications, oauth: FakeOAuthServer
) -> None:
    """MemoryDenyWriteExecute=yes (systemd's seccomp filter), approximated by the kernel's PR_SET_MDWE."""
    wrapper = [sys.executable, "-c", MDWE_WRAPPER, sys.executable]
    probe = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    refused = subprocess.run([*wrapper, "-c", probe], capture_output=True, text=True, timeout=30)
    if refused.returncode == 97:
        pytest.skip("this kernel has no PR_SET_MDWE")
    assert "PermissionError" in refused.stderr, "the wrapper does not refuse W+X memory"

    daemon.write_config(acme_config(oauth))
    serve(daemon, notifications, [*wrapper, "-m", "broker", "serve", "--log-level", "debug"])
    token = login(daemon, oauth)
    assert oauth.valid_access_token(token)
