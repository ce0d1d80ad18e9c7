"""Streaming over real sockets: padding first, heartbeats while the upstream thinks, frames
relayed byte for byte as they come, the pass-through policy, mid-stream failures as error
events, and abandoned streams closed upstream and settled for exactly what was delivered."""

from __future__ import annotations

import gc
import itertools
import json
import random
import types
from collections import Counter

import httpx
import openai
import pytest
import trio
import trio.testing
from fake_azure import open_fake_azure
from harness import MODEL, open_gateway

from omixa.engine.catalog import cost_of, load_catalog
from omixa.engine.tokens import count_chat_prompt, count_text
from omixa.engine.upstream import Usage

MODEL_INFO = load_catalog().get(MODEL)
assert MODEL_INFO is not None  # the shipped catalog lists it
PRICES = MODEL_INFO.prices
MESSAGES = [{"role": "user", "content": "Tell me a story."}]
PROMPT = count_chat_prompt({"messages": MESSAGES})
SSE = {"content-type": "text/event-stream"}


def cost(prompt: int, completion: int) -> int:
    return cost_of(Usage(prompt_tokens=prompt, completion_tokens=completion), PRICES)


async def read_events(gw, key: str, body: dict | None = None) -> list[tuple[float, bytes]]:
    """Every SSE event of one streamed request, with its arrival time."""
    events: list[tuple[float, bytes]] = []
    buffer = b""
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream(
            "POST",
            f"{gw.base_url}/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json=body or {"model": MODEL, "messages": MESSAGES, "stream": True},
        ) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                buffer += chunk
                *complete, buffer = buffer.split(b"\n\n")
                events.extend((trio.current_time(), e + b"\n\n") for e in complete)
    assert buffer == b""
    return events


def data_events(events: list[tuple[float, bytes]]) -> list[bytes]:
    return [e for _, e in events if e.startswith(b"data:")]


async def settled_row(gw, account: str):
    entries = await gw.storage.ledger_entries(account)
    hold = next(e for e in entries if e.type == "hold")
    return await gw.request_log(hold.request_id)


async def test_padding_first_then_heartbeats_while_the_upstream_thinks(database_url):
    async with (
        open_fake_azure(first_delay=1.0) as fake,
        open_gateway(database_url, fake, streaming={"heartbeat_seconds": 0.2, "flush_padding_bytes": 2048}) as gw,
    ):
        _, key = await gw.funded_account("1.00")
        events = await read_events(gw, key)
    first = events[0][1]
    assert len(first) == 2048 and first.startswith(b":") and first.endswith(b"\n\n")
    before_first_token = []
    for _, event in events[1:]:
        if event.startswith(b"data:"):
            break
        before_first_token.append(event)
    assert before_first_token.count(b": keep-alive\n\n") >= 3
    assert data_events(events)[-1] == b"data: [DONE]\n\n"


async def test_frames_arrive_one_by_one_as_the_upstream_emits_them(database_url):
    async with (
        open_fake_azure(reply="one two three four", chunk_delay=0.3) as fake,
        open_gateway(database_url, fake, streaming={"heartbeat_seconds": 5}) as gw,
    ):
        _, key = await gw.funded_account("1.00")
        events = await read_events(gw, key)
    content = [(t, e) for t, e in events if b'"content":"' in e and b'"content":""' not in e]
    assert len(content) == 4
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(content)]
    # Not held back to be sent together (which would leave gaps near 0); the margin below the
    # fake's 0.3 s is for a loaded machine.
    assert all(gap > 0.1 for gap in gaps), gaps


