"""What the metrics' labels may hold (:mod:`engine.metrics`): an upstream attempt's outcome,
and the error codes, bounded to a known set so that the number of series stays bounded."""

from __future__ import annotations

from omixa.engine.errors import OmixaError, UpstreamBusy, UpstreamError, UpstreamTimeout


def attempt_outcome(status: str, failure: OmixaError | None) -> str:
    """An attempt's outcome for ``omixa_upstream_attempts_total`` (the deployment's health
    judges the same failures: see :mod:`engine.deployment`)."""
    if failure is None:
        if status == "ok":
            return "ok"
        return "cancelled" if status in ("client_closed", "interrupted") else "error"
    if isinstance(failure, UpstreamBusy):
        return "busy"
    if isinstance(failure, UpstreamTimeout):
        return "timeout"
    if isinstance(failure, UpstreamError):
        if failure.upstream_status is None:
            return "connection"
        if failure.upstream_status == 429:
            return "rate_limited"
        if failure.upstream_status >= 500:
            return "server_error"
    return "client_error"


def _codes(kind: type[OmixaError]) -> set[str]:
    return {kind.code}.union(*(_codes(sub) for sub in kind.__subclasses__()))


# Every code Omixa itself answers with, and how a model call may otherwise end.
OMIXA_CODES = frozenset(_codes(OmixaError) | {"", "ok", "client_closed", "interrupted"})
# Codes an upstream gives for a request's own fault that Omixa passes on (engine.errors:
# UpstreamRejected), as Azure OpenAI and OpenAI name them.
UPSTREAM_CODES = frozenset(
    {
        "content_filter",
        "context_length_exceeded",
        "invalid_prompt",
        "invalid_value",
        "invalid_type",
        "unsupported_value",
        "unsupported_parameter",
        "unknown_parameter",
        "missing_required_parameter",
        "string_above_max_length",
        "array_above_max_length",
        "integer_above_max_value",
        "integer_below_min_value",
        "invalid_image",
        "invalid_image_format",
        "image_generation_user_error",
        "moderation_blocked",
        "rate_limit_exceeded",
    }
)


def bounded_code(code: str) -> str:
    """``code`` as a label: Omixa's own codes and the known upstream ones as they are, any
    other an upstream made up as ``upstream_other`` (labels stay a bounded set)."""
    return code if code in OMIXA_CODES or code in UPSTREAM_CODES else "upstream_other"
