"""Every example of README.md and docs/api.md that talks to a server, run as written against
``omixa demo`` (started as a developer starts it, with ``OMIXA_SECRET_KEY`` set so that it
prints a signing secret too).

- Shell blocks run with bash, the demo's ``OMIXA_BASE_URL``, ``OMIXA_API_KEY`` and
  ``OMIXA_SIGNING_SECRET`` in the environment; every JSON document they print must be an
  answer, not an error envelope.
- Every block runs in a scratch directory of its own (where a file it saves lands).
- Python blocks run with this venv's Python; a block that uses names an earlier block of the
  docs defines (``OMIXA_BASE_URL``, ``client``) gets those definitions first. They must exit 0
  (and a block that prints must print something).

A documented ``http://127.0.0.1:8080`` and key ``omx_live_...`` stand for the demo's own. Not
run: the install and test commands and the operator's CLI (``omixa ...``), which need no
server (tests/test_cli.py runs the CLI).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import httpx
import pytest
import trio
from demo_helpers import open_demo

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "api.md"]
BLOCK = re.compile(r"```(python|sh|bash)\n(.*?)```", re.S)
# What the Python examples take for granted: the README's two exported values, and the
# client docs/api.md makes first (given to a block that uses one without making it).
VALUES = """\
import os
OMIXA_BASE_URL = os.environ["OMIXA_BASE_URL"]
OMIXA_API_KEY = os.environ["OMIXA_API_KEY"]
"""
CLIENT = """\
import openai
client = openai.OpenAI(base_url=OMIXA_BASE_URL, api_key=OMIXA_API_KEY)
"""


def examples() -> list[tuple[str, str, str]]:
    """(where, language, code) of every example that talks to a server."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in BLOCK.finditer(text):
            language, code = match.groups()
            if "OMIXA_BASE_URL" not in code and "127.0.0.1:8080" not in code and "client." not in code:
                continue  # install commands, the operator's CLI, configuration
            if re.search(r"^\s*(omixa|python3 -m venv|export OMIXA_SECRET_KEY)", code, re.M):
                continue
            line = text[: match.start()].count("\n") + 1
            found.append((f"{path.relative_to(ROOT)}:{line}", language, code))
    return found


def documents(output: str) -> list:
    """The JSON documents ``output`` holds, one after another (curl prints no separator)."""
    decoder, docs, at = json.JSONDecoder(), [], 0
    output = output.strip()
    while at < len(output):
        doc, end = decoder.raw_decode(output, at)
        docs.append(doc)
        at = end
        while at < len(output) and output[at].isspace():
            at += 1
    return docs


def test_the_docs_have_examples_to_run():
    where = [w for w, _, _ in examples()]
    assert len(where) >= 8, where
    assert any("responses" in code for _, _, code in examples())


@pytest.fixture
async def demo(tmp_path):
    """``omixa demo`` on a free port: its printed values (a signing secret among them)."""
    from cryptography.fernet import Fernet

    names = {"OMIXA_BASE_URL", "OMIXA_API_KEY", "OMIXA_SIGNING_SECRET"}
    async with open_demo(tmp_path, names, env={"OMIXA_SECRET_KEY": Fernet.generate_key().decode()}) as found:
        yield found


async def test_every_example_works_against_omixa_demo(demo, tmp_path):
    base = demo["OMIXA_BASE_URL"]
    root = base.removesuffix("/api/v1")
    env = {**os.environ, **demo}
    failures = []
    for number, (where, language, code) in enumerate(examples()):
        folder = tmp_path / f"example-{number}"
        folder.mkdir()
        code = code.replace("http://127.0.0.1:8080", root).replace("omx_live_...", demo["OMIXA_API_KEY"])
        if language == "python":
            prelude = VALUES + (CLIENT if "client." in code and "client =" not in code else "")
            argv = [sys.executable, "-c", prelude + code]
        else:
            argv = ["bash", "-euo", "pipefail", "-c", code]
        with trio.fail_after(60):
            result = await trio.run_process(
                argv, env=env, cwd=folder, capture_stdout=True, capture_stderr=True, check=False
            )
        out, err = result.stdout.decode(), result.stderr.decode()
        if result.returncode != 0 or ("print(" in code and not out.strip()):
            failures.append(f"{where}: exit {result.returncode}\n{out[-800:]}\n{err[-800:]}")
            continue
        if language != "python" and out.strip():
            try:
                answers = documents(out)
            except ValueError:
                failures.append(f"{where}: printed something that is not JSON:\n{out[-800:]}")
                continue
            errors = [a for a in answers if isinstance(a, dict) and isinstance(a.get("error"), dict)]
            if errors:
                failures.append(f"{where}: {errors}")
    assert not failures, "\n\n".join(failures)
    # They were paid calls, each settled: logged as served, nothing left held.
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {demo['OMIXA_API_KEY']}"}) as client:
        logs = (await client.get(f"{base}/usage/requests", params={"limit": 100})).json()["data"]
        wallet = (await client.get(f"{base}/wallet")).json()
    assert len(logs) >= 8 and {log["status"] for log in logs} == {"ok"}
    assert wallet["locked_balance"] == "0.00"
