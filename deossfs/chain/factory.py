"""Open the chain backend a config names."""

from __future__ import annotations

from ..config import Config
from ..errors import ConfigError
from ..keys import Account
from .interface import ChainClient
from .naming import NamedBuckets


def open_chain(config: Config, account: Account | None) -> ChainClient:
    """The chain a config names, with deossfs' bucket names (chain/naming.py), its calls
    timed for the metrics (metrics.py)."""
    from ..metrics import MeteredChain

    return MeteredChain(NamedBuckets(_open_backend(config, account)))  # type: ignore[return-value]


def _open_backend(config: Config, account: Account | None) -> ChainClient:
    backend = config.chain.backend
    if backend == "embedded":
        from .ledger import EmbeddedLedger

        if config.chain.ledger is None:
            raise ConfigError("config option chain.ledger is required for the embedded chain")
        return EmbeddedLedger(config.chain.ledger, account)
    if backend == "cess":
        from .cess import CessChain

        # connects lazily: the first call opens the one connection this client reuses
        return CessChain(config.chain.endpoints, account)
    raise ConfigError(f"unknown chain backend {backend!r}")
