"""The composition root: registry + backends + engine + service + HTTP app. The only module that wires
concrete backends to the rest."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import socket
import sys
import time
from types import FrameType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from fastapi import FastAPI

from localimg import __version__
from localimg.api.app import create_app
from localimg.api.state import AppState
from localimg.config import Settings
from localimg.registry import Registry
from localimg.request_context import RequestIdFilter
from localimg.service.engine import Engine, EngineConfig
from localimg.service.image_store import ImageStorage, ImageStore
from localimg.service.images import ImageService
from localimg.service.transparency import TransparencyStage

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("localimg")
# Of a CUDA device's memory, the share the resident models' weights may take by default; the rest is left for
# activations, which grow with image size and batch.
DEFAULT_CUDA_WEIGHT_SHARE = 0.75
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# After a second signal: how long the app's own shutdown may take (its jobs are aborted, so the worker stops at its
# next denoising step) before the process exits without it.
FORCED_SHUTDOWN_S = 3.0
# The exit status after the device failed for good (engine.device_failure): a supervisor's restart brings up a
# fresh CUDA context, which nothing inside this process can.
DEVICE_FAILED_EXIT_STATUS = 3


def load_registry(settings: Settings) -> Registry:
    registry = Registry.load(settings.config)
    return registry.restricted_to(list(settings.models)) if settings.models else registry


def build_app(
    settings: Settings,
    *,
    store: ImageStorage | None = None,
    behind_serve: bool = False,
    device_share: float = 1.0,
) -> FastAPI:
    """The whole server for one device. `store` holds the images returned by URL (default: this process's
    memory); `behind_serve`: a Ray Serve replica (see create_app); `device_share`: the part of a CUDA device this
    server has (Ray replicas sharing a GPU), which scales the default memory budget."""
    registry = load_registry(settings)
    preload = preload_list(settings.preload, registry)  # a wrong name fails before seconds of imports
    log.info(
        "localimg %s: models %s from %s (default %s); API key %s",
        __version__, ", ".join(spec.name for spec in registry), settings.config, registry.default_model,
        f"required ({len(settings.api_key_hashes)} accepted)" if settings.api_key_hashes else "not required",
    )  # fmt: skip
    # Imported here so that `localimg --help` and `localimg models` never import torch.
    import diffusers.utils.logging
    import transformers.utils.logging

    from localimg.backends.device import device_memory_bytes, resolve_device
    from localimg.backends.diffusers_backend import DiffusersBackend
    from localimg.backends.loading import weights_problem
    from localimg.backends.matting import load_matting

    for library in (diffusers.utils.logging, transformers.utils.logging):
        # Loading progress bars are for interactive sessions; in a server log they are noise between the log lines.
        library.disable_progress_bar()
        # Their warnings (a prompt truncated, modules kept in float32) go to the server's log handler, in its
        # format and with the request they belong to, instead of a handler of their own.
        library.disable_default_handler()
        library.enable_propagation()
    for name, noise in LIBRARY_NOISE.items():
        logging.getLogger(name).addFilter(noise)  # the same filter object: added once however often this runs
    device = resolve_device(settings.device)
    log.info("device: %s (%s)", device.kind, device.name)
    for spec in registry:  # file checks only: say now what a request would find out later
        problem = weights_problem(spec)
        if problem is not None:
            log.warning("model %s cannot be served: %s", spec.name, problem.message)
    backends = {spec.name: DiffusersBackend(spec, device) for spec in registry}
    if settings.inject_oom or settings.inject_device_failure:
        from localimg.testing.faults import OomBudget, inject_faults

        budget = OomBudget(settings.inject_oom)
        faulty = settings.inject_device_failure
        backends = {name: inject_faults(backend, budget, device_failure=faulty) for name, backend in backends.items()}
    if settings.memory_budget_gb is not None:
        memory_budget: int | None = int(settings.memory_budget_gb * 1e9)
    else:
        total = device_memory_bytes(device)
        memory_budget = None if total is None else int(total * DEFAULT_CUDA_WEIGHT_SHARE * device_share)
    transparency = TransparencyStage(load_matting(registry.matting, device))  # before the engine's thread starts
    engine = Engine(backends, config=engine_config(settings, memory_budget))
    service = ImageService(
        registry,
        engine,
        store or ImageStore(ttl_s=settings.url_ttl_s),
        transparency=transparency,
        has_weights=lambda spec: weights_problem(spec) is None,
    )
    return create_app(settings, service, preload=preload, behind_serve=behind_serve)


def engine_config(settings: Settings, memory_budget_bytes: int | None) -> EngineConfig:
    return EngineConfig(
        max_queue=settings.max_queue,
        max_batch=settings.max_batch,
        batch_window_s=settings.batch_window_ms / 1000,
        request_timeout_s=settings.request_timeout_s,
        memory_budget_bytes=memory_budget_bytes,
        swap_patience_s=settings.swap_patience_s,
    )


def check_settings(settings: Settings) -> None:
    """Refuse settings that are unsafe or malformed before anything loads; ValueError with one clear line."""
    from localimg.backends.device import DeviceUnavailableError, parse_device
    from localimg.service.warmup import parse_sizes

    try:
        parse_device(settings.device)
    except DeviceUnavailableError as exc:
        raise ValueError(f"--device: {exc.message}") from None

    if not settings.api_key_hashes and not settings.insecure and not _is_loopback(settings.host):
        raise ValueError(
            f"--host {settings.host} is reachable from other machines but no API key is configured; set "
            "--api-key/--api-keys-file (LOCALIMG_API_KEY/LOCALIMG_API_KEYS_FILE), or pass --insecure "
            "(LOCALIMG_INSECURE=1) to serve without keys"
        )
    at_least_one = {"--max-queue": settings.max_queue, "--max-batch": settings.max_batch}
    for flag, count in at_least_one.items():
        if count < 1:
            raise ValueError(f"{flag} must be at least 1, got {count}")
    if not 1 <= settings.port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {settings.port}")
    positive = {
        "--url-ttl": settings.url_ttl_s,
        "--sse-keepalive": settings.sse_keepalive_s,
        "--max-body-mb": settings.max_body_mb,
        "--memory-budget-gb": settings.memory_budget_gb,
        "--request-timeout": settings.request_timeout_s,  # 0 (none) arrives here as None
    }
    non_negative = {
        "--batch-window-ms": settings.batch_window_ms,
        "--drain-timeout": settings.drain_timeout_s,
        "--swap-patience": settings.swap_patience_s,
    }
    for flag, value in (*positive.items(), *non_negative.items()):
        if value is None:
            continue
        if not math.isfinite(value) or value < 0 or (value == 0 and flag in positive):
            kind = "a positive number" if flag in positive else "a number >= 0"
            raise ValueError(f"{flag} must be {kind}, got {value:g}")
    if settings.log_level.lower() not in LOG_LEVELS:
        raise ValueError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {settings.log_level!r}")
    if settings.public_url is not None:
        url = urlsplit(settings.public_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError(f"--public-url must be an http(s) URL such as https://images.example.com, got "
                             f"{settings.public_url!r}")  # fmt: skip
    parse_sizes(settings.warmup_sizes)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def preload_list(preload: tuple[str, ...], registry: Registry) -> list[str]:
    """`default` -> the default model, `all` -> every model, `none` -> nothing; names pass through."""
    names: list[str] = []
    for item in preload:
        if item == "all":
            names.extend(spec.name for spec in registry)
        elif item == "default":
            names.append(registry.default_model)
        elif item != "none":
            spec = registry.resolve(item)
            if spec is None:
                served = ", ".join(registry.public_ids())
                raise ValueError(f"--preload: unknown model {item!r}; served here: default, all, none, {served}")
            names.append(spec.name)
    return list(dict.fromkeys(names))


def run(settings: Settings) -> None:
    import uvicorn

    check_settings(settings)
    configure_logging(settings.log_level)
    # Bound before anything loads (the matting model in build_app, the models when uvicorn starts the app): a
    # taken port fails at once.
    listener = bind(settings.host, settings.port)
    try:
        app = build_app(settings)
    except BaseException:
        listener.close()
        raise
    host, port = listener.getsockname()[:2]
    log.info("listening on http://%s:%d", f"[{host}]" if ":" in host else host, port)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's own lines go through configure_logging's handler: one format, with times
        access_log=False,  # RequestIdMiddleware logs each request with its id
        timeout_graceful_shutdown=30,
    )
    engine = AppState.of(app).service.engine
    _draining_server(config, engine, settings.drain_timeout_s).run(sockets=[listener])
    if engine.device_failure is not None:
        raise SystemExit(DEVICE_FAILED_EXIT_STATUS)


class _DropMessages(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


# Library warnings that tell an operator nothing to act on, by the logger that writes them.
LIBRARY_NOISE = {
    # Pipelines declare CLIP/SigLIP image processors (safety checker, IP-adapters) that the server never runs.
    "transformers.utils.import_utils": _DropMessages("requires torchvision (not installed)"),
    # diffusers warns at every dtype cast of a model, also when no module of it must stay in float32 (the []).
    "diffusers.models.modeling_utils": _DropMessages("should be kept in float32: []"),
    # A pickled SD 1.5 safety checker is loaded by localimg and passed in (backends/loading.py); diffusers cannot
    # type-check a class of its pipeline modules, and says so with the whole module's repr.
    "diffusers.pipelines.pipeline_loading_utils": _DropMessages("We cannot verify whether it has the correct type"),
}


def configure_logging(level: str) -> None:
    """One line per record on stderr, each with the id of the request it belongs to."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
    logging.captureWarnings(True)  # a library's warnings too: in the same format, with the request they belong to
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())


