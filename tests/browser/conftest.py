"""Browser tests of the web console: Debian's Chromium driven by Playwright.

Never `playwright install` (no browser download works here): the system Chromium at
/usr/bin/chromium is launched by path. Without it, these tests are skipped.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("PROVISIO_TEST_CHROMIUM", "/usr/bin/chromium")
_ROOT = Path(__file__).resolve().parents[2]
# Where the screenshots go: .provisio/screenshots (ignored by git) unless
# PROVISIO_SCREENSHOTS names a folder; `PROVISIO_SCREENSHOTS=docs/console make test`
# refreshes the ones docs/console.md shows.
SHOTS = _ROOT / os.environ.get("PROVISIO_SCREENSHOTS", ".provisio/screenshots")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.browser)
            if not os.path.exists(CHROMIUM):
                item.add_marker(
                    pytest.mark.skip(
                        reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium chromium-driver)"
                    )
                )


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = await browser.new_context(viewport={"width": 1100, "height": 720}, java_script_enabled=True)
        pg = await context.new_page()
        dialogs: list[str] = []
        pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        pg.dialogs = dialogs  # type: ignore[attr-defined]
        errors: list[str] = []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.console_errors = errors  # type: ignore[attr-defined]
        try:
            yield pg
        finally:
            await context.close()
            await browser.close()


async def shot(page: Any, name: str) -> None:
    """A screenshot for docs/console.md (viewport only: small files)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"))
