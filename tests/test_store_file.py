"""The encrypted file store: the contract, plus modes, damage handling, atomicity and keys."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from broker.core.errors import StoreError
from broker.store.file_store import FileStore
from broker.store.keys import FileKey, KeyringKey, SystemdCredentialKey, key_source
from tests.store_contract import StoreContract, StoreFactory, credential


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def open_file_store(state: Path) -> Callable[[], FileStore]:
    return lambda: FileStore(state, FileKey(state / "key"))


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """Modes must come from the code, not from a friendly umask."""
    old = os.umask(0)
    yield
    os.umask(old)


class FakeKeyring:
    """Duck-typed keyring backend held in memory."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.data.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.data[(service, username)] = password


class TestFileStoreContract(StoreContract):
    @pytest.fixture
    def store_factory(self, open_file_store: Callable[[], FileStore]) -> StoreFactory:
        return open_file_store


# --- modes ---------------------------------------------------------------------------


def test_state_dir_store_file_and_key_file_are_private(open_file_store, state, umask_zero) -> None:
    open_file_store().put(credential())
    assert mode(state) == 0o700
    assert mode(state / "credentials.enc") == 0o600
    assert mode(state / "key") == 0o600


def test_a_state_dir_broker_did_not_make_keeps_its_mode(open_file_store, state) -> None:
    state.mkdir(mode=0o750)
    os.chmod(state, 0o750)
    open_file_store().put(credential())
    assert mode(state) == 0o750
    assert mode(state / "credentials.enc") == 0o600


def test_a_state_dir_others_can_write_to_is_refused(open_file_store, state) -> None:
    state.mkdir()
    os.chmod(state, 0o775)
    with pytest.raises(StoreError, match="can be written by others"):
        open_file_store()
    assert mode(state) == 0o775


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the directory to another uid")
def test_state_dir_of_another_user_is_refused(open_file_store, state) -> None:
    state.mkdir(mode=0o700)
    os.chown(state, 4242, 4242)
    with pytest.raises(StoreError, match="belongs to uid 4242"):
        open_file_store()


def test_reading_an_empty_store_creates_no_key(open_file_store, state) -> None:
    assert open_file_store().load() == []
    assert not (state / "key").exists()


def test_envelope_says_what_it_is_and_holds_no_plaintext(open_file_store, state) -> None:
    open_file_store().put(credential(access_token="visible-if-leaked"))
    raw = (state / "credentials.enc").read_bytes()
    envelope = json.loads(raw)
    assert envelope["format"] == "broker-store" and envelope["version"] == 1
    assert len(base64.b64decode(envelope["nonce"])) == 12
    assert b"visible-if-leaked" not in raw and b"codex" not in raw


def test_every_write_uses_a_fresh_nonce(open_file_store, state) -> None:
    store = open_file_store()
    nonces = set()
    for i in range(5):
        store.set_secret("n", str(i))
        nonces.add(json.loads((state / "credentials.enc").read_bytes())["nonce"])
    assert len(nonces) == 5


# --- damaged files -------------------------------------------------------------------


def garbage(path: Path, key: Path) -> None:
    path.write_bytes(b"\x00\xffnot a store at all")


