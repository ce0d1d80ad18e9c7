"""The SSE relay: upstream events to the client, byte for byte, settled exactly once.

What the client receives, in order:
1. a padding comment of ``streaming.flush_padding_bytes`` bytes (``: `` + spaces), sent at
   once to push the response head and first bytes through buffering proxies;
2. the upstream's events as they complete, byte for byte, with ``: keep-alive`` comments
   whenever nothing was sent for ``streaming.heartbeat_seconds`` (also before the first
   token, while a reasoning model thinks);
3. the stream's last event (chat: ``data: [DONE]``; the Responses API:
   ``response.completed``), or, when the upstream fails, an error event.

What each event means is the API's frame reader's (:mod:`engine.stream_frames`): whether it
is forwarded (chat drops the usage frame the client did not ask for and Azure's filter-only
frames), whether it ends the stream, its usage, its tier, the content it delivers, and what
the error event looks like.

A failure after the stream started (reset, malformed frame, an upstream error event, or no
upstream bytes for ``upstream.idle_timeout_seconds``) reaches the client as an error event
(chat: ``data: {"error": {...}}``), then the stream ends and is recorded with the error's
code. If content had been delivered, the prompt and the delivered completion tokens are
charged; otherwise nothing. Until the stream is committed to its deployment (chat: its first
content; the Responses API: ``response.created``), a failure may be taken over by another
deployment instead.

The upstream is read by a pump task in the request's own nursery, so the relay can wait
for the next event with a deadline (heartbeats, idle timeout) without ever cancelling a
read half-way. The relay owns the upstream response: :meth:`StreamRelay.aclose`, which the
web layer guarantees to call, stops the pump, closes the connection and ends the request
as ``client_closed`` (``interrupted`` during shutdown) if it had not ended.

The relay moves bytes and nothing else: what the stream means for money, limits and the
deployments' health is its owner's (:class:`StreamOwner`, implemented by
:class:`engine.exchange.Exchange`), to which it reports.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import attrs
import trio

from omixa.engine.config import StreamingConfig
from omixa.engine.errors import InternalError, OmixaError, UpstreamError, UpstreamTimeout, translate_upstream
from omixa.engine.stream_frames import FrameReader
from omixa.engine.upstream import SseEvent, Usage

log = logging.getLogger("omixa.relay")

HEARTBEAT = b": keep-alive\n\n"
# Bound on stopping the pump and closing the upstream response when the relay ends.
CLOSE_TIMEOUT = 5.0
# Events read ahead of the client; beyond this the pump waits (and TCP pushes back upstream).
READ_AHEAD = 16
# Events already read when the client's next write starts go out in that one write, up to
# this many bytes: nothing waits for them, they only share a send (and its HTTP chunk).
COALESCE_BYTES = 16384
# Delivered text pieces joined into one string (see _Delivered).
PIECES_PER_BLOCK = 64


@attrs.frozen
class OpenedStream:
    """An upstream stream whose response head arrived: the adapter's context (entered) and
    its events. Whoever holds it must close ``stream``."""

    stream: AbstractAsyncContextManager[AsyncIterator[SseEvent]]
    events: AsyncIterator[SseEvent]


async def open_events(stream: AbstractAsyncContextManager[AsyncIterator[SseEvent]]) -> OpenedStream:
    """Enter an adapter's stream context (the request goes out, its head comes back)."""
    return OpenedStream(stream, await stream.__aenter__())


class StreamOwner(Protocol):
    """What the relay reports to, and asks, the request it serves."""

    request_id: str

    def may_fail_over(self, failure: OmixaError) -> bool:
        """Whether another deployment may take over after ``failure``."""
        ...

    async def fail_over(self, failure: OmixaError) -> OpenedStream | None:
        """Another deployment's stream (the failed one is closed), or None: ``failure`` stands."""
        ...

    def tier_reported(self, tier: str) -> None: ...

    def answer_identified(self, answer_id: str) -> None:
        """The upstream stores this answer under ``answer_id`` (the Responses API)."""
        ...

    def item_identified(self, item_id: str) -> None:
        """The stored answer has an output item ``item_id``."""
        ...

    def content_started(self) -> None:
        """The first content is going out; no other deployment may answer from here on."""
        ...

    def cancelled_status(self) -> str: ...

    async def stream_ended(
        self,
        status: str,
        *,
        usage: Usage | None,
        delivered: str,
        charge: bool,
        failure: OmixaError | None,
        message: str | None = None,
    ) -> None:
        """Settle and record, once (``message``: the error the client was sent, if any).
        Shielded and bounded; never raises."""
        ...


def padding_comment(size: int) -> bytes:
    """An SSE comment of exactly ``size`` bytes (empty below the 3-byte minimum)."""
    return b":" + b" " * (size - 3) + b"\n\n" if size >= 3 else b""


