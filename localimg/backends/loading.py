"""From a `ModelSource` to a diffusers pipeline, from local files only.

Finding the weights (`locate_weights`, `weights_problem`) is file checks only and imports no torch, so
`localimg models` can list what is installed cheaply. Only `.safetensors` weights load unless the model sets
`allow_pickle = true`: pickled checkpoints can run arbitrary code when loaded.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import constants as hf_constants
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from localimg.backends.checkpoint import absent_components, check_checkpoint, read_json
from localimg.errors import ModelUnavailableError

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

    from localimg.registry import ModelSpec

logger = logging.getLogger(__name__)

SAFE_SUFFIXES = frozenset({".safetensors"})
PICKLE_SUFFIXES = frozenset({".bin", ".ckpt", ".pt", ".pth"})
_PICKLE_OPT_IN = "set `allow_pickle = true` in this model's models.toml table if you trust the files"


@dataclass(frozen=True)
class LocatedWeights:
    """Where a model's files are on disk."""

    folder: Path  # the diffusers folder; for a single-file model, its config folder
    file: Path | None = None  # the single-file checkpoint, if any
    variant: str | None = None  # the saved variant of the folder's weights to load (fp16), None for the plain ones

    def describe(self) -> str:
        if self.file is not None:
            return f"{self.file} (config {self.folder})"
        return str(self.folder) if self.variant is None else f"{self.folder} ({self.variant} weights)"


def locate_weights(spec: ModelSpec) -> LocatedWeights:
    """Find the model's files and check they may be loaded; raises ModelUnavailableError saying what is wrong."""
    source = spec.source
    if source.path is not None:
        folder = source.path
        if folder.is_file():
            raise ModelUnavailableError(
                f"model {spec.name!r}: source.path {folder} is a file; point it at the diffusers folder that holds "
                "model_index.json (a single .safetensors checkpoint takes source = { file = ..., config = ... }).",
                code="model_weights_missing",
            )
        if not (folder / "model_index.json").is_file():
            what = "does not exist" if not folder.exists() else "is not a diffusers folder (no model_index.json)"
            raise ModelUnavailableError(
                f"model {spec.name!r}: {folder} {what}. Put a diffusers-format copy of the model there (on a "
                f"connected machine: `hf download <repo> --local-dir <dir>`, then copy <dir> here), or change "
                "source.path in models.toml.",
                code="model_weights_missing",
            )
        return _diffusers_folder(spec, folder)
    if source.repo is not None:
        folder = _cached_snapshot(spec, source.repo, source.revision)
        return _diffusers_folder(spec, folder)
    assert source.file is not None and source.config is not None
    file = source.file
    if not file.is_file():
        raise ModelUnavailableError(
            f"model {spec.name!r}: checkpoint file {file} does not exist. Copy the .safetensors file there or "
            "change source.file in models.toml.",
            code="model_weights_missing",
        )
    if file.suffix in PICKLE_SUFFIXES and not spec.allow_pickle:
        raise ModelUnavailableError(
            f"model {spec.name!r}: {file} is a pickled checkpoint and pickles are refused by default; use a "
            f".safetensors file or {_PICKLE_OPT_IN}.",
            code="model_weights_pickled",
        )
    if file.suffix not in SAFE_SUFFIXES | PICKLE_SUFFIXES:
        raise ModelUnavailableError(
            f"model {spec.name!r}: {file} is not a .safetensors checkpoint; single-file models must be .safetensors "
            "(or a pickled .ckpt with allow_pickle = true).",
            code="model_weights_unsupported",
        )
    config = Path(source.config)
    if config.is_absolute():
        if not (config / "model_index.json").is_file():
            raise ModelUnavailableError(
                f"model {spec.name!r}: source.config {config} is not a diffusers folder (no model_index.json); it "
                "must hold the pipeline's configs (the base model's diffusers folder, weights optional).",
                code="model_weights_missing",
            )
    else:
        config = _cached_snapshot(spec, source.config, "main")
    _check_folder(spec, config, need_weights=False)
    check_checkpoint(spec, config)
    return LocatedWeights(config, file)


def _diffusers_folder(spec: ModelSpec, folder: Path) -> LocatedWeights:
    _check_folder(spec, folder, need_weights=True)
    check_checkpoint(spec, folder)
    return LocatedWeights(folder, variant=_weights_variant(spec, folder))


def weights_problem(spec: ModelSpec) -> ModelUnavailableError | None:
    """Why the model's files cannot be loaded (missing, refused by its pickle policy, or another kind of model than
    models.toml declares), or None when they are in place. File checks only: a file that is present but corrupt
    shows only when it loads."""
    try:
        locate_weights(spec)
    except ModelUnavailableError as exc:
        return exc
    return None


def load_pipeline(spec: ModelSpec, pipeline_class: type[DiffusionPipeline], dtype: torch.dtype) -> DiffusionPipeline:
    """Load the model's pipeline on the CPU in `dtype`; the caller moves it to its device."""
    weights = locate_weights(spec)
    logger.info("loading model %s (%s) from %s in %s", spec.name, spec.family, weights.describe(), dtype)
    try:
        if weights.file is None:
            return pipeline_class.from_pretrained(
                str(weights.folder),
                dtype=dtype,
                local_files_only=True,
                variant=weights.variant,
                # None lets diffusers fall back to pickles where a component has no .safetensors.
                use_safetensors=None if spec.allow_pickle else True,
                # Components saved as null (SD3 without T5): diffusers wants them named, unless optional.
                **dict.fromkeys(absent_components(weights.folder)),
            )
        return pipeline_class.from_single_file(
            str(weights.file), config=str(weights.folder), dtype=dtype, local_files_only=True
        )
    except Exception as exc:  # any failure here means the model cannot be served; keep the cause chained
        raise ModelUnavailableError(
            f"model {spec.name!r}: loading {weights.describe()} as a {pipeline_class.__name__} failed: "
            f"{type(exc).__name__}: {exc}",
            code="model_load_failed",
        ) from exc