def truncated(path: Path, key: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


def flipped_ciphertext_byte(path: Path, key: Path) -> None:
    envelope = json.loads(path.read_bytes())
    ciphertext = bytearray(base64.b64decode(envelope["ciphertext"]))
    ciphertext[len(ciphertext) // 2] ^= 0x01
    envelope["ciphertext"] = base64.b64encode(bytes(ciphertext)).decode()
    path.write_text(json.dumps(envelope))


def newer_format(path: Path, key: Path) -> None:
    envelope = json.loads(path.read_bytes())
    envelope["version"] = 2
    path.write_text(json.dumps(envelope))


def wrong_key(path: Path, key: Path) -> None:
    key.write_bytes(base64.b64encode(os.urandom(32)))


DAMAGE = {
    "garbage": (garbage, "not JSON"),
    "truncated": (truncated, "truncated"),
    "flipped ciphertext byte": (flipped_ciphertext_byte, "cannot be decrypted"),
    "newer format": (newer_format, "version 2"),
    "wrong key": (wrong_key, "key does not match"),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_file_is_reported_and_never_overwritten(open_file_store, state, damage) -> None:
    do_damage, words = damage
    path = state / "credentials.enc"
    open_file_store().put(credential())
    do_damage(path, state / "key")
    before = path.read_bytes()
    store = open_file_store()
    with pytest.raises(StoreError, match=words) as caught:
        store.load()
    assert str(path) in caught.value.message
    assert "mv " in caught.value.hint or "restore the key" in caught.value.hint
    for attempt in (
        lambda: store.put(credential(account="new")),
        lambda: store.delete(("codex", "me@example.com")),
        lambda: store.set_secret("proxy-key", "v"),
        store.load,
    ):
        with pytest.raises(StoreError):
            attempt()
    assert path.read_bytes() == before
    assert sorted(p.name for p in state.iterdir()) == ["credentials.enc", "key"]


def test_wrong_key_error_names_both_and_shows_no_key(open_file_store, state) -> None:
    open_file_store().put(credential())
    new_key = base64.b64encode(os.urandom(32))
    (state / "key").write_bytes(new_key)
    with pytest.raises(StoreError) as caught:
        open_file_store().load()
    text = caught.value.message + caught.value.hint
    assert "key file" in text and "restore the key" in caught.value.hint
    assert new_key.decode() not in text


def test_moving_a_damaged_file_aside_lets_a_login_start_afresh(open_file_store, state) -> None:
    path = state / "credentials.enc"
    open_file_store().put(credential())
    garbage(path, state / "key")
    store = open_file_store()
    with pytest.raises(StoreError) as caught:
        store.put(credential(account="new"))
    assert f"mv {path} {path}.bad" in caught.value.hint
    path.rename(state / "credentials.enc.bad")
    store.put(credential(account="new"))
    assert store.load() == [credential(account="new")]
    assert (state / "credentials.enc.bad").read_bytes() == b"\x00\xffnot a store at all"


def test_restoring_the_right_key_makes_the_file_readable_again(open_file_store, state) -> None:
    open_file_store().put(credential())
    good = (state / "key").read_bytes()
    wrong_key(state / "credentials.enc", state / "key")
    store = open_file_store()
    with pytest.raises(StoreError, match="key does not match"):
        store.load()
    (state / "key").write_bytes(good)
    assert store.load() == [credential()]


def test_missing_key_of_an_existing_file_is_reported_not_recreated(open_file_store, state) -> None:
    open_file_store().put(credential())
    (state / "key").unlink()
    store = open_file_store()
    with pytest.raises(StoreError, match="key is missing"):
        store.put(credential(account="new"))
    assert not (state / "key").exists()


# --- atomic writes -------------------------------------------------------------------


def test_writes_leave_no_temporary_files(open_file_store, state) -> None:
    store = open_file_store()
    for i in range(10):
        store.put(credential(account=str(i)))
    store.delete(("codex", "3"))
    assert sorted(p.name for p in state.iterdir()) == ["credentials.enc", "key"]


def test_failed_write_keeps_the_old_file_and_no_temporary(open_file_store, state, monkeypatch) -> None:
    store = open_file_store()
    store.put(credential())
    before = (state / "credentials.enc").read_bytes()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StoreError, match="No space left"):
        store.put(credential(account="new"))
    assert (state / "credentials.enc").read_bytes() == before
    assert sorted(p.name for p in state.iterdir()) == ["credentials.enc", "key"]


# --- where the key comes from --------------------------------------------------------


@pytest.mark.parametrize("encode", [lambda k: k, lambda k: base64.b64encode(k) + b"\n"], ids=["raw", "base64"])
def test_key_from_systemd_credentials_directory(tmp_path, state, monkeypatch, encode) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "broker.key").write_bytes(encode(os.urandom(32)))
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    source = key_source(state, FakeKeyring())  # type: ignore[arg-type]
    assert isinstance(source, SystemdCredentialKey)
    FileStore(state, source).put(credential())
    assert FileStore(state, key_source(state, None)).load() == [credential()]
    assert "systemd credential" in FileStore(state, source).describe()
    assert not (state / "key").exists()


def test_bad_systemd_credential_is_refused_without_showing_it(tmp_path, state, monkeypatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "broker.key").write_bytes(b"too-short-secret")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with pytest.raises(StoreError, match="not a key") as caught:
        FileStore(state, key_source(state, None)).put(credential())
    assert "too-short-secret" not in caught.value.message + caught.value.hint


def test_credentials_directory_without_our_key_is_ignored(tmp_path, state, monkeypatch) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert isinstance(key_source(state, None), FileKey)


def test_key_is_created_in_the_keyring_on_first_write(state, monkeypatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    ring = FakeKeyring()
    source = key_source(state, ring)  # type: ignore[arg-type]
    assert isinstance(source, KeyringKey)
    FileStore(state, source).put(credential())
    assert len(base64.b64decode(ring.data[("broker", "file-store-key")])) == 32
    assert not (state / "key").exists()
    assert FileStore(state, key_source(state, ring)).load() == [credential()]  # type: ignore[arg-type]


def test_existing_key_file_wins_over_an_empty_keyring(open_file_store, state, monkeypatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    open_file_store().put(credential())
    ring = FakeKeyring()
    source = key_source(state, ring)  # type: ignore[arg-type]
    assert isinstance(source, FileKey)
    assert FileStore(state, source).load() == [credential()]
    assert ring.data == {}


def test_key_file_is_kept_across_instances(open_file_store, state) -> None:
    open_file_store().put(credential())
    key = (state / "key").read_bytes()
    open_file_store().put(credential(account="two"))
    assert (state / "key").read_bytes() == key


class CountingKey:
    """A real key file that counts how often the store asks for the key."""

    kind = "file"

    def __init__(self, path: Path) -> None:
        self.inner = FileKey(path)
        self.asked = 0

    def describe(self) -> str:
        return self.inner.describe()

    def get(self, *, create: bool) -> bytes | None:
        self.asked += 1
        return self.inner.get(create=create)


def test_writes_after_a_refresh_ask_for_the_key_no_more(state) -> None:
    """The crash window after an upstream rotation is the write alone: no keyring round trip in it."""
    key = CountingKey(state / "key")
    store = FileStore(state, key)
    store.put(credential("a"))
    asked = key.asked
    for n in range(20):
        store.put(credential("a", access_token=f"rotated-{n}"))
    assert key.asked == asked
    (latest,) = FileStore(state, FileKey(state / "key")).load()
    assert latest.access_token == "rotated-19"


def test_a_file_another_writer_replaced_is_read_afresh(open_file_store, state) -> None:
    first, second = open_file_store(), open_file_store()
    first.put(credential("a"))
    second.put(credential("b"))
    first.put(credential("c"))
    assert sorted(c.provider for c in second.load()) == ["a", "b", "c"]


def test_temp_files_of_a_killed_writer_are_swept_but_not_a_recent_one(open_file_store, state) -> None:
    open_file_store().put(credential())
    stale, recent = state / ".credentials.enc.k1ll3d.tmp", state / ".credentials.enc.wr1t1ng.tmp"
    for leftover in (stale, recent):
        leftover.write_bytes(b'{"format": "broker-store", "half')
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    assert [c.account for c in open_file_store().load()] == ["me@example.com"]
    assert not stale.exists()
    assert recent.exists(), "a write in progress elsewhere is left alone"
