"""Storage exceptions. Drivers' exceptions are translated into these at one seam per backend.

StorageError              the database failed or is unreachable (may be transient)
 +-- NotFound             the account, key or hold named does not exist
 +-- KeyRevoked           a hold was asked for on behalf of a revoked key
 +-- MigrationError       the schema could not be brought to the current version
IdempotencyConflict       an idempotency key was reused for a different request (not a failure
                          of the database, so not a StorageError)
"""


class StorageError(Exception):
    """The database failed or could not be reached."""


class NotFound(StorageError):
    """The named row does not exist."""


class KeyRevoked(StorageError):
    """The hold's key (``HoldContext.key_id``) was revoked; nothing was held."""


class MigrationError(StorageError):
    """Applying the schema migrations failed."""


class IdempotencyConflict(Exception):
    """The idempotency key was first used with a different request; nothing was changed."""
