"""Real transparency for `background=transparent`: the matting stage and the key-colour generation helpers.

Two `Matting` implementations share one interface: a learned background-removal model
(`localimg.backends.matting.LearnedMatting`, when its weights are installed) and `KeyColourMatting` below, which
needs no weights. For the latter the service generates the subject against a flat key colour: it inpaints
`subject_region()` of a `key_canvas()` with `transparency_prompt()`, so everything outside the region is exactly
the key colour whatever the model does, and the matting then turns key colour into transparency.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
GREEN: RGB = (0, 255, 0)
_KEY_NAMES: dict[RGB, str] = {(0, 255, 0): "green", (0, 0, 255): "blue", (255, 0, 255): "magenta"}


class Matting(Protocol):
    def matte(self, image: Image.Image) -> Image.Image:
        """`image` (RGB) with an alpha channel separating subject from background: RGBA, same size."""
        ...


class KeyColourMatting:
    """Alpha from the distance of each pixel to a flat key colour, with soft edges and no key-colour fringe.

    1. A ramp on the Euclidean RGB distance d to the key: alpha 0 at d <= `low`, 1 at d >= `high`. `low` = 40
       absorbs the noise and slight shading a generated "flat" background has; `high` = 160 is about a third
       of the largest possible distance (441): black (255), white and every grey (>= 208) and skin tones (~260) are
       all opaque, only greenish subject colours (forest green: 125) come out partly transparent. That is the
       inherent limit of keying; the learned matting has no such limit.
    2. Refinement of the edge band (pixels within `edge_radius` of the background, or on the ramp): an
       anti-aliased edge pixel is C = a F + (1 - a) K, and the ramp alone misreads it (a red edge pixel at
       a = 0.5 is already beyond `high`). So the foreground colour F is spread outwards from the sure
       foreground, and where C lies on the segment K -> F (residual within `low`) a is its position along it,
       with the same `low` noise floor at both ends.
    3. Colour decontamination: on the segment, the key's share of the pixel is replaced by the spread F;
       other semi-transparent pixels are un-mixed, F = (C - (1 - a) K) / a, clipped, then despilled: the key's
       dominant channel may not exceed the largest other channel.
    Fully transparent pixels get RGB 0, so no key colour survives anywhere in the output.
    """

    def __init__(self, key: RGB = GREEN, *, low: float = 40.0, high: float = 160.0, edge_radius: int = 3) -> None:
        if not 0 <= low < high:
            raise ValueError(f"need 0 <= low < high, got low={low}, high={high}")
        self.key = key
        self.low = low
        self.high = high
        self.edge_radius = edge_radius

    def matte(self, image: Image.Image) -> Image.Image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
        key = np.asarray(self.key, dtype=np.float32)
        diff = rgb - key
        distance = np.sqrt((diff * diff).sum(axis=-1))
        alpha = np.clip((distance - self.low) / (self.high - self.low), 0.0, 1.0)

        background = distance <= self.low
        band = (_dilate(background, self.edge_radius) & ~background) | ((alpha > 0) & (alpha < 1))
        foreground, known = _spread(rgb, ~background & ~band, band, steps=self.edge_radius + 1)
        span = foreground - key
        length = np.maximum(np.sqrt((span * span).sum(axis=-1)), 1.0)
        along = (diff * span).sum(axis=-1) / length  # distance from K travelled towards F
        residual = np.sqrt(np.maximum((diff * diff).sum(axis=-1) - along * along, 0.0))
        on_segment = band & known & (length >= self.high) & (residual <= self.low)
        # The same noise floor at both ends: within `low` of K is background, within `low` of F is foreground.
        projected = np.clip((along - self.low) / np.maximum(length - 2 * self.low, 1.0), 0.0, 1.0)
        alpha = np.where(on_segment, projected, alpha)

        colour = rgb.copy()
        soft = (alpha > 0) & (alpha < 1)
        a = alpha[soft][:, None]
        colour[soft] = np.clip((rgb[soft] - (1.0 - a) * key) / a, 0.0, 255.0)
        _despill(colour, soft, self.key)
        # On the segment, replace the key's share (1 - t) of the pixel by the spread F: C + (1 - t)(F - K). Unlike
        # un-mixing it does not divide noise by a small a, and it also cleans the pixels the floor made opaque.
        mixed = on_segment & (alpha > 0)
        share = 1.0 - np.clip(along / length, 0.0, 1.0)
        colour[mixed] = np.clip(rgb[mixed] + share[mixed][:, None] * span[mixed], 0.0, 255.0)
        alpha8 = np.rint(alpha * 255.0)
        colour[alpha8 == 0] = 0.0
        return Image.fromarray(np.rint(np.dstack([colour, alpha8])).astype(np.uint8))


WHITE: RGB = (255, 255, 255)


def flatten(image: Image.Image, background: RGB = WHITE) -> Image.Image:
    """RGB for a model that sees no alpha: transparent and partly transparent pixels composited on `background`."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    canvas = Image.new("RGB", image.size, background)
    canvas.paste(image, mask=image.getchannel("A"))
    return canvas


