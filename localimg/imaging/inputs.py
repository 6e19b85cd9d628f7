"""Uploaded image bytes -> a checked, upright sRGB PIL image ("RGB", or "RGBA" when the file carries any alpha).

The format is sniffed from magic bytes, never from the declared content type: the SDKs send raw `bytes` uploads
as `application/octet-stream`. Dimensions are read from the header and checked before any pixel is decoded, so
a small file that claims a huge canvas (a decompression bomb) costs nothing. Every failure is a 400.

Error codes: `unsupported_file_mimetype` is OpenAI's code for a file that is not PNG/JPEG/WebP; OpenAI publishes
no codes for the others, so we use `invalid_image_file` (seen in the wild for undecodable uploads),
`image_file_too_large` (too many bytes), `image_too_large` (too many pixels or too long a side) and
`image_too_small`.
"""

from __future__ import annotations

import io
import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from localimg.errors import InvalidRequestError

# (format PIL knows it by, the MIME type a client would recognise)
_PNG = ("PNG", "image/png")
_JPEG = ("JPEG", "image/jpeg")
_WEBP = ("WEBP", "image/webp")
_SUPPORTED = "Supported file formats are 'image/jpeg', 'image/png', and 'image/webp'."
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@dataclass(frozen=True)
class InputLimits:
    """Bounds an uploaded image must meet before it is decoded.

    50 MB is OpenAI's per-image limit for GPT image models. 40 megapixels covers 8K UHD (33 MP) and the default
    output of phone cameras while keeping one decoded RGBA image under 160 MB; models work at ~1-4 MP, so more
    pixels only cost memory. 16384 is WebP's own maximum side (+1) and far beyond any model; 16 px is the
    smallest image that still survives a VAE's 8x downsampling as more than a couple of latent pixels.
    """

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 16
    max_side: int = 16384


def decode_image(data: bytes, *, param: str, limits: InputLimits = InputLimits()) -> Image.Image:  # noqa: B008
    """Decode one uploaded image (PNG, JPEG or WebP); the first frame of an animation; EXIF orientation applied.

    Returns mode "RGBA" when the file has any alpha information (an alpha channel or a transparent palette
    entry or colour), "RGB" otherwise. Raises InvalidRequestError (param=`param`) for anything else.
    """
    if not data:
        raise _invalid(param, "the file is empty.", "invalid_image_file")
    if len(data) > limits.max_bytes:
        raise _invalid(
            param,
            f"the file is {len(data)} bytes; images must be at most {limits.max_bytes} bytes "
            f"({limits.max_bytes // (1024 * 1024)} MB).",
            "image_file_too_large",
        )
    kind = _sniff(data)
    if kind is None:
        raise _invalid(param, f"unsupported file format. {_SUPPORTED}", "unsupported_file_mimetype")
    pil_format, mime = kind
    try:
        # warnings: PIL warns above its own MAX_IMAGE_PIXELS and raises above twice that; our bound is lower.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[pil_format])
    except Image.DecompressionBombError as exc:
        raise _bomb(exc, param, limits) from exc
    except UnidentifiedImageError as exc:  # its message names an in-memory buffer, nothing the client sent
        raise _invalid(param, f"the file is not a valid {mime} image.", "invalid_image_file") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _invalid(param, f"the file is not a valid {mime} image ({exc}).", "invalid_image_file") from exc
    _check_dimensions(image.size, param, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()  # the first frame; multi-frame files are not iterated
    except Image.DecompressionBombError as exc:
        raise _bomb(exc, param, limits) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
        # truncated or corrupt pixel data ("image file is truncated", "broken data stream", ...)
        raise _invalid(param, f"the {mime} file is truncated or corrupt ({exc}).", "invalid_image_file") from exc
    icc = image.info.get("icc_profile")
    return _in_srgb(_upright(image), icc)


def fit_pixels(image: Image.Image, max_pixels: int) -> Image.Image:
    """`image` scaled down, its aspect kept, to at most `max_pixels`; `image` itself when it is no larger."""
    pixels = image.width * image.height
    if pixels <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / pixels)
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)  # RGBA is resized premultiplied


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # malformed EXIF raises many kinds of error; the pixels are fine, so keep them as stored
        return image


