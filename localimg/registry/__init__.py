"""The model catalogue: `models.toml` -> validated, frozen `ModelSpec`s (the file format is in catalogue.py and
README.md). `values` holds the value types, `optimize` the speed-options table."""

from localimg.registry.catalogue import (
    FAMILY_DEFAULTS,
    MAX_INPUT_IMAGES,
    REFERENCE_VARIANTS,
    VARIANTS,
    MattingSpec,
    ModelSpec,
    Registry,
)
from localimg.registry.optimize import FAMILY_STEP_CACHES, OptimizeSettings
from localimg.registry.values import (
    DEVICE_KINDS,
    DTYPES,
    FAMILIES,
    QUALITY_LEVELS,
    Family,
    ImageSize,
    ModelSource,
    QualityPreset,
    SizeLimits,
)

__all__ = [
    "DEVICE_KINDS",
    "DTYPES",
    "FAMILIES",
    "FAMILY_DEFAULTS",
    "FAMILY_STEP_CACHES",
    "MAX_INPUT_IMAGES",
    "QUALITY_LEVELS",
    "REFERENCE_VARIANTS",
    "VARIANTS",
    "Family",
    "ImageSize",
    "MattingSpec",
    "ModelSource",
    "ModelSpec",
    "OptimizeSettings",
    "QualityPreset",
    "Registry",
    "SizeLimits",
]
