"""Uploaded image bytes: formats by magic bytes, limits checked before decoding, corrupt files, modes, EXIF."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from localimg.errors import InvalidRequestError
from localimg.imaging.inputs import InputLimits, decode_image, fit_pixels


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(size=(64, 48), mode="RGB") -> Image.Image:
    image = Image.new("RGB", size)
    image.putdata([(x * 4 % 256, y * 5 % 256, 128) for y in range(size[1]) for x in range(size[0])])
    return image.convert(mode)


def translucent(size=(64, 48)) -> Image.Image:
    image = gradient(size, "RGBA")
    image.putalpha(Image.linear_gradient("L").resize(size))
    return image


def rejects(data: bytes, code: str, *fragments: str, param: str = "image", **kwargs) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        decode_image(data, param=param, **kwargs)
    error = info.value
    assert error.status == 400 and error.code == code and error.param == param, error.message
    assert error.message.startswith(f"Invalid file '{param}': ")
    for fragment in fragments:
        assert fragment in error.message, error.message
    return error


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (1-bit greyscale) and whose data is a few compressed rows."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_formats_are_sniffed_from_bytes_not_names(fmt):
    # Raw bytes carry no name or content type, as when the SDK uploads bytes (application/octet-stream).
    data = encoded(gradient(), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    image = decode_image(data, param="image[1]")
    assert image.mode == "RGB" and image.size == (64, 48)
    if fmt != "JPEG":
        assert image.tobytes() == gradient().tobytes()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(encoded(gradient(), "GIF"), id="gif"),
        pytest.param(encoded(gradient(), "BMP"), id="bmp"),
        pytest.param(encoded(gradient(), "TIFF"), id="tiff"),
        pytest.param(b"%PDF-1.7\n...", id="pdf"),
        pytest.param(b"just some text that is not an image", id="text"),
    ],
)
def test_other_formats_are_unsupported(data):
    rejects(data, "unsupported_file_mimetype", "'image/jpeg', 'image/png', and 'image/webp'", param="image[0]")


def test_empty_file():
    rejects(b"", "invalid_image_file", "empty")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_corrupt_bytes_after_a_valid_signature(fmt):
    data = encoded(gradient(), fmt)
    garbage = data[:16] + bytes(range(256)) * 4
    error = rejects(garbage, "invalid_image_file")
    assert "BytesIO" not in error.message and " at 0x" not in error.message  # nothing of the server's objects


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_file(fmt):
    data = encoded(gradient((256, 256)), fmt)
    rejects(data[: len(data) // 2], "invalid_image_file")


def test_decompression_bomb_is_refused_from_the_header():
    # 10^10 pixels claimed by a ~100-byte file: PIL itself calls this a bomb (above 2 x its MAX_IMAGE_PIXELS).
    bomb = png_claiming(100_000, 100_000)
    assert len(bomb) < 200
    before = Image.MAX_IMAGE_PIXELS
    start = time.perf_counter()
    error = rejects(bomb, "image_too_large")
    assert time.perf_counter() - start < 1.0
    assert before == Image.MAX_IMAGE_PIXELS  # the global is never touched
    # The server's limit, as for any image too large, not Pillow's own limit and wording.
    assert error.message == (
        "Invalid file 'image': the image has 10000000000 pixels; images may have at most 40000000 pixels and "
        "16384 pixels per side."
    )


def test_above_our_pixel_limit_but_below_pils():
    # 8000 x 8000 = 64 MP: below PIL's own bomb threshold, above our 40 MP; still refused before decoding.
    start = time.perf_counter()
    rejects(png_claiming(8000, 8000), "image_too_large", "8000x8000", "40000000 pixels")
    assert time.perf_counter() - start < 1.0


def webp_claiming(width: int, height: int) -> bytes:
    data = bytearray(encoded(gradient((32, 32)), "WEBP", lossless=True))
    assert data[12:16] == b"VP8L" and data[20] == 0x2F
    # VP8L header after the signature byte: 14 bits width - 1, 14 bits height - 1, then alpha and version bits.
    rest = struct.unpack_from("<I", data, 21)[0] >> 28
    struct.pack_into("<I", data, 21, (width - 1) | (height - 1) << 14 | rest << 28)
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(encoded(gradient((32, 32)), "JPEG"))
    frame = data.index(b"\xff\xc0")  # baseline start-of-frame: length, precision, height, width
    struct.pack_into(">HH", data, frame + 5, height, width)
    return bytes(data)


@pytest.mark.parametrize("claiming", [png_claiming, webp_claiming, jpeg_claiming])
def test_huge_headers_of_every_format_are_refused_before_decoding(claiming):
    start = time.perf_counter()
    rejects(claiming(12_000, 12_000), "image_too_large", "12000x12000")
    assert time.perf_counter() - start < 1.0


def test_too_long_a_side():
    rejects(png_claiming(20_000, 100), "image_too_large", "20000x100", "16384 pixels per side")


def test_too_small():
    rejects(encoded(gradient((8, 64)), "PNG"), "image_too_small", "8x64", "at least 16 pixels")


def test_too_many_bytes():
    data = encoded(gradient(), "PNG")
    rejects(data, "image_file_too_large", f"{len(data)} bytes", limits=InputLimits(max_bytes=len(data) - 1))
    assert decode_image(data, param="image", limits=InputLimits(max_bytes=len(data))).size == (64, 48)


def test_limits_are_configurable():
    rejects(encoded(gradient(), "PNG"), "image_too_large", limits=InputLimits(max_pixels=64 * 48 - 1))
    rejects(encoded(gradient(), "PNG"), "image_too_small", limits=InputLimits(min_side=49))


@pytest.mark.parametrize(
    "source, fmt, expected",
    [
        (translucent(), "PNG", "RGBA"),
        (translucent(), "WEBP", "RGBA"),
        (gradient(mode="RGBA"), "PNG", "RGBA"),  # an alpha channel, even a fully opaque one
        (gradient(mode="LA"), "PNG", "RGBA"),
        (gradient(mode="L"), "PNG", "RGB"),
        (gradient(mode="1"), "PNG", "RGB"),
        (gradient(mode="CMYK"), "JPEG", "RGB"),
        (gradient(mode="P"), "PNG", "RGB"),
    ],
)
def test_mode_is_rgba_exactly_when_there_is_alpha(source, fmt, expected):
    assert decode_image(encoded(source, fmt), param="image").mode == expected


def test_alpha_values_survive():
    source = translucent()
    image = decode_image(encoded(source, "PNG"), param="image")
    assert image.tobytes() == source.tobytes()


def test_palette_with_a_transparent_entry_is_rgba():
    source = Image.new("P", (32, 32), 0)
    source.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    source.paste(1, (0, 0, 16, 32))
    image = decode_image(encoded(source, "PNG", transparency=1), param="image")
    assert image.mode == "RGBA"
    assert image.getpixel((0, 0))[3] == 0 and image.getpixel((31, 0)) == (255, 0, 0, 255)


def test_rgb_with_a_transparent_colour_is_rgba():
    source = Image.new("RGB", (32, 32), (10, 20, 30))
    source.paste((1, 2, 3), (0, 0, 8, 8))
    image = decode_image(encoded(source, "PNG", transparency=(1, 2, 3)), param="image")
    assert image.mode == "RGBA" and image.getpixel((0, 0))[3] == 0 and image.getpixel((20, 20))[3] == 255


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    source = Image.new("I;16", (32, 32), 0x8000)
    image = decode_image(encoded(source, "PNG"), param="image")
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (128, 128, 128)


def test_sixteen_bit_greyscale_with_a_transparent_value_keeps_its_transparency():
    values = np.full((32, 32), 0x8000, dtype=np.uint16)
    values[:, :16] = 0x1234
    source = Image.fromarray(values)  # mode I;16
    image = decode_image(encoded(source, "PNG", transparency=0x1234), param="image")
    assert image.mode == "RGBA" and image.getpixel((0, 0))[3] == 0 and image.getpixel((20, 0)) == (128,) * 3 + (255,)


def wide_gamut_profile() -> bytes:
    """A minimal ICC v2 matrix/TRC RGB profile with Display P3's primaries (D50-adapted) and gamma 2.2."""

    def fixed(*values: float) -> bytes:
        return b"".join(struct.pack(">i", round(v * 65536)) for v in values)

    xyz = lambda x, y, z: b"XYZ \0\0\0\0" + fixed(x, y, z)  # noqa: E731
    gamma = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(2.2 * 256)) + b"\0\0"
    name = b"P3-like"
    description = b"desc\0\0\0\0" + struct.pack(">I", len(name) + 1) + name + b"\0" * 80
    tags = {b"desc": description, b"wtpt": xyz(0.9642, 1.0, 0.8249), b"rXYZ": xyz(0.5151, 0.2412, -0.0011),
            b"gXYZ": xyz(0.2920, 0.6922, 0.0419), b"bXYZ": xyz(0.1571, 0.0666, 0.7841),
            b"rTRC": gamma, b"gTRC": gamma, b"bTRC": gamma}  # fmt: skip
    offset, table, body = 128 + 4 + 12 * len(tags), b"", b""
    for signature, data in tags.items():
        data += b"\0" * (-len(data) % 4)
        table, body = table + signature + struct.pack(">II", offset + len(body), len(data)), body + data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"lcms" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp"
              + b"\0" * 28 + fixed(0.9642, 1.0, 0.8249) + b"\0" * 48)  # fmt: skip
    return header + struct.pack(">I", len(tags)) + table + body


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_a_wide_gamut_photo_is_converted_to_srgb_through_its_profile(fmt):
    # A green as a Display P3 phone stores it; a colour-managed viewer shows it as about sRGB (0, 185, 77).
    source = Image.new("RGB", (32, 32), (60, 180, 90))
    image = decode_image(encoded(source, fmt, icc_profile=wide_gamut_profile(), quality=100), param="image")
    red, green, blue = image.getpixel((16, 16))
    assert red < 20 and abs(green - 185) <= 3 and abs(blue - 77) <= 4


