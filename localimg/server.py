"""The composition root: registry + backends + engine + service + HTTP app. The only module that wires
concrete backends to the rest."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from localimg.api.app import create_app
from localimg.config import Settings
from localimg.registry import Registry
from localimg.service.engine import Engine
from localimg.service.image_store import ImageStore
from localimg.service.images import ImageService
from localimg.service.transparency import TransparencyStage

log = logging.getLogger("localimg")


def load_registry(settings: Settings) -> Registry:
    registry = Registry.load(settings.config)
    return registry.restricted_to(list(settings.models)) if settings.models else registry


def build_app(settings: Settings) -> FastAPI:
    # Imported here so that `localimg --help` and `localimg models` never import torch.
    from localimg.backends.device import resolve_device
    from localimg.backends.diffusers_backend import DiffusersBackend
    from localimg.backends.matting import load_matting

    registry = load_registry(settings)
    device = resolve_device(settings.device)
    log.info("device: %s (%s)", device.kind, device.name)
    backends = {spec.name: DiffusersBackend(spec, device) for spec in registry}
    engine = Engine(backends, max_queue=settings.max_queue)
    transparency = TransparencyStage(load_matting(registry.matting, device))
    service = ImageService(registry, engine, ImageStore(ttl_s=settings.url_ttl_s), transparency=transparency)
    return create_app(settings, service, preload=preload_list(settings.preload, registry))


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
                raise ValueError(f"--preload: unknown model {item!r}")
            names.append(spec.name)
    return list(dict.fromkeys(names))


def run(settings: Settings) -> None:
    import uvicorn

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, timeout_graceful_shutdown=30)
