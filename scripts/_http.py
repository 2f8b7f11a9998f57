"""Waiting for a server the scripts started: one poller for bench, bench_execution and chaos."""

from __future__ import annotations

import time
import urllib.error
import urllib.request


def wait_http(url: str, timeout: float = 60.0, *, need_ok: bool = False) -> None:
    """Until ``url`` answers: any HTTP answer (an error status means the server is up), or
    with ``need_ok`` a 2xx (e.g. a readiness probe). RuntimeError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            if not need_ok:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout:g} s")
