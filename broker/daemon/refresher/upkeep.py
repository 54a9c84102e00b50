"""What every part of the refresher reads: the credentials, the providers, the clock, the margin, each status."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from broker.core.clock import Clock
from broker.core.model import Credential, CredentialKey
from broker.daemon.credentials import CredentialSet
from broker.daemon.refresher.status import Status, Statuses
from broker.providers.base import Provider, ProviderContext
from broker.providers.registry import Registry


@dataclass
class Upkeep:
    """Shared by the refresher's parts; a config reload changes ``margin`` and the context's timeout here."""

    credentials: CredentialSet
    registry: Callable[[], Registry]
    context: ProviderContext
    clock: Clock
    margin: float
    statuses: Statuses = field(default_factory=Statuses)

    def status(self, key: CredentialKey) -> Status:
        return self.statuses.of(key)

    def refreshable(self, key: CredentialKey) -> bool:
        credential = self.credentials.get(key)
        return credential is not None and self.may_redeem(self.registry().get(key[0]), credential)

    def may_redeem(self, provider: Provider, credential: Credential) -> bool:
        """Whether broker refreshes ``credential`` at all: it can, and no followed CLI keeps that to itself."""
        return provider.can_refresh(credential) and self.credentials.may_refresh(credential.key)
