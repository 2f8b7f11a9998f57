"""The Swagger page works for a person: headless Chromium opens /docs, uses "Try it out"
on POST /predict with the page's own defaults, and sees the documented sync answer.

Needs Debian's chromium (`apt-get install chromium`); CI installs it and sets
REQUIRE_BROWSER=1, which turns a missing browser into a failure instead of a skip.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .helpers import BROWSER_ARGS, CHROMIUM, ClientFactory

if CHROMIUM is None and not os.environ.get("REQUIRE_BROWSER"):
    pytest.skip("no chromium here (apt-get install chromium)", allow_module_level=True)


async def test_try_it_out_with_the_defaults_as_they_stand_answers_the_sync_shape(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    assert CHROMIUM, "REQUIRE_BROWSER is set but no chromium was found"
    client = await make_client()
    url = str(client.make_url("/docs/"))
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(url)
            operation = page.locator(".opblock-post").filter(
                has=page.locator(".opblock-summary-path[data-path='/predict']")
            )
            await operation.locator(".opblock-summary").click()
            await operation.locator("button.try-out__btn").click()
            # Nothing is edited: the pre-filled body and headers are executed as they are.
            await operation.locator("button.execute").click()
            response = operation.locator(".live-responses-table .response").first
            await response.locator(".response-col_status").wait_for(timeout=15_000)
            status = (await response.locator(".response-col_status").inner_text()).strip()
            shown = await operation.locator(".live-responses-table").inner_text()
            answer = await response.locator(".response-col_description pre").first.inner_text()
            locks = await page.locator(".authorization__btn").count()
            authorize = await page.locator(".auth-wrapper .authorize").count()
            await page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)
        finally:
            await browser.close()
    assert status.startswith("200"), shown
    body = json.loads(answer)
    assert set(body) == {"input", "result"}, body  # the plain sync answer, exactly
    assert body["input"] == "I love this product, it works great!"
    assert body["result"]["label"] == "positive"
    # No API_KEY here: no Authorize button and no lock icons.
    assert (locks, authorize) == (0, 0)


async def test_with_an_api_key_the_page_offers_authorize_and_locks(
    make_client: ClientFactory,
) -> None:
    from playwright.async_api import async_playwright

    assert CHROMIUM, "REQUIRE_BROWSER is set but no chromium was found"
    client = await make_client(api_key="s3cret")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(str(client.make_url("/docs/")))
            await page.locator(".opblock").first.wait_for(timeout=15_000)
            locks = await page.locator(".authorization__btn").count()
            authorize = await page.locator(".auth-wrapper .authorize").count()
            health = page.locator(".opblock").filter(
                has=page.locator(".opblock-summary-path[data-path='/health/live']")
            )
            health_locks = await health.locator(".authorization__btn").count()
        finally:
            await browser.close()
    assert authorize == 1
    assert locks >= 8, "every protected operation shows a lock"
    assert health_locks == 0, "public routes show none"
