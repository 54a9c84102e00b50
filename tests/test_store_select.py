"""Choosing the store: the keyring only where a real OS secret store answers, else the file."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import keyring.backend
import pytest
from keyring.backends import chainer, fail, null

from broker.core.errors import StoreError
from broker.core.model import Credential
from broker.store.file_store import FileStore
from broker.store.keys import FileKey
from broker.store.select import open_store, probe, viable_keyring
from tests.store_contract import require_viable_keyring

REPO = Path(__file__).resolve().parent.parent
CHOOSE = """
import json, sys
from pathlib import Path
from broker.core.errors import StoreError
from broker.store.select import open_store
try:
    store = open_store(sys.argv[1], Path(sys.argv[2]))
    print(json.dumps({"name": store.name, "describe": store.describe()}))
except StoreError as exc:
    print(json.dumps({"error": exc.message, "hint": exc.hint}))
"""


def choose(backend: str, state: Path, env: dict[str, str], wrap: list[str] | None = None) -> dict[str, str]:
    """Run open_store in a fresh interpreter: keyring caches its backend list per process."""
    base = {k: v for k, v in os.environ.items() if k not in {"DBUS_SESSION_BUS_ADDRESS", "PYTHON_KEYRING_BACKEND"}}
    base.pop("DISPLAY", None)
    base.pop("WAYLAND_DISPLAY", None)
    argv = [*(wrap or []), sys.executable, "-c", CHOOSE, backend, str(state)]
    done = subprocess.run(argv, env={**base, **env}, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def scratch_env(tmp_path: Path) -> dict[str, str]:
    """A HOME and XDG tree of the test alone, so no real keyring is ever touched."""
    home, runtime = tmp_path / "home", tmp_path / "runtime"
    home.mkdir()
    runtime.mkdir(mode=0o700)
    return {"HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_RUNTIME_DIR": str(runtime)}


@pytest.mark.parametrize("bus", [None, "unix:path=/nonexistent/bus"], ids=["unset", "nowhere"])
def test_auto_picks_file_without_a_dbus_session(tmp_path, bus) -> None:
    env = scratch_env(tmp_path) | ({"DBUS_SESSION_BUS_ADDRESS": bus} if bus else {})
    chosen = choose("auto", tmp_path / "state", env)
    assert chosen["name"] == "file"
    assert "keyring unavailable:" in chosen["describe"]
    if bus is None:
        assert "no D-Bus session" in chosen["describe"]


@pytest.mark.skipif(
    not (shutil.which("dbus-run-session") and shutil.which("gnome-keyring-daemon")),
    reason="needs dbus-run-session and gnome-keyring-daemon",
)
def test_auto_picks_file_when_the_secret_service_would_need_a_prompt(tmp_path) -> None:
    # A bus where gnome-keyring is only activatable: keyring.get_keyring() would pick the
    # Secret Service, but creating or unlocking the login collection needs a prompt.
    chosen = choose("auto", tmp_path / "state", scratch_env(tmp_path), wrap=["dbus-run-session", "--"])
    assert chosen["name"] == "file"
    assert "keyring unavailable: SecretService Keyring" in chosen["describe"]


def test_keyring_requested_without_a_viable_keyring_hints_the_file_store(tmp_path) -> None:
    chosen = choose("keyring", tmp_path / "state", scratch_env(tmp_path))
    assert "no OS secret store answers" in chosen["error"]
    assert "no D-Bus session" in chosen["error"]
    assert "BROKER_STORE=file" in chosen["hint"]


@pytest.mark.keyring
def test_auto_picks_the_keyring_when_a_real_secret_service_answers(tmp_path) -> None:
    require_viable_keyring()
    store = open_store("auto", tmp_path, service=f"broker-test-{uuid.uuid4().hex[:12]}")
    assert store.name == "keyring"
    assert "answered" in store.describe()


def test_unknown_backend_lists_the_choices(tmp_path) -> None:
    with pytest.raises(StoreError, match=r"'vault'.*auto, keyring, file"):
        open_store("vault", tmp_path)


@pytest.mark.parametrize(
    "name",
    ["keyring.backends.null.Keyring", "keyring.backends.fail.Keyring", "keyrings.alt.file.PlaintextKeyring"],
)
def test_explicit_backend_that_is_no_os_store_is_refused(monkeypatch, name) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", name)
    found, reason = viable_keyring()
    assert found is None
    assert reason == f"PYTHON_KEYRING_BACKEND={name} is not an OS secret store"


class PlaintextKeyring:
    """Stands for keyrings.alt's plaintext file, which keyring picks silently when installed."""

    priority = 1

    def get_password(self, service: str, username: str) -> str | None:
        return None


PlaintextKeyring.__module__ = "keyrings.alt.file"


def test_fallback_backends_are_never_chosen(monkeypatch) -> None:
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    rings: list[Any] = [fail.Keyring(), null.Keyring(), chainer.ChainerBackend(), PlaintextKeyring()]
    monkeypatch.setattr(keyring.backend, "get_all_keyring", lambda: rings)
    assert viable_keyring()[0] is None


class Stuck:
    """A keyring whose read waits for an unlock prompt that never comes."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def get_password(self, service: str, username: str) -> str | None:
        self.release.wait(10)
        return None


def test_probe_gives_up_on_a_keyring_that_does_not_answer() -> None:
    stuck = Stuck()
    try:
        assert "did not answer within 0.2 s" in (probe(stuck, timeout=0.2) or "")  # type: ignore[arg-type]
    finally:
        stuck.release.set()


class Locked:
    def get_password(self, service: str, username: str) -> str | None:
        raise RuntimeError("Failed to unlock the collection!")


def test_probe_reports_a_keyring_that_raises() -> None:
    assert "Failed to unlock" in (probe(Locked()) or "")  # type: ignore[arg-type]


@pytest.mark.keyring
def test_auto_keeps_the_file_store_that_already_holds_credentials(tmp_path: Path) -> None:
    """A keyring that answers today must not hide credentials the file already holds."""
    require_viable_keyring()
    FileStore(tmp_path, FileKey(tmp_path / "key")).put(Credential(provider="p", account="a", access_token="t"))
    store = open_store("auto", tmp_path, service=f"broker-test-{secrets.token_hex(4)}")
    assert store.name == "file"
    assert "already holds credentials" in store.describe()
    assert [c.key for c in store.load()] == [("p", "a")]
