"""The keyring store against the real OS secret store (run under tests/run-with-keyring).

Skipped where no real keyring answers, unless BROKER_REQUIRE_KEYRING=1 (CI), where a
silent skip would hide that the keyring path was never tested.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.core.errors import StoreError
from broker.store.file_store import FileStore
from broker.store.keyring_store import KeyringStore
from broker.store.keys import KeyringKey, key_source
from tests.store_contract import SECRET_NAMES, StoreContract, StoreFactory, credential, require_viable_keyring

pytestmark = pytest.mark.keyring


@pytest.fixture(scope="module")
def backend() -> Any:
    return require_viable_keyring()


@pytest.fixture
def service(backend: Any) -> Iterator[str]:
    """A service name of this test alone; every entry under it is removed afterwards."""
    name = f"broker-test-{uuid.uuid4().hex[:12]}"
    yield name
    purge(backend, name)


def purge(backend: Any, service: str) -> None:
    if hasattr(backend, "get_preferred_collection"):  # Secret Service: delete by attribute
        collection = backend.get_preferred_collection()
        with contextlib.closing(collection.connection):
            for item in collection.search_items({"service": service}):
                item.delete()
        return
    store = KeyringStore(service, backend)
    for cred in store.load():
        store.delete(cred.key)
    for username in ["index", "file-store-key", *(f"secret:{n}" for n in SECRET_NAMES)]:
        with contextlib.suppress(Exception):
            backend.delete_password(service, username)


class TestKeyringStoreContract(StoreContract):
    @pytest.fixture
    def store_factory(self, backend: Any, service: str) -> StoreFactory:
        return lambda: KeyringStore(service, backend)


class Recording:
    """Passes calls to the real backend and notes their order."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[str, str]] = []

    def get_password(self, service: str, username: str) -> str | None:
        self.calls.append(("get", username))
        return self.inner.get_password(service, username)  # type: ignore[no-any-return]

    def set_password(self, service: str, username: str, password: str) -> None:
        self.calls.append(("set", username))
        self.inner.set_password(service, username, password)

    def delete_password(self, service: str, username: str) -> None:
        self.calls.append(("delete", username))
        self.inner.delete_password(service, username)


def test_put_writes_the_credential_before_the_index(backend, service) -> None:
    recording = Recording(backend)
    KeyringStore(service, recording).put(credential())  # type: ignore[arg-type]
    writes = [c for c in recording.calls if c[0] == "set"]
    assert writes == [("set", "credential:codex/me@example.com"), ("set", "index")]
    assert json.loads(backend.get_password(service, "index")) == [["codex", "me@example.com"]]


def test_delete_drops_the_index_entry_before_the_secret(backend, service) -> None:
    KeyringStore(service, backend).put(credential())
    recording = Recording(backend)
    KeyringStore(service, recording).delete(("codex", "me@example.com"))  # type: ignore[arg-type]
    changes = [c for c in recording.calls if c[0] != "get"]
    assert changes == [("set", "index"), ("delete", "credential:codex/me@example.com")]
    assert backend.get_password(service, "credential:codex/me@example.com") is None


def test_index_entry_whose_secret_is_gone_is_skipped(backend, service, caplog) -> None:
    store = KeyringStore(service, backend)
    store.put(credential(account="gone"))
    store.put(credential(account="kept"))
    backend.delete_password(service, "credential:codex/gone")
    with caplog.at_level(logging.WARNING):
        assert store.load() == [credential(account="kept")]
    assert "codex/gone" in caplog.text


def test_damaged_entry_is_named_in_the_error(backend, service) -> None:
    store = KeyringStore(service, backend)
    store.put(credential())
    backend.set_password(service, "credential:codex/me@example.com", "{not json")
    with pytest.raises(StoreError, match=re.escape("credential:codex/me@example.com")) as caught:
        store.load()
    assert "keyring del" in caught.value.hint


def test_damaged_index_is_reported(backend, service) -> None:
    backend.set_password(service, "index", '{"codex": "me"}')
    with pytest.raises(StoreError, match="'index'"):
        KeyringStore(service, backend).load()


def test_secrets_live_under_their_own_names(backend, service) -> None:
    KeyringStore(service, backend).set_secret("proxy-key", "v")
    assert backend.get_password(service, "secret:proxy-key") == "v"


def test_file_store_key_can_live_in_the_keyring(backend, service, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    source = key_source(tmp_path, backend, service)
    assert isinstance(source, KeyringKey)
    FileStore(tmp_path, source).put(credential())
    assert backend.get_password(service, "file-store-key") is not None
    assert not (tmp_path / "key").exists()
    assert FileStore(tmp_path, key_source(tmp_path, backend, service)).load() == [credential()]
