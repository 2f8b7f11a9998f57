"""The dashboard in a real browser (headless Chromium through playwright): its figures
are the API's, live; a job is found by its id; dead letters are replayed with the admin
key and refused without it; a tenant's key never shows another's job; a Redis outage is
said and recovered from; no request leaves the host and the console stays clean.

Needs Debian's chromium; CI sets REQUIRE_BROWSER=1 (a missing browser fails, not skips).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from service.redis.embedded import RedisServer, free_port

from .helpers import ASYNC, BROWSER_ARGS, CHROMIUM, ClientFactory, auth, dead_letter, keys_file

#: How long the page may take to show a figure: its refresh, and a replica's flush.
SHOWN_MS = 20_000

if CHROMIUM is None and not os.environ.get("REQUIRE_BROWSER"):
    pytest.skip("no chromium here (apt-get install chromium)", allow_module_level=True)


class Watched:
    """A page, with every request it made and every console error it logged."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on(
            "console",
            lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None,
        )
        page.on("dialog", lambda d: d.accept())  # the confirmation of replay and purge

    def check_clean(self, allowed: Callable[[str], bool] = lambda _: False) -> None:
        """Only this host was asked for anything (data: URIs aside); no console errors
        but those ``allowed`` says are expected."""
        elsewhere = [
            u
            for u in self.requests
            if not u.startswith(self.base + "/") and not u.startswith("data:")
        ]
        assert not elsewhere, elsewhere
        unexpected = [e for e in self.errors if not allowed(e)]
        assert not unexpected, unexpected


@asynccontextmanager
async def browser_page(base: str) -> AsyncIterator[Watched]:
    from playwright.async_api import async_playwright

    assert CHROMIUM, "REQUIRE_BROWSER is set but no chromium was found"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            yield Watched(page, base)
        finally:
            await browser.close()


async def text_of(page: Any, selector: str) -> str:
    return (await page.locator(selector).inner_text()).strip()


async def submit_to(base: str, value: Any, headers: dict[str, str] | None = None) -> str:
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            base + "/predict", json={"input": value}, headers={**ASYNC, **(headers or {})}
        )
        assert resp.status == 202, await resp.text()
        return (await resp.json())["prediction_id"]  # type: ignore[no-any-return]


async def test_the_overview_follows_the_queue_and_a_job_is_found_by_its_id(
    make_served: Callable[..., Any],
) -> None:
    from playwright.async_api import expect

    _, base = await make_served(model="tests.models:echo", workers=0)
    async with browser_page(base) as watched:
        page = watched.page
        await page.goto(base + "/dashboard")
        await expect(page.locator("#scope")).to_have_text("Showing: everything")
        await expect(page.locator("#q-total")).to_have_text("0")
        ids = [await submit_to(base, i) for i in range(5)]
        await expect(page.locator("#q-total")).to_have_text("5", timeout=SHOWN_MS)
        await expect(page.locator("#t-model")).to_contain_text("default")
        # The charts are drawn by the vendored library (uPlot): a canvas each.
        assert await page.locator("#chart-rates canvas").count() == 1
        assert await page.locator("#chart-latency canvas").count() == 1

        await make_served(model="tests.models:echo", consumer_name="worker")  # a worker joins
        await expect(page.locator("#q-total")).to_have_text("0", timeout=SHOWN_MS)
        await expect(page.locator("#alive")).to_have_text("2 / 1", timeout=SHOWN_MS)
        await expect(page.locator("#r-done")).not_to_have_text("0.00", timeout=SHOWN_MS)

        await page.click("nav a[data-page=jobs]")
        jobs = page.locator("#t-jobs")
        for prediction_id in ids:
            await expect(jobs).to_contain_text(prediction_id, timeout=SHOWN_MS)
        await page.fill("#lookup-id", ids[2])
        await page.click("#lookup button")
        box = page.locator("#job")
        await expect(box).to_contain_text(f"Job {ids[2]}")
        await expect(box).to_contain_text("ended done")
        await expect(box).to_contain_text('{"echo":2}')
        await page.fill("#lookup-id", "00000000-0000-4000-8000-000000000000")
        await page.click("#lookup button")
        await expect(box).to_contain_text("Not found")

        for name in ("dead-letters", "models", "tenants", "overview"):
            await page.click(f"nav a[data-page={name}]")
            await expect(page.locator(f"#page-{name}")).to_be_visible()
            if name == "models":
                await expect(page.locator("#models")).to_contain_text("default (default)")
                await expect(page.locator("#models")).to_contain_text("max batch")
    # 404 of the unknown id is the only error the console may show.
    watched.check_clean(lambda e: "404" in e)


@pytest.fixture
def tenants(tmp_path: Path) -> Path:
    return keys_file(tmp_path / "keys.toml", acme={"rate": 20}, umbrella={})