# The share of fully transparent pixels that makes an image a cut-out. Rounded corners of a screenshot or an
# icon (a 20-pixel radius on 1024x1024: 0.03 %) stay far below; a logo or sticker's background is far above.
CUTOUT_SHARE = 0.05


def is_cutout(image: Image.Image) -> bool:
    """Whether `image` is a subject cut out of its background (a logo, a sticker): at least `CUTOUT_SHARE` of its
    pixels fully transparent."""
    if image.mode != "RGBA":
        return False
    transparent = image.getchannel("A").histogram()[0]
    return transparent >= CUTOUT_SHARE * image.width * image.height


def key_canvas(size: tuple[int, int], key: RGB = GREEN) -> Image.Image:
    """A flat RGB canvas of the key colour, the starting image for a transparent generation."""
    return Image.new("RGB", size, key)


def subject_region(size: tuple[int, int]) -> Image.Image:
    """ "L", 255 inside a centred ellipse with a 1/16 margin on every side, 0 outside: where the subject may be
    painted. Inpainting only there keeps the frame's border exactly the key colour."""
    width, height = size
    mx, my = round(width / 16), round(height / 16)
    region = Image.new("L", size, 0)
    ImageDraw.Draw(region).ellipse((mx, my, width - 1 - mx, height - 1 - my), fill=255)
    return region


def transparency_prompt(prompt: str, key: RGB = GREEN) -> str:
    """An instruction to paint the subject isolated on the flat key colour, then `prompt`. The instruction comes
    first because text encoders truncate the end of a long prompt (CLIP at 77 tokens): what is cut is then the
    tail of the client's words, not what the keying depends on."""
    hex_code = "#{:02X}{:02X}{:02X}".format(*key)
    name = _KEY_NAMES.get(key)
    colour = f"pure {name} ({hex_code})" if name else f"solid {hex_code}"
    return f"Isolated subject, centred, on a flat, uniform, {colour} background, no shadows, no reflections: {prompt}"


# Phrases that ask for a transparent result, matched case-insensitively on word boundaries. Kept conservative:
# `background=auto` turns transparent only on an explicit request, so "a transparent glass vase", "paper
# cutout style", "a laptop covered in stickers" or "no background noise" stay opaque.
_TRANSPARENCY_PHRASES = re.compile(
    r"""
      \btransparent\s+(?:background|backdrop|bg|png|webp)\b
    | \b(?:background|backdrop|bg)\s+(?:(?:is|should\s+be|must\s+be)\s+)?transparent\b
    | \bwith\s+transparency\b
    | \b(?:no|without(?:\s+a|\s+any)?)\s+background\b(?!\s+(?:noise|music|sounds?|details?|people|characters))
    | \b(?:background[\s-]removed|remove(?:d)?\s+(?:the\s+)?background)\b
    | (?<!paper\s)\bcut-?out\b(?!\s+style)
    | \bsticker\b
    | \b(?:png|webp)\s+with\s+(?:an?\s+)?(?:alpha|transparency)\b
    | \balpha\s+channel\b
    """,
    re.IGNORECASE | re.VERBOSE,
)


def asks_for_transparency(prompt: str) -> bool:
    """Whether `background=auto` should resolve to transparent for this prompt (explicit phrases only)."""
    return _TRANSPARENCY_PHRASES.search(prompt) is not None


def _neighbours(array: np.ndarray) -> Iterator[np.ndarray]:
    """The 8 neighbours of every pixel as shifted views (outside the image: zero / False)."""
    height, width = array.shape[:2]
    padded = np.pad(array, [(1, 1), (1, 1)] + [(0, 0)] * (array.ndim - 2))
    for dy in range(3):
        for dx in range(3):
            if (dy, dx) != (1, 1):
                yield padded[dy : dy + height, dx : dx + width]


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    for _ in range(radius):
        grown = mask.copy()
        for shifted in _neighbours(mask):
            grown |= shifted
        mask = grown
    return mask


def _spread(rgb: np.ndarray, sure: np.ndarray, target: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Colours of `sure` pixels carried into `target` pixels up to `steps` pixels away (neighbour averages);
    returns the colour estimate and where it is known."""
    estimate = np.where(sure[..., None], rgb, 0.0).astype(np.float32)
    known = sure.copy()
    for _ in range(steps):
        total = np.zeros_like(estimate)
        count = np.zeros(known.shape, dtype=np.float32)
        for colours, seen in zip(_neighbours(estimate), _neighbours(known), strict=True):
            total += colours  # unknown pixels hold 0, so they add nothing
            count += seen
        fresh = target & ~known & (count > 0)
        if not fresh.any():
            break
        estimate[fresh] = total[fresh] / count[fresh][:, None]
        known |= fresh
    return estimate, known


def _despill(colour: np.ndarray, where: np.ndarray, key: RGB) -> None:
    """Limit the key's dominant channel to the largest other channel in `where` (in place). Keys without one
    clearly dominant channel (e.g. magenta) are left alone: limiting two channels would grey out real colours."""
    order = sorted(range(3), key=lambda i: key[i], reverse=True)
    dominant, others = order[0], order[1:]
    if key[dominant] - key[others[0]] < 128:
        return
    cap = colour[where][:, others].max(axis=-1)
    colour[where, dominant] = np.minimum(colour[where, dominant], cap)