def _sniff(data: bytes) -> tuple[str, str] | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _PNG
    if data.startswith(b"\xff\xd8\xff"):
        return _JPEG
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _WEBP
    return None


def _check_dimensions(size: tuple[int, int], param: str, limits: InputLimits) -> None:
    width, height = size
    if width * height > limits.max_pixels or max(width, height) > limits.max_side:
        raise _too_large(f"the image is {width}x{height}", param, limits)
    if min(width, height) < limits.min_side:
        raise _invalid(
            param,
            f"the image is {width}x{height}; both sides must be at least {limits.min_side} pixels.",
            "image_too_small",
        )


def _in_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """RGB(A) pixels in sRGB, the space models were trained in and untagged output is shown in.

    A photo from a Display P3 phone or an Adobe RGB camera, or a CMYK print file, is converted through its
    embedded profile; read as sRGB its colours would shift (and the kept part of a masked edit with them).
    sRGB-tagged and untagged files keep their exact values, and a profile that cannot be used leaves the pixels
    as stored rather than failing the upload.
    """
    profile = _profile(icc)
    if profile is not None and image.mode == "CMYK":
        converted = _convert(image, profile, "RGB")
        if converted is not None:
            return converted
    image = _rgb_or_rgba(image)
    if profile is None:
        return image
    return _convert(image, profile, image.mode) or image


def _profile(icc: bytes | None) -> ImageCms.ImageCmsProfile | None:
    """The embedded profile when it is one worth converting from (not sRGB itself, not unreadable)."""
    if not icc:
        return None
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        description = ImageCms.getProfileDescription(profile)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None
    return None if "srgb" in description.lower() else profile


def _convert(image: Image.Image, profile: ImageCms.ImageCmsProfile, mode: str) -> Image.Image | None:
    try:
        converted = ImageCms.profileToProfile(image, profile, _SRGB, outputMode=mode)
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):  # e.g. a grey profile on colour pixels
        return None
    converted.info.pop("icc_profile", None)
    return converted


def _rgb_or_rgba(image: Image.Image) -> Image.Image:
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        # 16-bit greyscale PNG: convert("RGB") would clip every value above 255 to white. A tRNS entry names one
        # 16-bit grey value as transparent; it becomes an alpha channel before the values are shifted.
        values = np.asarray(image, dtype=np.uint32)
        grey = Image.fromarray((values >> 8).astype(np.uint8), mode="L")
        if "transparency" not in image.info:
            image = grey
        else:
            alpha = np.where(values == image.info["transparency"], 0, 255).astype(np.uint8)
            image = Image.merge("LA", (grey, Image.fromarray(alpha, mode="L")))
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    target = "RGBA" if has_alpha else "RGB"
    return image if image.mode == target else image.convert(target)


def _bomb(exc: Image.DecompressionBombError, param: str, limits: InputLimits) -> InvalidRequestError:
    """Pillow refuses a canvas far above its own limit before its size can be read: the same answer as
    `_check_dimensions`, with the pixel count Pillow's message gives (its limit is not ours)."""
    claimed = re.search(r"\((\d+) pixels\)", str(exc))
    return _too_large(f"the image has {claimed[1]} pixels" if claimed else "the image is too large", param, limits)


def _too_large(what: str, param: str, limits: InputLimits) -> InvalidRequestError:
    return _invalid(
        param,
        f"{what}; images may have at most {limits.max_pixels} pixels and {limits.max_side} pixels per side.",
        "image_too_large",
    )


def _invalid(param: str, detail: str, code: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid file '{param}': {detail}", param=param, code=code)
