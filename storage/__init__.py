"""Storage: one interface (:class:`Storage`), two backends, chosen by URL.

``sqlite:///relative/or/absolute/path.db`` (or ``sqlite:///:memory:``) and
``postgresql://user@host:port/db``. :func:`open_storage` applies pending migrations before it
yields. The PostgreSQL backend must be opened inside ``trio_asyncio.open_loop()``.
"""

from omixa.storage._common import bucket_start, latency_bin_upper
from omixa.storage.base import Storage
from omixa.storage.errors import IdempotencyConflict, KeyRevoked, MigrationError, NotFound, StorageError
from omixa.storage.open import open_storage
from omixa.storage.records import (
    Account,
    AccountSummary,
    ApiKeyRecord,
    FinalizeHold,
    Hold,
    HoldContext,
    HoldSummary,
    Instance,
    LedgerEntry,
    LedgerProblem,
    NewHold,
    PoolStats,
    RequestLog,
    RequestLogFilter,
    RollupRow,
    Settlement,
    SigningSummary,
    StoredResponse,
    TopUpResult,
    WalletOp,
    WalletState,
)

__all__ = [
    "Account",
    "AccountSummary",
    "ApiKeyRecord",
    "FinalizeHold",
    "Hold",
    "HoldContext",
    "HoldSummary",
    "IdempotencyConflict",
    "KeyRevoked",
    "Instance",
    "LedgerEntry",
    "LedgerProblem",
    "MigrationError",
    "NewHold",
    "NotFound",
    "PoolStats",
    "RequestLog",
    "RequestLogFilter",
    "RollupRow",
    "Settlement",
    "SigningSummary",
    "StoredResponse",
    "Storage",
    "StorageError",
    "TopUpResult",
    "WalletOp",
    "WalletState",
    "bucket_start",
    "latency_bin_upper",
    "open_storage",
]
