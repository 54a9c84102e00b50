"""A tool started with ``broker exec NAME -- cmd`` keeps working for as long as it runs.

By default the child gets a key of its own on the auth proxy (a lease, ``broker.proxy_leases``),
so an expiring token, a replaced API key or a rotated proxy key never reaches it, and providers
that need headers work with clients that ignore ``OPENAI_CUSTOM_HEADERS``. Each test drives a
client that reads only the key and base URL, one request per line the test writes to it, and checks the
same run with ``--direct`` (the token itself) fails where the lease does not.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from broker.core.errors import BadRequest
from tests.conftest import DaemonProcess, acme_config
from tests.fakes.github import FakeGitHub
from tests.fakes.llm_upstream import FakeLLM
from tests.fakes.oauth_server import FakeOAuthServer
from tests.helpers import device_login, wait_for
from tests.test_openapi import pointer, validate
from tests.test_proxy import KEY, PROXY, call, copilot_config, copilot_login, copilot_upstream, login_key

CHILD = """
import json, os, sys, urllib.error, urllib.request
key, base = os.environ["OPENAI_API_KEY"], os.environ["OPENAI_BASE_URL"]
print(key[:9], flush=True)
body = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}).encode()
for _ in sys.stdin:
    request = urllib.request.Request(base + "/chat/completions", body, {"Authorization": "Bearer " + key,
                                     "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(request, timeout=30).read()
        print("ok", flush=True)
    except urllib.error.HTTPError as exc:
        print(exc.code, flush=True)
"""
"""A client that reads only ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``, as aider, opencode and the AI SDK
do (openai-python 3.x also reads ``OPENAI_CUSTOM_HEADERS``); one request per line on its stdin."""


class Child:
    """``broker exec NAME [flags] -- python CHILD``: one request per ``ask()``."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.key_prefix = self._line()

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the child ended: {self.process.stderr.read() if self.process.stderr else ''}"
        return line.strip()

    def ask(self) -> str:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        return self._line()


@contextmanager
def child(daemon: DaemonProcess, provider: str, *flags: str) -> Iterator[Child]:
    process = subprocess.Popen(
        [sys.executable, "-m", "broker", "exec", provider, *flags, "--", sys.executable, "-c", CHILD],
        env=daemon.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield Child(process)
    finally:
        process.kill()
        process.communicate(timeout=10)


@contextmanager
def short_lived_tokens(daemon: DaemonProcess) -> Iterator[tuple[FakeOAuthServer, FakeLLM]]:
    """The daemon started with ``acme`` logged in: OAuth tokens that live 2 s, an upstream that takes only live ones."""
    with (
        FakeOAuthServer(device_interval=0.05, access_token_lifetime=2) as oauth,
        FakeLLM(key=oauth.valid_access_token) as llm,
    ):
        daemon.write_config(acme_config(oauth).replace("https://llm.acme.example/v1", f"{llm.url}/v1"))
        daemon.start()
        device_login(daemon, oauth)
        yield oauth, llm


@pytest.mark.parametrize("flags", [(), ("--direct",)], ids=["lease", "direct"])
def test_a_child_keeps_working_after_the_token_it_started_with_expired(daemon: DaemonProcess, flags: tuple[str, ...]):
    with short_lived_tokens(daemon) as (oauth, llm), child(daemon, "acme", *flags) as tool:
        assert tool.ask() == "ok"
        first = llm.requests[-1].headers["Authorization"].removeprefix("Bearer ")
        wait_for(lambda: not oauth.valid_access_token(first))
        assert tool.ask() == ("ok" if not flags else "401")


@pytest.mark.parametrize("flags", [(), ("--direct",)], ids=["lease", "direct"])
def test_a_child_keeps_working_after_the_api_key_is_replaced(daemon: DaemonProcess, flags: tuple[str, ...]):
    accepted = [KEY]
    with FakeLLM(key=lambda key: key == accepted[0]) as llm:
        daemon.write_config(f'[providers.openai]\nbase_url = "{llm.url}/v1"\n')
        daemon.start()
        login_key(daemon, "openai")
        with child(daemon, "openai", *flags) as tool:
            assert tool.ask() == "ok"
            login_key(daemon, "openai", "sk-the-new-key")
            accepted[0] = "sk-the-new-key"  # the old key is revoked upstream
            assert tool.ask() == ("ok" if not flags else "401")


def test_a_child_keeps_working_after_the_proxy_key_is_rotated(daemon: DaemonProcess):
    with FakeLLM(key=KEY) as llm:
        daemon.write_config(f'{PROXY}[providers.openai]\nbase_url = "{llm.url}/v1"\n')
        daemon.start()
        login_key(daemon, "openai")
        with child(daemon, "openai") as tool:
            assert tool.key_prefix == "brk-exec-"
            assert tool.ask() == "ok"
            assert daemon.cli("proxy-key", "--rotate").returncode == 0
            assert tool.ask() == "ok"


@pytest.mark.parametrize("flags", [(), ("--direct",)], ids=["lease", "direct"])
def test_a_provider_that_needs_headers_works_with_a_client_that_ignores_custom_headers(
    daemon: DaemonProcess, flags: tuple[str, ...]
):
    with FakeGitHub(device_interval=0.05) as github, copilot_upstream(github) as llm:
        github.copilot_api = llm.url
        daemon.write_config(copilot_config(github))
        daemon.start()
        copilot_login(daemon, github)
        with child(daemon, "copilot", *flags) as tool:
            assert tool.ask() == ("ok" if not flags else "400")
        assert llm.requests[-1].headers.get("Copilot-Integration-Id") == (None if flags else "vscode-chat")


def test_a_lease_opens_only_its_provider_and_ends_with_its_process(daemon: DaemonProcess):
    with FakeLLM(key=KEY) as llm:
        daemon.write_config(
            f'[providers.openai]\nbase_url = "{llm.url}/v1"\n[providers.ollama]\nbase_url = "{llm.url}/v1"\n'
        )
        daemon.start()
        login_key(daemon, "openai")
        probe = "import os; print(os.environ['OPENAI_API_KEY'], os.environ['OPENAI_BASE_URL'])"
        result = daemon.cli("exec", "openai", "--", sys.executable, "-c", probe)
        assert result.returncode == 0, result.stderr
        key, base_url = result.stdout.split()
        headers = {"Authorization": f"Bearer {key}"}
        wait_for(lambda: call(base_url + "/chat/completions", headers=headers)[0] == 401)
        status, _, body = call(base_url + "/chat/completions", headers=headers)
        assert json.loads(body)["error"]["code"] == "unauthorized"
        with child(daemon, "openai") as tool:
            assert tool.ask() == "ok"
            lease = _lease_of(tool)
            other = base_url.replace("/openai", "/ollama") + "/chat/completions"
            status, _, body = call(other, headers={"Authorization": f"Bearer {lease}"})
            assert status == 401 and "opens only openai" in json.loads(body)["error"]["message"]


def _lease_of(tool: Child) -> str:
    environ = open(f"/proc/{tool.process.pid}/environ", "rb").read().split(b"\0")
    return next(v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"OPENAI_API_KEY="))


def test_a_caller_on_another_machine_gets_the_token_itself(daemon: DaemonProcess):
    daemon.write_config('[providers.openai]\nbase_url = "https://api.example/v1"\n')
    daemon.start()
    login_key(daemon, "openai")
    here = daemon.request("POST", "/v1/exec/openai", {"via": "auto"})
    elsewhere = daemon.request("POST", "/v1/exec/openai", {"via": "auto", "machine": "another-boot/4026531840"})
    assert here["source"] == "proxy" and here["access_token"].startswith("brk-exec-")
    assert elsewhere["source"] == "login" and elsewhere["access_token"] == KEY
    documented = pointer("paths", "/v1/exec/{provider}", "post", "responses", "200", "content", "application/json")
    for answer in (here, elsewhere):
        validate(answer, documented + "/schema")
    with pytest.raises(BadRequest) as refused:
        daemon.request("POST", "/v1/exec/openai", {"via": "proxy", "machine": "another-boot/4026531840"})
    assert refused.value.hint.startswith("run: broker exec openai --direct -- COMMAND"), refused.value.hint
