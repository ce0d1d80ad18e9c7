"""Request/reply between tasks and actors: a one-shot reply slot carried by each message.

A slot is cheaper than a memory-channel pair per request and says exactly what we need: one
answer (a value or an exception), delivered once, and a way for a requester that was
cancelled to tell the actor nobody is listening any more. An actor that reserved something
for a requester who left must undo it: :meth:`Reply.send` returns False in that case.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import outcome
import trio

T = TypeVar("T")


class Reply(Generic[T]):
    """A one-shot slot for one answer."""

    __slots__ = ("_event", "_result", "_abandoned")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._result: outcome.Outcome | None = None
        self._abandoned = False

    def send(self, value: T) -> bool:
        """Deliver ``value``. Returns False if the requester left (the caller must undo)."""
        return self._deliver(outcome.Value(value))

    def fail(self, exc: BaseException) -> bool:
        """Deliver an exception, raised in the requester."""
        return self._deliver(outcome.Error(exc))

    @property
    def answered(self) -> bool:
        """Whether an answer (value or exception) was delivered."""
        return self._result is not None

    def _deliver(self, result: outcome.Outcome) -> bool:
        if self._result is not None:
            raise RuntimeError("reply already sent")
        self._result = result
        self._event.set()
        return not self._abandoned

    async def receive(self) -> T:
        """Wait for the answer.

        Cancellation: if the wait is cancelled before an answer arrived, the slot is marked
        abandoned so the actor knows to undo. If an answer had already arrived (a race with
        the cancellation), it is kept in :attr:`unclaimed` for the requester's cleanup.
        """
        try:
            await self._event.wait()
        except trio.Cancelled:
            self._abandoned = True
            raise
        assert self._result is not None
        return self._result.unwrap()

    @property
    def unclaimed(self) -> T | None:
        """An answer that arrived although the requester was cancelled, if any."""
        if self._abandoned and isinstance(self._result, outcome.Value):
            return self._result.value
        return None


async def ask(channel: trio.MemorySendChannel, message: object, reply: Reply[T]) -> T:
    """Send ``message`` (which carries ``reply``) and wait for the answer.

    Errors: trio.BrokenResourceError if the actor's mailbox is closed; whatever the actor
    delivered with :meth:`Reply.fail`.
    """
    await channel.send(message)
    return await reply.receive()
