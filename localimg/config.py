"""Server settings. Filled by the CLI (flags > LOCALIMG_* environment variables > these defaults) and passed
down explicitly: nothing else in the package reads the environment for configuration."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
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
    # Engine (service/engine.py): images per merged call, how long to wait for compatible jobs (0: no merging),
    # the per-request timeout (None: none), and the resident models' weight budget (None: no limit on CPU/MPS,
    # three quarters of the GPU's memory on CUDA). The timeout stays under the SDKs' own 600 s, so that a client
    # gets the 504, which the SDKs do not retry, rather than timing out first and sending the job again.
    max_batch: int = 8
    batch_window_ms: float = 10.0
    request_timeout_s: float | None = 570.0
    memory_budget_gb: float | None = None
    # How long a job whose model would unload another may wait while queued jobs run on the loaded ones.
    swap_patience_s: float = 30.0
    # Sizes ("WxH") generated once per preloaded model at start, so the first request is not the slow one.
    warmup_sizes: tuple[str, ...] = ()
    # Lifecycle: how long SIGTERM waits for queued and running jobs before failing them with a 503.
    drain_timeout_s: float = 30.0
    # Security: sha256 hex digests of the accepted API keys (empty: no key needed), binding a non-loopback host
    # without keys, the request body limit, and the browser origins allowed by CORS (empty: CORS off).
    api_key_hashes: tuple[str, ...] = ()
    insecure: bool = False
    max_body_mb: float = 64.0
    cors_origins: tuple[str, ...] = ()
    # Testing only (localimg/testing/faults.py): the next N pipeline calls of more than one image raise a fake CUDA
    # out-of-memory error; a prompt with the marker raises a fake illegal memory access.
    inject_oom: int = 0
    inject_device_failure: bool = False


_HASH_PREFIX = "sha256:"


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_hashes(keys: Iterable[str], keys_file: Path | None) -> tuple[str, ...]:
    """The digests of the keys given on the command line and in `keys_file`: one key per line (`#` comments),
    or `sha256:<hex>`, a key already hashed, so that the file need not hold secrets in clear. Raises ValueError
    on a bad file."""
    hashes = [_hash_key(key) for key in keys if key]
    if keys_file is not None:
        try:
            lines = keys_file.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"--api-keys-file: cannot read {keys_file}: {exc.strerror}") from exc
        for number, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith(_HASH_PREFIX):
                digest = line.removeprefix(_HASH_PREFIX).lower()
                if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                    raise ValueError(f"--api-keys-file: {keys_file} line {number}: not a sha256 hex digest")
                hashes.append(digest)
            else:
                hashes.append(_hash_key(line))
    return tuple(dict.fromkeys(hashes))
