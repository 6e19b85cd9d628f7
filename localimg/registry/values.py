"""The value types of models.toml (sizes, limits, presets, weight sources) and the checks its parser shares."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from localimg.errors import RegistryError

Family = Literal["flux", "sd15", "sdxl", "sd3"]
FAMILIES: tuple[Family, ...] = ("flux", "sd15", "sdxl", "sd3")
QUALITY_LEVELS = ("low", "medium", "high")  # every model has these (the family's defaults fill the gaps)
# gpt-image-2.5's levels above "high": served only by models whose models.toml defines them.
EXTRA_QUALITY_LEVELS = ("xhigh", "max")
DEVICE_KINDS = ("cuda", "mps", "cpu")
DTYPES = ("float32", "float16", "bfloat16")
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


@dataclass(frozen=True, order=True)
class ImageSize:
    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> ImageSize | None:
        """`"1024x768"` -> ImageSize(1024, 768); None when the text is not `WIDTHxHEIGHT`."""
        match = _SIZE.match(text)
        return cls(int(match[1]), int(match[2])) if match else None

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class SizeLimits:
    min_side: int = 256
    max_side: int = 2048
    max_pixels: int = 2048 * 2048
    multiple_of: int = 16

    def fits(self, size: ImageSize) -> bool:
        """Whether the sides and pixel count of `size` are within the limits (divisibility aside)."""
        sides = (size.width, size.height)
        return self.min_side <= min(sides) and max(sides) <= self.max_side and size.pixels <= self.max_pixels

    def divides(self, size: ImageSize) -> bool:
        return size.width % self.multiple_of == 0 and size.height % self.multiple_of == 0

    def admits(self, size: ImageSize) -> bool:
        return self.fits(size) and self.divides(size)


@dataclass(frozen=True)
class QualityPreset:
    steps: int
    guidance: float
    max_sequence_length: int | None = None


@dataclass(frozen=True)
class ModelSource:
    """Where the weights are. Exactly one of `path`, `repo`, `file` is set."""

    path: Path | None = None
    repo: str | None = None
    revision: str = "main"
    file: Path | None = None
    config: str | None = None  # single-file only: a local diffusers folder or a cached repo id
    variant: str | None = None  # path/repo only: load the weights saved as this variant (fp16: *.fp16.safetensors)

    def describe(self) -> str:
        weights = f", {self.variant} weights" if self.variant else ""
        if self.path is not None:
            return f"local folder {self.path}{weights}"
        if self.repo is not None:
            return f"Hugging Face cache entry {self.repo}@{self.revision}{weights}"
        at = f"@{self.revision}" if self.revision != "main" else ""
        return f"single file {self.file} (config {self.config}{at})"


def resolve_path(text: str, base_dir: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


_TOML_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
               dict: "a table"}  # fmt: skip


def typed_value(table: Mapping[str, Any], key: str, kind: type, default: Any, ctx: str) -> Any:
    value = table.get(key, default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RegistryError(f"{ctx}: {key} must be {_TOML_TYPES.get(kind, kind.__name__)}, got {value!r}")
    return value


def reject_unknown(table: Mapping[str, Any], allowed: set[str], where: str, ctx: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RegistryError(
            f"{where}: {ctx}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(sorted(allowed))}"
        )
