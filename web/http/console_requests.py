"""The request log pages: /requests (the account's requests, filtered and paged) and
/requests/<id> (one request with its wallet movements), and their feeds.

Every number comes from the engine calls and renderings of the ``/api/v1/usage/requests``
routes (``wallet_api.request_filter``, ``request_view``, ``transaction_view``), so the pages
show the API's data. Filters (model, key, status, stream flag) are applied by storage;
pages follow the API's ``after`` cursor.

Feeds (session-authenticated, errors in the API's envelope):
    GET /requests/data?model&key_id&status&stream&after&limit   a page, as the API's list
    GET /requests/data/<id>         {"request": the API's view, "ledger": [transactions]}
    GET /requests/export?model&key_id&status&stream             the CSV download: the same
        bytes as ``/api/v1/usage/requests?format=csv`` with the same filters, streamed.
"""

from __future__ import annotations

from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from omixa.engine import errors
from omixa.engine.errors import NotFoundError
from omixa.web.http.console import Console
from omixa.web.http.envelope import json_response
from omixa.web.http.wallet_api import (
    REQUEST_FILTERS,
    list_view,
    query_params,
    request_filter,
    request_view,
    requests_csv,
    transaction_view,
)

# The console's filters: the API's, less the time range (the log is paged from the newest).
FILTERS = tuple(name for name in REQUEST_FILTERS if name not in ("since", "until"))
# Statuses besides the error codes: a success, a client that went away, a process that died.
OUTCOMES = {
    "ok": "Answered.",
    "client_closed": "The client closed the connection before the answer was complete.",
    "interrupted": "The gateway process serving it stopped before it finished; nothing was charged.",
}


def _error_codes() -> dict[str, str]:
    """Every error code the engine names, with what it means (its default message)."""
    found: dict[str, str] = {}
    pending: list[type[errors.OmixaError]] = [errors.OmixaError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.code, cls.default_message)
        pending.extend(cls.__subclasses__())
    return dict(sorted(found.items()))


def _filters() -> dict[str, str]:
    """The non-empty filters of the query string (an HTML form sends empty fields too)."""
    return {name: request.args[name] for name in FILTERS if request.args.get(name)}


def register(app: QuartTrio, console: Console) -> None:
    engine = console.engine
    reports = engine.reports
    codes = _error_codes()
    meanings = {**OUTCOMES, **codes}

    async def keys_of(account_id: str) -> list[dict[str, Any]]:
        return [
            {"id": k.id, "prefix": k.prefix, "revoked": k.revoked_at is not None}
            for k in await engine.accounts.keys(account_id)
        ]

    @app.get("/requests")
    async def requests_page() -> Response:
        found = await console.session()
        if found is None:
            return console.to_signin()
        key, csrf = found
        chosen = _filters()
        models = sorted(engine.router.models() | ({chosen["model"]} if "model" in chosen else set()))
        return await console.page(
            "requests.html",
            key,
            csrf,
            active="requests",
            chosen=chosen,
            models=models,
            keys=await keys_of(key.account_id),
            statuses=[*OUTCOMES, *codes],
        )

    @app.get("/requests/<request_id>")
    async def request_page(request_id: str) -> Response:
        found = await console.session()
        if found is None:
            return console.to_signin()
        key, csrf = found
        try:
            log = await reports.request(key.account_id, request_id)
        except NotFoundError:
            response = await console.page("request.html", key, csrf, active="requests", request_id=None)
            response.status_code = 404
            return response
        prefixes = {k["id"]: k["prefix"] for k in await keys_of(key.account_id)}
        return await console.page(
            "request.html",
            key,
            csrf,
            active="requests",
            request_id=log.id,
            key_prefix_of_request=prefixes.get(log.key_id, ""),
            meaning=meanings.get(log.status, "An error the upstream named; see the upstream's documentation."),
        )

    @app.get("/requests/data")
    async def requests_data() -> Response:
        key, _ = await console.require()
        params = query_params(("limit", "after", *FILTERS))
        page = await reports.requests(request_filter(key.account_id, params), after=params.get("after"))
        return json_response(list_view(page, request_view))

    @app.get("/requests/data/<request_id>")
    async def request_data(request_id: str) -> Response:
        key, _ = await console.require()
        query_params(())
        log = await reports.request(key.account_id, request_id)
        ledger = await reports.request_ledger(key.account_id, request_id)
        return json_response({"request": request_view(log), "ledger": [transaction_view(e) for e in ledger]})

    @app.get("/requests/export")
    async def requests_export() -> Response:
        key, _ = await console.require()
        params = query_params(FILTERS)
        return await requests_csv(engine, request_filter(key.account_id, params), None)