def test_srgb_tagged_and_unusable_profiles_keep_the_exact_values(monkeypatch: pytest.MonkeyPatch):
    def converted(*args: object, **kwargs: object) -> None:
        raise AssertionError("an sRGB-tagged or unreadable profile went through a conversion")

    monkeypatch.setattr(ImageCms, "profileToProfile", converted)
    source = gradient()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for icc in (srgb, b"not a profile"):
        assert decode_image(encoded(source, "PNG", icc_profile=icc), param="image").tobytes() == source.tobytes()


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "PNG"])
def test_exif_orientation_is_applied(fmt):
    # Stored 64 wide x 32 high with the left half red; orientation 6 means "rotate 90 degrees clockwise to view".
    stored = Image.new("RGB", (64, 32), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    image = decode_image(encoded(stored, fmt, exif=exif.tobytes()), param="image")
    assert image.size == (32, 64)
    top, bottom = image.getpixel((16, 8)), image.getpixel((16, 56))
    assert top[0] > 200 and top[2] < 50, top  # the stored left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 50, bottom


def test_animation_uses_the_first_frame():
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    image = decode_image(buffer.getvalue(), param="image")
    assert image.getpixel((5, 5))[:3] == (255, 0, 0)


def test_fit_pixels_scales_down_keeping_the_aspect_and_leaves_smaller_images_alone():
    wide = Image.new("RGBA", (4000, 1000), (200, 30, 30, 128))
    fitted = fit_pixels(wide, 1_000_000)
    assert fitted.size == (2000, 500) and fitted.mode == "RGBA"
    red, green, blue, alpha = fitted.getpixel((1000, 250))
    assert alpha == 128 and abs(red - 200) <= 1 and abs(green - 30) <= 1 and abs(blue - 30) <= 1  # premultiplied
    small = Image.new("RGB", (640, 480))
    assert fit_pixels(small, 1_000_000) is small
