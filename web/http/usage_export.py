"""CSV answers of the usage lists (``GET /api/v1/usage/requests`` and ``/usage/rollups`` with
``format=csv`` or ``Accept: text/csv``).

A CSV holds the JSON's rows with the JSON's fields as columns, in the JSON's order, less
``object`` (a field added to the JSON view is a column too), and the same values: money as
the same exact decimal strings, times as the same ISO 8601 UTC strings with ``Z``; ``null``
is an empty cell, booleans are ``true`` and ``false``. One exception: a text value starting
with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (in practice only an error message
can) gets a leading ``'``, so a spreadsheet opening the file shows it rather than running it
as a formula. The first line is the header. Quoting
is RFC 4180's (Python's :mod:`csv` ``excel`` dialect: a field holding a comma, quote or line
break is quoted, quotes doubled; lines end with CRLF); the body is UTF-8.

The body is streamed: an async generator over the parts the engine reads from storage
(:meth:`engine.reports.Reports.requests_export`, ``rollups_export``), one chunk per part,
so no more than one part's rows (:data:`engine.reports.EXPORT_PAGE` logs) are held at a
time whatever the range. The engine reads the first part before the response begins, so
anything refused (a filter, a cursor, an unavailable store) is the usual JSON error. A
failure after that cannot change the status any more: the response is cut off without the
last chunk of its chunked encoding, so a client sees an incomplete transfer rather than a
shorter file.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from quart import Response

from omixa.engine.reports import Bucket
from omixa.storage import RequestLog
from omixa.web.http.envelope import current_request_id

log = logging.getLogger("omixa.web")
T = TypeVar("T")

CSV_CONTENT_TYPE = "text/csv; charset=utf-8"


def columns_of(view: dict[str, Any]) -> tuple[str, ...]:
    """The CSV columns of a JSON view: its fields, less ``object``."""
    return tuple(name for name in view if name != "object")


def _request_template() -> RequestLog:
    """A log of every field's type, to read the columns off its JSON view."""
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return RequestLog(
        id="", account_id="", key_id="", model="", provider="", deployment=None, region=None, status="",
        stream=False, prompt_tokens=0, completion_tokens=0, reasoning_tokens=0, cached_tokens=0, cost=0,
        latency_ms=0, ttft_ms=None, created_at=moment,
    )  # fmt: skip


def request_columns(render: Callable[[RequestLog], dict[str, Any]]) -> tuple[str, ...]:
    return columns_of(render(_request_template()))


def bucket_columns(render: Callable[[Bucket], dict[str, Any]], *, by_key: bool) -> tuple[str, ...]:
    """The columns of rollup buckets (``key_id`` among them only when grouped by key)."""
    template = Bucket(
        start=dt.datetime(1970, 1, 1, tzinfo=dt.UTC), model=None, key_id="" if by_key else None, requests=0,
        errors=0, client_closed=0, prompt_tokens=0, completion_tokens=0, reasoning_tokens=0, cached_tokens=0,
        cost=0, latency_ms_mean=None, latency_ms_p95=None,
    )  # fmt: skip
    return columns_of(render(template))


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> str:
    """A JSON value as a CSV cell: null empty, booleans as JSON writes them, text that a
    spreadsheet would take for a formula behind a ``'``."""
    if value is None:
        return ""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return str(value)


async def csv_lines(
    columns: Sequence[str],
    parts: AsyncIterator[Sequence[T]],
    render: Callable[[T], dict[str, Any]],
    request_id: str,
) -> AsyncIterator[bytes]:
    """The header, then each part's rows: one chunk per part (the header with the first).
    A part that cannot be read is logged with the request's id and ends the response
    unfinished (the exception goes on to the server, which cuts the connection)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, dialect="excel")
    writer.writerow(columns)
    rows = 0
    try:
        async for part in parts:
            for item in part:
                view = render(item)
                writer.writerow([cell(view[name]) for name in columns])
            rows += len(part)
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
    except Exception as exc:
        log.error("request %s: the CSV export stopped after %d rows, unfinished: %s", request_id, rows, exc)
        raise


def file_name(what: str, since: dt.datetime, until: dt.datetime) -> str:
    """``omixa-<what>-<since>-<until>.csv``, each moment in ISO 8601's basic format in UTC, to
    the second (no colons: a name any file system takes), e.g. ``20261125T100000Z``."""
    since_, until_ = (moment.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ") for moment in (since, until))
    return f"omixa-{what}-{since_}-{until_}.csv"


def csv_response(
    columns: Sequence[str], parts: AsyncIterator[Sequence[T]], render: Callable[[T], dict[str, Any]], filename: str
) -> Response:
    """A streamed CSV download named ``filename``: the rows of ``parts`` as ``render`` shows
    them, in ``columns``."""
    body = csv_lines(columns, parts, render, current_request_id())
    headers = {"Content-Disposition": f'attachment; filename="{filename}"', "Vary": "Accept"}
    response = Response(body, status=200, headers=headers, content_type=CSV_CONTENT_TYPE)
    response.timeout = None  # a long export is not cut short
    return response
