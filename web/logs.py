"""The log: one handler on the root logger, writing to stderr as ``[logging]`` says.

``format = "text"`` (the default) writes ``TIME LEVEL LOGGER MESSAGE`` lines; ``"json"`` writes
one JSON object per line (python-json-logger's formatter): ``level``, ``logger``, ``message``,
every structured field the record carries (``extra=``: the request line's, see
:func:`engine.usage.request_fields`), ``exc_info`` with a traceback, and ``timestamp``, ISO 8601
in UTC. A worker of ``omixa serve --workers N`` names itself in each line (text: ``[worker I]``;
JSON: ``"worker": I``); it reads the same config, so it writes the same format.

Hypercorn's error log goes through the same handler (``web.server`` gives Hypercorn its
logger rather than a stream), and httpx's own line per call is left out (WARNING and above
only): each model call gets one line of its own, on ``omixa.request``.
"""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from omixa.engine.config import LoggingConfig

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
HANDLER_NAME = "omixa"
# The record's own attributes that a JSON line keeps, under these names; the rest of them
# (module, pathname, thread, ...) are left out, and every extra field is kept.
_JSON_FIELDS = {"levelname": "level", "name": "logger", "message": "message"}


def formatter(format: str, worker: int | None = None) -> logging.Formatter:
    """The formatter of ``[logging] format`` (``"text"`` or ``"json"``), for worker ``worker``
    of ``omixa serve --workers`` or the one process (None)."""
    if format == "json":
        return JsonFormatter(
            list(_JSON_FIELDS),
            rename_fields={k: v for k, v in _JSON_FIELDS.items() if k != v},
            static_fields={} if worker is None else {"worker": worker},
            timestamp=True,
        )
    if worker is None:
        return logging.Formatter(TEXT_FORMAT)
    return logging.Formatter(TEXT_FORMAT.replace("%(name)s", f"[worker {worker}] %(name)s"))


def configure_logging(config: LoggingConfig | None = None, *, worker: int | None = None) -> None:
    """Point the root logger at stderr, in ``config``'s format and level (None: the defaults,
    text at INFO). Called again (once the config is read, or in a worker) it replaces its own
    handler's format, so a process never writes a line twice."""
    config = config or LoggingConfig()
    root = logging.getLogger()
    handler = next((h for h in root.handlers if h.get_name() == HANDLER_NAME), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(HANDLER_NAME)
        root.addHandler(handler)
    handler.setFormatter(formatter(config.format, worker))
    root.setLevel(config.level)
    # One line per request comes from omixa.request; httpx would add its own for each call.
    logging.getLogger("httpx").setLevel(logging.WARNING)
