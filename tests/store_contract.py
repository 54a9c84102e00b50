"""The behaviour every Store backend keeps; each backend's test module subclasses it.

A subclass provides ``store_factory``: a callable that opens a *new* instance over the
same durable place, so the contract can prove that writes survive a restart.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from broker.core.model import Credential
from broker.store.base import Store

StoreFactory = Callable[[], Store]
SECRET_NAMES = ("proxy-key", "other")
"""Every secret name the contract writes, so backends can clean up after it."""


def credential(provider: str = "codex", account: str = "me@example.com", **changes: Any) -> Credential:
    base = Credential(
        provider=provider,
        account=account,
        access_token="at-" + provider + "-" + account,
        refresh_token="rt-" + provider,
        expires_at=1_900_000_000.5,
        issued_at=1_899_996_400.0,
        base_url="https://api.example.com/v1",
        api="openai",
        headers={"X-Org": "acme"},
        source="login",
        extra={"id_token": "eyJ.x.y", "scopes": ["a", "b"], "nested": {"n": 1}},
    )
    return base.replace(**changes)


class StoreContract:
    @pytest.fixture
    def store_factory(self) -> StoreFactory:
        raise NotImplementedError("a backend's test class provides store_factory")

    @pytest.fixture
    def store(self, store_factory: StoreFactory) -> Store:
        return store_factory()

    def test_new_store_is_empty(self, store: Store) -> None:
        assert store.load() == []

    def test_put_then_load_returns_every_field(self, store: Store) -> None:
        cred = credential()
        store.put(cred)
        assert store.load() == [cred]

    def test_put_replaces_the_credential_with_the_same_key(self, store: Store) -> None:
        store.put(credential())
        newer = credential(access_token="at-2", refresh_token="rt-2", expires_at=1_900_003_600.0)
        store.put(newer)
        assert store.load() == [newer]

    def test_delete_removes_the_credential(self, store: Store) -> None:
        store.put(credential())
        store.delete(("codex", "me@example.com"))
        assert store.load() == []

    def test_delete_of_a_missing_credential_is_not_an_error(self, store: Store) -> None:
        store.delete(("codex", "nobody"))
        assert store.load() == []

    def test_two_accounts_of_one_provider_are_kept_apart(self, store: Store) -> None:
        work, home = credential(account="work"), credential(account="home", access_token="other")
        store.put(work)
        store.put(home)
        assert sorted(store.load(), key=lambda c: c.account) == [home, work]
        store.delete(work.key)
        assert store.load() == [home]

    def test_secret_round_trips_and_replaces(self, store: Store) -> None:
        store.set_secret("proxy-key", "s1")
        store.set_secret("proxy-key", "s2")
        assert store.get_secret("proxy-key") == "s2"

    def test_missing_secret_is_none(self, store: Store) -> None:
        assert store.get_secret("other") is None

    def test_secrets_are_not_credentials(self, store: Store) -> None:
        store.set_secret("proxy-key", "s1")
        store.put(credential())
        assert [c.key for c in store.load()] == [("codex", "me@example.com")]
        assert store.get_secret("proxy-key") == "s1"

    def test_unicode_survives(self, store: Store) -> None:
        cred = credential(account="jürgen@例え.jp", access_token="tök€n-🔑", extra={"name": "Zoë ✓"})
        store.put(cred)
        store.set_secret("other", "ключ-🗝")
        assert store.load() == [cred]
        assert store.get_secret("other") == "ключ-🗝"

    def test_large_values_survive(self, store: Store) -> None:
        cred = credential(access_token="x" * 16_384, extra={"id_token": "y" * 8_192, "n": list(range(500))})
        store.put(cred)
        assert store.load() == [cred]

    def test_writes_survive_a_new_instance(self, store_factory: StoreFactory) -> None:
        first = store_factory()
        first.put(credential(account="a"))
        first.put(credential(account="b"))
        first.delete(("codex", "a"))
        first.set_secret("proxy-key", "kept")
        again = store_factory()
        assert again.load() == [credential(account="b")]
        assert again.get_secret("proxy-key") == "kept"

    def test_describe_names_the_backend_and_no_secret(self, store: Store) -> None:
        cred = credential()
        store.put(cred)
        store.set_secret("proxy-key", "s3cr3t-value")
        text = store.describe()
        assert text.startswith(store.name)
        assert cred.access_token not in text and "s3cr3t-value" not in text


def require_viable_keyring() -> Any:
    """The real OS keyring, or a skip; a failure instead when BROKER_REQUIRE_KEYRING=1 (CI)."""
    from broker.store.select import viable_keyring

    found, reason = viable_keyring()
    if found is None:
        if os.environ.get("BROKER_REQUIRE_KEYRING") == "1":
            pytest.fail(f"BROKER_REQUIRE_KEYRING=1 but no viable keyring: {reason}", pytrace=False)
        pytest.skip(f"no viable keyring: {reason} (run under tests/run-with-keyring)")
    return found
