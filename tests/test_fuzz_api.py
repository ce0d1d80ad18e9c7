"""Property-based fuzzing of ``/api/v1``, driven by the gateway's own OpenAPI document.

Schemathesis reads ``GET /api/v1/openapi.json`` from a real gateway (simulated upstreams for a
chat, an embedding and an image model, a funded key, self top-up on) and generates requests
for every operation it describes: schema-valid ones and, on purpose, schema-invalid ones,
sent over HTTP. Every answer must keep the promises of docs/api.md:

- never a 5xx (the simulator never fails, so a 502 or a 503 is a bug as much as a 500);
- every 4xx is the error envelope ``{"error": {"message", "type", "param", "code", "request_id"}}``
  whose ``request_id`` is the ``x-request-id`` header and whose status, code and type are a
  row of the error table of docs/api.md (the code one of the ``Error`` schema's enum of
  Omixa's own codes: the simulator never refuses a request);
- every status is one the operation documents, with its documented content type, and every
  2xx matches the documented schema (each event of a stream too);
- a schema-valid request is accepted, or refused only for a reason that the document cannot
  express (:data:`REFUSALS`): any other refusal means that the document promises more than
  the server takes, and the document is what must change;
- a schema-invalid request is refused with a 4xx.

The run is a regression net rather than a search: a fixed number of examples per operation,
derandomized, with no example database; about 45 seconds on 2 cores.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
import trio
from harness import MODEL, open_gateway
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import providers
from hypothesis.internal.constants_ast import Constants
from schemathesis import GenerationMode
from schemathesis.core.result import Ok
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi import checks as openapi_checks

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parent.parent / "docs" / "api.md"
EMBEDDING_MODEL = "text-embedding-3-small"
IMAGE_MODEL = "gpt-image-1"
SERVED = (MODEL, EMBEDDING_MODEL, IMAGE_MODEL)
# Each model call, and the model of its modality that the gateway serves.
MODEL_CALLS = {
    "POST /api/v1/chat/completions": MODEL,
    "POST /api/v1/responses": MODEL,
    "POST /api/v1/embeddings": EMBEDDING_MODEL,
    "POST /api/v1/images/generations": IMAGE_MODEL,
}
# Examples per operation, for each generation mode.
EXAMPLES = {"positive": 150, "negative": 75}
REQUEST_ID = re.compile(r"^req_[0-9a-f]{24}$")

# Refusals that a schema-valid request may still get, by operation, because what decides
# them is not in the document: the catalog and its deployments, the ids that exist, the
# server's configured top-up bounds, an Idempotency-Key used before, and rules that tie two
# parameters together. Each is (status, code, a pattern of the message naming the rule of
# docs/api.md); any other refusal of a schema-valid request fails the test.
MODEL_RULES = [
    (404, "model_not_found", r"does not exist or is not enabled"),
    (400, "invalid_request", r"is an? \w+ model; use /"),  # another modality's endpoint
]
REFUSALS: dict[str, list[tuple[int, str, str]]] = {
    "POST /api/v1/chat/completions": MODEL_RULES
    + [
        (400, "invalid_request", r"supports at most \d+ output tokens"),  # its max_output_tokens
        (400, "invalid_request", r"accepts at most \d+ tokens of context"),  # its context_window
    ],
    "POST /api/v1/responses": MODEL_RULES
    + [
        (400, "invalid_request", r"supports at most \d+ output tokens"),  # its max_output_tokens
        (400, "invalid_request", r"accepts at most \d+ tokens of context"),  # its context_window
        (404, "not_found", r"^No response found with id"),  # a previous_response_id never made
        (404, "not_found", r"^No item found with id"),  # an item by reference never made
        # What the deployment's adapter has no translation for (the simulator's, as Vertex's).
        (400, "invalid_request", r"can(not)? be sent to this model"),
        (400, "invalid_request", r"^input\[\d+\]\.role must be one of"),
        (400, "invalid_request", r"^text\.format: only"),
    ],
    "GET /api/v1/responses/{response_id}": [(404, "not_found", r"^No response found with id")],
    "DELETE /api/v1/responses/{response_id}": [(404, "not_found", r"^No response found with id")],
    "GET /api/v1/responses/{response_id}/input_items": [(404, "not_found", r"^No response found with id")],
    "POST /api/v1/responses/{response_id}/cancel": [
        (404, "not_found", r"^No response found with id"),
        (400, "invalid_request", r"background"),  # the upstream's refusal: no background responses
    ],
    "POST /api/v1/embeddings": MODEL_RULES
    + [
        (400, "invalid_request", r"accepts at most \d+\.$"),  # its context_window
        (400, "invalid_request", r"at most \d+ per request"),  # all inputs together
        (400, "invalid_request", r"does not take 'dimensions'"),
        (400, "invalid_request", r"'dimensions' must be an integer from 1 to \d+"),  # its vector size
    ],
    "POST /api/v1/images/generations": MODEL_RULES,
    "GET /api/v1/models/{model_id}": [(404, "model_not_found", "")],
    "POST /api/v1/wallet/top-up": [
        # wallet.top_up_min_usd to top_up_max_usd; past what a wallet can hold ($9.2 billion)
        # the same rule has its own message.
        (400, "invalid_request", r"^amount (must be between|is too large)"),
        (409, "idempotency_key_reused", ""),
    ],
    "GET /api/v1/wallet/transactions": [(404, "not_found", "")],  # an 'after' that is not yours
    "GET /api/v1/wallet/transactions/{txn_id}": [(404, "not_found", "")],
    "GET /api/v1/usage/requests": [(404, "not_found", "")],  # an 'after' that is not yours
    "GET /api/v1/usage/requests/{request_id}": [(404, "not_found", "")],
    "GET /api/v1/usage/rollups": [
        (400, "invalid_request", r"'since' must be before 'until'"),
        (400, "invalid_request", r"^At most \d+ days per query"),
    ],
}


# Operations that no request can pass here: every cancel is refused (there are no
# background responses to cancel).
NEVER_ACCEPTED = {"POST /api/v1/responses/{response_id}/cancel"}


def simulated(model: str) -> dict[str, Any]:
    """A deployment of ``model`` on the built-in simulator, answering at once."""
    return {"name": f"sim-{model}", "model": model, "provider": "simulator",
            "sim_first_token_ms": 0, "sim_chunk_interval_ms": 0}  # fmt: skip


def documented_errors() -> set[tuple[int, str, str]]:
    """(status, code, type) of every row of the error table of docs/api.md."""
    section = DOCS.read_text().split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    rows = set()
    for status, codes, kind in re.findall(r"^\| (\d{3}) \| ([^|]+) \| `(\w+)` \|", section, re.M):
        for code in re.findall(r"`(\w+)`", codes):
            rows.add((int(status), code, kind))
    return rows


class Promises:
    """The properties of docs/api.md that schemathesis' own checks do not cover, as checks of
    its signature: (context, response, case), raising AssertionError when broken."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.table = documented_errors()
        error = spec["components"]["schemas"]["Error"]["properties"]["error"]
        self.codes = set(error["properties"]["code"]["anyOf"][0]["enum"])
        assert {code for _, code, _ in self.table} <= self.codes, "docs/api.md names a code the document lacks"

    def envelope(self, ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
        """Every answer has a request id; every error is the envelope of a documented row."""
        request_id = response.headers.get("x-request-id", [""])[0]
        assert REQUEST_ID.match(request_id), f"x-request-id is {request_id!r}"
        if response.status_code < 400:
            return
        body = response.json()
        assert isinstance(body, dict) and set(body) == {"error"}, f"not the error envelope: {body!r}"
        error = body["error"]
        assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code", "request_id"}, error
        assert error["request_id"] == request_id, f"request_id {error['request_id']} is not x-request-id {request_id}"
        assert error["code"] in self.codes, f"{error['code']} is not in the Error schema's enum"
        row = (response.status_code, error["code"], error["type"])
        assert row in self.table, f"{row} is not a row of the error table of docs/api.md"
        assert isinstance(error["message"], str) and error["message"], error

    def documented_refusal(self, ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
        """A schema-valid request is refused only for a reason listed in REFUSALS."""
        if case.meta is None or not case.meta.generation.mode.is_positive or not 400 <= response.status_code < 500:
            return
        error = response.json()["error"]
        for status, code, pattern in REFUSALS.get(case.operation.label, []):
            if response.status_code == status and error["code"] == code and re.search(pattern, error["message"]):
                return
        raise AssertionError(
            f"A schema-valid request was refused ({response.status_code} {error['code']}: "
            f"{error['message']}): the document accepts what the server does not."
        )


def model_calls(strategy: st.SearchStrategy, own: str) -> st.SearchStrategy:
    """Model calls that mostly name ``own``, the served model of the endpoint, so that the
    fuzzer gets past the catalog lookup to the body checks, the hold, the call and the charge;
    sometimes another served model (of another modality), sometimes the generated name. A
    schema-invalid call keeps a generated model that is itself invalid (it may be the part
    that is wrong)."""

    def prepare(pair: tuple[schemathesis.Case, str | None]) -> schemathesis.Case:
        case, model = pair
        if not isinstance(case.body, dict):
            return case
        generated = case.body.get("model")
        if model is not None and isinstance(generated, str) and generated:
            case.body["model"] = model
        return case

    names = [own, own, own, *(m for m in SERVED if m != own), None]
    return st.tuples(strategy, st.sampled_from(names)).map(prepare)


def strategies(operation: Any, auth: dict[str, str], ids: dict[str, list[str]]) -> dict[str, st.SearchStrategy]:
    """Each generation mode's strategy for ``operation``.

    Path parameters are sometimes ids that exist (``ids``), so that the found answer is
    checked too. Schema-invalid requests carry the funded key when the operation has a body,
    a query or a header of its own to get wrong (else each would be refused at the key, before
    the part that is wrong); an operation whose only other input is its path can only get the
    key wrong, and is sent with a missing or malformed Authorization header. The OpenAPI
    document takes no input at all, so it has no schema-invalid request.
    """
    label = operation.label
    positive = operation.as_strategy(GenerationMode.POSITIVE, headers=auth)
    negative = None
    own_headers = [h.name for h in operation.headers if h.name != "Authorization"]
    if operation.body or len(operation.query) or own_headers:
        negative = operation.as_strategy(GenerationMode.NEGATIVE, headers=auth)
    elif len(operation.headers):
        negative = operation.as_strategy(GenerationMode.NEGATIVE)
    if label in MODEL_CALLS:
        positive = model_calls(positive, MODEL_CALLS[label])
        if negative is not None:
            negative = model_calls(negative, MODEL_CALLS[label])
    for parameter in operation.path_parameters:
        positive = st.one_of(
            positive,
            st.one_of(
                *(
                    operation.as_strategy(
                        GenerationMode.POSITIVE, headers=auth, path_parameters={parameter.name: value}
                    )
                    for value in ids[parameter.name]
                )
            ),
        )
    return {"positive": positive} | ({"negative": negative} if negative is not None else {})


def fuzz(spec: dict[str, Any], root_url: str, key: str, ids: dict[str, list[str]]) -> list[str]:
    """Check every operation's promises; the failures, each with a request that shows it.
    Blocking (HTTP with requests): runs in a worker thread, off the gateway's event loop.

    An operation that never answered 2xx is a failure too: its fuzzing would have stopped at
    a refusal (every model unknown, say) and checked none of what lies behind it."""
    schema = schemathesis.openapi.from_dict(spec)
    promises = Promises(spec)
    checks = [
        schemathesis.checks.not_a_server_error,
        openapi_checks.status_code_conformance,
        openapi_checks.content_type_conformance,
        openapi_checks.response_schema_conformance,
        openapi_checks.negative_data_rejection,
        promises.envelope,
        promises.documented_refusal,
    ]
    auth = {"Authorization": f"Bearer {key}"}
    failures: list[str] = []
    accepted: set[str] = set()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), f"the schema has an invalid operation: {result.err()!r}"
            operation = result.ok()
            for mode, strategy in strategies(operation, auth, ids).items():

                @settings(
                    max_examples=EXAMPLES[mode],
                    derandomize=True,
                    database=None,
                    deadline=None,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink],
                    suppress_health_check=[
                        HealthCheck.too_slow,
                        HealthCheck.filter_too_much,
                        HealthCheck.data_too_large,
                        HealthCheck.large_base_example,
                    ],
                )
                @given(case=strategy)
                def check(case: schemathesis.Case) -> None:
                    response = case.call(base_url=root_url, session=session, timeout=30)
                    if response.status_code < 300:
                        accepted.add(case.operation.label)
                    case.validate_response(response, checks=checks)

                try:
                    check()
                except (Exception, FailureGroup) as exc:  # each operation's failure is reported
                    failures.append(f"{operation.label} ({mode}):\n{exc}")
            if operation.label not in accepted and operation.label not in NEVER_ACCEPTED:
                failures.append(f"{operation.label}: no request was accepted, so nothing behind its checks was fuzzed")
    return failures


