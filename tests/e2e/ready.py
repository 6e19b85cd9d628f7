"""Waiting for a server under test to answer."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx


def wait_until_ok(url: str, *, timeout_s: float, check_alive: Callable[[], None] = lambda: None) -> None:
    """Poll `url` until it answers 200; `check_alive` raises if the server has died meanwhile."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check_alive()
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout_s:g}s")
