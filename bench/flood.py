"""Large request bodies sent back to back, to see what they cost everyone else.

Run by ``harness.py``'s ``stall`` scenario beside ``load.py latency``: ``--connections``
keep-alive connections each POST a chat body of about ``--size`` bytes (a prompt far longer
than any model's context window, of ordinary words) again and again for ``--duration``
seconds, reading each answer. Prints one JSON object: the answers by status, and how many.

    python bench/flood.py URL "Authorization: Bearer omx_live_..." --size 4000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "


def body_of(size: int) -> bytes:
    text = (WORDS * (size // len(WORDS) + 1))[: max(size - 120, 1)]
    return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}).encode()


async def one_connection(url: str, auth: str, body: bytes, until: float, statuses: Counter) -> None:
    parts = urlsplit(url)
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        while time.monotonic() < until:
            writer.write(head + body)
            await writer.drain()
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            await reader.readexactly(length)
            statuses[status_line.split()[1].decode() if status_line else "eof"] += 1
            if not status_line:
                return
    finally:
        writer.close()


async def main_async(args: argparse.Namespace) -> dict:
    body = body_of(args.size)
    statuses: Counter = Counter()
    until = time.monotonic() + args.duration
    tasks = [one_connection(args.url, args.auth, body, until, statuses) for _ in range(args.connections)]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return {"mode": "flood", "body_bytes": len(body), "answers": dict(statuses), "errors": errors}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("auth", help='the header line, e.g. "Authorization: Bearer omx_live_..."')
    p.add_argument("--size", type=int, default=4_000_000)
    p.add_argument("--connections", type=int, default=2)
    p.add_argument("--duration", type=float, default=10.0)
    args = p.parse_args(argv)
    print(json.dumps(asyncio.run(main_async(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
