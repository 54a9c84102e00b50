# ruff: noqa: F401, F811 (the proxy fixtures of test_proxy are imported and used as parameters)
"""The audit trail says which process held which token, keeps no token, and stays small.

The callers are real processes: two scripts of different names run ``broker token`` the
way an agent's helper would; a refresh between them changes the token.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from broker.core.model import Credential
from broker.daemon.audit import AuditTrail
from broker.daemon.callers import Peer, Ucred
from tests.conftest import DaemonProcess, acme_config
from tests.fakes.clock import FakeClock
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import device_login
from tests.test_proxy import KEY, Proxied, call, proxied, shared_proxy


def fingerprint(token: str) -> str:
    """As README says to compute it: ``printf %s "$TOKEN" | sha256sum``, the first 12 hex digits."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def agent(daemon: DaemonProcess, name: str) -> tuple[int, str]:
    """Run a program called ``name`` that prints its pid, then fetches acme's token as a child."""
    path = daemon.root / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(f'#!/bin/sh\necho $$\n"{sys.executable}" -m broker token acme\n')
    path.chmod(0o755)
    done = subprocess.run([str(path)], env=daemon.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    pid, token = done.stdout.split()
    return int(pid), token


def audit(daemon: DaemonProcess, *args: str) -> list[dict[str, Any]]:
    shown = daemon.cli("audit", "--json", *args)
    assert shown.returncode == 0, shown.stderr
    entries: list[dict[str, Any]] = json.loads(shown.stdout)
    return entries


def handed_out(daemon: DaemonProcess, token: str) -> list[dict[str, Any]]:
    """Who was handed ``token``, found by its fingerprint alone."""
    return [entry for entry in audit(daemon, "--fingerprint", fingerprint(token)) if entry["event"] == "token"]


def test_a_tokens_fingerprint_tells_which_process_held_it(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    pid_a, token_a = agent(daemon, "agent-a")
    assert daemon.cli("refresh", "acme").returncode == 0
    pid_b, token_b = agent(daemon, "agent-b")
    assert token_a != token_b

    [held] = handed_out(daemon, token_a)

    assert held["event"] == "token" and (held["provider"], held["via"]) == ("acme", "socket")
    assert held["name"] == "broker" and held["exe"] == os.path.realpath(sys.executable)
    assert held["parents"][0] == {"pid": pid_a, "name": "agent-a"}
    assert held["pid"] != pid_a, "the caller is broker token, started by agent-a"
    [refresh] = [e for e in audit(daemon, "--provider", "acme") if e["event"] == "refresh"]
    assert refresh["result"] == "ok" and refresh["fingerprint"] == fingerprint(token_b)
    [later] = handed_out(daemon, token_b)
    assert later["parents"][0] == {"pid": pid_b, "name": "agent-b"}
    table = daemon.cli("audit", "--provider", "acme", "--since", "1h").stdout
    assert f"pid {held['pid']} broker < agent-a" in table and fingerprint(token_a) in table


def test_the_audit_holds_no_token_and_only_its_owner_may_read_it(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    token = daemon.cli("token", "acme").stdout.strip()
    assert daemon.cli("refresh", "acme").returncode == 0
    audit(daemon)  # written by now
    path = daemon.state_dir / "audit.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert fingerprint(token) in text
    for secret in (token, daemon.cli("token", "acme").stdout.strip(), *oauth.issued_refresh_tokens()):
        assert secret not in text


def test_one_connection_fetching_one_token_many_times_is_one_entry(daemon: DaemonProcess, oauth: FakeOAuthServer):
    daemon.write_config(acme_config(oauth))
    daemon.start()
    device_login(daemon, oauth)
    with daemon.client() as client:
        tokens = {client.token("acme")["access_token"] for _ in range(200)}
    [token] = tokens
    assert [entry["pid"] for entry in handed_out(daemon, token)] == [os.getpid()]


def test_a_proxied_request_is_audited_with_the_clients_address(proxied: Proxied):
    key = proxied.answer["access_token"]
    assert call(proxied.answer["base_url"] + "/chat/completions", headers={"x-api-key": key})[0] == 200
    [entry] = handed_out(proxied.daemon, KEY)
    assert entry["via"] == "proxy" and entry["pid"] is None
    assert entry["peer"].startswith("127.0.0.1:")


async def test_the_audit_file_stays_bounded(tmp_path: Path):
    trail = AuditTrail(tmp_path / "audit.jsonl", FakeClock(), max_bytes=4096)
    for n in range(500):
        credential = Credential(provider="acme", account="alice", access_token=f"token-{n}")
        trail.handed_out(Peer("socket", Ucred(os.getpid(), os.getuid())), credential)
        if n % 10 == 0 and n < 300:  # then one burst of 200 entries, far over the bound
            await trail.flush()
    await trail.flush()
    assert {path.name for path in tmp_path.iterdir()} <= {"audit.jsonl", "audit.jsonl.1"}
    assert sum(path.stat().st_size for path in tmp_path.iterdir()) <= 2 * 4096
    entries = await trail.entries()
    assert entries[-1]["fingerprint"] == fingerprint("token-499")
