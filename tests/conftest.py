"""Shared fixtures. The tiny random-weight models are built once and cached in `.tiny/` (gitignored)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_models_toml() -> Path:
    """Path to the models.toml registering tiny-flux, tiny-sd15, tiny-sdxl and tiny-sd3."""
    from localimg.testing.tiny import build_tiny_models

    out = Path(os.environ.get("LOCALIMG_TINY_DIR", REPO_ROOT / ".tiny"))
    return build_tiny_models(out)
