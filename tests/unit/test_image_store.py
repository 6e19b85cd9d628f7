from __future__ import annotations

import asyncio

from localimg.service.image_store import ImageStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_put_get_and_expiry():
    clock = Clock()
    store = ImageStore(ttl_s=60, clock=clock)
    image_id = asyncio.run(store.put(b"abc", "image/png", "png"))
    assert image_id.endswith(".png")
    assert asyncio.run(store.get(image_id)).data == b"abc"
    clock.now += 61
    assert asyncio.run(store.get(image_id)) is None
    assert asyncio.run(store.get("nope.png")) is None


def test_bounded_in_bytes_evicts_oldest():
    store = ImageStore(ttl_s=60, max_bytes=10, clock=Clock())
    first = asyncio.run(store.put(b"x" * 6, "image/png", "png"))
    second = asyncio.run(store.put(b"y" * 6, "image/png", "png"))
    assert asyncio.run(store.get(first)) is None
    assert asyncio.run(store.get(second)).data == b"y" * 6
