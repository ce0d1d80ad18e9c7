"""Storage: one interface (:class:`Storage`), two backends, chosen by URL.

``sqlite:///relative/or/absolute/path.db`` (or ``sqlite:///:memory:``) and
``postgresql://user@host:port/db``. :func:`open_storage` applies pending migrations before it
yields. The PostgreSQL backend must be opened inside ``trio_asyncio.open_loop()``.
"""

from storage.base import (
    Account,
    ApiKeyRecord,
    Hold,
    LedgerEntry,
    LedgerProblem,
    RequestLog,
    Settlement,
    SigningSummary,
    Storage,
    WalletState,
)
from storage.errors import MigrationError, NotFound, StorageError
from storage.open import open_storage

__all__ = [
    "Account",
    "ApiKeyRecord",
    "Hold",
    "LedgerEntry",
    "LedgerProblem",
    "MigrationError",
    "NotFound",
    "RequestLog",
    "Settlement",
    "SigningSummary",
    "Storage",
    "StorageError",
    "WalletState",
    "open_storage",
]
