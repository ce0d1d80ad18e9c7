"""The SQLite backend (the embedded default): :class:`SQLiteStorage`.

``facade`` is the class (the worker thread and its one seam), ``connection`` opens, migrates,
checkpoints and closes the file, ``rows`` maps stored values to records, ``accounts`` holds
accounts, keys and dashboard sessions, ``wallet`` the ledger, top-ups and holds, ``usage``
the request logs, rollups, instances and recovery.
"""

from omixa.storage.sqlite.facade import SQLiteStorage

__all__ = ["SQLiteStorage"]
