"""What a diffusers folder holds, from its files alone: every component its model_index.json names must be there in a
form that may be loaded, or the model is unavailable with the component named.

A download that stopped halfway, or was filtered (`hf download --include ...`), otherwise shows only when the model
loads, in diffusers' words about another folder; and some gaps never show: a missing tokenizer loads as an empty
one, and every request then fails, or ignores its prompt. File names and safetensors headers only: no torch.
"""

from __future__ import annotations

import functools
import json
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from localimg.backends.checkpoint import read_json
from localimg.errors import ModelUnavailableError

if TYPE_CHECKING:
    from localimg.registry import ModelSpec

SAFE_SUFFIXES = frozenset({".safetensors"})
PICKLE_SUFFIXES = frozenset({".bin", ".ckpt", ".pt", ".pth"})
PICKLE_OPT_IN = "set `allow_pickle = true` in this model's models.toml table if you trust the files"

# A component's weight file as diffusers and transformers name it: possibly a saved variant (`model.fp16.safetensors`;
# diffusers' older shards put it last), possibly one of several shards (`model-00001-of-00002.safetensors`).
# Other files beside them (`openvino_model.bin`, `diffusion_flax_model.msgpack`) are other runtimes' copies.
_WEIGHT_FILE = re.compile(
    r"^(?:diffusion_pytorch_model|model|pytorch_model)(?:\.(?P<variant>\w+))?(?:-(?P<shard>\d+)-of-(?P<shards>\d+))?"
    r"(?:\.(?P<old_variant>\w+))?(?P<suffix>\.safetensors|\.bin)$"
)
# What a tokenizer loads its vocabulary from (CLIP: vocab.json; T5: spiece.model or tokenizer.json).
_VOCABULARY_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model", "vocab.txt")
_MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own bound
_MODEL_FILES = ("config.json",)


@dataclass(frozen=True)
class FolderWeights:
    """Which of a diffusers folder's weight files load."""

    variant: str | None = None  # the saved variant to load (fp16); None for the plain files
    # The components that load from pickles (the model allows them), with the saved variant each loads.
    pickled: Mapping[str, str | None] = field(default_factory=dict)


@dataclass
class _Component:
    name: str
    folder: Path
    weights: dict[str | None, list[Path]] = field(default_factory=dict)  # loadable files by saved variant
    refused_pickles: bool = False  # has pickled weight files, which the model does not allow

    def variant_to_load(self, variant: str | None) -> str | None:
        """diffusers loads the chosen variant where the component has it, its plain files otherwise."""
        return variant if variant in self.weights else None

    def files_to_load(self, variant: str | None) -> list[Path]:
        return self.weights.get(self.variant_to_load(variant), [])


def check_components(spec: ModelSpec, folder: Path, *, from_file: frozenset[str] | None = frozenset()) -> FolderWeights:
    """Check every component model_index.json names and say which weights load. The saved variant is models.toml's
    `source.variant`; else None (the plain files) when every component has plain files; else the one variant the
    others all have, as when only the `*.fp16.*` files were downloaded. `from_file`: the components whose weights a
    single file brings instead (None: all of them). Raises ModelUnavailableError naming what is missing."""
    index = read_json(folder / "model_index.json")
    if not index:
        _unavailable(spec, f"{folder} is not a diffusers folder (no readable model_index.json)")
    suffixes = SAFE_SUFFIXES | PICKLE_SUFFIXES if spec.allow_pickle else SAFE_SUFFIXES
    models = [_model(folder / name, suffixes) for name, is_model in _named_components(spec, folder, index) if is_model]
    if from_file is not None:
        models = [model for model in models if model.name not in from_file]
    refused = [model.name for model in models if model.refused_pickles and not model.weights]
    if refused:
        raise ModelUnavailableError(
            f"model {spec.name!r}: {folder} has only pickled weights (.bin/.ckpt/.pt/.pth) for {', '.join(refused)}, "
            f"and pickles are refused by default; convert them to .safetensors or {PICKLE_OPT_IN}.",
            code="model_weights_pickled",
        )
    if from_file is None:
        return FolderWeights()
    empty = [model.name for model in models if not model.weights]
    if empty:
        _unavailable(
            spec, f"{', '.join(empty)} in {folder} {_has(empty)} no weight files; the download looks incomplete"
        )
    variant = _variant_to_load(spec, folder, models)
    for model in models:
        _check_files(spec, model, model.files_to_load(variant))
    pickled = {
        model.name: model.variant_to_load(variant)
        for model in models
        if all(file.suffix in PICKLE_SUFFIXES for file in model.files_to_load(variant))
    }
    return FolderWeights(variant, pickled)


def _named_components(spec: ModelSpec, folder: Path, index: dict[str, object]) -> Iterable[tuple[str, bool]]:
    """(name, whether it is a model with weights) of each component saved with the pipeline, once its folder and
    its configuration or vocabulary file are checked."""
    for name, value in index.items():
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], str)):
            continue  # a setting (`_class_name`, `requires_safety_checker`) or a component saved as null
        where = folder / name
        if not where.is_dir() or not any(where.iterdir()):
            _unavailable(
                spec, f"{name}/ (in model_index.json) is missing or empty in {folder}; the download looks incomplete"
            )
        needed = _files_needed(value[1])
        if not any((where / file).is_file() for file in needed):
            _unavailable(spec, f"{where} has no {' or '.join(needed)}; the download looks incomplete")
        yield name, needed is _MODEL_FILES


