"""Provider adapters: one upstream's wire format each, behind :class:`Provider`.

``build_provider`` picks the adapter for a configured deployment; Azure and Vertex adapters built
with one :class:`HttpClients` share a pooled HTTP/1.1 client per endpoint origin.
"""

from __future__ import annotations

from typing import Any

from omixa.engine.config import DeploymentConfig, UpstreamConfig
from omixa.engine.errors import InvalidRequest
from omixa.engine.providers import _responses, gemini
from omixa.engine.providers._http import DEFAULT_READ_SIZE, HttpClients
from omixa.engine.providers.azure import AzureProvider
from omixa.engine.providers.simulator import SimulatorProvider
from omixa.engine.providers.sse import SseParser, iter_sse
from omixa.engine.providers.vertex import VertexProvider, service_account
from omixa.engine.upstream import Provider

__all__ = [
    "DEFAULT_READ_SIZE",
    "AzureProvider",
    "HttpClients",
    "SimulatorProvider",
    "SseParser",
    "VertexProvider",
    "build_provider",
    "check_deployment",
    "check_request",
    "check_responses_request",
    "iter_sse",
]


def check_request(provider: str, body: dict[str, Any]) -> None:
    """Refuse, before any hold, what ``provider``'s upstream cannot take: for Vertex Gemini,
    the fields it has no translation for. Errors: InvalidRequest naming the field."""
    if provider == "vertex":
        gemini.check_request(body)


def check_responses_request(provider: str, body: dict[str, Any]) -> None:
    """As :func:`check_request`, for a Responses API body: for Vertex Gemini, what has no chat
    translation (:mod:`engine.providers._responses`) and what Gemini cannot take of the
    translation. Errors: InvalidRequest naming the field."""
    if provider == "vertex":
        _responses.check(body, tools=False)
        try:
            gemini.check_request(_responses.chat_body(body))
        except InvalidRequest as exc:  # its param names the chat translation's fields
            raise InvalidRequest(f"In its chat translation: {exc.message}") from None


def check_deployment(deployment: DeploymentConfig) -> DeploymentConfig:
    """What only the adapter can check before ``deployment`` is used (at start-up and before
    a reload applies): a Vertex service account file is read and must name a project unless
    the config does. Returns the deployment as its adapter will use it (a Vertex project
    taken from the file), so a reload sees a change of that project too.
    Errors: ValueError naming the config key."""
    if deployment.provider == "vertex" and deployment.service_account_file:
        return service_account(deployment)[1]
    return deployment


def build_provider(
    deployment: DeploymentConfig, upstream: UpstreamConfig, clients: HttpClients | None = None
) -> Provider:
    """The adapter for ``deployment``.

    Args:
        clients: shared HTTP clients (the caller closes them); without it an adapter owns
            clients of its own, closed by its ``aclose``.
    """
    if deployment.provider == "simulator":
        return SimulatorProvider(deployment)
    if deployment.provider == "vertex":
        return VertexProvider(deployment, upstream, clients)
    client = clients.for_endpoint(deployment.endpoint) if clients is not None else None
    return AzureProvider(deployment, upstream, client)
