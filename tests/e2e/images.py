"""Assertions on the bytes a client receives."""

from __future__ import annotations

import base64
import io

from PIL import Image

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}


def decode(b64: str | None, fmt: str = "png", size: tuple[int, int] | None = None) -> Image.Image:
    """Decode a b64_json payload, checking its format by magic bytes and, if given, its pixel size."""
    assert b64, "expected b64_json"
    data = base64.b64decode(b64)
    check_magic(data, fmt)
    image = Image.open(io.BytesIO(data))
    image.load()
    if size is not None:
        assert image.size == size
    return image


def check_magic(data: bytes, fmt: str) -> None:
    if fmt == "webp":
        assert data[:4] == b"RIFF" and data[8:12] == b"WEBP", data[:16]
    else:
        assert data.startswith(MAGIC[fmt]), data[:16]
