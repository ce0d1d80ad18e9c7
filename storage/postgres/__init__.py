"""The PostgreSQL backend: :class:`PostgresStorage`, asyncpg through trio-asyncio.

``facade`` is the class (the bridge to asyncio and its one seam), ``aio`` the bridge,
``pool`` the connection pool, ``connection`` opens, migrates and closes, ``sql`` holds the
statements, ``wallet`` runs top-ups and holds, ``usage`` the request logs, rollups and
recovery. Importing it imports trio-asyncio (see :func:`storage.open_storage`).
"""

from omixa.storage.postgres.facade import PostgresStorage

__all__ = ["PostgresStorage"]
