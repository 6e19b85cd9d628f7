"""Server settings. Filled by the CLI (flags > LOCALIMG_* environment variables > these defaults) and passed
down explicitly: nothing else in the package reads the environment for configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    config: Path = Path("models.toml")
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    # Which declared models to serve (empty: all) and which to load at start ("default", "all" or names).
    models: tuple[str, ...] = ()
    preload: tuple[str, ...] = ("default",)
    # Base URL clients use to reach this server, for `response_format="url"`; None: taken from each request.
    public_url: str | None = None
    url_ttl_s: int = 3600
    max_queue: int = 64
    # Seconds without an event after which a stream gets a `: keep-alive` comment frame (proxies close idle ones).
    sse_keepalive_s: float = 10.0
    log_level: str = "info"
