"""PIL image -> file bytes in the format and compression a request asked for."""

from __future__ import annotations

import io
from typing import Literal

from PIL import Image

from localimg.imaging import png

ImageFormat = Literal["png", "jpeg", "webp"]
MIME_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

# libwebp's effort (0 fastest, 6 smallest; Pillow's default is 4). At 1024x1024, quality 80, method 2 encodes real
# pictures in about half the time of method 4 for 2-7 % more bytes (scripts/bench_encoding.py, docs/benchmarks.md).
_WEBP_METHOD = 2


def encode_image(image: Image.Image, fmt: ImageFormat, compression: int = 100) -> bytes:
    """Encode `image`. `compression` is OpenAI's `output_compression` (0-100, higher keeps more quality);
    PNG is lossless and ignores it."""
    buffer = io.BytesIO()
    if fmt == "png":
        if png.supports(image):  # RGB and RGBA: all that localimg makes
            return png.encode_png(image)
        image.save(buffer, format="PNG", compress_level=png.LEVEL)
    elif fmt == "jpeg":
        rgb = image.convert("RGB") if image.mode != "RGB" else image
        rgb.save(buffer, format="JPEG", quality=compression, optimize=False)
    elif fmt == "webp":
        image.save(buffer, format="WEBP", quality=compression, method=_WEBP_METHOD)
    else:  # pragma: no cover - protocol.py restricts the values
        raise ValueError(f"unsupported image format {fmt!r}")
    return buffer.getvalue()
