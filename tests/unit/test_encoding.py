from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from localimg.imaging.encoding import encode_image

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}


def noisy_image(width: int = 96, height: int = 64) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_format_magic_and_size(fmt):
    data = encode_image(noisy_image(), fmt, 80 if fmt != "png" else 100)
    if fmt == "webp":
        assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    else:
        assert data.startswith(MAGIC[fmt])
    decoded = Image.open(io.BytesIO(data))
    assert decoded.size == (96, 64)
    assert decoded.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]


def test_png_is_lossless():
    image = noisy_image()
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_image(image, "png")))), np.asarray(image))


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_compression_shrinks_files(fmt):
    image = noisy_image(256, 256)
    assert len(encode_image(image, fmt, 10)) < len(encode_image(image, fmt, 90)) < len(encode_image(image, fmt, 100))