def bind(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound as uvicorn binds one (IPv6 when the host has a colon, else IPv4, so
    `localhost` is 127.0.0.1); ValueError with one clear line when the address cannot be used."""
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    if sys.platform != "win32":  # on Windows the option lets a second server take a port that is in use
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except (OSError, OverflowError) as exc:
        listener.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({reason})") from None
    return listener


def _draining_server(config: uvicorn.Config, engine: Engine, drain_timeout_s: float) -> uvicorn.Server:
    """uvicorn's server, with a graceful SIGTERM/SIGINT: stop admission (new jobs get 503 and /ready turns 503
    while the socket still accepts), let queued and running jobs finish for up to `drain_timeout_s`, fail what
    is left with a 503 its client receives, then let uvicorn close connections and exit. A second signal fails
    what is left with a 503 at once and exits (within FORCED_SHUTDOWN_S). A failed device ends the server too,
    once its clients have their 503s."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        draining_since: float | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.draining_since is None:
                self.draining_since = time.monotonic()
                engine.stop_admission()
                log.info("signal %d: draining %d job(s) for up to %.0f s", sig, engine.in_flight, drain_timeout_s)
            else:  # a second signal: an operator who will not wait; uvicorn alone would want a third
                log.warning("signal %d again: exiting now, abandoning %d job(s)", sig, engine.in_flight)
                # Their clients get a 503 they can retry elsewhere, sent while uvicorn closes the connections.
                engine.abort("The server is exiting now and abandoned this request.")
                self.should_exit = self.force_exit = True

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await super().shutdown(sockets)
            if self.force_exit:
                # uvicorn skips the app's shutdown when forced, and asyncio then cancels it on exit, which
                # Starlette logs as a failed shutdown with a traceback: let it run, for a moment.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.lifespan.shutdown(), FORCED_SHUTDOWN_S)

        async def on_tick(self, counter: int) -> bool:
            if engine.device_failure is not None and not self.should_exit:
                log.critical("exiting with status %d so that the server is restarted", DEVICE_FAILED_EXIT_STATUS)
                self.should_exit = True
            if self.draining_since is not None and not self.should_exit:
                if engine.in_flight == 0:
                    self.should_exit = True
                elif time.monotonic() - self.draining_since > drain_timeout_s:
                    log.warning("drain timeout: failing %d unfinished job(s) with 503", engine.in_flight)
                    engine.abort("The server is shutting down and could not finish this request in time.")
                    self.should_exit = True
            return await super().on_tick(counter)

    return DrainingServer(config)
