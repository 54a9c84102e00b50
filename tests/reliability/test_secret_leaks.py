"""No secret in any log, CLI output, error or exception text of a representative run.

One daemon process, two OAuth upstreams and an API key: a device login and a code-grant
login with a client secret, tokens, refreshes with rotation, upstream faults of every
kind, a revoked grant, bad requests, and every CLI command, with ``--json`` and without.
Afterwards every secret the upstreams issued or the user typed is searched for in the
daemon's log, every command's stdout and stderr (but the stdout of ``broker token`` and
``broker env``, which print tokens by design) and every error body of the socket API:
whole, and by its first and last 16 characters (a log that shortens a token still leaks
it). The in-process fault tests run the same search over their captured log records
(see ``conftest.py``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from broker.client import Client
from broker.core.errors import BrokerError
from tests.conftest import DaemonProcess, read_event
from tests.conftest import acme_config as oauth_config
from tests.fakes.faulty_upstream import FaultyUpstream
from tests.fakes.oauth_server import FakeOAuthServer
from tests.reliability.conftest import acme_config as faulty_config
from tests.reliability.conftest import file_store, seeded_credential

API_KEY = "sk-leakcheck-4f1c9a7e2b6d8035aa91c3e7f0b24d6e"
BAD_API_KEY = "sk-leakcheck bad 9d2e7c41b08f5a36e1d4c7b92a0f3e58"
CLIENT_SECRET = "s3cret"
"""The fake server's confidential client (``broker-secret``)."""
PRINTS_TOKENS = {"token", "env"}
"""Commands whose stdout is the token by design."""


@dataclass
class Transcript:
    """Everything a person or a client saw during the run, and every secret in play."""

    texts: list[tuple[str, str]] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)

    def run(self, daemon: DaemonProcess, *args: str, input: str | None = None, ok: bool = True) -> str:
        result = daemon.cli(*args, input=input)
        self.add_process(args, result.stdout, result.stderr)
        if ok:
            assert result.returncode == 0, (args, result.stderr)
        else:
            assert result.returncode != 0, args
        return result.stdout

    def add_process(self, args: Iterable[str], stdout: str, stderr: str) -> None:
        args = tuple(args)
        name = " ".join(args)
        if args[0] not in PRINTS_TOKENS:
            self.texts.append((f"stdout of broker {name}", stdout))
        self.texts.append((f"stderr of broker {name}", stderr))

    def error(self, daemon: DaemonProcess, method: str, path: str, body: dict[str, object] | None = None) -> None:
        """A request the daemon refuses: its error text joins the transcript."""
        try:
            with Client(daemon.socket_path, timeout=30) as client:
                client.request(method, path, body)
        except BrokerError as exc:
            self.texts.append((f"error of {method} {path}", f"{exc.code} {exc} {exc.hint} {exc.args!r}"))
        else:
            raise AssertionError(f"{method} {path} succeeded")

    def leaks(self) -> list[str]:
        found = []
        for secret in self.secrets:
            probes = {secret, secret[:16], secret[-16:]} if len(secret) >= 24 else {secret}
            for where, text in self.texts:
                found += [f"{where} holds {probe[:6]}..." for probe in probes if probe in text]
        return found


def login_device(daemon: DaemonProcess, oauth: FakeOAuthServer, transcript: Transcript, provider: str) -> None:
    """``broker login`` as a person runs it (no --json): the code is read off stderr."""
    login = daemon.popen("login", provider, "--no-browser")
    assert login.stderr is not None
    shown: list[str] = []
    while not (line := login.stderr.readline()).startswith("    "):  # the code, on a line of its own
        assert line, "".join(shown)
        shown.append(line)
    oauth.approve(line.strip())
    stdout, rest = login.communicate(timeout=30)
    transcript.add_process(("login", provider), stdout, "".join(shown) + line + rest)
    assert login.returncode == 0, rest


def login_pkce(daemon: DaemonProcess, transcript: Transcript, provider: str) -> None:
    """A code-grant login, the browser played by urllib; the authorization code is a secret too."""
    login = daemon.popen("login", provider, "--no-browser", "--json")
    opened = read_event(login)
    assert opened["event"] == "open"

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return None

    try:
        urllib.request.build_opener(NoRedirect).open(opened["url"], timeout=10)
        raise AssertionError("the authorization endpoint did not redirect")
    except urllib.error.HTTPError as redirect:
        location = str(redirect.headers["Location"])
    transcript.secrets.add(parse_qs(urlsplit(location).query)["code"][0])
    with urllib.request.urlopen(location, timeout=10) as landing:
        transcript.texts.append(("the browser's landing page", landing.read().decode()))
    stdout, stderr = login.communicate(timeout=30)
    transcript.add_process(("login", provider, "--json"), json.dumps(opened) + "\n" + stdout, stderr)
    assert login.returncode == 0, stderr


