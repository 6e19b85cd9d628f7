"""The model catalogue: `models.toml` -> validated, frozen `ModelSpec`s.

File format (every key is documented in README.md):

    default_model = "flux-schnell"

    [models.flux-schnell]
    family = "flux"                                   # flux | sd15 | sdxl | sd3
    source = { repo = "black-forest-labs/FLUX.1-schnell", revision = "main" }
    #        { path = "/models/flux-schnell" }          a local diffusers folder
    #        { path = "/models/sdxl", variant = "fp16" } (path or repo) load the *.fp16.safetensors weights
    #        { file = "x.safetensors", config = "DIR" } a single-file checkpoint + a config folder or repo id
    #                                                   (+ revision = "..." for the repo)
    aliases = ["gpt-image-2", "dall-e-3"]
    default_size = "1024x1024"
    max_batch = 4                                     # images per pipeline call
    allow_pickle = false                              # .bin/.ckpt weights refused unless true
    dtype = { cuda = "bfloat16", mps = "float16", cpu = "float32" }   # optional overrides
    limits = { min_side = 256, max_side = 2048, max_pixels = 4194304, multiple_of = 16 }
    variant = "base"                                  # flux: "kontext" (FLUX.1 Kontext) or "fill" (FLUX.1 Fill)
    max_input_images = 1                              # > 1 only for variants taking references (kontext)
    [models.flux-schnell.quality]
    auto = "medium"
    low = { steps = 2, guidance = 0.0 }
    medium = { steps = 4, guidance = 0.0 }
    high = { steps = 8, guidance = 0.0, max_sequence_length = 512 }
    xhigh = { steps = 12 }                            # optional xhigh / max (gpt-image-2.5): high's keys, more steps

Anything left out comes from the family's defaults below. Relative paths are relative to the file.

An optional top-level table declares the learned background-removal model for `background=transparent`
(without it, or without its weights, a key-colour matting that needs no weights is used):

    [matting]
    source = { path = "/models/rmbg-2.0" }            # or { repo = "briaai/RMBG-2.0", revision = "main" }
    trust_remote_code = false                         # BiRefNet/RMBG ship their own model code: opt in to run it
    input_size = 1024                                 # the square resolution the model was trained at
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from localimg.errors import RegistryError
from localimg.registry.optimize import OptimizeSettings, parse_optimize
from localimg.registry.values import (
    DEVICE_KINDS,
    DTYPES,
    EXTRA_QUALITY_LEVELS,
    FAMILIES,
    QUALITY_LEVELS,
    Family,
    ImageSize,
    ModelSource,
    QualityPreset,
    SizeLimits,
    reject_unknown,
    resolve_path,
    typed_value,
)

# Checkpoint variants a family's adapter knows, beyond the family's base model (see backends/flux.py).
VARIANTS: Mapping[Family, tuple[str, ...]] = {
    "flux": ("base", "kontext", "fill"),
    "sd15": ("base",),
    "sdxl": ("base",),
    "sd3": ("base",),
}
# Variants that condition on reference images, so may take more than one input image per edit.
REFERENCE_VARIANTS = frozenset({"kontext"})
MAX_INPUT_IMAGES = 16  # OpenAI's limit for `image[]` on /v1/images/edits
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# diffusers' `variant` of saved weights: the word between a weight file's name and suffix (model.fp16.safetensors).
_WEIGHTS_VARIANT = re.compile(r"^\w+$", re.ASCII)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: Family
    source: ModelSource
    quality: Mapping[str, QualityPreset]
    auto_quality: str
    default_size: ImageSize
    limits: SizeLimits
    aliases: tuple[str, ...] = ()
    description: str = ""
    max_batch: int = 4
    allow_pickle: bool = False
    dtype: Mapping[str, str] = field(default_factory=dict)
    variant: str = "base"  # which checkpoint of the family: "base", or for flux "kontext" / "fill"
    max_input_images: int = 1  # images an edit may send (the first is edited, the rest are references)
    # Edits sending more images than this model takes are run by that model (one declared with references).
    references_model: str | None = None
    optimize: OptimizeSettings = field(default_factory=lambda: OptimizeSettings())


@dataclass(frozen=True)
class MattingSpec:
    """The learned background-removal model (`[matting]`): a transformers AutoModelForImageSegmentation folder.

    `trust_remote_code` must be set explicitly because such models (BiRefNet, RMBG-2.0) ship Python code that
    transformers would execute on load."""

    source: ModelSource
    trust_remote_code: bool = False
    input_size: int = 1024


@dataclass(frozen=True)
class _FamilyDefaults:
    default_size: ImageSize
    limits: SizeLimits
    quality: Mapping[str, QualityPreset]


# Defaults per family. Steps/guidance follow each model card's recommended recipe at "medium".
FAMILY_DEFAULTS: Mapping[Family, _FamilyDefaults] = {
    "flux": _FamilyDefaults(
        ImageSize(1024, 1024),
        SizeLimits(min_side=256, max_side=2048, max_pixels=2048 * 2048, multiple_of=16),
        {
            "low": QualityPreset(steps=14, guidance=3.5),
            "medium": QualityPreset(steps=28, guidance=3.5),
            "high": QualityPreset(steps=50, guidance=3.5),
        },
    ),
    "sd3": _FamilyDefaults(
        ImageSize(1024, 1024),
        SizeLimits(min_side=256, max_side=2048, max_pixels=2048 * 2048, multiple_of=16),
        {
            "low": QualityPreset(steps=20, guidance=4.5),
            "medium": QualityPreset(steps=28, guidance=4.5),
            "high": QualityPreset(steps=40, guidance=4.5),
        },
    ),
    "sdxl": _FamilyDefaults(
        ImageSize(1024, 1024),
        SizeLimits(min_side=256, max_side=2048, max_pixels=2048 * 2048, multiple_of=8),
        {
            "low": QualityPreset(steps=15, guidance=5.0),
            "medium": QualityPreset(steps=30, guidance=5.0),
            "high": QualityPreset(steps=50, guidance=5.0),
        },
    ),
    "sd15": _FamilyDefaults(
        ImageSize(512, 512),
        SizeLimits(min_side=256, max_side=1536, max_pixels=1536 * 1536, multiple_of=8),
        {
            "low": QualityPreset(steps=15, guidance=7.5),
            "medium": QualityPreset(steps=25, guidance=7.5),
            "high": QualityPreset(steps=50, guidance=7.5),
        },
    ),
}


class Registry:
    """The models a server may serve, looked up by name or alias."""

    def __init__(
        self,
        models: Mapping[str, ModelSpec],
        default_model: str,
        path: Path | None = None,
        matting: MattingSpec | None = None,
    ) -> None:
        self._models = dict(models)
        self._aliases = {alias: spec.name for spec in models.values() for alias in spec.aliases}
        self.default_model = self._aliases.get(default_model, default_model)  # the model's name, never an alias
        self.path = path
        self.matting = matting

    @classmethod
    def load(cls, path: Path) -> Registry:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise RegistryError(f"{path}: cannot read the model registry ({exc.strerror})") from exc
        try:
            # utf-8-sig: a byte-order mark (some Windows editors write one) is not TOML, and invisible in an editor.
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise RegistryError(f"{path}: line {line} is not UTF-8 text; save the file as UTF-8") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RegistryError(f"{path}: not valid TOML: {exc}") from exc
        return cls.from_dict(data, base_dir=path.parent, path=path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: Path, path: Path | None = None) -> Registry:
        where = str(path) if path else "models.toml"
        reject_unknown(data, {"default_model", "models", "matting"}, where, "top level")
        tables = data.get("models")
        if not isinstance(tables, dict) or not tables:
            raise RegistryError(f"{where}: needs at least one [models.NAME] table")
        models = {name: _parse_model(name, table, base_dir, where) for name, table in tables.items()}
        _check_aliases(models, where)
        _check_references(models, where)
        default_model = typed_value(data, "default_model", str, next(iter(models)), where)
        matting = _parse_matting(data["matting"], base_dir, where) if "matting" in data else None
        registry = cls(models, default_model, path, matting)
        if registry.resolve(default_model) is None:
            raise RegistryError(
                f"{where}: default_model = {default_model!r} names no [models.*] table or alias "
                f"(declared: {', '.join(registry.public_ids())})"
            )
        return registry

    def resolve(self, name: str) -> ModelSpec | None:
        """The model a request names (catalogue key or alias), or None."""
        return self._models.get(self._aliases.get(name, name))

    @property
    def default(self) -> ModelSpec:
        return self._models[self.default_model]

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def public_ids(self) -> list[str]:
        """Every id a client may send: model names, then aliases."""
        return [*self._models, *self._aliases]

    def restricted_to(self, names: list[str]) -> Registry:
        """A registry serving only `names` (the `--models` flag: model names or aliases); aliases of dropped
        models go too."""
        missing = [name for name in names if self.resolve(name) is None]
        if missing:
            raise RegistryError(
                f"--models: unknown model(s) {', '.join(missing)}; declared: {', '.join(self.public_ids())}"
            )
        names = list(dict.fromkeys(self._aliases.get(name, name) for name in names))
        kept = {name: self._models[name] for name in names}
        # A reference route to a model that is not served is dropped: such edits then get the usual 400.
        kept = {
            name: spec if spec.references_model in (None, *kept) else replace(spec, references_model=None)
            for name, spec in kept.items()
        }
        default = self.default_model if self.default_model in kept else names[0]
        return Registry(kept, default, self.path, self.matting)


def _parse_model(name: str, table: Any, base_dir: Path, where: str) -> ModelSpec:
    ctx = f"{where}: [models.{name}]"
    if not _NAME.match(name):
        raise RegistryError(f"{ctx}: model names may hold ASCII letters, digits, '.', '_', '-', ':' only")
    if not isinstance(table, dict):
        raise RegistryError(f"{ctx}: must be a table")
    allowed = {
        "family", "source", "aliases", "description", "default_size", "limits", "quality",
        "max_batch", "allow_pickle", "dtype", "variant", "max_input_images", "references_model", "optimize",
    }  # fmt: skip
    reject_unknown(table, allowed, where, f"[models.{name}]")
    family = table.get("family")
    if family not in FAMILIES:
        raise RegistryError(f"{ctx}: family = {family!r}; expected one of {', '.join(FAMILIES)}")
    defaults = FAMILY_DEFAULTS[family]
    if "source" not in table:
        raise RegistryError(f"{ctx}: missing key 'source' (a path, repo or file table)")
    source = _parse_source(table["source"], base_dir, ctx)
    aliases = typed_value(table, "aliases", list, [], ctx)
    for alias in aliases:
        if not isinstance(alias, str) or not _NAME.match(alias):
            raise RegistryError(f"{ctx}: aliases: {alias!r} is not a valid model id")
    size_text = typed_value(table, "default_size", str, str(defaults.default_size), ctx)
    default_size = ImageSize.parse(size_text)
    if default_size is None:
        raise RegistryError(f"{ctx}: default_size = {size_text!r}; expected WIDTHxHEIGHT")
    limits = _parse_limits(table.get("limits", {}), defaults.limits, ctx)
    if not limits.admits(default_size):
        raise RegistryError(f"{ctx}: default_size = {size_text!r} is outside the model's limits ({_describe(limits)})")
    quality, auto_quality = _parse_quality(table.get("quality", {}), defaults.quality, ctx)
    dtype = typed_value(table, "dtype", dict, {}, ctx)
    for device, value in dtype.items():
        if device not in DEVICE_KINDS or value not in DTYPES:
            raise RegistryError(
                f"{ctx}: dtype.{device} = {value!r}; keys are {', '.join(DEVICE_KINDS)}, values {', '.join(DTYPES)}"
            )
    max_batch = typed_value(table, "max_batch", int, 4, ctx)
    if max_batch < 1:
        raise RegistryError(f"{ctx}: max_batch must be >= 1")
    variant = typed_value(table, "variant", str, "base", ctx)
    if variant not in VARIANTS[family]:
        raise RegistryError(f"{ctx}: variant = {variant!r}; {family} models are one of {', '.join(VARIANTS[family])}")
    max_input_images = typed_value(table, "max_input_images", int, 1, ctx)
    if not 1 <= max_input_images <= MAX_INPUT_IMAGES:
        raise RegistryError(f"{ctx}: max_input_images must be an integer in 1..{MAX_INPUT_IMAGES}")
    if max_input_images > 1 and variant not in REFERENCE_VARIANTS:
        raise RegistryError(
            f"{ctx}: max_input_images = {max_input_images} needs a variant that takes reference images "
            f"({', '.join(sorted(REFERENCE_VARIANTS))}); variant is {variant!r}"
        )
    optimize = parse_optimize(table.get("optimize", {}), family, base_dir, ctx)
    for size in optimize.warmup_sizes or ():
        if not limits.admits(size):
            raise RegistryError(
                f"{ctx}: optimize.warmup_sizes: {size} is outside the model's limits ({_describe(limits)})"
            )
    return ModelSpec(
        name=name,
        family=family,
        source=source,
        quality=quality,
        auto_quality=auto_quality,
        default_size=default_size,
        limits=limits,
        aliases=tuple(aliases),
        description=typed_value(table, "description", str, "", ctx),
        max_batch=max_batch,
        allow_pickle=typed_value(table, "allow_pickle", bool, False, ctx),
        dtype=dtype,
        variant=variant,
        max_input_images=max_input_images,
        references_model=typed_value(table, "references_model", str, "", ctx) or None,
        optimize=optimize,
    )


def _parse_source(value: Any, base_dir: Path, ctx: str) -> ModelSource:
    if not isinstance(value, dict):
        raise RegistryError(f'{ctx}: source must be a table, e.g. source = {{ path = "/models/x" }}')
    kinds = [key for key in ("path", "repo", "file") if key in value]
    if len(kinds) != 1:
        raise RegistryError(f"{ctx}: source needs exactly one of 'path', 'repo', 'file' (got {sorted(value)})")
    kind = kinds[0]
    allowed = {
        "path": {"path", "variant"},
        "repo": {"repo", "revision", "variant"},
        "file": {"file", "config", "revision"},
    }[kind]
    reject_unknown(value, allowed, ctx.split(": ")[0], f"{ctx.split(': ')[1]} source")
    for key, item in value.items():
        if not isinstance(item, str) or not item:
            raise RegistryError(f"{ctx}: source.{key} must be a non-empty string")
    variant = value.get("variant")
    if variant is not None and not _WEIGHTS_VARIANT.match(variant):
        raise RegistryError(f"{ctx}: source.variant = {variant!r}; expected a variant name such as 'fp16'")
    if kind == "path":
        return ModelSource(path=resolve_path(value["path"], base_dir), variant=variant)
    if kind == "repo":
        if not _is_repo_id(value["repo"]):
            raise RegistryError(
                f"{ctx}: source.repo = {value['repo']!r}; expected 'owner/name' (letters, digits, '-', '_', '.')"
            )
        return ModelSource(repo=value["repo"], revision=value.get("revision", "main"), variant=variant)
    if "config" not in value:
        raise RegistryError(f"{ctx}: source.file needs source.config (a local diffusers folder or repo id)")
    config = value["config"]
    # A config is a repo id ("owner/name") read from the cache, or a folder (relative to the file, or ~/...).
    if not _is_repo_id(config) or (base_dir / config).exists():
        if "revision" in value:
            raise RegistryError(f"{ctx}: source.revision is the revision of a config repo id; config is a folder")
        config = str(resolve_path(config, base_dir))
    revision = value.get("revision", "main")
    return ModelSource(file=resolve_path(value["file"], base_dir), config=config, revision=revision)


def _is_repo_id(text: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return text.count("/") == 1


def _parse_matting(table: Any, base_dir: Path, where: str) -> MattingSpec:
    ctx = f"{where}: [matting]"
    if not isinstance(table, dict):
        raise RegistryError(f"{ctx}: must be a table")
    reject_unknown(table, {"source", "trust_remote_code", "input_size"}, where, "[matting]")
    if "source" not in table:
        raise RegistryError(f"{ctx}: missing key 'source' (a path or repo table)")
    source = _parse_source(table["source"], base_dir, ctx)
    if source.file is not None:
        raise RegistryError(f"{ctx}: source must be a path or repo (a transformers model folder), not a file")
    if source.variant is not None:
        raise RegistryError(f"{ctx}: source.variant is for diffusers models; a matting model loads its plain weights")
    input_size = typed_value(table, "input_size", int, 1024, ctx)
    if not 64 <= input_size <= 4096:
        raise RegistryError(f"{ctx}: input_size must be an integer in 64..4096")
    return MattingSpec(source, typed_value(table, "trust_remote_code", bool, False, ctx), input_size)


def _parse_limits(value: Any, defaults: SizeLimits, ctx: str) -> SizeLimits:
    if not isinstance(value, dict):
        raise RegistryError(f"{ctx}: limits must be a table")
    known = {"min_side", "max_side", "max_pixels", "multiple_of"}
    reject_unknown(value, known, ctx.split(": ")[0], f"{ctx.split(': ')[1]} limits")
    for key, item in value.items():
        if not isinstance(item, int) or isinstance(item, bool) or item < 1:
            raise RegistryError(f"{ctx}: limits.{key} must be a positive integer")
    limits = replace(defaults, **value)
    if limits.min_side > limits.max_side:
        raise RegistryError(f"{ctx}: limits.min_side = {limits.min_side} > limits.max_side = {limits.max_side}")
    smallest_side = -(-limits.min_side // limits.multiple_of) * limits.multiple_of
    if smallest_side > limits.max_side or smallest_side**2 > limits.max_pixels:
        raise RegistryError(f"{ctx}: no image size meets these limits ({_describe(limits)})")
    return limits


def _describe(limits: SizeLimits) -> str:
    return (
        f"sides {limits.min_side}-{limits.max_side}, at most {limits.max_pixels} pixels, "
        f"multiples of {limits.multiple_of}"
    )


def _parse_quality(value: Any, defaults: Mapping[str, QualityPreset], ctx: str) -> tuple[dict[str, QualityPreset], str]:
    if not isinstance(value, dict):
        raise RegistryError(f"{ctx}: quality must be a table")
    reject_unknown(value, {"auto", *QUALITY_LEVELS, *EXTRA_QUALITY_LEVELS}, ctx, "quality")
    presets = dict(defaults)
    for level in QUALITY_LEVELS:
        if level in value:
            presets[level] = _parse_preset(value[level], defaults[level], f"{ctx}: quality.{level}")
    for level in EXTRA_QUALITY_LEVELS:
        if level in value:
            # "high" with more steps unless it says otherwise; the steps are what make it a higher level.
            presets[level] = _parse_preset(value[level], presets["high"], f"{ctx}: quality.{level}", needs_steps=True)
    auto = typed_value(value, "auto", str, "medium", f"{ctx}: quality")
    if auto not in presets:
        raise RegistryError(f"{ctx}: quality.auto = {auto!r}; expected one of {', '.join(presets)}")
    return presets, auto


def _parse_preset(table: Any, default: QualityPreset, ctx: str, *, needs_steps: bool = False) -> QualityPreset:
    """One `{ steps, guidance, max_sequence_length }` table; keys it leaves out come from `default` (the family's
    preset of the same level, which has no max_sequence_length, or for xhigh/max the model's "high")."""
    if not isinstance(table, dict):
        raise RegistryError(f"{ctx} must be a table like {{ steps = 28, guidance = 3.5 }}")
    reject_unknown(table, {"steps", "guidance", "max_sequence_length"}, *ctx.rsplit(": ", 1))
    if needs_steps and "steps" not in table:
        raise RegistryError(f"{ctx}.steps is required")
    steps = table.get("steps", default.steps)
    guidance = table.get("guidance", default.guidance)
    max_seq = table.get("max_sequence_length", default.max_sequence_length)
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= 500:
        raise RegistryError(f"{ctx}.steps must be an integer in 1..500")
    if not isinstance(guidance, (int, float)) or isinstance(guidance, bool) or not 0 <= guidance < math.inf:
        raise RegistryError(f"{ctx}.guidance must be a finite number >= 0, got {guidance!r}")
    if max_seq is not None and (not isinstance(max_seq, int) or isinstance(max_seq, bool) or not 1 <= max_seq <= 512):
        # 512 is T5's trained length in FLUX and SD3; the CLIP-only families do not use it.
        raise RegistryError(f"{ctx}.max_sequence_length must be an integer in 1..512")
    return QualityPreset(steps=steps, guidance=float(guidance), max_sequence_length=max_seq)


def _check_references(models: Mapping[str, ModelSpec], where: str) -> None:
    for spec in models.values():
        target = spec.references_model
        if target is None:
            continue
        if target not in models:
            raise RegistryError(
                f"{where}: [models.{spec.name}] references_model = {target!r} names no [models.*] table"
            )
        if models[target].max_input_images <= 1:
            raise RegistryError(
                f"{where}: [models.{spec.name}] references_model = {target!r}, but that model takes one input "
                "image (set its variant and max_input_images)"
            )


def _check_aliases(models: Mapping[str, ModelSpec], where: str) -> None:
    owner: dict[str, str] = {}
    for spec in models.values():
        for alias in spec.aliases:
            if alias in models:
                raise RegistryError(f"{where}: [models.{spec.name}] alias {alias!r} is also a model name")
            if alias in owner:
                raise RegistryError(
                    f"{where}: alias {alias!r} is declared by both [models.{owner[alias]}] and [models.{spec.name}]"
                )
            owner[alias] = spec.name
