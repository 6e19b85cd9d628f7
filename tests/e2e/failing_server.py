"""An in-process server (uvicorn in a thread, built with `create_app`) whose tiny-flux backend fails after its
second denoising step, so tests can see failures after a stream has started without a hidden flag in the real
server."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from localimg.api.app import create_app
from localimg.backends.base import GenerationPlan, StepCallback, StepProgress
from localimg.backends.device import resolve_device
from localimg.backends.diffusers_backend import DiffusersBackend
from localimg.config import Settings
from localimg.errors import GenerationError
from localimg.registry import Registry
from localimg.service.engine import Engine
from localimg.service.image_store import ImageStore
from localimg.service.images import ImageService
from tests.e2e.ready import wait_until_ok

FAILURE_MESSAGE = "the device failed at step 2"


class FailingAtStep2(DiffusersBackend):
    """The real tiny pipeline, failing after its second denoising step."""

    def generate(self, batch: Sequence[GenerationPlan], on_step: StepCallback | None = None):
        def step(progress: StepProgress) -> None:
            if progress.step == 2:
                raise GenerationError(FAILURE_MESSAGE, code="injected_failure")
            if on_step is not None:
                on_step(progress)

        return super().generate(batch, step)


@contextmanager
def failing_server(models_toml: Path, port: int) -> Iterator[str]:
    """Serve tiny-flux on 127.0.0.1:`port` with a 0.05 s SSE keep-alive; yields the root URL."""
    registry = Registry.load(models_toml).restricted_to(["tiny-flux"])
    device = resolve_device("cpu")
    engine = Engine({spec.name: FailingAtStep2(spec, device) for spec in registry})
    service = ImageService(registry, engine, ImageStore(ttl_s=60))
    app = create_app(Settings(config=models_toml, port=port, sse_keepalive_s=0.05), service, ["tiny-flux"])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(f"{url}/health", timeout_s=120)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
