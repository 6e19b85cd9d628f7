"""Which models are on the device: several may be resident within a memory budget; the least recently used are
unloaded to make room. Runs on the engine's worker thread only (backends are not thread-safe)."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING

from localimg.backends.base import PhasedLoadBackend, SizedBackend
from localimg.errors import ModelUnavailableError

if TYPE_CHECKING:
    from localimg.backends.base import ImageBackend
    from localimg.service.metrics import EngineMetrics

log = logging.getLogger(__name__)


class ModelResidency:
    """Loads models on demand and keeps the resident ones within `budget_bytes` (None: no limit)."""

    def __init__(self, backends: Mapping[str, ImageBackend], budget_bytes: int | None, metrics: EngineMetrics) -> None:
        self._backends = dict(backends)
        self._budget = budget_bytes
        self._metrics = metrics
        self._resident: OrderedDict[str, int] = OrderedDict()  # name -> bytes, least recently used first
        self._known_size: dict[str, int] = {}
        self._errors: dict[str, str] = {}

    def is_loaded(self, name: str) -> bool:
        return name in self._resident

    def load_error(self, name: str) -> str | None:
        return self._errors.get(name)

    def acquire(self, name: str) -> ImageBackend:
        """The model's backend, loaded; marks it most recently used."""
        backend = self._backends[name]
        if name in self._resident:
            self._resident.move_to_end(name)
            return backend
        self._make_room(self._known_size.get(name, 0), keep=name)
        started = time.perf_counter()
        try:
            self._load(name, backend)
        except ModelUnavailableError as exc:
            self._errors[name] = exc.message
            raise
        self._errors.pop(name, None)
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

    def unload_all(self) -> None:
        for name in list(self._resident):
            self._unload(name)

    def _load(self, name: str, backend: ImageBackend) -> None:
        try:
            backend.load()
        except ModelUnavailableError:
            # The budget is an estimate; when a load fails while other models are resident, free them and
            # try once more before giving up (a CUDA OOM on load is reported as model_load_failed).
            others = [other for other in self._resident if other != name]
            if not others:
                raise
            log.warning(
                "loading %s failed with %d other model(s) resident; unloading them and retrying", name, len(others)
            )
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
