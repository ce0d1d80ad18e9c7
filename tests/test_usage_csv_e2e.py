"""CSV exports of /usage/requests and /usage/rollups through a real gateway on both backends:
the CSV has exactly the rows and fields of the JSON (every page of it, with the same
filters), RFC 4180 quoting, the Accept header works as ``format=csv`` does, the file is named
after its range, and the body is streamed a storage part at a time (seen on the wire: chunked,
no Content-Length, several chunks, none holding more than one part's rows)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import random
from typing import Any
from urllib.parse import urlencode, urlsplit

import h11
import httpx
import trio
from fake_azure import open_fake_azure
from harness import open_gateway
from storage_helpers import request_log
from test_usage_filters_e2e import account_with_two_keys
from test_wallet_usage_api import auth, walk

from omixa.engine.reports import EXPORT_PAGE

LOGS = 1234  # three storage parts, and 13 JSON pages of 100
ODD_MODEL = 'odd,"model"\nname'  # a comma, quotes and a line break: RFC 4180 quotes the field


def cell(value: Any) -> str:
    """What docs/api.md says a JSON value is in the CSV."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse(body: bytes) -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
    return rows[0], rows[1:]


def as_rows(items: list[dict[str, Any]], header: list[str]) -> list[list[str]]:
    return [[cell(item[name]) for name in header] for item in items]


