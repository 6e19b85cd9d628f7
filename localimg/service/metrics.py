"""Prometheus metrics of one engine, in its own registry: two engines (or apps) in one process never share or
collide, which a process-global registry would not allow (tests, Ray Serve replicas)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds: from a fast tiny model on a GPU (tens of ms) to a large model at many steps on a CPU (minutes).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class EngineMetrics:
    """The engine's counters, gauges and histograms; `registry` is what /metrics exposes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.queue_wait = Histogram(
            "localimg_queue_wait_seconds",
            "Time a job waited in the queue.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "localimg_request_duration_seconds",
            "Admission to result of a generation job (queue + run).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.running = Gauge("localimg_jobs_running", "Jobs in the backend call now running.", registry=r)
        self.waiting = Gauge("localimg_jobs_waiting", "Jobs queued, not yet running.", registry=r)
        self.images = Counter("localimg_images", "Images delivered.", ["model"], registry=r)
        self.errors = Counter(
            "localimg_errors", "Jobs that ended in an error, by error code.", ["model", "code"], registry=r
        )
        self.oom = Counter(
            "localimg_oom_errors", "Jobs failed by device out-of-memory after retries.", ["model"], registry=r
        )
        self.cancelled = Counter(
            "localimg_cancelled", "Jobs cancelled (client gone, timeout, shutdown).", ["model", "reason"], registry=r
        )
        self.rejected = Counter("localimg_rejected", "Jobs refused at admission.", ["reason"], registry=r)
        self.backend_calls = Counter(
            "localimg_backend_calls", "Batched backend calls (one per micro-batch).", ["model"], registry=r
        )
        self.batch_images = Histogram(
            "localimg_batch_images", "Images per backend call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_jobs = Histogram(
            "localimg_batch_jobs", "Jobs merged per backend call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.resident = Gauge("localimg_models_resident", "Models loaded on the device.", registry=r)
        self.load_seconds = Gauge(
            "localimg_model_load_seconds",
            "Seconds the model's last load took: phase total, and per phase where the backend tells (read from "
            "disk, to_device, optimize, warm_up).",
            ["model", "phase"],
            registry=r,
        )
        self.evictions = Counter(
            "localimg_model_evictions", "Models unloaded to fit the memory budget.", ["model"], registry=r
        )
