"""The dashboard's screenshots in docs/, made again from a running service: starts a
redis-server and `python -m service` (two tenants, an admin key, a small demo model that
fails on "bad" and whose process dies on "crash"), gives it about a minute of work (jobs
done, failed and dead-lettered, from both tenants), then saves each page from headless
Chromium (playwright) to docs/dashboard-<page>.png.

    scripts/screenshots [--seconds 60] [--out docs]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench import server  # noqa: E402
from service.redis.embedded import RedisServer, free_port  # noqa: E402

DEMO_MODEL = '''
import os, signal, time, random

def predict(text: str) -> dict:
    """A demo: a few ms to a few hundred; "bad" fails, "crash" ends its process."""
    if text == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if text == "bad":
        raise ValueError("the demo model refuses 'bad'")
    time.sleep(random.choice((0.002, 0.01, 0.03, 0.2)))
    return {"length": len(text)}
'''
ADMIN = "admin-key"
TENANTS = {"acme": "acme-key", "umbrella": "umbrella-key"}
PAGES = ("overview", "jobs", "dead-letters", "models", "tenants")


def _keys_file(folder: Path) -> Path:
    path = folder / "keys.toml"
    lines = []
    for name, key in TENANTS.items():
        digest = hashlib.sha256(key.encode()).hexdigest()
        lines += [f"[tenants.{name}]", f'keys = ["{digest}"]', "rate = 200", "max_queued = 5000"]
    path.write_text("\n".join(lines) + "\n")
    return path


async def _load(base: str, seconds: float) -> str:
    """Submits work for ``seconds`` at a rate that changes; answers a failed job's id."""
    failed = ""
    async with aiohttp.ClientSession() as http:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            left = end - time.monotonic()
            per_second = 15 + 10 * (1 + (left // 10) % 3)
            for _ in range(int(per_second)):
                tenant = random.choice(list(TENANTS))
                text = random.choice(["hello", "a longer review", "bad"] + ["ok"] * 12)
                headers = {"Async-Mode": "true", "Authorization": f"Bearer {TENANTS[tenant]}"}
                async with http.post(base + "/predict", json={"input": text}, headers=headers) as r:
                    if text == "bad" and r.status == 202:
                        failed = (await r.json())["prediction_id"]
            await asyncio.sleep(1)
        for _ in range(2):  # two dead letters: their process dies on every delivery
            headers = {"Async-Mode": "true", "Authorization": f"Bearer {TENANTS['acme']}"}
            await http.post(base + "/predict", json={"input": "crash"}, headers=headers)
    return failed


async def _shoot(base: str, out: Path, failed: str) -> None:
    from playwright.async_api import async_playwright, expect

    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium")
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=chromium, args=["--headless=new", "--no-sandbox", "--disable-gpu"]
        )
        page = await browser.new_page(viewport={"width": 1280, "height": 860})
        page.on("dialog", lambda d: d.dismiss())
        await page.goto(base + "/dashboard")
        await page.fill("#api-key", ADMIN)
        await page.click("#keys button")
        # (the page's policy forbids eval: playwright's locators, not wait_for_function)
        await expect(page.locator("#scope")).to_have_text("Showing: everything")
        await page.wait_for_timeout(2500)  # a second refresh: the charts drawn whole
        await page.screenshot(path=str(out / "dashboard-overview.png"))
        await page.click("nav a[data-page=jobs]")
        if failed:
            await page.fill("#lookup-id", failed)
            await page.click("#lookup button")
            await page.locator("#job h3").wait_for()
        await page.wait_for_timeout(1000)
        await page.screenshot(path=str(out / "dashboard-jobs.png"))
        await page.click("nav a[data-page=dead-letters]")
        await page.fill("#admin-key", ADMIN)
        await page.click("#admin button")
        await page.wait_for_timeout(1000)
        await page.screenshot(path=str(out / "dashboard-dead-letters.png"))
        for name in ("models", "tenants"):
            await page.click(f"nav a[data-page={name}]")
            await page.wait_for_timeout(1000)
            await page.screenshot(path=str(out / f"dashboard-{name}.png"))
        await browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="of work before the shots")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "demo_model.py").write_text(DEMO_MODEL)
        redis_server = RedisServer(folder / "redis", free_port())
        url = redis_server.start()
        env = {
            "model": "demo_model:predict",
            "execution": "process",
            "api_keys_file": _keys_file(folder),
            "admin_api_key": ADMIN,
            "max_deliveries": 2,
            "visibility_timeout_seconds": 5,
            "log_level": "ERROR",
            "data_dir": folder / "data",
            "pythonpath": folder,  # the demo model's module
        }
        try:
            with server(url, **env) as (port, _):
                base = f"http://127.0.0.1:{port}"
                failed = asyncio.run(_load(base, args.seconds))
                time.sleep(15)  # the dead letters' deliveries, and a last flush
                asyncio.run(_shoot(base, args.out, failed))
        finally:
            redis_server.stop()
    print("saved", ", ".join(f"docs/dashboard-{p}.png" for p in PAGES))
    return 0


if __name__ == "__main__":
    sys.exit(main())
