"""``OmixaSigner`` with every client a user holds: the ``openai`` SDK (3.x, on httpx2) sync,
async and streaming, plain httpx and httpx2 clients with streamed request bodies, a process
that has only one of the two libraries, and the README's example run as written.

Each runs against a real gateway that requires signatures, in front of the fake Azure. The
storage backends are covered by test_signing_e2e.py; these use SQLite.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import httpx2
import openai
import pytest
import trio
from fake_azure import open_fake_azure
from harness import MODEL, open_gateway
from test_signing_e2e import signed_account

from omixa_client import OmixaSigner

MESSAGES = [{"role": "user", "content": "hi"}]
ROOT = Path(__file__).resolve().parent.parent
BODY = json.dumps({"model": MODEL, "messages": MESSAGES}).encode()


@pytest.fixture
async def signing_gateway(tmp_path, secret_key):
    """(gateway, API key, signing secret) of a gateway where every key must sign."""
    url = f"sqlite:///{tmp_path / 'omixa.db'}"
    async with open_fake_azure() as fake, open_gateway(url, fake, security={"require_signature": True}) as gw:
        _, _, key, signing = await signed_account(gw)
        yield gw, key, signing


async def in_thread(fn, *args, **kwargs):
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


async def test_the_sdk_signs_through_its_own_default_clients(signing_gateway):
    gw, key, signing = signing_gateway
    reply = gw.fake.reply
    sync = openai.OpenAI(
        base_url=gw.base_url,
        api_key=key,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(auth=OmixaSigner(signing)),
    )
    with sync:

        def stream() -> str:
            chunks = sync.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        completion = await in_thread(sync.chat.completions.create, model=MODEL, messages=MESSAGES)
        assert completion.choices[0].message.content == reply
        assert await in_thread(stream) == reply

    # AsyncOpenAI runs on anyio, which runs on trio.
    async with openai.AsyncOpenAI(
        base_url=gw.base_url,
        api_key=key,
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(auth=OmixaSigner(signing)),
    ) as client:
        completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert completion.choices[0].message.content == reply
        chunks = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices]) == reply
        models = await client.models.list()  # a signed GET
        assert MODEL in [m.id for m in models.data]
        # A wrong secret is refused, through the same SDK path.
        forged = client.with_options(http_client=openai.DefaultAsyncHttpxClient(auth=OmixaSigner("omx_sig_wrong")))
        with pytest.raises(openai.AuthenticationError) as refused:
            await forged.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert refused.value.body["code"] == "invalid_signature"
        await forged.close()
    assert len(gw.fake.requests) == 4


async def test_the_sdk_still_signs_through_an_httpx_client(signing_gateway):
    # What the README showed before openai 3.x: the SDK accepts an httpx client as well.
    gw, key, signing = signing_gateway
    async with openai.AsyncOpenAI(
        base_url=gw.base_url,
        api_key=key,
        max_retries=0,
        # openai 3.x annotates http_client as httpx2's; at run time it takes either library's.
        http_client=httpx.AsyncClient(auth=OmixaSigner(signing)),
    ) as client:
        completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert completion.choices[0].message.content == gw.fake.reply


def chunks() -> Iterator[bytes]:
    yield BODY[:10]
    yield BODY[10:]


async def achunks() -> AsyncIterator[bytes]:
    for chunk in chunks():
        yield chunk


@pytest.mark.parametrize("library", [httpx, httpx2], ids=["httpx", "httpx2"])
async def test_plain_clients_sign_streamed_bodies(signing_gateway, library):
    """A body given as an iterator is unread when the signer sees the request: it reads it
    (the signature covers its bytes) and the client sends what was signed."""
    gw, key, signing = signing_gateway
    url = f"{gw.base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def post_sync() -> tuple[int, str]:
        with library.Client(auth=OmixaSigner(signing)) as client:
            response = client.post(url, content=chunks(), headers=headers)
            return response.status_code, response.text

    status, text = await in_thread(post_sync)
    assert status == 200, text
    async with library.AsyncClient(auth=OmixaSigner(signing)) as client:
        response = await client.post(url, content=achunks(), headers=headers)
        assert response.status_code == 200, response.text
        # The signer leaves Authorization to the caller; without it, the key is missing.
        response = await client.get(f"{gw.base_url}/wallet?")
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        response = await client.get(f"{gw.base_url}/wallet?", headers=headers)
        assert response.status_code == 200, response.text
    assert [r.json["messages"] for r in gw.fake.requests] == [MESSAGES, MESSAGES]


ONE_LIBRARY = """
import os, sys
sys.modules[sys.argv[1]] = None  # as if it were not installed
import omixa_client
other = __import__(sys.argv[2])
with other.Client(auth=omixa_client.OmixaSigner(os.environ["OMIXA_SIGNING_SECRET"])) as client:
    response = client.get(os.environ["OMIXA_BASE_URL"] + "/wallet",
                          headers={"Authorization": "Bearer " + os.environ["OMIXA_API_KEY"]})
print(response.status_code)
"""


@pytest.mark.parametrize("missing, present", [("httpx2", "httpx"), ("httpx", "httpx2")])
async def test_omixa_client_needs_only_one_of_the_libraries(signing_gateway, missing, present):
    gw, key, signing = signing_gateway
    env = {**os.environ, "OMIXA_BASE_URL": gw.base_url, "OMIXA_API_KEY": key, "OMIXA_SIGNING_SECRET": signing}
    result = await trio.run_process(
        [sys.executable, "-c", ONE_LIBRARY, missing, present], env=env, capture_stdout=True, capture_stderr=True
    )
    assert result.stdout.decode().strip() == "200", result.stderr.decode()


def marked_python_block(path: Path, marker: str) -> str:
    """The ```python block right after the ``<!-- {marker}: ... -->`` comment in ``path``."""
    text = path.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {marker}:[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert match, f"{path.name} lost its marked {marker} block"
    return match[1]


@pytest.mark.parametrize(
    "path, marker", [(ROOT / "README.md", "signed-request-example"), (ROOT / "docs" / "api.md", "signed-sdk-example")]
)
async def test_the_documented_sdk_examples_run_as_written(signing_gateway, path, marker):
    gw, key, signing = signing_gateway
    env = {**os.environ, "OMIXA_BASE_URL": gw.base_url, "OMIXA_API_KEY": key, "OMIXA_SIGNING_SECRET": signing}
    result = await trio.run_process(
        [sys.executable, "-c", marked_python_block(path, marker)],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert gw.fake.reply in result.stdout.decode()
    assert gw.fake.requests, "the example reached nothing upstream"