def _cached_snapshot(spec: ModelSpec, repo: str, revision: str) -> Path:
    """The snapshot folder of repo@revision (a branch, tag or commit) in the local Hugging Face cache."""
    try:
        return Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError as exc:
        # Read at call time, so HF_HOME/HF_HUB_CACHE (and tests patching the constant) are honoured.
        cache = hf_constants.HF_HUB_CACHE
        raise ModelUnavailableError(
            f"model {spec.name!r}: {repo}@{revision} is not (completely) in the Hugging Face cache at {cache}. On a "
            f"connected machine run `hf download {repo} --revision {revision}` and copy its cache folder "
            f"(models--{repo.replace('/', '--')}) into {cache}, or set HF_HUB_CACHE/HF_HOME to where it lives, "
            "or point source.path at a diffusers folder.",
            code="model_weights_missing",
        ) from exc


def _check_folder(spec: ModelSpec, folder: Path, *, need_weights: bool) -> None:
    """Refuse folders whose components only have pickled weights (unless allowed) or no weights at all."""
    safe: set[Path] = set()
    pickled: set[Path] = set()
    for file in _files(folder):
        if file.suffix in SAFE_SUFFIXES:
            safe.add(file.parent)
        elif file.suffix in PICKLE_SUFFIXES:
            pickled.add(file.parent)
    if need_weights and not safe and not pickled:
        raise ModelUnavailableError(
            f"model {spec.name!r}: {folder} holds no weight files (.safetensors); the download looks incomplete.",
            code="model_weights_missing",
        )
    pickle_only = sorted(pickled - safe)
    if pickle_only and not spec.allow_pickle:
        names = ", ".join(str(d.relative_to(folder)) if d != folder else "." for d in pickle_only)
        raise ModelUnavailableError(
            f"model {spec.name!r}: {folder} has only pickled weights (.bin/.ckpt/.pt/.pth) for {names}, and pickles "
            f"are refused by default; convert them to .safetensors or {_PICKLE_OPT_IN}.",
            code="model_weights_pickled",
        )


def _files(folder: Path) -> Iterable[Path]:
    # Hub-cache snapshots are symlinks into blobs/, which rglob lists as files; dot-folders hold download metadata.
    for file in folder.rglob("*"):
        relative = file.relative_to(folder).parts
        if not any(part.startswith(".") for part in relative) and file.is_file():
            yield file


# A component's weight file as diffusers and transformers name it, possibly sharded, possibly a saved variant:
# `diffusion_pytorch_model.safetensors`, `model-00001-of-00002.safetensors`, `model.fp16.safetensors`.
_WEIGHT_FILE = re.compile(
    r"^(?:diffusion_pytorch_model|model|pytorch_model)(?:\.(?P<variant>\w+))?(?:-\d+-of-\d+)?(?P<suffix>\.safetensors|\.bin)$"
)


def _weights_variant(spec: ModelSpec, folder: Path) -> str | None:
    """The saved variant of the weights to load: models.toml's `source.variant`; else none (the plain files) when
    every component has plain files; else the one variant the others all have, as when only the `*.fp16.*` files
    were downloaded. diffusers loads a component's plain files where it lacks the chosen variant."""
    found = _weight_variants(folder, SAFE_SUFFIXES | PICKLE_SUFFIXES if spec.allow_pickle else SAFE_SUFFIXES)
    wanted = spec.source.variant
    if wanted is not None:
        if not any(wanted in variants for variants in found.values()):
            raise ModelUnavailableError(
                f"model {spec.name!r}: source.variant = {wanted!r}, but no component of {folder} has weights saved as "
                f"{wanted!r} (*.{wanted}.safetensors; found: {_describe_variants(found)}).",
                code="model_weights_missing",
            )
        return wanted
    without_plain = {component: variants for component, variants in found.items() if None not in variants}
    if not without_plain:
        return None
    shared = set.intersection(*without_plain.values())
    if len(shared) == 1:
        return str(shared.pop())
    common = "several saved variants" if shared else "no saved variant"
    raise ModelUnavailableError(
        f"model {spec.name!r}: {', '.join(sorted(without_plain))} in {folder} have no plain weight files and "
        f"{common} in common (found: {_describe_variants(found)}); set source.variant in models.toml to the one to "
        "load, or add the plain weights.",
        code="model_weights_missing",
    )


def _weight_variants(folder: Path, suffixes: frozenset[str]) -> dict[str, set[str | None]]:
    """For each component model_index.json names, the variants its loadable weight files are saved as (None:
    plain)."""
    found: dict[str, set[str | None]] = {}
    for component, value in read_json(folder / "model_index.json").items():
        if not (isinstance(value, list) and value and value[0] is not None and (folder / component).is_dir()):
            continue
        matches = (_WEIGHT_FILE.match(file.name) for file in (folder / component).iterdir())
        variants = {match["variant"] for match in matches if match and match["suffix"] in suffixes}
        if variants:
            found[component] = variants
    return found


def _describe_variants(found: dict[str, set[str | None]]) -> str:
    def names(variants: set[str | None]) -> str:
        return ", ".join(sorted("plain" if variant is None else variant for variant in variants))

    return "; ".join(f"{component}: {names(variants)}" for component, variants in sorted(found.items())) or "none"
