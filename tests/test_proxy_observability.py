"""What the auth proxy tells its owner: a log line for every request, however it ends; ``/metrics``;
the ``unauthorized`` code; and ``broker proxy-key --rotate``."""

from __future__ import annotations

import json
import re

from tests.conftest import DaemonProcess
from tests.fakes.llm_upstream import FakeLLM
from tests.helpers import wait_for
from tests.test_proxy import CHAT, KEY, PROXY, call, login_key, proxy_answer, read_then_hang_up, streamed_chat
from tests.test_refresh_rotation import metrics_text


def metrics(daemon: DaemonProcess) -> dict[str, float]:
    """``GET /metrics`` as ``{'name{labels}': value}``."""
    samples = {}
    for line in metrics_text(daemon).split("\r\n\r\n", 1)[1].splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def serve_openai_through_the_proxy(daemon: DaemonProcess, llm: FakeLLM) -> None:
    """A daemon with the proxy on, ``openai`` pointed at ``llm`` and logged in with its key."""
    daemon.write_config(f'{PROXY}\n[providers.openai]\nbase_url = "{llm.url}/v1"\n')
    daemon.start()
    login_key(daemon, "openai")


def hang_up_after_last_event(base_url: str, key: str) -> bytes:
    """A streamed request whose client reads up to the last event, then hangs up before the stream ends."""
    return read_then_hang_up(base_url, streamed_chat(base_url, key), b"fake")  # the last piece's text: " fake"


def test_a_client_hanging_up_after_the_last_event_gets_its_log_line_and_is_counted(daemon: DaemonProcess):
    with FakeLLM(style="openai", key=KEY, gate=True, chunks=["Hello", " fake"]) as llm:
        serve_openai_through_the_proxy(daemon, llm)
        answer = proxy_answer(daemon, "openai")
        llm.release()  # opens the gate after the first piece only: the stream's end waits, the client hangs up
        received = hang_up_after_last_event(answer["base_url"], answer["access_token"])
        assert llm.disconnected.wait(15), "the upstream request was not cancelled"
        assert b" 200 OK" in received.split(b"\r\n", 1)[0]

        def logged() -> list[str]:
            return [line for line in daemon.log().splitlines() if "proxy POST /openai/chat/completions" in line]

        wait_for(lambda: bool(logged()))  # written as the cancelled request ends, after the upstream is dropped
        lines = logged()
        assert len(lines) == 1, daemon.log()
        assert re.search(r"account=default -> 200, \d+ bytes, \d+ ms, client hung up after \d+ bytes", lines[0])
        seen = metrics(daemon)
        assert seen['broker_proxy_requests_total{provider="openai",status="200"}'] == 1
        assert seen['broker_proxy_cut_short_total{provider="openai",by="client"}'] == 1


def test_metrics_count_requests_by_provider_and_status_with_latency_and_bytes(daemon: DaemonProcess):
    with FakeLLM(style="openai", key=KEY) as llm:
        serve_openai_through_the_proxy(daemon, llm)
        answer = proxy_answer(daemon, "openai")
        url, auth = answer["base_url"] + "/chat/completions", {"Authorization": f"Bearer {answer['access_token']}"}
        bodies = [call(url, headers=auth)[2] for _ in range(3)]
        assert call(url, headers={})[0] == 401
        assert call(url.replace("/openai/", "/made-up-name/"), headers={})[0] == 401
        assert call(answer["base_url"] + "/nowhere", headers=auth)[0] == 404  # the upstream's own 404
        seen = metrics(daemon)
    assert seen['broker_proxy_requests_total{provider="openai",status="200"}'] == 3
    assert seen['broker_proxy_requests_total{provider="openai",status="404"}'] == 1
    assert seen['broker_proxy_requests_total{provider="openai",status="401"}'] == 1
    assert seen['broker_proxy_requests_total{provider="",status="401"}'] == 1, "a made-up name is no label"
    assert seen['broker_proxy_upstream_seconds_count{provider="openai"}'] == 4
    assert seen['broker_proxy_upstream_seconds_bucket{provider="openai",le="+Inf"}'] == 4
    assert 0 < seen['broker_proxy_upstream_seconds_sum{provider="openai"}'] < 4 * 10
    assert seen['broker_proxy_request_bytes_total{provider="openai"}'] == 4 * len(json.dumps(CHAT))
    assert seen['broker_proxy_response_bytes_total{provider="openai"}'] >= sum(len(b) for b in bodies)


def test_proxy_key_rotate_replaces_the_key_at_once_and_keeps_it_across_restarts(daemon: DaemonProcess):
    with FakeLLM(style="openai", key=KEY) as llm:
        serve_openai_through_the_proxy(daemon, llm)
        old = proxy_answer(daemon, "openai")
        assert daemon.cli("proxy-key").stdout.strip() == old["access_token"]
        rotated = daemon.cli("proxy-key", "--rotate")
        assert rotated.returncode == 0, rotated.stderr
        new_key = rotated.stdout.strip()
        assert new_key.startswith("brk-proxy-") and new_key != old["access_token"]
        url = old["base_url"] + "/chat/completions"
        status, _, body = call(url, headers={"Authorization": f"Bearer {old['access_token']}"})
        assert (status, json.loads(body)["error"]["code"]) == (401, "unauthorized")
        assert call(url, headers={"Authorization": f"Bearer {new_key}"})[0] == 200
        daemon.restart()
        assert proxy_answer(daemon, "openai")["access_token"] == new_key


def test_proxy_key_says_how_to_turn_the_proxy_on_when_it_is_off(daemon: DaemonProcess):
    daemon.start()
    result = daemon.cli("proxy-key")
    assert result.returncode == 2 and "the auth proxy is off" in result.stderr
