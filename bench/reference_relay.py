"""The reference the targets are measured against: a minimal Quart-Trio relay on Hypercorn.

It does no auth, billing, routing or logging: it reads the body, forwards it to one upstream
URL with httpx (pooled, HTTP/1.1, the way a plain Quart-Trio app would) and sends the answer
back; a ``"stream": true`` body is relayed chunk by chunk as an async generator. It runs on
the same stack and pins as Omixa, so its figures are this machine's ceiling for the stack
on the same run (the issues' "minimal Quart-Trio relay").

    python bench/reference_relay.py --upstream URL [--port 0] [--max-connections 1100]

Prints ``RELAY_PORT=<port>`` once it listens. Serves ``POST /v1/chat/completions``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import Response, request
from quart_trio import QuartTrio


def build_app(upstream: str, api_key: str, max_connections: int) -> QuartTrio:
    app = QuartTrio("reference-relay")
    app.config.update(RESPONSE_TIMEOUT=None, BODY_TIMEOUT=60)
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    client = httpx.AsyncClient(limits=limits, timeout=60, trust_env=False)
    headers = {"api-key": api_key, "content-type": "application/json"}

    @app.post("/v1/chat/completions")
    async def chat() -> Response:
        body = await request.get_data()
        if json.loads(body).get("stream"):
            upstream_response = await client.send(
                client.build_request("POST", upstream, content=body, headers=headers), stream=True
            )

            async def relay():  # the one owner of the upstream response: always closed
                try:
                    async for chunk in upstream_response.aiter_raw():
                        yield chunk
                finally:
                    await upstream_response.aclose()

            return Response(relay(), status=upstream_response.status_code, content_type="text/event-stream")
        answer = await client.post(upstream, content=body, headers=headers)
        return Response(answer.content, status=answer.status_code, content_type="application/json")

    return app


async def main(args: argparse.Namespace) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = None
    print(f"RELAY_PORT={sock.getsockname()[1]}", flush=True)
    await serve(build_app(args.upstream, args.api_key, args.max_connections), config)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="the upstream's full chat-completions URL")
    ap.add_argument("--api-key", default="bench-upstream-key")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--max-connections", type=int, default=1100)
    try:
        trio.run(main, ap.parse_args())
    except KeyboardInterrupt:
        sys.exit(0)