class _Delivered:
    """The text relayed so far, for counting when the upstream reports no usage. Frames
    carry a few characters each; their pieces are joined every :data:`PIECES_PER_BLOCK`,
    so a long answer costs about its length in memory, not a string object (about 50 bytes
    more) per frame for as long as the stream lasts."""

    __slots__ = ("_blocks", "_pieces")

    def __init__(self) -> None:
        self._blocks: list[str] = []
        self._pieces: list[str] = []

    def append(self, text: str) -> None:
        self._pieces.append(text)
        if len(self._pieces) >= PIECES_PER_BLOCK:
            self._blocks.append("".join(self._pieces))
            self._pieces.clear()

    def __bool__(self) -> bool:
        return bool(self._blocks or self._pieces)

    def text(self) -> str:
        return "".join(self._blocks) + "".join(self._pieces)


class _Upstream:
    """One attempt's upstream response and the pump task that reads it into a channel."""

    def __init__(self, opened: OpenedStream) -> None:
        self.stream = opened.stream
        self.events = opened.events
        self.send, self.receive = trio.open_memory_channel[SseEvent | Exception](READ_AHEAD)
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.started = False

    def start(self, nursery: trio.Nursery, name: str) -> None:
        self.started = True
        nursery.start_soon(self._pump, name=name)

    async def _pump(self) -> None:
        try:
            with self.scope:
                async with self.send:
                    try:
                        async for event in self.events:
                            await self.send.send(event)
                            # Not kept while the next one is awaited: a parsed frame is a
                            # few KB of objects, held for as long as a slow upstream thinks.
                            del event
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return  # the relay is closing
                    except Exception as exc:  # handed to the relay, which decides
                        try:
                            await self.send.send(exc)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            return
        finally:
            self.done.set()

    async def stop(self) -> None:
        """Stop the reader, then close its connection (shielded and bounded)."""
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            self.scope.cancel()
            self.receive.close()
            if self.started:
                await self.done.wait()
            try:
                await self.stream.__aexit__(None, None, None)
            except Exception as exc:
                # The connection is going away either way; nothing to settle from it.
                log.debug("closing upstream stream: %r", exc)


