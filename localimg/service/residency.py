"""Which models are on the device: several may be resident within a memory budget; the least recently used are
unloaded to make room. Runs on the engine's worker thread only (backends are not thread-safe)."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from localimg.backends.base import PhasedLoadBackend, SizedBackend
from localimg.errors import OUT_OF_MEMORY, DeviceFailedError, ModelUnavailableError

if TYPE_CHECKING:
    from localimg.backends.base import ImageBackend
    from localimg.service.metrics import EngineMetrics

log = logging.getLogger(__name__)

# After a failed load, requests for the model get the same error for this long instead of each reading its weights
# again (a client could otherwise keep the server busy reloading a broken model); then a request tries again.
RELOAD_BACKOFF_S = 30.0
# What a client is told; the operator's log and `load_error` hold the details (paths, the cause, what to do).
_CLIENT_REASONS = {
    "model_weights_missing": "its weights are not on the server's disk",
    "model_weights_pickled": "its weights are pickled files, which the server refuses to load",
    "model_weights_unsupported": "its weights are in a file format the server does not load",
    OUT_OF_MEMORY: "it does not fit in the device's memory",
    "model_kind_mismatch": "its weights are another kind of model than its configuration names",
    "model_limits_mismatch": "its weights cannot make every image size its configuration allows",
}


@dataclass(frozen=True)
class _LoadFailure:
    detail: str
    code: str | None
    at: float

    def error(self, name: str) -> ModelUnavailableError:
        reason = _CLIENT_REASONS.get(self.code or "", "its weights failed to load")
        return ModelUnavailableError(
            f"The model '{name}' is not available on this server: {reason}. The server's log says why.",
            code=self.code,
        )


class ModelResidency:
    """Loads models on demand and keeps the resident ones within `budget_bytes` (None: no limit)."""

    def __init__(self, backends: Mapping[str, ImageBackend], budget_bytes: int | None, metrics: EngineMetrics) -> None:
        self._backends = dict(backends)
        self._budget = budget_bytes
        self._metrics = metrics
        self._resident: OrderedDict[str, int] = OrderedDict()  # name -> bytes, least recently used first
        self._known_size: dict[str, int] = {}
        self._failures: dict[str, _LoadFailure] = {}

    def is_loaded(self, name: str) -> bool:
        return name in self._resident

    def loads_without_eviction(self, name: str) -> bool:
        """Whether serving `name` now leaves every resident model loaded: it is resident, it fits, or it failed
        to load moments ago (its jobs fail at once). A model never loaded has no known size: with a budget and
        other models resident, it is assumed not to fit."""
        if name in self._resident or self._budget is None or not self._resident or self._backing_off(name):
            return True
        size = self._known_size.get(name)
        return size is not None and sum(self._resident.values()) + size <= self._budget

    def load_error(self, name: str) -> str | None:
        """Why the model's last load failed (for the operator), or None."""
        failure = self._failures.get(name)
        return None if failure is None else failure.detail

    def acquire(self, name: str, *, evict_on_oom: bool = True) -> ImageBackend:
        """The model's backend, loaded; marks it most recently used. Raises ModelUnavailableError with a message
        for the client (the details are logged). Without `evict_on_oom`, a load that runs out of memory next to
        the resident models fails instead of unloading them and trying again."""
        backend = self._backends[name]
        if name in self._resident:
            self._resident.move_to_end(name)
            return backend
        if self._backing_off(name):
            raise self._failures[name].error(name)
        self._make_room(self._known_size.get(name, 0), keep=name)
        started = time.perf_counter()
        try:
            self._load(name, backend, evict_on_oom=evict_on_oom)
        except DeviceFailedError:  # not this model's failure: the engine's (no model can be served now)
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a backend raises, the model cannot be served now
            known = isinstance(exc, ModelUnavailableError)
            detail = exc.message if known else f"{type(exc).__name__}: {exc}"
            failure = _LoadFailure(detail, exc.code if known else "model_load_failed", time.monotonic())
            self._failures[name] = failure
            log.error("model %s is unavailable: %s", name, detail, exc_info=None if known else exc)
            raise failure.error(name) from None
        self._failures.pop(name, None)
        size = backend.memory_bytes() if isinstance(backend, SizedBackend) else 0
        self._known_size[name] = size
        self._resident[name] = size
        self._metrics.resident.set(len(self._resident))
        seconds = time.perf_counter() - started
        self._metrics.load_seconds.labels(name, "total").set(seconds)
        if isinstance(backend, PhasedLoadBackend):
            for phase, phase_seconds in backend.load_phases.items():
                self._metrics.load_seconds.labels(name, phase).set(phase_seconds)
        log.info("model %s loaded in %.1f s (%.2f GB)", name, seconds, size / 1e9)
        self._make_room(0, keep=name)
        return backend

    def _backing_off(self, name: str) -> bool:
        failure = self._failures.get(name)
        return failure is not None and time.monotonic() - failure.at < RELOAD_BACKOFF_S

    def unload_all(self) -> None:
        for name in list(self._resident):
            self._unload(name)

    def _load(self, name: str, backend: ImageBackend, *, evict_on_oom: bool) -> None:
        # The budget is an estimate: when a model does not fit next to the resident ones, free them and try once
        # more. Any other failure (missing or broken weights) leaves the others alone.
        others = [other for other in self._resident if other != name]
        try:
            backend.load()
            return
        except ModelUnavailableError as exc:
            if exc.code != OUT_OF_MEMORY or not others or not evict_on_oom:
                raise
        # Retried outside the except block: its traceback must not keep the failed attempt's memory alive.
        log.warning("model %s does not fit next to %d other model(s); unloading them and retrying", name, len(others))
        for other in others:
            self._unload(other, evicted=True)
        backend.load()

    def _make_room(self, needed: int, keep: str) -> None:
        if self._budget is None:
            return
        while sum(self._resident.values()) + needed > self._budget:
            victim = next((name for name in self._resident if name != keep), None)
            if victim is None:
                if needed == 0 and self._resident.get(keep, 0) > self._budget:
                    log.warning("model %s alone exceeds the memory budget; keeping it resident", keep)
                return
            self._unload(victim, evicted=True)

    def _unload(self, name: str, *, evicted: bool = False) -> None:
        self._backends[name].unload()
        self._resident.pop(name, None)
        self._metrics.resident.set(len(self._resident))
        if evicted:
            self._metrics.evictions.labels(name).inc()
            log.info("model %s unloaded to stay within the memory budget", name)
