"""What the console's browser tests share.

Each page's test runs a real Omixa (in the test process, on SQLite and on PostgreSQL) and a
driver script of its own in another process (Playwright's sync API needs a plain asyncio
loop; the test process runs trio-asyncio's). ``run_driver`` (test side) starts a driver
with a JSON object of arguments on stdin and returns the JSON object it prints. The rest
(driver side) are Playwright helpers: sign-in, screenshots, an axe-core accessibility check.

Screenshots go to ``$OMIXA_TEST_OUTPUT/screenshots`` (default ``test-output/screenshots``),
named ``<name>-<backend>.png``; the documentation's images (docs/images) are copied from the
SQLite run's by ``tests/update_doc_images``.
"""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = Path(os.environ.get("OMIXA_TEST_OUTPUT", ROOT / "test-output")) / "screenshots"
AXE = ROOT / "tests" / "node" / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OMIXA = str(Path(sys.executable).parent / "omixa")
# Impacts that fail a page: axe-core's "serious" and "critical".
AXE_FAILING = ("serious", "critical")


# -- test side ------------------------------------------------------------------------------


async def run_driver(driver: Path, args: dict[str, Any], *, seconds: float = 240) -> dict[str, Any]:
    """Runs ``driver`` (a script under tests/) with ``args`` as JSON on stdin; what it printed.
    Fails the test with the driver's stderr when it exits non-zero."""
    import trio

    with trio.fail_after(seconds):
        driven = await trio.run_process(
            [sys.executable, str(driver)],
            stdin=json.dumps({"chromium": CHROMIUM, **args}).encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert driven.returncode == 0, driven.stderr.decode()[-6000:]
    result: dict[str, Any] = json.loads(driven.stdout)
    return result


def backend_of(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


# -- driver side ----------------------------------------------------------------------------


def driver_main(drive: Callable[..., dict[str, Any]], *, stuck_after: float = 200) -> None:
    """A driver script's entry: ``drive(**arguments)`` with the JSON object on stdin, what it
    returns printed as JSON. Stuck past ``stuck_after`` seconds, it prints where and exits,
    before the test's own deadline kills it silently."""
    faulthandler.dump_traceback_later(stuck_after, exit=True)
    print(json.dumps(drive(**json.load(sys.stdin))))


def shot(page: Any, name: str, backend: str = "") -> Path:
    """A full-page screenshot: test-output/screenshots/<name>[-<backend>].png."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / (f"{name}-{backend}.png" if backend else f"{name}.png")
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Any, root: str, key: str, landing: str = "/usage") -> None:
    page.goto(f"{root}{landing}")
    assert page.url.startswith(f"{root}/signin")
    page.fill("#api_key", key)
    page.click("button[type=submit]")
    page.wait_for_url(f"{root}{landing}")


def wait_for_length(locator: Any, at_least: int, timeout: float = 10.0) -> int:
    """Polls the element's text until it is at least ``at_least`` long (the pages' CSP
    forbids the eval that page.wait_for_function needs)."""
    deadline = time.monotonic() + timeout
    while (length := len(locator.text_content())) < at_least:
        assert time.monotonic() < deadline, f"text stayed at {length} characters"
        time.sleep(0.02)
    return length


def axe_check(browser: Any, context: Any, url: str, *, ready: str = "main", settle: str | None = None) -> list[str]:
    """Runs axe-core on ``url`` opened with ``context``'s cookies, in a context of its own that
    lets the script in (the pages' CSP rightly refuses injected scripts). ``ready``: a
    selector to wait for; ``settle``: one whose presence means the page's data arrived.
    Asserts that no violation is serious or critical; returns the lesser ones' ids."""
    assert AXE.exists(), f"{AXE} missing: npm ci --prefix tests/node"
    checker = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    try:
        checker.add_cookies(context.cookies())
        page = checker.new_page()
        page.goto(url)
        page.wait_for_selector(ready)
        if settle:
            page.wait_for_selector(settle, state="attached")
        page.add_script_tag(path=str(AXE))
        results = page.evaluate(
            "async () => { const r = await axe.run(document, {resultTypes: ['violations']});"
            " return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,"
            " nodes: v.nodes.slice(0, 5).map(n => n.target.join(' '))})); }"
        )
    finally:
        checker.close()
    failing = [v for v in results if v["impact"] in AXE_FAILING]
    assert not failing, f"axe-core on {url}: {json.dumps(failing, indent=1)}"
    return [v["id"] for v in results]
