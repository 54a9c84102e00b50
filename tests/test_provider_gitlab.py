"""``gitlab``: a personal access token, then GitLab's direct-access token, against a fake GitLab on loopback."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import DaemonProcess
from tests.fakes.gitlab import FakeGitLab
from tests.helpers import without_lasting

DIRECT = "/api/v4/code_suggestions/direct_access"
AGENTS = "/api/v4/ai/third_party_agents/direct_access"


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    with FakeGitLab() as server:
        yield server


def gitlab_config(gitlab: FakeGitLab, extra: str = "") -> str:
    return f'[providers.gitlab]\nenterprise_url = "{gitlab.url}"\n{extra}\n'


def login(daemon: DaemonProcess, token: str, *extra: str) -> dict[str, Any]:
    """``broker login gitlab --token-stdin --json``: its last event."""
    result = daemon.cli("login", "gitlab", "--token-stdin", "--json", *extra, input=token + "\n")
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events, result.stderr
    last: dict[str, Any] = events[-1]
    assert (result.returncode == 0) == (last["event"] == "done"), result.stderr
    return last


def token_json(daemon: DaemonProcess, account: str | None = None) -> dict[str, Any]:
    """The socket API's token answer (what ``broker token gitlab --json`` prints)."""
    answer: dict[str, Any] = daemon.request("GET", "/v1/token/gitlab" + (f"?account={account}" if account else ""))
    return answer


def test_pat_login_serves_the_direct_access_token_base_url_and_headers(
    daemon: DaemonProcess, gitlab: FakeGitLab
) -> None:
    pat = gitlab.add_pat("alice")
    daemon.write_config(gitlab_config(gitlab))
    daemon.start()
    assert without_lasting(login(daemon, pat)) == {"event": "done", "provider": "gitlab", "account": "alice"}

    result = daemon.cli("token", "gitlab", "--json")
    assert result.returncode == 0, result.stderr
    assert pat not in result.stdout, "the personal access token must never reach a client"
    token = json.loads(result.stdout)
    (exchange,) = gitlab.exchanges_at(DIRECT)
    assert token["access_token"] == exchange.token
    assert token["expires_at"] == exchange.expires_at
    assert token["base_url"] == gitlab.gateway_url
    assert token["headers"]["X-Gitlab-Realm"] == "saas"
    assert token["headers"]["X-Gitlab-Global-User-Id"] == "global-alice"
    assert token["api"] == "gitlab-code-suggestions"


