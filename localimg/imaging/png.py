"""A fast PNG writer for 8-bit RGB and RGBA images: the "Up" filter in numpy, deflate in parallel slices.

Pillow's encoder deflates in one thread, and zlib at level 1 runs at about 30 MB/s on the noise-like detail of
generated images: 100-180 ms for one 1024x1024 RGB image (3 MB), the time of a FLUX.1-schnell denoising step.
Here the rows are cut into slices that threads deflate at once (zlib releases the GIL). Every slice but the last
ends with a full flush, so the raw deflate streams concatenate into one valid zlib stream, as pigz does; the
Adler-32 is taken over all the data. Measured on a 2-core x86_64 CPU at 1024x1024: a photograph 112 -> 44 ms,
noise 183 -> 61 ms, for up to about 7 % more bytes than Pillow at level 1; more cores cut it further.

"Up" (each byte minus the one above it) is one vectorised subtraction and compresses photographs to about 7 % more
bytes than Pillow's per-row adaptive choice. Paeth would match Pillow's size but costs more in numpy than it saves.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from PIL import Image

from localimg.imaging.pools import WORKERS, thread_pool

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {"RGB": 2, "RGBA": 6}  # PNG colour types, 8 bits per channel
_FILTER_UP = 2
# zlib level 1: a 1024x1024 photograph deflates 3x faster than at zlib's default level 6 (72 vs 224 ms in one
# thread) for 7 % more bytes, which matter less to a server than the time does.
LEVEL = 1
_MIN_SLICE_BYTES = 256 * 1024  # below this, a thread hand-off costs more than it saves


def supports(image: Image.Image) -> bool:
    return image.mode in _COLOR_TYPES


def encode_png(image: Image.Image, slices: int | None = None) -> bytes:
    """PNG bytes of an RGB or RGBA `image`; `slices` (default: by size and cores) is how many parallel deflates."""
    color_type = _COLOR_TYPES[image.mode]
    if image.width == 0 or image.height == 0 or (slices is not None and slices < 1):
        raise ValueError(f"cannot encode a {image.width}x{image.height} image in {slices} slices")
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    filtered = _filter_up(pixels.reshape(height, -1))
    count = slices or max(1, min(WORKERS, filtered.nbytes // _MIN_SLICE_BYTES))
    bounds = np.linspace(0, height, min(count, height) + 1).astype(int)
    parts = [filtered[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
    last = len(parts) - 1
    if last == 0:
        streams = [_deflate(parts[0], final=True)]
    else:
        streams = list(thread_pool("png-deflate").map(_deflate, parts, [i == last for i in range(len(parts))]))
    # zlib header for deflate with a 32 KiB window at the fastest level, then the streams, then Adler-32.
    idat = b"\x78\x01" + b"".join(streams) + struct.pack(">I", zlib.adler32(filtered))
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _filter_up(rows: np.ndarray) -> np.ndarray:
    """Each row prefixed with filter type 2 ("Up"): bytes minus the bytes above (the first row is kept as is)."""
    out = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = _FILTER_UP
    out[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])  # uint8 arithmetic wraps modulo 256, as PNG specifies
    return out


def _deflate(part: np.ndarray, final: bool) -> bytes:
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)  # raw deflate: one zlib wrapper around them all
    return compressor.compress(part) + compressor.flush(zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))
