"""Short-lived storage for images returned by URL (`response_format="url"`, the DALL·E default).

`ImageStore` keeps them in this process's memory, bounded in bytes, each entry expiring after `ttl_s` (OpenAI's
URLs last 60 minutes). The service sees only `ImageStorage`, whose methods are coroutines so that a store shared
by several processes (localimg/ray_serve.py) can stand in without blocking the event loop.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    media_type: str
    expires_at: float


class ImageStorage(Protocol):
    async def put(self, data: bytes, media_type: str, extension: str) -> str:
        """Store the image; returns its id (`<random>.<extension>`), unguessable and safe in a URL path."""
        ...

    async def get(self, image_id: str) -> StoredImage | None:
        """The image, or None when it never existed or has expired."""
        ...


class ImageStore:
    def __init__(
        self, *, ttl_s: float = 3600.0, max_bytes: int = 512 * 2**20, clock: Callable[[], float] = time.time
    ) -> None:
        self.ttl_s = ttl_s
        self._max_bytes = max_bytes
        self._clock = clock
        self._items: OrderedDict[str, StoredImage] = OrderedDict()
        self._bytes = 0

    async def put(self, data: bytes, media_type: str, extension: str) -> str:
        self._evict(len(data))
        image_id = f"{secrets.token_urlsafe(18)}.{extension}"
        self._items[image_id] = StoredImage(data, media_type, self._clock() + self.ttl_s)
        self._bytes += len(data)
        return image_id

    async def get(self, image_id: str) -> StoredImage | None:
        item = self._items.get(image_id)
        if item is None or item.expires_at <= self._clock():
            return None
        return item

    def _evict(self, incoming: int) -> None:
        now = self._clock()
        while self._items:
            oldest_id, oldest = next(iter(self._items.items()))
            if oldest.expires_at > now and self._bytes + incoming <= self._max_bytes:
                break
            del self._items[oldest_id]
            self._bytes -= len(oldest.data)