def test_pat_from_the_gitlab_token_variable_logs_in(daemon: DaemonProcess, gitlab: FakeGitLab) -> None:
    daemon.write_config(gitlab_config(gitlab))
    daemon.start()
    daemon.env["GITLAB_TOKEN"] = gitlab.add_pat("alice")
    result = daemon.cli("login", "gitlab", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["account"] == "alice"
    assert gitlab.valid_gateway_token(token_json(daemon)["access_token"])


def test_pat_without_an_ai_scope_is_refused_naming_the_scope_it_needs(
    daemon: DaemonProcess, gitlab: FakeGitLab
) -> None:
    daemon.write_config(gitlab_config(gitlab))
    daemon.start()
    error = login(daemon, gitlab.add_pat("alice", scopes=("read_user",)))
    assert error["event"] == "error" and error["code"] == "login_failed"
    assert "api scope" in error["message"] and "ai_features" in error["message"]
    assert "personal_access_tokens" in error["hint"]
    assert daemon.cli("token", "gitlab").returncode == 3


def test_ai_features_only_pat_logs_in_though_it_cannot_read_the_user(daemon: DaemonProcess, gitlab: FakeGitLab) -> None:
    daemon.write_config(gitlab_config(gitlab))
    daemon.start()
    assert login(daemon, gitlab.add_pat("alice", scopes=("ai_features",)))["account"] == "default"
    assert gitlab.valid_gateway_token(token_json(daemon)["access_token"])


def test_unknown_pat_is_refused_at_login(daemon: DaemonProcess, gitlab: FakeGitLab) -> None:
    daemon.write_config(gitlab_config(gitlab))
    daemon.start()
    error = login(daemon, "glpat-mistyped")
    assert error["code"] == "login_failed"
    assert "did not accept the token" in error["message"]
    assert gitlab.exchanges == []


def test_account_without_duo_is_told_so(daemon: DaemonProcess, gitlab: FakeGitLab) -> None:
    gitlab.set_duo("alice", False)
    daemon.write_config(gitlab_config(gitlab))
    daemon.start()
    error = login(daemon, gitlab.add_pat("alice"))
    assert error["code"] == "login_failed"
    assert "GitLab Duo is not available" in error["message"]


def test_token_requests_never_call_direct_access_again(daemon: DaemonProcess, gitlab: FakeGitLab) -> None:
    daemon.write_config(gitlab_config(gitlab))
    daemon.start()
    login(daemon, gitlab.add_pat("alice"))
    with daemon.client() as client:
        answers = [client.token("gitlab") for _ in range(15)]
        # Asking for more time than the token has must not turn every request into an exchange.
        answers += [client.token("gitlab", min_ttl=86400) for _ in range(15)]
    assert {a["access_token"] for a in answers} == {gitlab.exchanges[0].token}
    assert len(gitlab.exchanges_at(DIRECT)) == 1


def test_renewal_exchanges_again_at_the_instance_the_login_named(daemon: DaemonProcess) -> None:
    with FakeGitLab(token_lifetime=300) as gitlab:
        daemon.start()  # no config: the instance comes only from --enterprise-url
        assert login(daemon, gitlab.add_pat("alice"), "--enterprise-url", gitlab.url)["event"] == "done"
        before = token_json(daemon)["access_token"]
        result = daemon.cli("refresh", "gitlab")
        assert result.returncode == 0, result.stderr
        after = token_json(daemon)["access_token"]
        assert after != before and gitlab.valid_gateway_token(after)
        assert len(gitlab.exchanges_at(DIRECT)) == 2


def test_rate_limited_renewal_keeps_serving_the_current_token(daemon: DaemonProcess) -> None:
    with FakeGitLab(token_lifetime=300, rate_limit=1) as gitlab:
        daemon.write_config(gitlab_config(gitlab))
        daemon.start()
        login(daemon, gitlab.add_pat("alice"))
        result = daemon.cli("refresh", "gitlab")
        assert result.returncode == 1
        assert "upstream_unavailable" in result.stderr and "429" in result.stderr
        assert token_json(daemon)["access_token"] == gitlab.exchanges[0].token


def test_revoked_pat_makes_the_renewal_ask_for_a_new_login(daemon: DaemonProcess) -> None:
    with FakeGitLab(token_lifetime=300) as gitlab:
        pat = gitlab.add_pat("alice")
        daemon.write_config(gitlab_config(gitlab))
        daemon.start()
        login(daemon, pat)
        gitlab.revoke(pat)
        result = daemon.cli("refresh", "gitlab")
        assert result.returncode == 3
        assert "login_required" in result.stderr and "broker login gitlab" in result.stderr


def test_two_accounts_side_by_side_the_first_is_the_default(daemon: DaemonProcess, gitlab: FakeGitLab) -> None:
    daemon.write_config(gitlab_config(gitlab))
    daemon.start()
    assert login(daemon, gitlab.add_pat("alice"))["account"] == "alice"
    assert login(daemon, gitlab.add_pat("bob"), "--account", "work")["account"] == "work"
    users = {e.token: e.user for e in gitlab.exchanges}
    assert users[token_json(daemon)["access_token"]] == "alice"
    result = daemon.cli("token", "gitlab", "--account", "work")
    assert result.returncode == 0, result.stderr
    assert users[result.stdout.strip()] == "bob"
    assert users[token_json(daemon, "alice")["access_token"]] == "alice"


def test_anthropic_route_serves_the_agents_token_at_the_gateway_proxy_without_x_api_key(
    daemon: DaemonProcess, gitlab: FakeGitLab
) -> None:
    daemon.write_config(gitlab_config(gitlab, 'serve = "anthropic"'))
    daemon.start()
    login(daemon, gitlab.add_pat("alice"))
    token = token_json(daemon)
    (exchange,) = gitlab.exchanges_at(AGENTS)
    assert exchange.body == {"feature_flags": {"DuoAgentPlatformNext": True}}, "gitlab-ai-provider's body"
    assert exchange.user_agent == "ai-sdk-gitlab/3.6.0"
    assert token["access_token"] == exchange.token
    assert token["base_url"] == "https://cloud.gitlab.com/ai/v1/proxy/anthropic"
    assert token["api"] == "anthropic"
    assert "x-gitlab-realm" in token["headers"]
    assert token["headers"]["User-Agent"] == "gitlab-ai-provider/3.6.0"
    assert "x-api-key" not in {k.lower() for k in token["headers"]}
    assert gitlab.exchanges_at(DIRECT) == []


def test_openai_responses_route_serves_the_openai_proxy_for_the_responses_api(
    daemon: DaemonProcess, gitlab: FakeGitLab
) -> None:
    """gitlab-ai-provider reaches the Codex models with the Responses API, the others with chat completions."""
    daemon.write_config(gitlab_config(gitlab, 'serve = "openai-responses"'))
    daemon.start()
    login(daemon, gitlab.add_pat("alice"))
    token = token_json(daemon)
    assert token["base_url"] == "https://cloud.gitlab.com/ai/v1/proxy/openai/v1"
    assert token["api"] == "openai-responses"
    assert gitlab.valid_gateway_token(token["access_token"])


def test_code_suggestions_route_carries_no_agent_identity(daemon: DaemonProcess, gitlab: FakeGitLab) -> None:
    daemon.write_config(gitlab_config(gitlab))
    daemon.start()
    login(daemon, gitlab.add_pat("alice"))
    (exchange,) = gitlab.exchanges_at(DIRECT)
    assert exchange.body is None and exchange.user_agent.startswith("broker/")
    assert "User-Agent" not in token_json(daemon)["headers"]


def test_configured_feature_flags_and_version_reach_the_exchange(daemon: DaemonProcess, gitlab: FakeGitLab) -> None:
    extra = (
        'serve = "openai"\n[providers.gitlab.feature_flags]\nduo_agent_platform = true\n'
        '[providers.gitlab.versions]\ngitlab_ai_provider = "3.7.0"\n'
    )
    daemon.write_config(gitlab_config(gitlab, extra))
    daemon.start()
    login(daemon, gitlab.add_pat("alice"))
    (exchange,) = gitlab.exchanges_at(AGENTS)
    assert exchange.body == {"feature_flags": {"DuoAgentPlatformNext": True, "duo_agent_platform": True}}
    assert exchange.user_agent == "ai-sdk-gitlab/3.7.0"
    assert token_json(daemon)["headers"]["User-Agent"] == "gitlab-ai-provider/3.7.0"
    described = next(p for p in daemon.request("GET", "/v1/providers")["providers"] if p["name"] == "gitlab")
    assert described["feature_flags"] == {"DuoAgentPlatformNext": True, "duo_agent_platform": True}
    assert described["versions"] == {"gitlab_ai_provider": "3.7.0"}


def test_the_fake_refuses_an_agents_exchange_without_gitlab_ai_providers_flag(gitlab: FakeGitLab) -> None:
    pat = gitlab.add_pat("alice")
    request = urllib.request.Request(
        gitlab.url + AGENTS,
        data=b"{}",
        headers={"Authorization": f"Bearer {pat}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400 and gitlab.exchanges == []


def test_instance_refusing_pats_at_direct_access_points_to_the_pat_proxy_fallback(daemon: DaemonProcess) -> None:
    with FakeGitLab(refuse_pats_at_direct_access=True) as gitlab:
        daemon.write_config(gitlab_config(gitlab))
        daemon.start()
        error = login(daemon, gitlab.add_pat("alice"))
        assert error["code"] == "login_failed"
        assert "only OAuth tokens" in error["message"]
        assert 'serve = "pat-proxy"' in error["hint"]


def test_pat_proxy_fallback_serves_the_pat_with_the_instance_proxy_base(
    daemon: DaemonProcess, gitlab: FakeGitLab
) -> None:
    pat = gitlab.add_pat("alice")
    daemon.write_config(gitlab_config(gitlab, 'serve = "pat-proxy"'))
    daemon.start()
    assert login(daemon, pat)["account"] == "alice"
    token = token_json(daemon)
    assert token["access_token"] == pat
    assert token["base_url"] == f"{gitlab.url}/api/v4/ai/llm/proxy"
    assert token["expires_at"] is None
    assert gitlab.exchanges == []
    described = next(p for p in daemon.request("GET", "/v1/providers")["providers"] if p["name"] == "gitlab")
    assert described["serve"] == "pat-proxy" and "unverified" in described["note"]


def test_providers_json_shows_endpoints_derived_from_the_instance_with_overrides(daemon: DaemonProcess) -> None:
    daemon.write_config(
        '[providers.gitlab]\nenterprise_url = "https://gitlab.example.com/"\n'
        '[providers.gitlab.endpoints]\nuser = "https://users.example.net/me"\n'
    )
    daemon.start()
    result = daemon.cli("providers", "--json")
    assert result.returncode == 0, result.stderr
    described = next(p for p in json.loads(result.stdout) if p["name"] == "gitlab")
    assert described["endpoints"] == {
        "instance": "https://gitlab.example.com",
        "user": "https://users.example.net/me",
        "direct_access": "https://gitlab.example.com/api/v4/code_suggestions/direct_access",
        "agents_direct_access": "https://gitlab.example.com/api/v4/ai/third_party_agents/direct_access",
    }
    assert described["flows"] == ["pat"]
    assert described["secret_env"] == "GITLAB_TOKEN"
    assert described["secret_prompt"] == "GitLab personal access token"