async def test_a_key_is_asked_for_and_a_tenant_sees_its_own_jobs_alone(
    make_served: Callable[..., Any], tenants: Path
) -> None:
    from playwright.async_api import expect

    options = {
        "model": "tests.models:echo",
        "workers": 0,
        "max_deliveries": 2,
        "api_keys_file": str(tenants),
        "admin_api_key": "root-key",
    }
    _, base = await make_served(**options)
    mine = [await submit_to(base, i, auth("acme")) for i in range(3)]
    theirs = await submit_to(base, "secret", auth("umbrella"))
    async with browser_page(base) as watched:
        page = watched.page
        await page.goto(base + "/dashboard")
        await expect(page.locator("#keys")).to_be_visible()
        await expect(page.locator("#keys-why")).to_contain_text("needs a key")
        await page.fill("#api-key", "wrong-key")
        await page.click("#keys button")
        await expect(page.locator("#keys-why")).to_contain_text("refused")
        await page.fill("#api-key", "acme-key")
        await page.click("#keys button")
        await expect(page.locator("#scope")).to_have_text("Showing: tenant acme")
        await expect(page.locator("#q-total")).to_have_text("3", timeout=SHOWN_MS)
        await expect(page.locator("#by-tenant-box")).to_be_hidden()

        await page.click("nav a[data-page=jobs]")
        await page.select_option("#filter-status", "queued")
        await page.click("#filter button")
        for prediction_id in mine:
            await expect(page.locator("#t-jobs")).to_contain_text(prediction_id)
        assert theirs not in await text_of(page, "#page-jobs")
        await page.fill("#lookup-id", theirs)
        await page.click("#lookup button")
        await expect(page.locator("#job")).to_contain_text("Not found")
        await page.click("nav a[data-page=tenants]")
        await expect(page.locator("#t-tenants")).to_contain_text("acme")
        assert "umbrella" not in await page.content()
        # The admin key, given as the page's key, sees everything, on every page.
        await page.click("nav a[data-page=overview]")
        await page.click("#change-key")
        await page.fill("#api-key", "root-key")
        await page.click("#keys button")
        await expect(page.locator("#scope")).to_have_text("Showing: everything")
        await expect(page.locator("#q-total")).to_have_text("4", timeout=SHOWN_MS)
        for name in ("jobs", "models", "tenants"):
            await page.click(f"nav a[data-page={name}]")
            await expect(page.locator(f"#page-{name}")).to_be_visible()
        await expect(page.locator("#t-tenants")).to_contain_text("umbrella")
        await page.click("nav a[data-page=models]")
        await expect(page.locator("#models")).to_contain_text("default (default)")
        await expect(page.locator("#keys")).to_be_hidden()
    watched.check_clean(lambda e: "401" in e or "404" in e)


async def test_a_dead_letter_is_replayed_with_the_admin_key_and_refused_without(
    make_served: Callable[..., Any], make_client: ClientFactory, rds: Redis
) -> None:
    from playwright.async_api import expect

    options = {
        "model": "tests.models:echo",
        "workers": 0,
        "max_deliveries": 2,
        "admin_api_key": "root-key",
    }
    _, base = await make_served(**options)
    stepper = await make_client(**options, consumer_name="stepper")
    first = await dead_letter(stepper, rds, "first")
    second = await dead_letter(stepper, rds, "second")
    async with browser_page(base) as watched:
        page = watched.page
        await page.goto(base + "/dashboard#dead-letters")
        await expect(page.locator("#dead-total")).to_contain_text("Enter the admin key")
        await page.fill("#admin-key", "root-key")
        await page.click("#admin button")
        table = page.locator("#t-dead")
        await expect(table).to_contain_text(first)
        await expect(table).to_contain_text(second)

        await page.fill("#admin-key", "not-the-key")  # a wrong key, then a replay
        await page.click("#admin button")
        await expect(page.locator("#banner")).to_contain_text("refused")
        row = table.locator("tr", has_text=first)
        await row.locator("button", has_text="Replay").click()
        await expect(page.locator("#banner")).to_contain_text("Replay")
        await expect(page.locator("#banner")).to_contain_text("refused")
        async with aiohttp.ClientSession() as http:
            got = await (await http.get(f"{base}/predict/{first}")).json()
        assert got["status"] == "failed", "refused: still a dead letter"

        await page.fill("#admin-key", "root-key")
        await page.click("#admin button")
        await row.locator("button", has_text="Replay").click()
        await expect(table).not_to_contain_text(first, timeout=SHOWN_MS)
        await expect(table).to_contain_text(second)
        async with aiohttp.ClientSession() as http:
            got = await (await http.get(f"{base}/predict/{first}")).json()
        assert got["status"] == "queued", "replayed: queued again under its id"

        await table.locator("tr", has_text=second).locator("button", has_text="Purge").click()
        await expect(table).to_contain_text("No dead letters.", timeout=SHOWN_MS)
    watched.check_clean(lambda e: "401" in e)


async def test_a_redis_outage_is_said_on_the_page_and_it_recovers(
    make_served: Callable[..., Any], tmp_path: Path
) -> None:
    from playwright.async_api import expect

    server = RedisServer(tmp_path / "redis", free_port())
    url = server.start()
    try:
        _, base = await make_served(redis_url=url, model="tests.models:echo", workers=0)
        await submit_to(base, 1)
        async with browser_page(base) as watched:
            page = watched.page
            await page.goto(base + "/dashboard")
            await expect(page.locator("#q-total")).to_have_text("1", timeout=SHOWN_MS)
            server.stop()
            banner = page.locator("#banner")
            await expect(banner).to_contain_text("unavailable", timeout=SHOWN_MS)
            await expect(page.locator("#q-total")).to_have_text("1")  # the last figures stay
            server.start()  # same port, same data
            await expect(banner).to_be_hidden(timeout=SHOWN_MS)
            await expect(page.locator("#q-total")).to_have_text("1")
        watched.check_clean(lambda e: "503" in e)
    finally:
        server.stop()
