"""localimg on Ray Serve: more than one GPU, or more than one machine.

Each replica is the whole single-device server (its engine, batching, models and limits) on a GPU of its own;
Serve's proxy spreads requests over the replicas, starts and replaces them, and scales them with `replicas=auto`.
Images returned by URL go to one small store deployment, so whichever replica a link's GET reaches can serve it.

    serve run localimg.ray_serve:app config=models.toml preload=all replicas=4

The arguments are `localimg serve`'s options (`api-keys-file=keys.txt` or `api_keys_file=...`; a list is
repeated or comma-separated), minus host and port, which are Serve's `http_options`, plus:
    replicas          replicas of the server, or `auto` (Serve's autoscaling); default 1
    gpus-per-replica  default 1, or 0 with device=cpu or mps; at most 1 (a fraction shares a GPU)
    cpus-per-replica  default 1
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from localimg.api.state import AppState
from localimg.backends.device import parse_device
from localimg.cli import serve_settings
from localimg.config import Settings
from localimg.errors import RegistryError
from localimg.server import (
    DEVICE_FAILED_EXIT_STATUS,
    build_app,
    check_settings,
    configure_logging,
    load_registry,
    preload_list,
)
from localimg.service.image_store import ImageStore, StoredImage

if TYPE_CHECKING:
    from localimg.service.engine import Engine

# Ongoing requests Serve lets each replica take beyond its engine's queue: image links, health probes and
# metrics scrapes, which must not wait behind a full queue. Image requests beyond the queue get the engine's own
# 429, with OpenAI's error body and a retry-after, rather than waiting in Serve's proxy.
UNQUEUED_HEADROOM = 16
_SERVE_OWNS = {"host": "http_options.host", "port": "http_options.port"}
_GRACE_S = 1.0

log = logging.getLogger(__name__)


class SharedImageStore:
    """The ImageStorage a replica uses: calls to the `image-files` deployment, one ImageStore in its own actor."""

    def __init__(self, files: DeploymentHandle) -> None:
        self._files = files

    async def put(self, data: bytes, media_type: str, extension: str) -> str:
        return await self._files.put.remote(data, media_type, extension)

    async def get(self, image_id: str) -> StoredImage | None:
        return await self._files.get.remote(image_id)


@serve.ingress()
class ImageServer:
    """One replica: the app `localimg serve` runs, built in the replica's process. It takes traffic once its
    preloaded models are loaded and warmed up, so a new or restarted replica never answers with a cold model."""

    async def __init__(self, settings: Settings, files: DeploymentHandle, device_share: float) -> None:
        self._settings = settings
        self._files = files
        self._device_share = device_share
        self._watch: asyncio.Task[None] | None = None

    async def __serve_build_asgi_app__(self) -> FastAPI:
        configure_logging(self._settings.log_level)
        store = SharedImageStore(self._files)
        app = build_app(self._settings, store=store, behind_serve=True, device_share=self._device_share)
        self._watch = asyncio.create_task(_end_when_the_device_fails(AppState.of(app).service.engine))
        return app


async def _end_when_the_device_fails(engine: Engine) -> None:
    """A replica whose device failed for good ends its process, as `localimg serve` does, and Serve starts a
    fresh one (a fresh CUDA context). Not a failing health check: Serve takes three of them, 30 s, to act, and
    meanwhile its router favours the replica that answers 503s fastest."""
    while engine.device_failure is None:
        await asyncio.sleep(0.1)
    log.critical("device failed; ending this replica in %.0f s so that Serve starts a fresh one", _GRACE_S)
    await asyncio.sleep(_GRACE_S)  # the 503s already decided go out first
    os._exit(DEVICE_FAILED_EXIT_STATUS)


@dataclass(frozen=True)
class ReplicaShape:
    replicas: int | str  # a count, or "auto"
    cpus: float
    gpus: float


def app(args: Mapping[str, object]) -> Application:
    """The Serve application builder (`serve run localimg.ray_serve:app key=value ...`, or `import_path` and
    `args` in a Serve config file)."""
    try:
        settings, shape = parse_args(args)
    except (ValueError, RegistryError) as exc:  # Serve prints the traceback: one, whose last line is the mistake
        raise ValueError(str(exc)) from None
    files = serve.deployment(
        ImageStore, name="image-files", num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000
    )  # each call takes a millisecond or two; Serve's default of 5 at a time would queue links behind each other
    server = serve.deployment(
        ImageServer,
        name="localimg",
        num_replicas=shape.replicas,
        ray_actor_options={"num_cpus": shape.cpus, "num_gpus": shape.gpus},
        max_ongoing_requests=settings.max_queue + UNQUEUED_HEADROOM,
        graceful_shutdown_timeout_s=settings.drain_timeout_s,
    )
    device_share = shape.gpus if 0 < shape.gpus < 1 else 1.0  # replicas sharing a GPU share its memory too
    return server.bind(settings, files.bind(ttl_s=settings.url_ttl_s), device_share)


def parse_args(args: Mapping[str, object]) -> tuple[Settings, ReplicaShape]:
    """The server's settings and the replicas' shape, checked here (models.toml included) so that a mistake is
    one clear error before any replica starts. Raises ValueError or RegistryError."""
    options = {str(key).replace("_", "-"): value for key, value in args.items()}
    for key, where in _SERVE_OWNS.items():
        if key in options:
            raise ValueError(f"{key}: Ray Serve's proxy listens for the replicas; set {where} in the Serve config")
    replicas = _replicas(options.pop("replicas", 1))
    cpus = _number("cpus-per-replica", options.pop("cpus-per-replica", 1))
    gpus_given = options.pop("gpus-per-replica", None)
    # Host and port are the proxy's (http_options): LOCALIMG_HOST/PORT, as the Docker image sets them, do not apply.
    defaults = Settings()
    settings = serve_settings({**options, "host": defaults.host, "port": defaults.port})
    check_settings(settings)
    kind, index = parse_device(settings.device)
    gpus = (0 if kind in ("cpu", "mps") else 1) if gpus_given is None else _number("gpus-per-replica", gpus_given)
    _check_device(settings.device, kind, index, gpus)
    shape = ReplicaShape(replicas=replicas, cpus=cpus, gpus=gpus)
    # Replicas run in other working directories, perhaps on other machines: the config is named absolutely.
    settings = replace(settings, config=settings.config.resolve())
    preload_list(settings.preload, load_registry(settings))
    return settings, shape


def _check_device(device: str, kind: str, index: int | None, gpus: float) -> None:
    """Ray hands GPUs out by CUDA device: a replica sees only the ones it reserved, as cuda:0."""
    if gpus > 1:
        raise ValueError(f"gpus-per-replica must be at most 1 (a replica runs on one GPU), got {gpus:g}")
    if index:
        raise ValueError(f"device={device}: each replica sees only the GPU Ray gives it; use device=cuda")
    if kind in ("cpu", "mps") and gpus:
        raise ValueError(f"gpus-per-replica must be 0 with device={kind}: Ray schedules GPUs by CUDA device only")
    if kind == "cuda" and not gpus:
        raise ValueError("device=cuda needs gpus-per-replica > 0: a replica that reserves no GPU sees none")


def _replicas(value: object) -> int | str:
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        number = float(str(value))
    except ValueError:
        number = math.nan
    if not (1 <= number < math.inf and number.is_integer()):
        raise ValueError(f"replicas must be a whole number >= 1 or auto, got {value!r}")
    return int(number)


def _number(name: str, value: object) -> float:
    try:
        number = float(str(value))
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not 0 <= number < math.inf:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return number
