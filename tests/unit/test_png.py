"""The parallel PNG writer: lossless for RGB and RGBA at any size and slicing, and a valid file by the letter."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from localimg.imaging.encoding import encode_image
from localimg.imaging.png import SIGNATURE, encode_png, supports


def random_image(mode: str, width: int, height: int, seed: int = 0) -> Image.Image:
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode)


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk, checking each CRC on the way."""
    assert data.startswith(SIGNATURE)
    found, at = [], len(SIGNATURE)
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, payload = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(payload, zlib.crc32(kind)), kind
        found.append((kind, payload))
        at += 12 + length
    return found


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
@pytest.mark.parametrize(("width", "height"), [(1, 1), (7, 3), (513, 1), (1, 300), (256, 256)])
@pytest.mark.parametrize("slices", [None, 1, 4])
def test_round_trip_is_exact(mode: str, width: int, height: int, slices: int | None):
    image = random_image(mode, width, height)
    decoded = Image.open(io.BytesIO(encode_png(image, slices=slices)))
    assert decoded.format == "PNG" and decoded.mode == mode and decoded.size == (width, height)
    assert np.array_equal(np.asarray(decoded), np.asarray(image))


def test_sliced_stream_is_one_valid_zlib_stream():
    # A decoder may stop at the image's last byte without checking the stream's end: check it here, Adler-32 too.
    image = random_image("RGB", 300, 200, seed=1)
    parts = chunks(encode_png(image, slices=5))
    assert [kind for kind, _ in parts] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, color, *_ = struct.unpack(">IIBBBBB", parts[0][1])
    assert (width, height, depth, color) == (300, 200, 8, 2)
    raw = zlib.decompress(parts[1][1])  # raises on a bad stream or checksum
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(200, 1 + 300 * 3)
    assert set(rows[:, 0]) == {2}  # the "Up" filter on every row


def test_large_smooth_image_round_trips_and_compresses():
    y, x = np.mgrid[0:1024, 0:1024]
    smooth = Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8))
    data = encode_png(smooth)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(smooth))
    assert len(data) < 64 * 1024  # 3 MB of pixels: the filter and deflate really compress


def test_other_modes_fall_back_to_pillow():
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), "L")
    assert not supports(gray) and supports(gray.convert("RGB"))
    decoded = Image.open(io.BytesIO(encode_image(gray, "png")))
    assert decoded.mode == "L" and np.array_equal(np.asarray(decoded), np.asarray(gray))
