"""deossfs: the CESS decentralized object store as a library, a mount and a gateway.

The names in `__all__` are the stable surface (docs/library.md); everything else in the
package is internal and may change. They are imported on first use, so `import deossfs`
(and the CLI's start-up) stays cheap; `__init__.pyi` gives type checkers the same names
with their types.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

# numpy (used for buffer addresses, never for linear algebra) would start an OpenBLAS
# thread per core that spins after start-up: 2-4% of a 1 GiB put's or get's CPU here
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"

#: the module that defines each public name
_MODULES = {
    "deossfs.client": (
        "Client",
        "AsyncClient",
        "ObjectInfo",
        "ObjectStat",
        "StoredObject",
        "SegmentStat",
        "FragmentStat",
        "FileStatus",
    ),
    "deossfs.gateway_client": (
        "GatewayClient",
    ),
    "deossfs.chain.interface": (
        "Territory",
        "TerritoryState",
        "StorageNode",
    ),
    "deossfs.processing.stages": (
        "ProcessingStage",
    ),
    "deossfs.scheduling.policies": (
        "SchedulingPolicy",
        "NodeCandidate",
        "PlacementRequest",
        "Placement",
    ),
    "deossfs.errors": (
        "DeossError",
        "TemporaryError",
        "PermanentError",
        "InvalidInput",
        "InvalidName",
        "NotFound",
        "AlreadyExists",
        "NotEmpty",
        "NoSpace",
        "AccessDenied",
        "Unauthenticated",
        "Unsupported",
        "ConfigError",
        "KeyFileError",
        "IntegrityError",
        "NotEnoughNodes",
        "DataUnavailable",
        "ChainError",
        "NodeUnavailable",
        "ChainUnavailable",
        "RateLimited",
        "NotYetStored",
        "PluginError",
        "MissingPlugin",
    ),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deossfs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
