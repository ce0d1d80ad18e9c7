"""An incremental server-sent-events parser for upstream streams (the relay's hot path).

Bytes go in with arbitrary chunk boundaries; complete events come out as
:class:`~engine.upstream.SseEvent`, whose ``raw`` is exactly the bytes received for that
event, its terminating blank line included, so a pass-through relay forwards them unchanged.

What is understood: lines ended by ``\\n`` or ``\\r\\n`` (mixed is fine), an event ended by a
blank line, ``data:`` fields (several are joined with ``\\n``, one space after the colon is
dropped), comment lines (``: ...``), ``data: [DONE]``. Other fields (``event:``, ``id:``,
``retry:``) are kept in ``raw`` and otherwise ignored. Lone ``\\r`` line endings (legal in the
SSE spec, sent by no LLM upstream) are not recognised as line ends.

Errors: :class:`UpstreamError` for a ``data`` field that is not a JSON object, for more than
``max_buffer`` bytes without an event boundary, and for a stream that ends inside an event.

Cost: every byte is scanned once by ``bytes.find`` (C speed); the Python work is a few steps per
line, and the unconsumed tail is trimmed once per ``feed`` call, so nothing is re-scanned.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from omixa.engine.errors import UpstreamError
from omixa.engine.upstream import SseEvent, decode_upstream_json

MAX_BUFFER_BYTES = 1024 * 1024
_LF, _CR = 10, 13
_DONE = b"[DONE]"
# JSONDecoder.decode on str skips json.loads's type checks and its pure-Python detection of the
# bytes' encoding: about twice as fast per frame (UTF-8 is what SSE mandates). Strict: NaN and
# Infinity make a frame malformed.
_decode_json = decode_upstream_json


class SseParser:
    """Cuts a byte stream into :class:`SseEvent` objects.

    Args:
        max_buffer: most bytes held without an event boundary before the stream is refused.
    """

    __slots__ = ("_buf", "_scan", "_max_buffer", "failure")

    def __init__(self, *, max_buffer: int = MAX_BUFFER_BYTES) -> None:
        self._buf = bytearray()
        self._scan = 0  # where the next search for "\n" starts, relative to _buf
        self._max_buffer = max_buffer
        # A malformed frame found after good ones in the same chunk: the good ones are
        # returned first, and this is raised by the next call.
        self.failure: UpstreamError | None = None

    def feed(self, data: bytes) -> list[SseEvent]:
        """Add received bytes; return the events they complete, in order.

        Errors: UpstreamError (malformed frame, oversized frame). When a malformed frame
        follows good events of the same chunk, those events are returned and the error is
        kept in :attr:`failure` and raised by the next ``feed`` or ``close``.
        """
        if self.failure is not None:
            raise self.failure
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data  # common case: the chunk starts at an event boundary; no copy
        n = len(buf)
        start = 0  # first byte of the event being assembled
        pos = self._scan
        events: list[SseEvent] = []
        while True:
            i = buf.find(b"\n", pos)
            if i < 0:
                pos = n
                break
            if i == start or (i == start + 1 and buf[start] == _CR):
                end = i + 1  # a blank line with no event before it: pass it on as-is
            else:
                j = i + 1  # the line after this "\n": is it blank?
                if j >= n:
                    pos = i
                    break
                c = buf[j]
                if c == _LF:
                    end = j + 1
                elif c == _CR:
                    if j + 1 >= n:
                        pos = i
                        break
                    if buf[j + 1] != _LF:
                        pos = j
                        continue
                    end = j + 2
                else:
                    pos = j
                    continue
            try:
                events.append(_make_event(bytes(buf[start:end])))
            except UpstreamError as exc:
                if not events:
                    raise
                self.failure = exc
                return events
            start = pos = end
        rest = n - start
        if rest > self._max_buffer:
            raise UpstreamError(f"malformed stream: no event boundary within {rest} bytes")
        if buf is self._buf:
            del self._buf[:start]
        elif rest:
            self._buf = bytearray(buf[start:])
        self._scan = pos - start
        return events

    def close(self) -> None:
        """Declare the end of the stream.

        Errors: UpstreamError if the stream stopped inside an event (a truncated frame).
        Whitespace after the last event is accepted.
        """
        if self.failure is not None:
            raise self.failure
        if self._buf.strip():
            raise UpstreamError("malformed stream: the upstream stream ended inside an event")
        self._buf.clear()
        self._scan = 0


def _make_event(raw: bytes) -> SseEvent:
    # Fast path: one "data: {...}" line, which is nearly every frame an LLM upstream sends.
    if raw.startswith(b"data: ") and raw.find(b"\n") >= len(raw) - 3:
        payload = raw[6:].rstrip(b"\r\n")
        return _data_event(raw, payload)
    data_lines: list[bytes] = []
    comment_only = True
    for line in raw.splitlines():
        if not line:
            continue
        if line[0] == 0x3A:  # ":" starts a comment
            continue
        comment_only = False
        name, sep, value = line.partition(b":")
        if name == b"data":
            data_lines.append(value[1:] if value[:1] == b" " else value)
    if data_lines:
        return _data_event(raw, b"\n".join(data_lines))
    return SseEvent(raw=raw, comment=comment_only)


def _data_event(raw: bytes, payload: bytes) -> SseEvent:
    if payload == _DONE:
        return SseEvent(raw=raw, done=True)
    try:
        data = _decode_json(payload.decode())
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise UpstreamError("malformed stream frame") from None
    if not isinstance(data, dict):
        raise UpstreamError("malformed stream frame")
    return SseEvent(raw=raw, data=data)


async def iter_sse(chunks: AsyncIterable[bytes], *, max_buffer: int = MAX_BUFFER_BYTES) -> AsyncIterator[SseEvent]:
    """Parse an async iterable of byte chunks into events, yielding each as soon as complete.

    Errors: UpstreamError as :class:`SseParser` (including a stream cut inside an event).
    Cancellation: holds nothing but the parser; the caller owns (and closes) ``chunks``.
    """
    parser = SseParser(max_buffer=max_buffer)
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
        if parser.failure is not None:
            raise parser.failure
    parser.close()