async def seeded(gw) -> tuple[str, list[tuple[str, str]], dt.datetime]:
    """An account with two keys and LOGS request logs over the ten days before now (written
    through the storage, as the usage aggregator writes them): (account, keys, now)."""
    account, keys = await account_with_two_keys(gw)
    now = dt.datetime.now(dt.UTC)
    rng = random.Random(7)
    moments = [now - dt.timedelta(seconds=rng.randrange(1, 10 * 86400)) for _ in range(LOGS // 3)]
    logs = [
        request_log(
            f"req_{i:024x}",
            account_id=account,
            key_id=keys[i % 2][0],
            model=rng.choice(("gpt-4o", "gpt-4o-mini", ODD_MODEL)),
            region=rng.choice(("eastus", None)),
            status=rng.choice(("ok", "ok", "client_closed", "upstream_error", "interrupted")),
            stream=rng.choice((True, False)),
            prompt_tokens=rng.randrange(0, 9000),
            completion_tokens=rng.randrange(0, 900),
            cost=rng.randrange(0, 3 * 10**7),
            latency_ms=rng.randrange(0, 20000),
            ttft_ms=rng.choice((None, rng.randrange(0, 900))),
            created_at=rng.choice(moments),  # three logs a moment on average: the id breaks ties
        )
        for i in range(LOGS)
    ]
    await gw.storage.insert_request_logs(logs)
    return account, keys, now


async def test_csv_of_requests_has_the_rows_of_the_json_pages(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        _, keys, now = await seeded(gw)
        key = keys[0][1]
        since, until = now - dt.timedelta(days=4), now - dt.timedelta(days=1)
        async with httpx.AsyncClient(base_url=gw.base_url, headers=auth(key), timeout=60) as client:
            cases: list[dict[str, str]] = [
                {},
                {"key_id": keys[1][0]},
                {"model": ODD_MODEL},
                {"model": "gpt-4o", "key_id": keys[0][0], "status": "ok"},
                {"since": since.isoformat(), "until": until.isoformat(), "key_id": keys[1][0]},
            ]
            for params in cases:
                pages = await walk(client, "/usage/requests", key, limit=100, **params)
                assert pages, params
                response = await client.get("/usage/requests", params={**params, "format": "csv"})
                assert response.status_code == 200
                assert response.headers["content-type"] == "text/csv; charset=utf-8"
                header, rows = parse(response.content)
                assert header == [name for name in pages[0] if name != "object"]
                assert rows == as_rows(pages, header), params
            assert len(rows) < LOGS and len(await walk(client, "/usage/requests", key, limit=100)) == LOGS

            # RFC 4180: CRLF line ends, the odd field quoted with its quotes doubled.
            body = (await client.get("/usage/requests", params={"format": "csv", "model": ODD_MODEL})).content
            quoted = b'"odd,""model""\nname"'
            assert b"," + quoted + b"," in body
            assert b"\n" not in body.replace(quoted, b"").replace(b"\r\n", b"")

            # From a cursor, as the JSON pages go on from it.
            after = pages[5]["id"]
            rest = await walk(client, "/usage/requests", key, limit=100, after=after, **cases[-1])
            response = await client.get("/usage/requests", params={**cases[-1], "after": after, "format": "csv"})
            assert parse(response.content)[1] == as_rows(rest, header)

            # Accept: text/csv is format=csv; an explicit format wins; the answer varies on Accept.
            by_format = await client.get("/usage/requests", params=cases[1] | {"format": "csv"})
            by_accept = await client.get("/usage/requests", params=cases[1], headers={"Accept": "text/csv"})
            assert by_accept.content == by_format.content and by_accept.headers["vary"] == "Accept"
            json_anyway = await client.get("/usage/requests", params={"format": "json"}, headers={"Accept": "text/csv"})
            assert json_anyway.headers["content-type"] == "application/json" and json_anyway.json()["data"]
            preferred = await client.get("/usage/requests", headers={"Accept": "text/csv;q=0.5, application/json"})
            assert preferred.headers["content-type"] == "application/json"

            # Named after the range asked for; without one, from 1970 to the moment it began.
            ranged = await client.get(
                "/usage/requests",
                params={"format": "csv", "since": "2026-11-01T00:00:00Z", "until": "2026-12-01T00:00:00+01:00"},
            )
            assert ranged.headers["content-disposition"] == (
                'attachment; filename="omixa-requests-20261101T000000Z-20261130T230000Z.csv"'
            )
            begun = dt.datetime.now(dt.UTC)
            whole = await client.get("/usage/requests", params={"format": "csv"})
            name = whole.headers["content-disposition"].removeprefix('attachment; filename="').removesuffix('"')
            assert name.startswith("omixa-requests-19700101T000000Z-") and name.endswith("Z.csv")
            stamp = dt.datetime.strptime(name[-20:-4], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
            assert abs((stamp - begun).total_seconds()) < 5
            # Nothing matched: the header alone.
            none = await client.get(
                "/usage/requests", params={"format": "csv", "since": str(int(now.timestamp()) + 60)}
            )
            assert none.content == (",".join(header) + "\r\n").encode()
            # An 'after' that is not one of yours: 404, as JSON, before any CSV.
            missing = await client.get("/usage/requests", params={"format": "csv", "after": "req_nope"})
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def chunks_of(url: str, headers: dict[str, str]) -> tuple[h11.Response, list[bytes]]:
    """GET ``url`` over a plain socket; the response head and its body's HTTP chunks, each as
    it was framed on the wire (h11 marks where a chunk begins and ends)."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        target = parts.path + ("?" + parts.query if parts.query else "")
        head = [("Host", parts.netloc), ("Connection", "close"), *headers.items()]
        await stream.send_all(conn.send(h11.Request(method="GET", target=target, headers=head)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        response, chunks, current = None, [], b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                current += event.data
                if event.chunk_end:
                    chunks.append(current)
                    current = b""
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None and not current
                return response, chunks


async def test_the_csv_is_streamed_a_storage_part_at_a_time(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        _, keys, _ = await seeded(gw)
        url = f"{gw.base_url}/usage/requests?{urlencode({'format': 'csv'})}"
        response, chunks = await chunks_of(url, auth(keys[0][1]))
    head = {name.decode().lower(): value.decode() for name, value in response.headers}
    assert response.status_code == 200
    assert head["transfer-encoding"] == "chunked" and "content-length" not in head
    # One chunk per part read from storage: each a whole number of records, and none more
    # than a part's worth, so the server never held more than that many rows at once.
    assert len(chunks) == math.ceil(LOGS / EXPORT_PAGE) >= 3
    counts = [len(list(csv.reader(io.StringIO(chunk.decode(), newline="")))) for chunk in chunks]
    assert counts == [1 + EXPORT_PAGE, EXPORT_PAGE, LOGS - 2 * EXPORT_PAGE]  # the header comes with the first
    assert all(chunk.endswith(b"\r\n") for chunk in chunks)


async def test_csv_of_rollups_matches_the_json(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        _, keys, now = await seeded(gw)
        key = keys[1][1]
        async with httpx.AsyncClient(base_url=gw.base_url, headers=auth(key), timeout=60) as client:
            ten_days = (now - dt.timedelta(days=10)).isoformat()
            for granularity, since in (("hour", None), ("hour", ten_days), ("day", None), ("day", ten_days)):
                for only in (
                    {},
                    {"key_id": keys[0][0]},
                    {"model": ODD_MODEL},
                    {"model": "gpt-4o", "key_id": keys[1][0]},
                ):
                    for group_by in ({}, {"group_by": "model"}, {"group_by": "key"}):
                        params = {"granularity": granularity, **({"since": since} if since else {}), **only, **group_by}
                        listed = (await client.get("/usage/rollups", params=params)).json()
                        assert listed["data"], params
                        accept = {"Accept": "text/csv"} if group_by else {}
                        response = await client.get(
                            "/usage/rollups", params=params | ({} if accept else {"format": "csv"}), headers=accept
                        )
                        assert response.headers["content-type"] == "text/csv; charset=utf-8"
                        header, rows = parse(response.content)
                        assert header == [name for name in listed["data"][0] if name != "object"]
                        assert rows == as_rows(listed["data"], header), params
                        stamps = [
                            dt.datetime.fromisoformat(listed[end]).strftime("%Y%m%dT%H%M%SZ")
                            for end in ("since", "until")
                        ]
                        name = f"omixa-rollups-{granularity}-{stamps[0]}-{stamps[1]}.csv"
                        assert response.headers["content-disposition"] == f'attachment; filename="{name}"'
