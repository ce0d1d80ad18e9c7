"""Traces: the OpenTelemetry spans of a request, its hold, each upstream attempt and its settle,
sent to a collector over OTLP/HTTP (``[tracing] otlp_endpoint``, :class:`engine.config.TracingConfig`).

This is the one module that imports OpenTelemetry (the ``otel`` extra), and it is imported
only when tracing is on: :func:`engine.runtime.open_engine` loads it when ``otlp_endpoint`` is
set or a span processor is handed in; every other module names its types for the type
checker only. With tracing off, the web layer and the exchange hold None where a
:class:`RequestTrace` would be, and each hook on the request path costs one ``is not None``
test.

One HTTP request is one trace, or a part of the caller's: a W3C ``traceparent`` header (with
its ``tracestate``) the request came with is the parent of the request's span. The spans::

    POST /api/v1/chat/completions   SERVER    the request, from its arrival to the end of its
    │                                         response; a stream's ends after its settle
    ├─ omixa.hold                   INTERNAL  the key's token limit and the wallet's hold
    ├─ omixa.upstream               CLIENT    one per attempt: a deployment's answer (a stream's
    ├─ omixa.upstream                         whole body), or its failure and the failover
    └─ omixa.settle                 INTERNAL  the hold settled, the slot given back

Every child is started with the request's span as its explicit parent, never from the
current context, and nothing here reads or sets the current context: a stream's relay
reports to the exchange from whichever task reads the body or closes it (the request's own,
Quart's body iteration, :class:`web.http.lifecycle.RequestScope`'s closing step), and the
spans do not depend on which. A child still open when the request ends (its step raised
past the exchange's hooks) is ended with it.

What spans carry: OpenTelemetry's HTTP and GenAI attribute names where they define one
(``http.*``, ``url.*``, ``gen_ai.*``), ``omixa.*`` otherwise; the account and key ids, the
request id, deployments and amounts, never a key, a secret, a prompt or an answer.

Sampling is parent-based: a request with a ``traceparent`` follows its sampled flag, others
are kept at ``sample_ratio``. A request whose span is not kept gets no :class:`RequestTrace`
at all (None, as with tracing off). Finished spans go to a batch span processor, whose thread
exports them; :meth:`Tracing.shutdown` (at engine stop) exports what is left.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from omixa.engine.errors import UpstreamError, translate_upstream

if TYPE_CHECKING:
    from omixa.engine.config import TracingConfig
    from omixa.engine.errors import OmixaError
    from omixa.engine.model_call import ModelCall
    from omixa.engine.router import Lease
    from omixa.engine.upstream import Usage
    from omixa.storage import Hold, RequestLog

__all__ = ["RequestTrace", "Tracing", "open_tracing"]

# The instrumentation scope's name on every span.
SCOPE = "omixa"
# The request headers of W3C trace context.
_TRACE_HEADERS = {b"traceparent": "traceparent", b"tracestate": "tracestate"}
# gen_ai.operation.name by the catalog's modality.
_OPERATIONS = {"chat": "chat", "embedding": "embeddings", "image": "generate_content"}
# gen_ai.provider.name by adapter; the simulator is none of OpenTelemetry's.
_PROVIDERS = {"azure": "azure.ai.openai", "vertex": "gcp.vertex_ai", "simulator": "omixa.simulator"}
# Outcomes that end an attempt without its deployment being at fault.
_LEFT = frozenset({"ok", "client_closed", "interrupted"})


def open_tracing(config: TracingConfig, *, instance_id: str, processor: SpanProcessor | None = None) -> Tracing:
    """The process's tracing: a tracer provider of its own (the global one is left alone)
    whose resource names ``service_name``, the version and this process (``instance_id``,
    as in the ``instances`` table), sampling parent-based at ``sample_ratio``. Spans go to
    ``processor`` when given (tests hand in an in-memory exporter's), else in batches to
    the OTLP/HTTP exporter of ``otlp_endpoint`` (with ``headers``, if any)."""
    resource = Resource.create(
        {"service.name": config.service_name, "service.version": version("omixa"), "service.instance.id": instance_id}
    )
    provider = TracerProvider(resource=resource, sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)))
    if processor is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint, headers=dict(config.headers) or None)
        processor = BatchSpanProcessor(exporter)
    provider.add_span_processor(processor)
    return Tracing(provider)


class Tracing:
    """The process's tracer; :meth:`request` starts a request's trace."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer(SCOPE, version("omixa"))
        self._propagator = TraceContextTextMapPropagator()

    def request(
        self, method: str, headers: Iterable[tuple[bytes, bytes]], attributes: Mapping[str, Any]
    ) -> RequestTrace | None:
        """A request's span (named ``method`` until :meth:`RequestTrace.routed` names its
        route), the child of the ``traceparent`` among ``headers`` (ASGI's: lower-case bytes)
        if it has a valid one, else a root. None when the sampler does not keep it."""
        carrier = {_TRACE_HEADERS[name]: value.decode("latin-1") for name, value in headers if name in _TRACE_HEADERS}
        parent = self._propagator.extract(carrier, Context()) if carrier else Context()  # never the current one
        span = self._tracer.start_span(method, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        if not span.is_recording():
            return None
        return RequestTrace(self._tracer, span, method)

    def shutdown(self) -> None:
        """Export what is still queued and stop the exporter's thread (blocks: call it in a
        worker thread)."""
        self._provider.shutdown()


class RequestTrace:
    """One request's spans: its own (``span``) and its children, each started with it as the
    explicit parent. The web layer names and ends it; the exchange reports its steps."""

    __slots__ = (
        "_attempts", "_context", "_head_sent", "_hold", "_method", "_operation", "_settle", "_tracer", "_upstream",
        "span",
    )  # fmt: skip

    def __init__(self, tracer: trace.Tracer, span: Span, method: str) -> None:
        self._tracer = tracer
        self.span = span
        self._method = method
        self._operation = "chat"  # gen_ai.operation.name, once the exchange says
        self._head_sent = False
        self._context = trace.set_span_in_context(span, Context())
        self._hold: Span | None = None
        self._upstream: Span | None = None
        self._settle: Span | None = None
        self._attempts = 0

    # -- the web layer --------------------------------------------------------------------

    def routed(self, route: str | None, request_id: str) -> None:
        """The request matched ``route`` (a URL rule; None: no route) and got its id."""
        span = self.span
        span.set_attribute("omixa.request_id", request_id)
        if route is not None:
            span.set_attribute("http.route", route)
            span.update_name(f"{self._method} {route}")

    def authenticated(self, account_id: str, key_id: str) -> None:
        """The caller's account and key."""
        self.span.set_attributes({"omixa.account_id": account_id, "omixa.key_id": key_id})

    def responded(self, status: int) -> None:
        """The response's head went out with ``status``; a 5xx marks the span an error (a
        server's span is not one for a 4xx: the client's mistake)."""
        self._head_sent = True
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.span.set_attributes({"error.type": str(status)})
            self.span.set_status(StatusCode.ERROR)

    def end(self) -> None:
        """The request is over (its response sent, a stream settled): end any child still
        open, then its span."""
        for child in (self._hold, self._upstream, self._settle):
            if child is not None:
                child.end()
        self._hold = self._upstream = self._settle = None
        self.span.end()

    # -- the exchange (engine.exchange) ---------------------------------------------------

    def holding(self, request: ModelCall) -> None:
        """The paid call's model is known; its hold begins."""
        model = request.model
        self._operation = _OPERATIONS.get(model.modality, model.modality)
        self.span.set_attributes(
            {
                "gen_ai.operation.name": self._operation,
                "gen_ai.request.model": model.id,
                "gen_ai.request.stream": request.stream,
                "omixa.prompt_tokens": request.prompt_tokens,
            }
        )
        self._hold = self._child("omixa.hold", SpanKind.INTERNAL)

    def held(self, hold: Hold, output_tokens: int) -> None:
        """The wallet holds ``hold``, which covers ``output_tokens`` per choice."""
        span, self._hold = self._hold, None
        if span is not None:
            span.set_attributes(
                {
                    "omixa.hold_id": hold.id,
                    "omixa.hold.amount_nano": hold.amount,
                    "gen_ai.request.max_tokens": output_tokens,
                }
            )
            span.end()

    def attempting(self, lease: Lease) -> None:
        """An attempt on the deployment of ``lease`` begins."""
        self._attempts += 1
        config = lease.actor.config
        provider = lease.actor.provider.name
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": self._operation,
            "gen_ai.provider.name": _PROVIDERS.get(provider, provider),
            "gen_ai.request.model": config.model,
            "omixa.deployment": config.name,
            "omixa.provider": provider,
            "omixa.attempt": self._attempts,
        }
        if config.region:
            attributes["omixa.region"] = config.region
        self._upstream = self._child("omixa.upstream", SpanKind.CLIENT, attributes)

    def attempt_failed(self, failure: OmixaError) -> None:
        """The current attempt failed with ``failure`` and the request fails over."""
        span, self._upstream = self._upstream, None
        if span is not None:
            span.set_attribute("omixa.failover", True)
            _failed(span, failure)
            span.end()

    def settling(self, status: str, usage: Usage | None, failure: OmixaError | None) -> None:
        """The exchange ends with ``status`` (``usage`` the upstream's, ``failure`` its
        error): a step still open ends with it (a hold refused, the last attempt), the
        settle begins."""
        span, self._hold = self._hold, None
        if span is not None:
            span.set_attribute("omixa.outcome", status)
            span.set_status(StatusCode.ERROR, status)
            span.end()
        span, self._upstream = self._upstream, None
        if span is not None:
            span.set_attribute("omixa.outcome", status)
            if failure is not None:
                _failed(span, failure)
            elif status == "ok":
                span.set_attribute("http.response.status_code", 200)
            elif status not in _LEFT:
                span.set_status(StatusCode.ERROR, status)
            if usage is not None:
                span.set_attributes(_usage(usage))
            span.end()
        self._settle = self._child("omixa.settle", SpanKind.INTERNAL, {"omixa.outcome": status})

    def settled(self, entry: RequestLog, charged: int) -> None:
        """Settled and recorded: ``entry`` is the request's log, ``charged`` what the wallet
        charged (nano-dollars)."""
        span, self._settle = self._settle, None
        if span is not None:
            span.set_attribute("omixa.cost_nano", charged)
            span.end()
        attributes: dict[str, Any] = {"omixa.outcome": entry.status, "omixa.cost_nano": charged}
        if entry.deployment is not None:
            attributes["omixa.deployment"] = entry.deployment
        if entry.ttft_ms is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = entry.ttft_ms / 1000
        self.span.set_attributes(attributes)
        if entry.prompt_tokens or entry.completion_tokens:
            self.span.set_attributes(
                {
                    "gen_ai.usage.input_tokens": entry.prompt_tokens,
                    "gen_ai.usage.output_tokens": entry.completion_tokens,
                }
            )
        if entry.status not in _LEFT and self._head_sent:
            # A stream that failed after its 200 went out; otherwise the response's status,
            # still to come, says whether the failure was the server's (responded).
            self.span.set_status(StatusCode.ERROR, entry.status)

    def _child(self, name: str, kind: SpanKind, attributes: Mapping[str, Any] | None = None) -> Span:
        return self._tracer.start_span(name, context=self._context, kind=kind, attributes=attributes)


def _failed(span: Span, failure: OmixaError) -> None:
    """Mark an attempt's span failed: the upstream's status if it answered, the outcome its
    deployment is told (:func:`engine.errors.translate_upstream`)."""
    status = failure.upstream_status if isinstance(failure, UpstreamError) else None
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    span.set_attributes(
        {"omixa.outcome": translate_upstream(failure).code, "error.type": str(status) if status else failure.code}
    )
    span.set_status(Status(StatusCode.ERROR, failure.message))


def _usage(usage: Usage) -> dict[str, int]:
    """GenAI's token attributes of ``usage``."""
    return {
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
        "gen_ai.usage.reasoning.output_tokens": usage.reasoning_tokens,
        "gen_ai.usage.cache_read.input_tokens": usage.cached_tokens,
    }
