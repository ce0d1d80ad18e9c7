"""Around an exchange (:mod:`engine.exchange`): who makes the request (:class:`Caller`), what
the exchange uses (:class:`Services`), which upstream failures another deployment may not
have, and the step that finishes an exchange whose call failed before its answer
(:class:`Failing`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

from omixa.engine.config import StreamingConfig, UpstreamConfig, WalletConfig
from omixa.engine.errors import OmixaError, UpstreamError, UpstreamTimeout, translate_upstream
from omixa.engine.keylimits import KeyLimiter
from omixa.engine.metrics import Metrics
from omixa.engine.router import Router
from omixa.engine.stored_responses import StoredResponses
from omixa.engine.usage import UsageAggregator
from omixa.engine.wallet import WalletPool
from omixa.storage import ApiKeyRecord

if TYPE_CHECKING:
    from omixa.engine.tracing import RequestTrace


class Fails(Protocol):
    """What :class:`Failing` finishes: an exchange (:class:`engine.exchange.Exchange`)."""

    async def fail(self, exc: BaseException) -> None: ...


@attrs.frozen(kw_only=True)
class Caller:
    """Who makes the request: its id, the key it came with, and its trace's spans
    (:class:`engine.tracing.RequestTrace`; None when tracing is off or not sampled)."""

    request_id: str
    key: ApiKeyRecord
    trace: RequestTrace | None = None

    @property
    def account_id(self) -> str:
        return self.key.account_id

    @property
    def key_id(self) -> str:
        return self.key.id


@attrs.frozen(kw_only=True)
class Services:
    """What an exchange uses: the actors' front ends and the settings of the path.
    ``draining`` says whether shutdown has begun (a request cancelled from then on is
    ``interrupted``, not ``client_closed``); ``metrics``, None when they are off."""

    router: Router
    wallets: WalletPool
    usage: UsageAggregator
    limits: KeyLimiter
    stored: StoredResponses
    wallet: WalletConfig
    streaming: StreamingConfig
    upstream: UpstreamConfig
    draining: Callable[[], bool]
    metrics: Metrics | None = None


def retryable(exc: OmixaError) -> bool:
    """Failures another deployment may not have: 429, 5xx, unreachable, timeout."""
    if isinstance(exc, UpstreamTimeout):
        return True
    return isinstance(exc, UpstreamError) and (
        exc.upstream_status is None or exc.upstream_status == 429 or exc.upstream_status >= 500
    )


class Failing:
    """``async with exchange._failing():`` around the steps before an answer or a stream is
    handed out: a failure there finishes the exchange (shielded) and goes on, an upstream's
    error translated for the client (:func:`engine.errors.translate_upstream`)."""

    __slots__ = ("_exchange",)

    def __init__(self, exchange: Fails) -> None:
        self._exchange = exchange

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None:
            return False
        await self._exchange.fail(exc)
        if isinstance(exc, OmixaError):
            raise translate_upstream(exc) from None
        return False


def is_cancellation(exc: BaseException) -> bool:
    """Cancelled, or a group of nothing but Cancelled (as a library's nursery raises it)."""
    if isinstance(exc, BaseExceptionGroup):
        rest = exc.split(trio.Cancelled)[1]
        return rest is None
    return isinstance(exc, trio.Cancelled)
