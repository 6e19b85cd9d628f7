"""Fault injection for tests, through hidden `localimg serve` flags; no production code path knows about it.

- `--inject-oom N`: the next N pipeline calls of more than one image raise a fake CUDA out-of-memory error, so a
  test on a CPU can prove that the backend's split-and-retry keeps the server serving.
- `--inject-device-failure`: a call for a prompt containing DEVICE_FAILURE_PROMPT raises the error torch raises
  after an illegal memory access, so a test can prove that a failed device fails every job with a 503 and ends
  the server.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import torch

from localimg.backends.base import GenerationPlan
from localimg.backends.diffusers_backend import DiffusersBackend

log = logging.getLogger(__name__)

DEVICE_FAILURE_PROMPT = "[inject-device-failure]"
# torch >= 2.8 raises AcceleratorError (a RuntimeError) for CUDA errors, older versions a plain RuntimeError.
_CUDA_ERROR = getattr(torch, "AcceleratorError", RuntimeError)
_ILLEGAL_ACCESS = (
    "CUDA error: an illegal memory access was encountered\n"
    "Search for `cudaErrorIllegalAddress' in https://docs.nvidia.com/cuda/cuda-runtime-api/group__CUDART__TYPES.html "
    "for more information. (injected by --inject-device-failure)"
)


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


class _FaultyAdapter:
    """The backend's family adapter, failing `call_kwargs` (called once per pipeline call) as asked."""

    def __init__(self, inner: Any, oom: OomBudget, device_failure: bool) -> None:
        self._inner = inner
        self._oom = oom
        self._device_failure = device_failure

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def call_kwargs(self, plans: Sequence[GenerationPlan], *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self._device_failure and any(DEVICE_FAILURE_PROMPT in plan.prompt for plan in plans):
            log.warning("injecting a fake CUDA illegal memory access")
            raise _CUDA_ERROR(_ILLEGAL_ACCESS)
        if len(plans) > 1 and self._oom.take():
            log.warning("injecting a fake CUDA out-of-memory error into a call of %d images", len(plans))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. (injected by --inject-oom)")
        result: dict[str, Any] = self._inner.call_kwargs(plans, *args, **kwargs)
        return result


def inject_faults(backend: DiffusersBackend, oom: OomBudget, *, device_failure: bool) -> DiffusersBackend:
    backend.adapter = _FaultyAdapter(backend.adapter, oom, device_failure)  # type: ignore[assignment]
    return backend
