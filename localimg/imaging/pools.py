"""Process-wide thread pools for image work that releases the GIL (zlib, libwebp, libjpeg), one per purpose.

Tasks of one pool must not wait on tasks of the same pool, or a full pool deadlocks: encoding a response's images
(one task each) waits on the PNG writer's deflate slices, so the two have pools of their own.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

WORKERS = max(1, min(8, os.cpu_count() or 1))

_pools: dict[str, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def thread_pool(purpose: str) -> ThreadPoolExecutor:
    """The pool for `purpose`, created on first use with `WORKERS` threads named after it."""
    with _lock:
        if purpose not in _pools:
            _pools[purpose] = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix=purpose)
        return _pools[purpose]
