"""``omixa demo`` as a developer runs it, in its own process, for tests that talk to it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

OMIXA = str(Path(sys.executable).parent / "omixa")


def values(stdout: str) -> dict[str, str]:
    """The ``NAME=value`` lines of a command's output."""
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


async def read_values(process: trio.Process, names: set[str]) -> dict[str, str]:
    """Read ``process``'s stdout until it has printed every one of ``names`` as ``NAME=value``."""
    assert process.stdout is not None, "started with stdout=subprocess.PIPE"
    buffer = b""
    found: dict[str, str] = {}
    with trio.fail_after(30):
        while not names <= found.keys():
            chunk = await process.stdout.receive_some()
            assert chunk, "the process ended early"
            buffer += chunk
            *lines, rest = buffer.split(b"\n")
            buffer = rest
            found.update(values("\n".join(line.decode() for line in lines)))
    return found


@asynccontextmanager
async def open_demo(
    data_dir: Path, names: set[str], env: dict[str, str] | None = None
) -> AsyncIterator[dict[str, str]]:
    """``omixa demo --port 0`` with its data in ``data_dir``: yields the values it printed
    (``names`` among them); SIGINT at the end, which it must obey with exit status 0."""
    process = await trio.lowlevel.open_process(
        [OMIXA, "demo", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        yield await read_values(process, names)
        process.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