def _holders(text: str, marker: bytes, mine: tuple[object, ...]) -> list[str]:
    """Objects, other than ``mine`` and the in-process fake upstream's, that hold ``text`` or
    bytes carrying ``marker`` (descending into the containers the collector does not track)."""

    def holds(ref: object, depth: int = 0) -> bool:
        if any(ref is m for m in mine):
            return False
        if type(ref) is str:
            return len(ref) == len(text) and ref == text
        if type(ref) is bytes or type(ref) is bytearray or type(ref) is memoryview:
            return marker in ref
        if depth < 4 and not gc.is_tracked(ref) and isinstance(ref, (dict, tuple)):
            items = ref.values() if isinstance(ref, dict) else ref
            return any(holds(item, depth + 1) for item in items)
        return False

    mine = (*mine, marker)
    gc.collect()
    found = []
    for obj in gc.get_objects():
        if obj is mine or (isinstance(obj, types.CoroutineType) and obj.cr_code.co_filename.endswith("fake_azure.py")):
            continue
        if any(holds(ref) for ref in gc.get_referents(obj)):
            found.append(f"{type(obj).__qualname__} {str(obj)[:120]!r}")
    return found


async def test_an_open_stream_holds_nothing_of_its_prompt(database_url):
    """Once content goes out no other deployment may answer, so the prompt is not needed
    again: the parsed body, the upstream body and its encoded bytes are all let go, and a
    long stream costs memory for what it relays, not for its prompt."""
    marker = "prompt-marker-5f0c"
    prompt = marker + " a long prompt" * 20_000
    payload = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": prompt}], "stream": True}).encode()
    async with (
        open_fake_azure(reply="one two three", stall_after=2) as fake,
        open_gateway(database_url, fake, streaming={"heartbeat_seconds": 5}) as gw,
    ):
        account, key = await gw.funded_account("5.00")
        async with httpx.AsyncClient(timeout=30) as client:
            async with client.stream(
                "POST",
                f"{gw.base_url}/chat/completions",
                content=payload,
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            ) as response:
                assert response.status_code == 200
                received = b""
                chunks = response.aiter_raw()
                while b'"content":"one' not in received:
                    received += await chunks.__anext__()
                upstream_copy = fake.requests[-1].json["messages"][0]["content"]
                assert upstream_copy == prompt  # the upstream got it whole
                holders = _holders(prompt, marker.encode(), (prompt, payload, upstream_copy))
        await fake.wait_disconnected(1)
        while (await gw.storage.get_wallet(account)).locked:  # settled for what was delivered
            await trio.sleep(0.02)
    assert holders == []


RAW_STREAM = (
    b'data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":[{"prompt_index":0}]}\n\n'
    b'data:{"choices":[{"delta":{"role":"assistant","content":""},"index":0}],"id":"c1","object":"chat.completion.chunk"}\n\n'
    b'data: {"choices":[{"delta":{"content":"Hello"},"index":0}],  "id":"c1","object":"chat.completion.chunk","x_extra":1}\n\n'
    b'data: {"choices":[],"id":"","object":"","content_filter_offsets":{"start_offset":0}}\n\n'
    b'data: {"choices":[{"delta":{},"finish_reason":"stop","index":0}],"id":"c1","object":"chat.completion.chunk"}\n\n'
    b'data: {"choices":[],"id":"c1","object":"chat.completion.chunk","usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}\n\n'
    b"data: [DONE]\n\n"
)
RAW_EVENTS = [e + b"\n\n" for e in RAW_STREAM.split(b"\n\n") if e]


@pytest.mark.parametrize(
    "keep_filter_frames, include_usage, expected",
    [
        (False, False, [1, 2, 4, 6]),
        (False, True, [1, 2, 4, 5, 6]),
        (True, False, [0, 1, 2, 3, 4, 6]),
    ],
)
async def test_pass_through_is_byte_for_byte_and_drops_only_what_was_not_asked_for(
    database_url, keep_filter_frames, include_usage, expected
):
    async with (
        open_fake_azure() as fake,
        open_gateway(database_url, fake, streaming={"keep_filter_frames": keep_filter_frames}) as gw,
    ):
        account, key = await gw.funded_account("1.00")
        fake.fail_next(200, RAW_STREAM, headers=SSE)
        body = {"model": MODEL, "messages": MESSAGES, "stream": True}
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        events = await read_events(gw, key, body)
        assert data_events(events) == [RAW_EVENTS[i] for i in expected]
        row = await settled_row(gw, account)
        assert (row.status, row.prompt_tokens, row.completion_tokens) == ("ok", 12, 1)
        assert row.cost == cost(12, 1)
        assert (await gw.storage.get_wallet(account)).locked == 0


