"""Fault injection for tests (`localimg serve --inject-oom N`, a hidden flag): the next N pipeline calls of more
than one image raise a fake CUDA out-of-memory error, so a test on a CPU can prove that the backend's
split-and-retry keeps the server serving. Wraps a built backend; no production code path knows about it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import torch

from localimg.backends.base import GenerationPlan
from localimg.backends.diffusers_backend import DiffusersBackend

log = logging.getLogger(__name__)


class OomBudget:
    """How many fake OOMs are left, shared by every wrapped backend."""

    def __init__(self, count: int) -> None:
        self._left = count
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True


class _OomAdapter:
    """The backend's family adapter, failing `call_kwargs` (called once per pipeline call) while budget lasts."""

    def __init__(self, inner: Any, budget: OomBudget) -> None:
        self._inner = inner
        self._budget = budget

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def call_kwargs(self, plans: Sequence[GenerationPlan], *args: Any, **kwargs: Any) -> dict[str, Any]:
        if len(plans) > 1 and self._budget.take():
            log.warning("injecting a fake CUDA out-of-memory error into a call of %d images", len(plans))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. (injected by --inject-oom)")
        result: dict[str, Any] = self._inner.call_kwargs(plans, *args, **kwargs)
        return result


def inject_oom(backend: DiffusersBackend, budget: OomBudget) -> DiffusersBackend:
    backend.adapter = _OomAdapter(backend.adapter, budget)  # type: ignore[assignment]
    return backend
