"""The usage aggregator: one per process; writes request logs in batches.

Requests hand over one :class:`storage.RequestLog` each with :meth:`UsageAggregator.record`,
which never blocks and never fails: the record goes into a bounded mailbox, or, when that is
full (the database is slow or unavailable), into an overflow buffer of at most
``usage.buffer_limit`` records that the aggregator drains next. Past that bound a record is
dropped: counted in :attr:`UsageAggregator.dropped` (shown on ``/healthz``) and logged at
ERROR with its request id. Money is not affected: holds, charges and releases are written on
the request's own path, and their ledger rows carry the request id.

``record`` also writes the request's line on the ``omixa.request`` logger, with its fields as
the record's structured data (:func:`request_fields`; ``[logging] format = "json"`` writes
each as a key of the line's JSON object).

A request that held money also wrote its log into its hold, in the transaction of its settle
or release (:class:`storage.FinalizeHold`); ``record`` then names that hold, and the batch
that writes the log makes the hold forget its copy. So the log of a charged request is never
lost with this process: a crash before the batch, or a log dropped here, leaves the copy in
the hold, and the recovery of this process writes it
(:meth:`storage.Storage.recover_instance`). A batch is written when
``usage.batch_size`` records are waiting or ``usage.flush_interval_seconds`` passed since the
first one. A failed write is retried with backoff, keeping the batch (ids make retries
idempotent). On close, everything received is flushed before the actor returns.
"""

from __future__ import annotations

import collections
import logging

import trio

from omixa.engine.config import UsageConfig
from omixa.storage import RequestLog, Storage, StorageError

log = logging.getLogger("omixa.usage")
request_log = logging.getLogger("omixa.request")


def request_fields(entry: RequestLog) -> dict[str, object]:
    """The request line's structured fields (``extra=``: a JSON log line carries each as its
    own key; the text line's message says the main ones). Never a key, a secret or any text
    of the prompt or the answer."""
    return {
        "request_id": entry.id,
        "account_id": entry.account_id,
        "key_id": entry.key_id,
        "model": entry.model,
        "provider": entry.provider,
        "deployment": entry.deployment,
        "region": entry.region,
        "status": entry.status,
        "stream": entry.stream,
        "prompt_tokens": entry.prompt_tokens,
        "completion_tokens": entry.completion_tokens,
        "cached_tokens": entry.cached_tokens,
        "reasoning_tokens": entry.reasoning_tokens,
        "cost_nano": entry.cost,
        "latency_ms": entry.latency_ms,
        "ttft_ms": entry.ttft_ms,
        "upstream_request_id": entry.upstream_request_id,
    }


class UsageAggregator:
    def __init__(self, storage: Storage, config: UsageConfig) -> None:
        self._storage = storage
        self._config = config
        # (log, the hold that keeps a copy of it or None)
        self._send, self._receive = trio.open_memory_channel[tuple[RequestLog, str | None]](config.queue_size)
        self._overflow: collections.deque[tuple[RequestLog, str | None]] = collections.deque()
        self.dropped = 0
        self.written = 0
        self._flushed = trio.Event()
        self.recorded = 0
        # Set once run() returned after close(): everything received is written (or dropped).
        self.drained = trio.Event()

    def record(self, entry: RequestLog, hold_id: str | None = None) -> None:
        """Queue one finished request for writing, and log its line. Never blocks.

        ``hold_id``: the hold that keeps a copy of this log (finalized with it), whose copy
        the write then clears.
        """
        if request_log.isEnabledFor(logging.INFO):
            request_log.info(
                "request id=%s account=%s model=%s deployment=%s status=%s stream=%s "
                "prompt_tokens=%d completion_tokens=%d cost_nano=%d latency_ms=%d upstream_request_id=%s",
                entry.id,
                entry.account_id,
                entry.model,
                entry.deployment,
                entry.status,
                entry.stream,
                entry.prompt_tokens,
                entry.completion_tokens,
                entry.cost,
                entry.latency_ms,
                entry.upstream_request_id,
                extra=request_fields(entry),
            )
        self.recorded += 1
        try:
            self._send.send_nowait((entry, hold_id))
        except trio.WouldBlock:
            if len(self._overflow) >= self._config.buffer_limit:
                self.dropped += 1
                log.error("usage overflow full: request log %s dropped", entry.id)
            else:
                self._overflow.append((entry, hold_id))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += 1
            log.error("usage aggregator closed: request log %s dropped", entry.id)

    @property
    def depths(self) -> tuple[int, int]:
        """Records waiting in the mailbox, and in the overflow buffer."""
        return self._send.statistics().current_buffer_used, len(self._overflow)

    @property
    def backlog(self) -> int:
        """Records received and not yet written (or dropped)."""
        return self.recorded - self.written - self.dropped

    def close(self) -> None:
        """Stop taking records; the actor flushes what it has and returns."""
        self._send.close()

    async def wait_flushed(self) -> None:
        """Wait until every record handed over so far is written (or dropped)."""
        target = self.recorded
        while self.written + self.dropped < target:
            await self._flushed.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        batch: list[tuple[RequestLog, str | None]] = []
        closed = False
        while not (closed and not batch and not self._overflow):
            if not batch and not self._overflow:
                try:
                    batch.append(await self._receive.receive())
                except trio.EndOfChannel:
                    closed = True
                    continue
            with trio.move_on_after(self._config.flush_interval_seconds):
                while len(batch) + len(self._overflow) < self._config.batch_size and not closed:
                    try:
                        batch.append(await self._receive.receive())
                    except trio.EndOfChannel:
                        closed = True
            while self._overflow and len(batch) < self._config.batch_size:
                batch.append(self._overflow.popleft())
            await self._write(batch)
            batch = []
            # Wake every waiter; only this task replaces the event.
            self._flushed.set()
            self._flushed = trio.Event()
        self.drained.set()

    async def _write(self, batch: list[tuple[RequestLog, str | None]]) -> None:
        logs = [entry for entry, _ in batch]
        hold_ids = [hold_id for _, hold_id in batch if hold_id is not None]
        backoff = 0.1
        while True:
            try:
                await self._storage.insert_request_logs(logs, hold_ids=hold_ids)
                self.written += len(batch)
                return
            except StorageError as exc:
                log.warning("writing %d request logs failed (%s); retrying in %.1fs", len(batch), exc, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