@pytest.mark.parametrize(
    "knobs, raw, code",
    [
        ({"break_after": 3}, None, "upstream_error"),
        # Past the relay's 64-piece blocks of delivered text.
        ({"break_after": 150, "reply": " ".join(f"w{i}" for i in range(200))}, None, "upstream_error"),
        ({"stall_after": 3}, None, "upstream_timeout"),
        ({}, RAW_EVENTS[1] + RAW_EVENTS[2] + b"data: {not json\n\n", "upstream_error"),
        ({}, RAW_EVENTS[1] + RAW_EVENTS[2] + b'data: {"error":{"code":"500","message":"boom"}}\n\n', "upstream_error"),
        ({}, RAW_EVENTS[1] + RAW_EVENTS[2], "upstream_error"),  # ends without [DONE]
    ],
)
async def test_mid_stream_failures_end_with_an_error_event_and_charge_what_was_delivered(
    database_url, knobs, raw, code
):
    async with (
        open_fake_azure(**knobs) as fake,
        open_gateway(
            database_url, fake, streaming={"heartbeat_seconds": 0.1}, upstream={"idle_timeout_seconds": 0.5}
        ) as gw,
    ):
        account, key = await gw.funded_account("1.00")
        start = (await gw.storage.get_wallet(account)).balance
        if raw is not None:
            fake.fail_next(200, raw, headers=SSE)
        events = data_events(await read_events(gw, key))
        last = json.loads(events[-1].removeprefix(b"data: "))
        assert last["error"]["code"] == code and last["error"]["request_id"].startswith("req_")
        assert b"[DONE]" not in b"".join(events)
        delivered = "".join(
            c["delta"].get("content") or ""
            for e in events[:-1]
            for c in json.loads(e.removeprefix(b"data:"))["choices"]
        )
        assert delivered
        row = await settled_row(gw, account)
        assert row.status == code
        assert row.completion_tokens == count_text(delivered)
        assert row.cost == cost(PROMPT, row.completion_tokens)
        wallet = await gw.storage.get_wallet(account)
        assert (wallet.locked, wallet.balance) == (0, start - row.cost)
        assert await gw.storage.verify_ledger() == []


async def test_a_stream_failing_before_any_content_is_not_charged(database_url):
    async with open_fake_azure(break_after=0) as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("1.00")
        start = (await gw.storage.get_wallet(account)).balance
        events = data_events(await read_events(gw, key))
        assert json.loads(events[-1].removeprefix(b"data: "))["error"]["code"] == "upstream_error"
        row = await settled_row(gw, account)
        assert (row.status, row.cost) == ("upstream_error", 0)
        wallet = await gw.storage.get_wallet(account)
        assert (wallet.locked, wallet.balance) == (0, start)


async def test_openai_sdk_raises_on_a_mid_stream_error_event(database_url):
    async with open_fake_azure(break_after=2) as fake, open_gateway(database_url, fake) as gw:
        _, key = await gw.funded_account("1.00")
        client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)

        def consume():
            chunks = []
            with pytest.raises(openai.APIError) as raised:
                for chunk in client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
                    chunks.append(chunk)
            return chunks, raised.value

        with trio.fail_after(20):
            chunks, error = await trio.to_thread.run_sync(consume)
        assert chunks and "upstream" in str(error).lower()