class StreamRelay:
    """An async iterator of bytes for the response body. Call :meth:`start` first."""

    def __init__(
        self,
        owner: StreamOwner,
        opened: OpenedStream,
        config: StreamingConfig,
        idle_timeout: float,
        *,
        frames: FrameReader,
    ) -> None:
        self._owner = owner
        self._upstream = _Upstream(opened)
        self._nursery: trio.Nursery | None = None
        self._config = config
        self._idle_timeout = idle_timeout
        self._frames = frames
        self._usage: Usage | None = None
        self._delivered = _Delivered()
        self._content_started = False
        self._committed = False  # no other deployment may take over from here on
        self._held: SseEvent | Exception | None = None  # kept back by _coalesce
        self._done = False
        self._closed = False
        self._padding = padding_comment(config.flush_padding_bytes)
        self._last_upstream = trio.current_time()
        self._last_sent = self._last_upstream  # heartbeats count from the last byte sent

    def start(self, nursery: trio.Nursery) -> None:
        """Read the upstream in ``nursery`` (the request's own), from the first time the
        body is asked for: the padding comment (and with it the response head) then goes
        out before the pump's first turn, which parses whatever the upstream already sent."""
        self._nursery = nursery

    def __aiter__(self) -> StreamRelay:
        return self

    async def __anext__(self) -> bytes:
        out = await self._next_bytes()
        self._last_sent = trio.current_time()
        return out

    async def _next_bytes(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        if not self._upstream.started:
            assert self._nursery is not None, "start() the relay first"
            self._upstream.start(self._nursery, f"relay-{self._owner.request_id}")
        if self._padding:
            padding, self._padding = self._padding, b""
            return padding
        while True:
            failure = await self._relay_attempt()
            if isinstance(failure, bytes):
                return failure
            # Nothing that ties the client to this deployment reached it yet (comments and
            # role frames carry no content): another deployment may still answer.
            if not self._committed and await self._fail_over(failure):
                continue
            upstream = failure if isinstance(failure, (UpstreamError, UpstreamTimeout)) else None
            told = translate_upstream(failure)
            await self._close(failure.code, charge=bool(self._delivered), failure=upstream, message=told.message)
            return self._frames.error_event(told, self._owner.request_id)

    async def _relay_attempt(self) -> bytes | OmixaError:
        """The next bytes for the client from the current upstream, or its failure."""
        try:
            while True:
                item = await self._next_item()
                if item is None:
                    return HEARTBEAT
                if isinstance(item, Exception):
                    raise item
                out = self._accept(item)
                if self._done:
                    # Settle before the client sees the last event: once it has it, its
                    # wallet is final.
                    await self._finish_upstream()
                    await self._close("ok")
                    assert out is not None  # the end marker is always forwarded
                    return out
                if out is not None:
                    return self._coalesce(out)
        except trio.EndOfChannel:
            if self._done or self._usage is not None:
                await self._close("ok")
                raise StopAsyncIteration from None
            return UpstreamError("The upstream stream ended unexpectedly.")
        except OmixaError as exc:
            return exc
        except Exception:
            log.exception("request %s: relay failed", self._owner.request_id)
            return InternalError()
        except BaseException:  # cancelled: the client left, or shutdown
            await self._close(self._owner.cancelled_status())
            raise

    async def _fail_over(self, failure: OmixaError) -> bool:
        """Replace a failed upstream by another deployment's, before any content was sent.

        Returns False when no other attempt is allowed or possible (``failure`` stands, or
        is replaced by the last attempt's own failure).
        Cancellation: the client leaving meanwhile ends the stream as usual.
        """
        owner = self._owner
        if not owner.may_fail_over(failure):
            return False
        await self._upstream.stop()
        try:
            opened = await owner.fail_over(failure)
        except BaseException:
            await self._close(owner.cancelled_status())
            raise
        if opened is None:
            return False
        self._upstream = _Upstream(opened)
        assert self._nursery is not None
        self._upstream.start(self._nursery, f"relay-{owner.request_id}")
        self._usage, self._done, self._held = None, False, None
        self._last_upstream = trio.current_time()
        return True

    def _coalesce(self, out: bytes) -> bytes:
        """``out`` plus the bytes of the events already waiting, up to COALESCE_BYTES.

        Only events that simply pass are taken: the last event, an upstream failure or an
        error frame is kept back (``_held``) for the next turn, so it is handled exactly as
        if it had come alone, after these bytes reached the client.
        """
        ends = self._frames.end_types
        parts = [out]
        size = len(out)
        while size < COALESCE_BYTES:
            try:
                item = self._upstream.receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break  # an ended channel says so again on the next receive
            self._last_upstream = trio.current_time()
            # The last event ([DONE], or a type the reader names: the Responses API's).
            if isinstance(item, Exception) or item.done or (ends and item.data and item.data.get("type") in ends):
                self._held = item
                break
            try:
                more = self._accept(item)
            except OmixaError as exc:
                self._held = exc
                break
            if more is not None:
                parts.append(more)
                size += len(more)
        return b"".join(parts) if len(parts) > 1 else out

    async def _next_item(self) -> SseEvent | Exception | None:
        """The next upstream item, or None when a heartbeat is due.

        Errors: UpstreamTimeout once the upstream was silent for the idle timeout;
        trio.EndOfChannel when the upstream ended.
        """
        if self._held is not None:
            item, self._held = self._held, None
            return item
        idle_deadline = self._last_upstream + self._idle_timeout
        deadline = min(self._last_sent + self._config.heartbeat_seconds, idle_deadline)
        with trio.move_on_at(deadline):
            item = await self._upstream.receive.receive()
            self._last_upstream = trio.current_time()
            return item
        if trio.current_time() >= idle_deadline:
            raise UpstreamTimeout(f"The upstream sent nothing for {self._idle_timeout:g} seconds.")
        return None

    async def _finish_upstream(self) -> None:
        """After the last event, let the upstream body end on its own (so the connection goes back
        to the pool) for a moment before the relay closes it."""
        with trio.move_on_after(1.0):
            while True:
                try:
                    await self._upstream.receive.receive()
                except trio.EndOfChannel:
                    return

    def _accept(self, event: SseEvent) -> bytes | None:
        """The bytes to forward for ``event``, or None to drop it (see its reader)."""
        reading = self._frames.read(event)
        if reading.end:
            self._done = True
        if reading.usage is not None:
            self._usage = reading.usage
        if reading.tier is not None:
            self._owner.tier_reported(reading.tier)  # the tier billed (Azure may downgrade priority)
        if reading.answer_id is not None:
            self._owner.answer_identified(reading.answer_id)
        if reading.item_id is not None:
            self._owner.item_identified(reading.item_id)
        if reading.commits:
            self._committed = True
        if reading.text:
            self._delivered.append(reading.text)
            if not self._content_started:
                self._content_started = True
                self._owner.content_started()
        return event.raw if reading.forward else None

    async def aclose(self) -> None:
        """Close the upstream and settle; the client gets nothing more. Idempotent."""
        await self._close(self._owner.cancelled_status())

    async def _close(
        self, status: str, *, charge: bool = True, failure: OmixaError | None = None, message: str | None = None
    ) -> None:
        """End the stream once: stop the pump, close the upstream, report the end.

        ``charge`` False settles for nothing (an upstream failure before any content);
        ``failure`` is the upstream's error, for the deployment's health; ``message`` the
        error the client was sent.
        """
        if self._closed:
            return
        self._closed = True
        await self._upstream.stop()
        if status in ("client_closed", "interrupted") and self._usage is not None and self._done:
            status = "ok"  # everything was sent before the client left
        delivered = self._delivered.text() if charge and self._usage is None else ""
        await self._owner.stream_ended(
            status, usage=self._usage, delivered=delivered, charge=charge, failure=failure, message=message
        )
