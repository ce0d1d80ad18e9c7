"""The Responses API end to end: the official openai SDK and raw SSE → real Hypercorn → actors →
fake Azure (tests/fake_azure_responses.py), on both backends.

Money is checked exactly (the upstream's usage at the catalog price, holds released, a ledger
that verifies), and stored responses are followed up only where they live.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import httpx
import openai
import pytest
import trio
from fake_azure import DEFAULT_REPLY, open_fake_azure
from fake_azure_responses import input_text
from harness import MODEL, azure_deployment, ledger_verify_cli, open_gateway
from sdk_helpers import in_thread

from omixa.engine.catalog import cost_of, load_catalog
from omixa.engine.responses_request import count_input
from omixa.engine.tokens import count_text
from omixa.engine.upstream import Usage

MODEL_INFO = load_catalog().get(MODEL)
assert MODEL_INFO is not None  # the shipped catalog lists it
BODY = {"model": MODEL, "instructions": "Answer briefly.", "input": "Say something about foxes."}


def cost(prompt: int, completion: int) -> int:
    assert MODEL_INFO is not None
    return cost_of(Usage(prompt_tokens=prompt, completion_tokens=completion), MODEL_INFO.prices)


@asynccontextmanager
async def two_resources(database_url):
    """Two Azure resources (fakes ``east`` and ``west``), one deployment of the model on each,
    and a gateway in front of both: ``(east, west, gw)``."""
    async with (
        open_fake_azure(reply="First answer.") as east,
        open_fake_azure(reply="Second answer.") as west,
        open_gateway(
            database_url,
            deployments=[azure_deployment(east, name="east"), azure_deployment(west, name="west")],
        ) as gw,
    ):
        yield east, west, gw


async def books_clean(gw, account: str, start: int, spent: int) -> None:
    wallet = await gw.storage.get_wallet(account)
    assert (wallet.locked, wallet.balance) == (0, start - spent)
    assert await gw.storage.verify_ledger() == []


async def sse_events(gw, key: str, body: dict, *, stop_after_deltas: int | None = None) -> list[bytes]:
    """The raw events of one streamed response (stopping early after that many deltas)."""
    events: list[bytes] = []
    buffer, deltas = b"", 0
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream(
            "POST", f"{gw.base_url}/responses", headers={"Authorization": f"Bearer {key}"}, json=body
        ) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            async for chunk in response.aiter_raw():
                buffer += chunk
                *complete, buffer = buffer.split(b"\n\n")
                events.extend(e + b"\n\n" for e in complete)
                deltas += sum(1 for e in complete if b"event: response.output_text.delta" in e)
                if stop_after_deltas is not None and deltas >= stop_after_deltas:
                    break
    return events


async def test_a_response_is_answered_charged_logged_and_remembered(database_url, tmp_path, sdk):
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("10.00")
        start = (await gw.storage.get_wallet(account)).balance
        response = await in_thread(sdk(gw, key).responses.create, **BODY)

        assert response.output_text == DEFAULT_REPLY
        prompt, completion = count_text(input_text(BODY)), count_text(DEFAULT_REPLY)
        assert (response.usage.input_tokens, response.usage.output_tokens) == (prompt, completion)
        sent = fake.requests[-1]
        assert sent.path == "/openai/v1/responses" and "api-version" not in sent.query
        assert sent.json["model"] == f"{MODEL}-dz"  # the deployment's name, not the catalog id
        assert sent.json["max_output_tokens"] == MODEL_INFO.max_output_tokens
        assert "stream" not in sent.json

        await books_clean(gw, account, start, cost(prompt, completion))
        await gw.flushed()
        entries = await gw.storage.ledger_entries(account)
        assert [e.type for e in entries] == ["top_up", "hold", "charge", "release"]
        row = await gw.storage.get_request_log(entries[1].request_id)
        assert (row.status, row.stream, row.deployment) == ("ok", False, "eastus-1")
        assert (row.prompt_tokens, row.completion_tokens, row.cost) == (prompt, completion, cost(prompt, completion))
        stored = await gw.storage.find_stored_response(account, response.id)
        assert (stored.deployment, stored.endpoint, stored.context_tokens) == (
            "eastus-1",
            fake.endpoint,
            prompt + completion,
        )
        await ledger_verify_cli(database_url, tmp_path)


async def test_a_streamed_response_relays_the_typed_events_and_settles_before_the_last(database_url, sdk):
    async with open_fake_azure(chunk_delay=0.001) as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("10.00")
        start = (await gw.storage.get_wallet(account)).balance
        events = await sse_events(gw, key, {**BODY, "stream": True})

        assert events[0].startswith(b":")  # the padding comment goes first
        kinds = [e.split(b"\n", 1)[0] for e in events if e.startswith(b"event:")]
        assert kinds[0] == b"event: response.created" and kinds[-1] == b"event: response.completed"
        assert kinds.count(b"event: response.output_text.delta") == len(fake._pieces(DEFAULT_REPLY))
        assert fake.requests[-1].json["stream"] is True
        prompt, completion = count_text(input_text(BODY)), count_text(DEFAULT_REPLY)
        # The hold was settled before the client got response.completed.
        wallet = await gw.storage.get_wallet(account)
        assert (wallet.locked, wallet.balance) == (0, start - cost(prompt, completion))

        # The SDK's own stream helper reads the same events into the final response.
        def final():
            with sdk(gw, key).responses.stream(**BODY) as stream:
                return stream.get_final_response()

        response = await in_thread(final)
        assert response.output_text == DEFAULT_REPLY and response.status == "completed"
        await books_clean(gw, account, start, 2 * cost(prompt, completion))
        await gw.flushed()
        assert await gw.storage.find_stored_response(account, response.id) is not None


async def test_an_abandoned_response_stream_charges_only_what_was_delivered(database_url):
    reply = " ".join(f"w{i}" for i in range(200))
    async with open_fake_azure(reply=reply, chunk_delay=0.005) as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("10.00")
        start = (await gw.storage.get_wallet(account)).balance
        events = await sse_events(gw, key, {**BODY, "stream": True}, stop_after_deltas=5)
        assert not any(b"response.completed" in e for e in events)
        with trio.fail_after(10):
            await fake.wait_disconnected()
        entries = await gw.settled_entries(account)
        # Not flushed(): the request settles, then remembers its stored response, and only
        # then hands its log over; an abandoned stream finishes after the client is gone.
        row = await gw.request_log(entries[1].request_id)
        prompt = count_input(BODY, MODEL_INFO)
        assert row.status == "client_closed"
        assert row.prompt_tokens == prompt and 5 <= row.completion_tokens < count_text(reply)
        assert row.cost == cost(prompt, row.completion_tokens)
        assert [e.type for e in entries] == ["top_up", "hold", "charge", "release"]
        await books_clean(gw, account, start, row.cost)
        # The response was created upstream before the client left: a follow-up can find it.
        created = next(e for e in events if e.startswith(b"event: response.created"))
        response_id = json.loads(created.split(b"data: ", 1)[1])["response"]["id"]
        # The upstream may still finish it: a follow-up is held for its whole output cap.
        stored = await gw.storage.find_stored_response(account, response_id)
        assert stored.output_tokens == MODEL_INFO.max_output_tokens


async def test_a_follow_up_goes_to_the_resource_that_stores_the_response(database_url, sdk):
    async with two_resources(database_url) as (east, west, gw):
        account, key = await gw.funded_account("10.00")
        client = sdk(gw, key)
        first = await in_thread(client.responses.create, **BODY)
        home = east if first.id in east.stored else west
        assert first.id in home.stored
        previous = first
        for _ in range(8):  # with two equal deployments, unpinned follow-ups would miss often
            previous = await in_thread(
                client.responses.create, model=MODEL, input="And then?", previous_response_id=previous.id
            )
            assert previous.id in home.stored
        follow_ups = [r for r in home.requests if r.json and r.json.get("previous_response_id")]
        assert len(follow_ups) == 8
        other = west if home is east else east
        assert not [r for r in other.requests if r.json and r.json.get("previous_response_id")]
        # The follow-up was held for the context the stored response carries.
        stored = await gw.storage.find_stored_response(account, previous.id)
        assert stored.context_tokens == previous.usage.input_tokens + previous.usage.output_tokens
        assert previous.usage.input_tokens > count_text("And then?") + home.stored[first.id] - 1

        # Another account cannot continue, or even see, this account's response.
        other_account, other_key = await gw.funded_account("10.00")
        rows = len(await gw.storage.ledger_entries(other_account))
        status, error = await gw.refused(
            other_key, "/responses", {"model": MODEL, "input": "Hi", "previous_response_id": first.id}
        )
        assert (status, error["code"], error["param"]) == (404, "not_found", "previous_response_id")
        assert len(await gw.storage.ledger_entries(other_account)) == rows
        assert (await gw.storage.get_wallet(other_account)).locked == 0
        status, error = await gw.refused(
            key, "/responses", {"model": MODEL, "input": "Hi", "previous_response_id": "resp_never_made"}
        )
        assert (status, error["code"]) == (404, "not_found")
        await gw.flushed()
        assert await gw.storage.verify_ledger() == []


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"input": [{"type": "computer_call_output", "call_id": "c", "output": {}}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_url": "https://x.example/a.pdf"}]}]},
            "input[0].content[0].file_url",
        ),
        (
            {
                "input": [
                    {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_file", "file_id": "f"}]}
                ]
            },
            "input[0].output[0].file_id",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
            "input[0].content[0].file_id",
        ),
        ({"input": []}, "input"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"stream_options": {"include_obfuscation": False}}, "stream_options"),
    ],
)
async def test_what_cannot_be_served_is_refused_before_anything_is_held(database_url, change, param):
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("10.00")
        status, error = await gw.refused(key, "/responses", {**BODY, **change})
        assert (status, error["code"], error["param"]) == (400, "invalid_request", param)
        assert [e.type for e in await gw.storage.ledger_entries(account)] == ["top_up"]
        assert not fake.requests


async def test_a_stored_response_is_read_listed_deleted_only_by_its_account_where_it_lives(database_url, sdk):
    async with two_resources(database_url) as (east, west, gw):
        account, key = await gw.funded_account("10.00")
        client = sdk(gw, key)
        input_items = [{"role": "user", "content": "One."}, {"role": "user", "content": "Two."}]
        made = await in_thread(client.responses.create, model=MODEL, input=input_items)
        home = east if made.id in east.stored else west
        await gw.flushed()
        rows = len(await gw.storage.ledger_entries(account))

        fetched = await in_thread(client.responses.retrieve, made.id)
        assert (fetched.id, fetched.output_text) == (made.id, made.output_text)
        listed = await in_thread(client.responses.input_items.list, made.id, limit=1, order="asc")
        assert [item.content for item in listed.data] == ["One."]
        assert home.requests[-1].query == {"limit": "1", "order": "asc"}
        with pytest.raises(openai.BadRequestError, match="background"):  # Azure's own refusal
            await in_thread(client.responses.cancel, made.id)
        # Lookups are not model calls: nothing is held or charged.
        assert len(await gw.storage.ledger_entries(account)) == rows

        other_account, other_key = await gw.funded_account("1.00")
        other = sdk(gw, other_key)
        for call in (other.responses.retrieve, other.responses.delete, other.responses.input_items.list):
            with pytest.raises(openai.NotFoundError):
                await in_thread(call, made.id)
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {other_key}"}) as raw:
            for method, path in (("GET", "/input_items"), ("POST", "/cancel"), ("DELETE", "")):
                answer = await raw.request(method, f"{gw.base_url}/responses/{made.id}{path}")
                assert (answer.status_code, answer.json()["error"]["code"]) == (404, "not_found")
        assert made.id in home.stored  # nothing of another account's reached the upstream

        deleted = await in_thread(client.responses.delete, made.id)
        assert deleted is None or getattr(deleted, "deleted", True)
        assert made.id not in home.stored
        assert await gw.storage.find_stored_response(account, made.id) is None
        with pytest.raises(openai.NotFoundError):
            await in_thread(client.responses.retrieve, made.id)

        # A response the upstream no longer holds (expired there) is not found, and forgotten.
        gone = await in_thread(client.responses.create, model=MODEL, input="Hi")
        (east if gone.id in east.stored else west).stored_objects.pop(gone.id)
        with pytest.raises(openai.NotFoundError):
            await in_thread(client.responses.retrieve, gone.id)
        assert await gw.storage.find_stored_response(account, gone.id) is None


async def test_stored_response_lookups_check_their_query(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("10.00")
        async with httpx.AsyncClient(base_url=gw.base_url) as client:
            assert (await client.get("/responses/resp_1")).status_code == 401  # the key comes first
            client.headers["Authorization"] = f"Bearer {key}"
            for path, param in (
                ("/responses/resp_1?stream=true", "stream"),
                ("/responses/resp_1/input_items?limit=0", "limit"),
                ("/responses/resp_1/input_items?limit=101", "limit"),
                ("/responses/resp_1/input_items?order=up", "order"),
            ):
                answer = await client.get(path)
                assert (answer.status_code, answer.json()["error"]["param"]) == (400, param), path
        assert not fake.requests


async def test_the_body_is_fitted_to_the_model_family_and_the_deployment_as_for_chat(database_url):
    async with (
        open_fake_azure() as fake,
        open_gateway(
            database_url,
            deployments=[
                azure_deployment(fake, name="mini", model=MODEL),
                azure_deployment(fake, name="five", model="gpt-5.1", priority=True),
            ],
        ) as gw,
    ):
        _, key = await gw.funded_account("10.00")
        fitted = {
            "reasoning": {"effort": "minimal", "summary": "auto"},
            "text": {"verbosity": "low"},
            "temperature": 0.3,
        }
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as client:
            for model, tier in ((MODEL, "flex"), ("gpt-5.1", None), ("gpt-5.1", "priority")):
                body = {**BODY, "model": model, **fitted} | ({"service_tier": tier} if tier else {})
                answer = await client.post(f"{gw.base_url}/responses", json=body)
                assert answer.status_code == 200, answer.text
                sent = fake.requests[-1].json
                if model == MODEL:  # no reasoning, no verbosity: both removed; sampling kept
                    assert "reasoning" not in sent and "text" not in sent and sent["temperature"] == 0.3
                    assert "service_tier" not in sent  # a deployment without priority gets none
                else:  # gpt-5.1 takes none/low/medium/high: minimal maps to none; temperature dropped
                    assert sent["reasoning"] == {"summary": "auto", "effort": "none"}
                    assert sent["text"] == {"verbosity": "low"} and "temperature" not in sent
                    assert sent["service_tier"] == ("priority" if tier == "priority" else "default")


async def test_where_a_response_lives_survives_a_restart(database_url, sdk):
    async with open_fake_azure() as fake:
        async with open_gateway(database_url, fake) as gw:
            account, key = await gw.funded_account("10.00")
            first = await in_thread(sdk(gw, key).responses.create, **BODY)
        async with open_gateway(database_url, fake) as gw:  # a new process's engine, same database
            follow_up = await in_thread(
                sdk(gw, key).responses.create, model=MODEL, input="More.", previous_response_id=first.id
            )
            assert follow_up.previous_response_id == first.id
            assert fake.requests[-1].json["previous_response_id"] == first.id
            fetched = await in_thread(sdk(gw, key).responses.retrieve, first.id)
            assert fetched.id == first.id


async def test_items_sent_back_by_reference_go_where_they_live_and_only_for_their_account(database_url, sdk):
    async with two_resources(database_url) as (east, west, gw):
        account, key = await gw.funded_account("10.00")
        client = sdk(gw, key)
        first = await in_thread(client.responses.create, **BODY)
        home = east if first.id in east.stored else west
        item = first.output[0].id
        conversation = [
            {"role": "user", "content": BODY["input"]},
            {"type": "item_reference", "id": item},
            {"type": "reasoning", "id": "rs_never_made", "summary": []},
        ]
        # A reasoning item without its encrypted_content names a stored item too: unknown here.
        status, error = await gw.refused(key, "/responses", {"model": MODEL, "input": conversation})
        assert (status, error["code"], error["param"]) == (404, "not_found", "input")
        conversation = [*conversation[:2], {"role": "user", "content": "And then?"}]
        for _ in range(8):  # with two equal deployments, unpinned requests would miss often
            follow_up = await in_thread(client.responses.create, model=MODEL, input=conversation)
            assert follow_up.id in home.stored
        sent = home.requests[-1].json["input"]
        assert {"type": "item_reference", "id": item} in sent
        # The hold covered the referenced item: at most its response's output.
        stored = await gw.storage.find_stored_response(account, first.id)
        assert stored.output_tokens == first.usage.output_tokens

        other_account, other_key = await gw.funded_account("10.00")
        rows = len(await gw.storage.ledger_entries(other_account))
        status, error = await gw.refused(other_key, "/responses", {"model": MODEL, "input": conversation})
        assert (status, error["code"], error["param"]) == (404, "not_found", "input")
        assert len(await gw.storage.ledger_entries(other_account)) == rows
        await gw.flushed()
        assert await gw.storage.verify_ledger() == []