def running_tasks() -> list[str]:
    """Names of every task of this trio run."""

    def walk(task) -> list[str]:
        names = [task.name]
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                names.extend(walk(child))
        return names

    return walk(trio.lowlevel.current_root_task())


async def test_two_hundred_streams_cut_at_random_points(database_url):
    reply = " ".join(f"w{i}" for i in range(120))
    rng = random.Random(2026)
    async with open_fake_azure(reply=reply, chunk_delay=0.002) as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("50.00")
        start = (await gw.storage.get_wallet(account)).balance
        baseline = running_tasks()
        received: dict[int, int] = {}
        limiter = trio.CapacityLimiter(25)
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=30)) as client:

            async def one(i: int) -> None:
                cut_after = rng.randint(1, 60)  # data events, the padding comment aside
                async with limiter:
                    seen = 0
                    async with client.stream(
                        "POST",
                        f"{gw.base_url}/chat/completions",
                        headers={"Authorization": f"Bearer {key}"},
                        json={"model": MODEL, "messages": MESSAGES, "stream": True},
                    ) as response:
                        buffer = b""
                        async for chunk in response.aiter_raw():
                            buffer += chunk
                            *complete, buffer = buffer.split(b"\n\n")
                            seen += sum(1 for e in complete if e.startswith(b"data:"))
                            if seen >= cut_after:
                                break
                    received[i] = seen

            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(one, i)

        with trio.fail_after(20):
            await fake.wait_disconnected(200)
            while (await gw.storage.get_wallet(account)).locked:
                await trio.sleep(0.02)
        await gw.flushed()
        assert fake.streams_finished == 0 and fake.streams_started == 200

        entries = await gw.storage.ledger_entries(account)
        holds = [e for e in entries if e.type == "hold"]
        assert len(holds) == 200
        charged = 0
        for hold in holds:
            row = await gw.storage.get_request_log(hold.request_id)
            assert row.status == "client_closed"
            assert row.prompt_tokens == PROMPT and row.completion_tokens > 0
            assert row.cost == cost(PROMPT, row.completion_tokens)
            charged += row.cost
        wallet = await gw.storage.get_wallet(account)
        assert (wallet.locked, wallet.balance) == (0, start - charged)
        assert await gw.storage.verify_ledger() == []

        # Nothing outlives its request: no relay task left, no upstream connection in use.
        await trio.testing.wait_all_tasks_blocked(0.05)
        left = running_tasks()
        assert not [name for name in left if name.startswith("relay-")]
        # The only newcomers: the account's wallet actor (spawned on demand, retired when
        # idle) and, on PostgreSQL, the I/O watchers of connections the bounded pool opened.
        new = Counter(left) - Counter(baseline)
        assert sum(new.values()) - new["trio_asyncio.BaseTrioEventLoop._io_task"] == 1, new
        assert any(name.startswith("wallet-") for name in new)
        pool = gw.engine.deployments[0].provider._client._transport._pool
        assert all(not c.is_closed() and c.is_idle() or c.is_closed() for c in pool.connections)
        assert not [c for c in pool.connections if not (c.is_idle() or c.is_closed())]


async def test_a_client_giving_up_on_a_non_streaming_request_cancels_the_upstream(database_url):
    async with open_fake_azure(hang=True) as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("1.00")
        start = (await gw.storage.get_wallet(account)).balance
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(
                    f"{gw.base_url}/chat/completions",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"model": MODEL, "messages": MESSAGES},
                    timeout=0.5,
                )
        with trio.fail_after(5):
            await fake.wait_until(lambda f: f.disconnects >= 1)
        row = await settled_row(gw, account)
        assert (row.status, row.prompt_tokens, row.completion_tokens) == ("client_closed", PROMPT, 0)
        wallet = await gw.storage.get_wallet(account)
        assert (wallet.locked, wallet.balance) == (0, start - cost(PROMPT, 0))
        assert await gw.storage.verify_ledger() == []
