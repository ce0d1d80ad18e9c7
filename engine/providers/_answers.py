"""What the HTTP adapters (Azure, Vertex) share about answers: size bounds and retry hints."""

from __future__ import annotations

import email.utils
import re
import time

import httpx

from omixa.engine.providers._http import MAX_ERROR_BODY_BYTES

# The most bytes of a non-streaming answer read; a larger one is refused as malformed.
MAX_COMPLETION_BYTES = 32 * 1024 * 1024
# An upstream's error message is cut to this many characters for the client and the logs.
MAX_MESSAGE_CHARS = 500
_RETRY_TEXT = re.compile(rb"(?:retry after|try again in) (\d+(?:\.\d+)?) second", re.IGNORECASE)


def parse_retry_after(headers: httpx.Headers, raw: bytes = b"") -> float | None:
    """Seconds to wait from ``retry-after-ms``, else ``Retry-After`` (seconds or HTTP date),
    else Azure's "Please retry after N seconds" text; None when none says."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                return max(0.0, when.timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    match = _RETRY_TEXT.search(raw[:MAX_ERROR_BODY_BYTES])
    return float(match.group(1)) if match else None
