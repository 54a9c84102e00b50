"""Containers on this machine reach the auth proxy on an address the config names, with its key.

A container network is a network namespace joined to the host by a veth pair: the test makes
exactly that (``ip netns``, ``ip link add ... type veth``; root) and sends requests from inside.
The proxy's extra address is configured before the link exists, as a daemon started at boot
would find Docker's bridge missing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.conftest import DaemonProcess
from tests.fakes.llm_upstream import FakeLLM
from tests.test_proxy import CHAT, KEY, PROXY, login_key, proxy_answer

REQUEST = """
import json, sys, urllib.error, urllib.request
url, key = sys.argv[1], sys.argv[2]
headers = {"Content-Type": "application/json", **({"Authorization": "Bearer " + key} if key else {})}
try:
    answer = urllib.request.urlopen(urllib.request.Request(url, sys.argv[3].encode(), headers), timeout=10)
    print(json.dumps([answer.status, json.loads(answer.read())]))
except urllib.error.HTTPError as exc:
    print(json.dumps([exc.code, json.loads(exc.read())]))
except OSError as exc:
    print(json.dumps([0, str(exc)]))
"""


@dataclass
class Link:
    namespace: str
    host_address: str
    """The host's end of the veth pair: what a container's gateway (Docker's 172.17.0.1) is."""
    inside_address: str

    def create(self, suffix: str) -> None:
        outside, inside = f"bkh{suffix}", f"bkc{suffix}"
        for command in (
            ["ip", "netns", "add", self.namespace],
            ["ip", "link", "add", outside, "type", "veth", "peer", "name", inside],
            ["ip", "link", "set", inside, "netns", self.namespace],
            ["ip", "addr", "add", f"{self.host_address}/30", "dev", outside],
            ["ip", "link", "set", outside, "up"],
            ["ip", "netns", "exec", self.namespace, "ip", "addr", "add", f"{self.inside_address}/30", "dev", inside],
            ["ip", "netns", "exec", self.namespace, "ip", "link", "set", inside, "up"],
            ["ip", "netns", "exec", self.namespace, "ip", "link", "set", "lo", "up"],
        ):
            subprocess.run(command, check=True, capture_output=True, timeout=10)

    def post(self, url: str, key: str | None) -> tuple[int, object]:
        """A JSON POST from inside the namespace: (status, body), status 0 when nothing answered."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-c", REQUEST, url, key or "", json.dumps(CHAT)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        status, body = json.loads(result.stdout)
        return int(status), body


@pytest.fixture
def link() -> Iterator[tuple[Link, str]]:
    """Addresses for a veth pair in a private /30 of 10.250.0.0/16 (made by ``Link.create``), removed after."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        reason = "needs root and iproute2 (ip) to make a network namespace"
        if os.environ.get("BROKER_REQUIRE_SYSTEM_TOOLS") == "1":
            pytest.fail(f"BROKER_REQUIRE_SYSTEM_TOOLS=1 but the test {reason}", pytrace=False)
        pytest.skip(reason)
    suffix = secrets.token_hex(3)
    third, fourth = secrets.randbelow(256), secrets.randbelow(64) * 4
    net = f"10.250.{third}."
    made = Link(f"bk-{suffix}", f"{net}{fourth + 1}", f"{net}{fourth + 2}")
    try:
        yield made, suffix
    finally:
        subprocess.run(["ip", "link", "del", f"bkh{suffix}"], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", made.namespace], capture_output=True, timeout=10)


def listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a socket listening on ``port`` (``/proc/net/tcp``: state 0A)."""
    found = set()
    with open("/proc/net/tcp") as table:
        for row in list(table)[1:]:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_a_container_reaches_the_proxy_on_the_configured_bridge_address_with_the_key(
    daemon: DaemonProcess, link: tuple[Link, str]
):
    bridge, suffix = link
    with FakeLLM(style="openai", key=KEY) as llm:
        daemon.write_config(
            f'{PROXY}extra_addresses = ["{bridge.host_address}"]\n[providers.openai]\nbase_url = "{llm.url}/v1"\n'
        )
        daemon.start()  # before the bridge exists: IP_FREEBIND
        login_key(daemon, "openai")
        bridge.create(suffix)
        answer = proxy_answer(daemon, "openai")
        port = int(answer["base_url"].split(":")[2].split("/")[0])
        assert listening_addresses(port) == {"127.0.0.1", bridge.host_address}, "never a wildcard"
        inside_url = f"http://{bridge.host_address}:{port}/openai/chat/completions"

        status, body = bridge.post(inside_url, answer["access_token"])
        assert status == 200, body
        [seen] = llm.requests
        assert seen.headers["Authorization"] == f"Bearer {KEY}"
        assert answer["access_token"] not in json.dumps(dict(seen.headers))

        status, body = bridge.post(inside_url, None)
        assert (status, body["error"]["code"]) == (401, "unauthorized")  # type: ignore[index]
        status, _ = bridge.post(inside_url, "brk-proxy-guessed")
        assert status == 401 and len(llm.requests) == 1
        status, _ = bridge.post(f"http://127.0.0.1:{port}/openai/chat/completions", answer["access_token"])
        assert status == 0, "the container's loopback is its own: the proxy's loopback listener is out of reach"
        assert f"{bridge.host_address}:{port}" in daemon.log()


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "[::]:8788", "docker0", "172.17.0.1:99999"])
def test_a_wildcard_or_anything_but_an_ip_address_is_refused(daemon: DaemonProcess, address: str):
    daemon.write_config(f'[proxy]\nport = 0\nextra_addresses = ["{address}"]\n')
    result = daemon.cli("serve")
    assert result.returncode == 78
    assert "config.toml:3: proxy.extra_addresses:" in result.stderr


def test_extra_addresses_need_a_port(daemon: DaemonProcess):
    daemon.write_config('[proxy]\nextra_addresses = ["172.17.0.1"]\n')
    result = daemon.cli("serve")
    assert result.returncode == 78 and "needs [proxy] port" in result.stderr