def _files_needed(class_name: str) -> tuple[str, ...]:
    """What a component of this class is configured by (one of them); `_MODEL_FILES` for one with weights."""
    if "Tokenizer" in class_name:
        return _VOCABULARY_FILES
    if "Scheduler" in class_name:
        return ("scheduler_config.json",)
    if "Processor" in class_name or "FeatureExtractor" in class_name:
        return ("preprocessor_config.json",)
    return _MODEL_FILES


def _model(folder: Path, suffixes: frozenset[str]) -> _Component:
    component = _Component(folder.name, folder)
    for file in sorted(component.folder.iterdir()):
        match = _WEIGHT_FILE.match(file.name)
        if match is None:
            continue
        if match["suffix"] in suffixes:
            component.weights.setdefault(match["variant"] or match["old_variant"], []).append(file)
        else:
            component.refused_pickles = True
    return component


def _variant_to_load(spec: ModelSpec, folder: Path, models: list[_Component]) -> str | None:
    found = {model.name: set(model.weights) for model in models}
    wanted = spec.source.variant
    if wanted is not None:
        if not any(wanted in variants for variants in found.values()):
            _unavailable(
                spec,
                f"source.variant = {wanted!r}, but no component of {folder} has weights saved as {wanted!r} "
                f"(*.{wanted}.safetensors; found: {_describe(found)})",
            )
        return wanted
    without_plain = {name: variants for name, variants in found.items() if None not in variants}
    if not without_plain:
        return None
    shared = set.intersection(*without_plain.values())
    if len(shared) == 1:
        return shared.pop()
    _unavailable(
        spec,
        f"{', '.join(without_plain)} in {folder} {_has(without_plain)} no plain weight files and "
        f"{'several saved variants' if shared else 'no saved variant'} in common (found: {_describe(found)}); set "
        "source.variant in models.toml to the one to load, or add the plain weights",
    )


def _check_files(spec: ModelSpec, model: _Component, files: list[Path]) -> None:
    """Every shard of the files to load is there, and each safetensors file is as long as its header says."""
    for file in files:
        match = _WEIGHT_FILE.match(file.name)
        assert match is not None
        if match["shards"]:
            # A shard's name gives its siblings' names: `-00002-of-00003` -> `-00001-of-00003`, `-00003-of-00003`.
            width, total = len(match["shard"]), int(match["shards"])
            siblings = [file.name.replace(f"-{match['shard']}-of-", f"-{n:0{width}d}-of-") for n in range(1, total + 1)]
            missing = [name for name in siblings if not (model.folder / name).is_file()]
            if missing:
                _unavailable(spec, f"{model.folder} lacks {', '.join(missing)}; the download looks incomplete")
        if file.suffix == ".safetensors":
            problem = safetensors_problem(file)
            if problem is not None:
                _unavailable(spec, f"{file} {problem}; copy it again")


def safetensors_problem(file: Path) -> str | None:
    """Why the file cannot be whole: a safetensors file is an 8-byte header length, a JSON header giving each
    tensor's byte range, then the data; a copy cut short is shorter than the header says."""
    return _read_header(file)[0]


def tensor_names(file: Path) -> frozenset[str]:
    """The names of the tensors a safetensors file holds (none when its header cannot be read)."""
    return _read_header(file)[1]


def _read_header(file: Path) -> tuple[str | None, frozenset[str]]:
    stat = file.stat()
    return _header(str(file), stat.st_size, stat.st_mtime_ns)


# GET /v1/models checks every model's files: a header is read again only when its file changes.
@functools.lru_cache(maxsize=1024)
def _header(path: str, size: int, mtime_ns: int) -> tuple[str | None, frozenset[str]]:
    """(why the file cannot be whole or None, its tensors' names)."""
    with open(path, "rb") as stream:
        head = stream.read(8)
        if len(head) < 8:
            return f"is {size} bytes long: not a safetensors file", frozenset()
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER_BYTES:
            return "has an unreadable header: not a safetensors file", frozenset()
        if length > size - 8:
            return f"is cut short ({size} bytes) or not a safetensors file", frozenset()
        try:
            header = json.loads(stream.read(length))
            tensors = {name: value for name, value in header.items() if name != "__metadata__"}
            end = max((int(tensor["data_offsets"][1]) for tensor in tensors.values()), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return "has an unreadable header: not a safetensors file", frozenset()
    if 8 + length + end > size:
        return f"is cut short: {size} bytes of the {8 + length + end} its header describes", frozenset(tensors)
    return None, frozenset(tensors)


def _describe(found: dict[str, set[str | None]]) -> str:
    def names(variants: set[str | None]) -> str:
        return ", ".join(sorted("plain" if variant is None else variant for variant in variants)) or "none"

    return "; ".join(f"{name}: {names(variants)}" for name, variants in sorted(found.items())) or "none"


def _has(names: Iterable[str]) -> str:
    return "has" if len(list(names)) == 1 else "have"


def _unavailable(spec: ModelSpec, problem: str) -> NoReturn:
    raise ModelUnavailableError(f"model {spec.name!r}: {problem}.", code="model_weights_missing")
