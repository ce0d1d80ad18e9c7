"""Versioned schema migrations, one SQL file per version and dialect.

Files are named ``NNNN_name.<dialect>.sql`` (dialect ``sqlite`` or ``postgres``), e.g.
``0001_initial.sqlite.sql``. Versions start at 1 and have no gaps; each version exists for
both dialects with the same name, describing the same logical schema. To change the schema,
add the next version for both dialects; never edit a version that has shipped.

The backends apply them at open (:func:`storage.open_storage`) and record each applied
version in ``schema_migrations (version, name, applied_at)``. This module only finds and
checks the files; applying is the backend's job because it needs the backend's driver.

``verify_ledger.sql`` sits here too: the one ledger check both backends run. It reads the
tables these files define, so it changes with them.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

import attrs

from omixa.storage.errors import MigrationError

DIALECTS = ("sqlite", "postgres")

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sqlite|postgres)\.sql$")


@attrs.frozen(kw_only=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(dialect: str) -> list[Migration]:
    """All migrations of ``dialect``, in version order.

    Errors: MigrationError if two files share a version or the versions have a gap.
    """
    if dialect not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect!r}; expected one of {DIALECTS}")
    found: dict[int, Migration] = {}
    for entry in resources.files(__name__).iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None or match[3] != dialect:
            continue
        version = int(match[1])
        if version in found:
            raise MigrationError(f"two {dialect} migrations have version {version}")
        found[version] = Migration(version=version, name=match[2], sql=entry.read_text("utf-8"))
    versions = sorted(found)
    if versions != list(range(1, len(versions) + 1)):
        raise MigrationError(f"{dialect} migration versions must be 1..N without gaps: {versions}")
    return [found[v] for v in versions]


def pending_migrations(migrations: list[Migration], applied: set[int]) -> list[Migration]:
    """The migrations not yet in ``applied``.

    Errors: MigrationError if the database has a version this code does not know (it was
    migrated by a newer Omixa; running older code against it could corrupt it).
    """
    known = {m.version for m in migrations}
    unknown = sorted(applied - known)
    if unknown:
        raise MigrationError(
            f"database has schema versions {unknown} unknown to this Omixa "
            f"(latest known: {max(known, default=0)}); upgrade Omixa"
        )
    return [m for m in migrations if m.version not in applied]


@functools.cache
def verify_ledger_sql() -> str:
    """The dialect-neutral query behind :meth:`storage.Storage.verify_ledger`: rows of
    ``(account_id, message)``, one per broken invariant."""
    return resources.files(__name__).joinpath("verify_ledger.sql").read_text("utf-8")
