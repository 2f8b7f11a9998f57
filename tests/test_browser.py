"""The Swagger page works for a person: headless Chromium opens /docs, uses "Try it out"
on POST /predict, and sees a 200 with a result.

Needs Debian's chromium (`apt-get install chromium`); CI installs it and sets
REQUIRE_BROWSER=1, which turns a missing browser into a failure instead of a skip.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .conftest import ClientFactory

CHROMIUM = (
    os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if CHROMIUM is None and not os.environ.get("REQUIRE_BROWSER"):
    pytest.skip("no chromium here (apt-get install chromium)", allow_module_level=True)


async def test_try_it_out_on_post_predict_answers_200_with_a_result(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    assert CHROMIUM, "REQUIRE_BROWSER is set but no chromium was found"
    client = await make_client()
    url = str(client.make_url("/docs/"))
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page()
            await page.goto(url)
            operation = page.locator(".opblock-post").filter(
                has=page.locator(".opblock-summary-path[data-path='/predict']")
            )
            await operation.locator(".opblock-summary").click()
            await operation.locator("button.try-out__btn").click()
            body = operation.locator("textarea.body-param__text")
            await body.fill('{"input": "What a wonderful, helpful page"}')
            await operation.locator("button.execute").click()
            response = operation.locator(".live-responses-table .response").first
            await response.locator(".response-col_status").wait_for(timeout=15_000)
            status = (await response.locator(".response-col_status").inner_text()).strip()
            shown = await operation.locator(".live-responses-table").inner_text()
            await page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)
        finally:
            await browser.close()
    assert status.startswith("200"), shown
    assert '"label": "positive"' in shown, shown
