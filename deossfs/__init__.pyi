"""Types of the stable surface: deossfs/__init__.py loads these names lazily (and its
`__all__` lists them); `X as X` re-exports each."""

from .chain.interface import (
    StorageNode as StorageNode,
    Territory as Territory,
    TerritoryState as TerritoryState,
)
from .client import (
    AsyncClient as AsyncClient,
    Client as Client,
    FileStatus as FileStatus,
    FragmentStat as FragmentStat,
    ObjectInfo as ObjectInfo,
    ObjectStat as ObjectStat,
    SegmentStat as SegmentStat,
    StoredObject as StoredObject,
)
from .errors import (
    AccessDenied as AccessDenied,
    AlreadyExists as AlreadyExists,
    ChainError as ChainError,
    ChainUnavailable as ChainUnavailable,
    ConfigError as ConfigError,
    DataUnavailable as DataUnavailable,
    DeossError as DeossError,
    IntegrityError as IntegrityError,
    InvalidInput as InvalidInput,
    InvalidName as InvalidName,
    KeyFileError as KeyFileError,
    MissingPlugin as MissingPlugin,
    NoSpace as NoSpace,
    NodeUnavailable as NodeUnavailable,
    NotEmpty as NotEmpty,
    NotEnoughNodes as NotEnoughNodes,
    NotFound as NotFound,
    NotYetStored as NotYetStored,
    PermanentError as PermanentError,
    PluginError as PluginError,
    RateLimited as RateLimited,
    TemporaryError as TemporaryError,
    Unauthenticated as Unauthenticated,
    Unsupported as Unsupported,
)
from .gateway_client import (
    GatewayClient as GatewayClient,
)
from .processing.stages import (
    ProcessingStage as ProcessingStage,
)
from .scheduling.policies import (
    NodeCandidate as NodeCandidate,
    Placement as Placement,
    PlacementRequest as PlacementRequest,
    SchedulingPolicy as SchedulingPolicy,
)

__version__: str
__all__: list[str]
