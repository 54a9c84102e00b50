"""The audit trail: which process was handed which token, and every refresh.

When a refresh token is reused or a key leaks, someone must be able to say who held it.
So each hand-out records the time, provider, account, how it went out (``socket``,
``proxy``), the caller (pid, executable, name, systemd unit, the processes that started
it) and a fingerprint of the token: ``sha256:`` and the first 12 hex digits of the
SHA-256 of the access token (``printf %s "$TOKEN" | sha256sum``), never the token. Each
refresh records its outcome and the new token's fingerprint.

- One entry per connection and token: a tool that fetches the same token a thousand
  times over one connection is one entry, so the audit costs the token route nothing.
- Entries are written in batches by a worker thread, never on the event loop.
- ``audit.jsonl`` in the state directory, 0600; past ``MAX_BYTES`` (1 MiB) it becomes
  ``audit.jsonl.1`` (the one before is dropped): at most twice that on disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from broker.core.clock import Clock
from broker.core.model import Credential, CredentialKey
from broker.core.trust import Untrusted, ensure_private_dir
from broker.daemon.callers import Peer

log = logging.getLogger("broker.audit")

FILE_NAME = "audit.jsonl"
MAX_BYTES = 1 << 20
FLUSH_DELAY = 0.5
"""Seconds entries may wait in memory, so a burst is one write."""


def fingerprint(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


class AuditTrail:
    def __init__(self, path: Path, clock: Clock, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self.clock = clock
        self.max_bytes = max_bytes
        self._pending: list[dict[str, Any]] = []
        self._flushing: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()

    def handed_out(self, peer: Peer, credential: Credential) -> None:
        """``credential``'s token went to ``peer``: recorded once per connection and token."""
        token = credential.access_token
        if token in peer.audited or not token:
            return
        peer.audited.add(token)
        self._add("token", credential.key, fingerprint(token), peer.audit_fields())

    def refreshed(self, key: CredentialKey, credential: Credential | None, result: str) -> None:
        """A refresh ended: ``ok`` with the new credential, or an error code."""
        token = credential.access_token if credential is not None else ""
        self._add("refresh", key, fingerprint(token) if token else None, {"via": "daemon", "result": result})

    def _add(self, event: str, key: CredentialKey, stamp: str | None, fields: dict[str, Any]) -> None:
        entry = {"time": round(self.clock.now(), 3), "event": event, "provider": key[0], "account": key[1]}
        self._pending.append({**entry, "fingerprint": stamp, **fields})
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._flush_soon)

    def _flush_soon(self) -> None:
        asyncio.get_running_loop().create_task(self.flush(), name="audit flush")

    async def flush(self) -> None:
        """Write what is pending (in a worker thread)."""
        async with self._lock:
            if self._flushing is not None:
                self._flushing.cancel()
                self._flushing = None
            batch, self._pending = self._pending, []
            if batch:
                try:
                    await asyncio.to_thread(self._write, batch)
                except (OSError, Untrusted) as exc:
                    log.error("audit entries lost: cannot write %s: %s", self.path, exc)

    async def entries(
        self, provider: str | None = None, since: float | None = None, fingerprint: str | None = None
    ) -> list[dict[str, Any]]:
        """Recorded entries, oldest first, filtered."""
        await self.flush()
        found = await asyncio.to_thread(lambda: list(self._read()))
        return [
            entry
            for entry in found
            if (provider is None or entry.get("provider") == provider)
            and (since is None or entry.get("time", 0) >= since)
            and (fingerprint is None or entry.get("fingerprint") == fingerprint)
        ]

    def _write(self, batch: list[dict[str, Any]]) -> None:
        """Append ``batch``, turning the file over whenever the next line would pass ``max_bytes``.

        Line by line, not batch by batch: a burst bigger than the bound must not make the
        file bigger than the bound.
        """
        ensure_private_dir(self.path.parent)
        lines = [(json.dumps(entry, separators=(",", ":")) + "\n").encode() for entry in batch]
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        while lines:
            if size and size + len(lines[0]) > self.max_bytes:
                os.replace(self.path, self._older)
                size = 0
            chunk: list[bytes] = []
            while lines and (not chunk or size + len(lines[0]) <= self.max_bytes):
                line = lines.pop(0)
                chunk.append(line)
                size += len(line)
            self._append(b"".join(chunk))

    def _append(self, data: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def _read(self) -> Iterator[dict[str, Any]]:
        for path in (self._older, self.path):
            try:
                lines = path.read_text(errors="replace").splitlines()
            except FileNotFoundError:
                continue
            for line in lines:
                try:
                    entry = json.loads(line)
                except ValueError:  # a line cut short by a crash
                    continue
                if isinstance(entry, dict):
                    yield entry

    @property
    def _older(self) -> Path:
        return self.path.with_name(self.path.name + ".1")