@pytest.fixture
def constants_of_this_code_ignored(monkeypatch):
    """Hypothesis seasons its examples with literals found in the project's own modules that
    happen to be imported (engine/, web/...). That would make the derandomized examples change
    with any edit of any literal in the code, and differ between this file alone and the whole
    suite; without them, the examples depend only on the document, this file and the pinned
    libraries."""
    monkeypatch.setattr(providers, "_get_local_constants", Constants)  # an empty pool
    providers.CONSTANTS_CACHE.cache.clear()
    yield
    providers.CONSTANTS_CACHE.cache.clear()


async def test_every_operation_keeps_its_documented_promises_under_fuzzing(tmp_path, constants_of_this_code_ignored):
    """The gateway runs in this test's event loop; the fuzzer, whose HTTP client blocks, in a
    worker thread. One request is made first so that a request log and ledger rows exist."""
    async with open_gateway(
        f"sqlite:///{tmp_path / 'fuzz.db'}",
        deployments=[simulated(m) for m in SERVED],
        wallet={"self_top_up": True},
        limits={"key_rpm": 0},  # thousands of calls a minute, from one key
    ) as gw:
        account, key = await gw.funded_account("1000000.00")
        async with httpx.AsyncClient(base_url=gw.base_url, headers={"Authorization": f"Bearer {key}"}) as client:
            spec = (await client.get("/openapi.json")).json()
            served = await client.post(
                "/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
            )
            assert served.status_code == 200, served.text
            stored = await client.post("/responses", json={"model": MODEL, "input": "hi"})
            assert stored.status_code == 200, stored.text
        ids = {
            "response_id": [stored.json()["id"]],
            "model_id": list(SERVED),
            "txn_id": [f"txn_{entry.id}" for entry in await gw.settled_entries(account)],
            "request_id": [(await gw.request_log(served.headers["x-request-id"])).id],
        }
        failures = await trio.to_thread.run_sync(fuzz, spec, gw.root_url, key, ids)
    assert not failures, "\n\n".join(failures)