def test_no_token_or_secret_appears_in_any_log_output_or_error(daemon: DaemonProcess, oauth: FakeOAuthServer):
    transcript = Transcript()
    with FaultyUpstream() as flaky:
        file_store(daemon.state_dir).put(seeded_credential(flaky, time.time()).replace(provider="flaky"))
        daemon.write_config(
            oauth_config(oauth)
            + oauth_config(oauth, flow="pkce")
            .replace("[providers.acme]", "[providers.acme-pkce]")
            .replace('client_id = "broker-cli"', f'client_id = "broker-secret"\nclient_secret = "{CLIENT_SECRET}"')
            + faulty_config(flaky).replace("[providers.acme]", "[providers.flaky]")
        )
        daemon.start()
        run = transcript.run

        for args in (("providers",), ("providers", "--json"), ("status",), ("status", "--json")):
            run(daemon, *args)
        login_device(daemon, oauth, transcript, "acme")
        login_pkce(daemon, transcript, "acme-pkce")
        run(daemon, "login", "openai", "--key-stdin", input=API_KEY + "\n")
        run(daemon, "login", "groq", "--key-stdin", input=BAD_API_KEY + "\n", ok=False)

        for provider in ("acme", "acme-pkce", "flaky", "openai"):
            run(daemon, "token", provider)
            run(daemon, "token", provider, "--json")
            run(daemon, "env", provider)
            run(daemon, "env", provider, "--json")
            run(daemon, "exec", provider, "--", "true")
            run(daemon, "exec", provider, "--", "/nonexistent/tool", ok=False)
        for provider in ("acme", "acme-pkce", "flaky"):
            run(daemon, "refresh", provider)
            run(daemon, "refresh", provider, "--json")
            run(daemon, "token", provider, "--min-ttl", "86400")

        oauth.fail_next("/token", count=3, status=500, body="upstream trouble")
        run(daemon, "refresh", "acme", ok=False)
        for kind in ("500", "429", "reset", "invalid_json"):
            flaky.inject(kind, 3)
            run(daemon, "refresh", "flaky", ok=False)
            run(daemon, "status", ok=False)  # a failing refresh needs the user: status says so in its exit
        run(daemon, "status", "--json", ok=False)
        oauth.revoke_all_refresh_tokens()
        run(daemon, "refresh", "acme", ok=False)
        run(daemon, "refresh", "acme", "--json", ok=False)
        run(daemon, "token", "acme", "--min-ttl", "86400")
        run(daemon, "status", ok=False)
        run(daemon, "status", "--json", ok=False)
        run(daemon, "refresh", "openai", ok=False)
        run(daemon, "token", "nope", ok=False)
        run(daemon, "logout", "acme-pkce")
        run(daemon, "logout", "acme-pkce", ok=False)
        run(daemon, "logout", "openai")

        transcript.error(daemon, "GET", "/v1/token/acme?min_ttl=soon")
        transcript.error(daemon, "POST", "/v1/login/acme", {"secret": API_KEY, "bogus": API_KEY})
        transcript.error(
            daemon, "POST", "/v1/login/acme/redirect", {"login_id": "x", "url": f"http://x/?code={API_KEY}"}
        )
        transcript.error(daemon, "POST", "/v1/refresh/nope")
        transcript.error(daemon, "DELETE", "/v1/credentials/acme-pkce")

        assert daemon.stop() == 0
        log = daemon.log()
        transcript.texts.append(("the daemon's log", log))
        transcript.secrets |= flaky.tokens() | oauth_tokens(oauth) | {API_KEY, BAD_API_KEY, CLIENT_SECRET}

    assert len(transcript.secrets) > 20, "the run handled many secrets"
    assert transcript.leaks() == []
    assert "Traceback" not in log
    assert "refresh failed provider=flaky" in log and "refreshed provider=acme" in log, "the log was searched"


def oauth_tokens(oauth: FakeOAuthServer) -> set[str]:
    """Every access and refresh token and device code the fake server issued (its own records)."""
    store = oauth._store
    with store.lock:
        return set(store.by_access) | set(store.by_refresh) | set(store.devices)


def test_tokens_rest_on_disk_only_encrypted(daemon: DaemonProcess):
    """After refreshes and a restart, no file under the daemon's HOME, state, runtime or config holds a token."""
    with FaultyUpstream() as upstream:
        file_store(daemon.state_dir).put(seeded_credential(upstream, time.time()))
        daemon.write_config(faulty_config(upstream))
        daemon.start()
        for _ in range(3):
            assert daemon.cli("refresh", "acme").returncode == 0
        daemon.restart()
        assert daemon.cli("token", "acme").stdout.strip() in upstream.access
        assert daemon.stop() == 0
        files = [path for path in daemon.root.rglob("*") if path.is_file()]
        assert daemon.state_dir / "credentials.enc" in files
        for path in files:
            data = path.read_bytes()
            for secret in upstream.tokens():
                assert secret.encode() not in data, f"{path} holds a token"
