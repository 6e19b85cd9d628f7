"""From a `ModelSource` to a diffusers pipeline, from local files only.

Finding the weights (`locate_weights`, `weights_problem`) is file checks only and imports no torch, so
`localimg models` can list what is installed cheaply. Only `.safetensors` weights load unless the model sets
`allow_pickle = true`: pickled checkpoints can run arbitrary code when loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localimg.backends.checkpoint import absent_components, check_checkpoint, check_file_kind, read_json
from localimg.backends.components import (
    PICKLE_OPT_IN,
    PICKLE_SUFFIXES,
    SAFE_SUFFIXES,
    FolderWeights,
    check_components,
    safetensors_problem,
    tensor_names,
)
from localimg.backends.hub_cache import cached_snapshot
from localimg.errors import ModelUnavailableError

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

    from localimg.registry import ModelSpec

logger = logging.getLogger(__name__)

# Single files of these families hold the denoiser alone (`flux1-dev.safetensors`, as Black Forest Labs ships it),
# or the denoiser beside encoders the config folder has too: the denoiser is read from the file, the rest from the
# folder. Stable Diffusion 1.5 and XL files hold the whole pipeline.
_DENOISER_IN_FILE = {"flux": ("transformer", "FluxTransformer2DModel"), "sd3": ("transformer", "SD3Transformer2DModel")}


@dataclass(frozen=True)
class LocatedWeights:
    """Where a model's files are on disk."""

    folder: Path  # the diffusers folder; for a single-file model, its config folder
    chosen: FolderWeights  # which of the folder's weight files load
    file: Path | None = None  # the single-file checkpoint, if any
    file_component: str | None = None  # the one component read from the file; None: the file holds the pipeline

    def describe(self) -> str:
        if self.file is not None:
            return f"{self.file} (config {self.folder})"
        variant = self.chosen.variant
        return str(self.folder) if variant is None else f"{self.folder} ({variant} weights)"


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
        folder = cached_snapshot(f"model {spec.name!r}", source.repo, source.revision)
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
            f".safetensors file or {PICKLE_OPT_IN}.",
            code="model_weights_pickled",
        )
    if file.suffix not in SAFE_SUFFIXES | PICKLE_SUFFIXES:
        raise ModelUnavailableError(
            f"model {spec.name!r}: {file} is not a .safetensors checkpoint; single-file models must be .safetensors "
            "(or a pickled .ckpt with allow_pickle = true).",
            code="model_weights_unsupported",
        )
    problem = safetensors_problem(file) if file.suffix in SAFE_SUFFIXES else None
    if problem is not None:
        raise ModelUnavailableError(
            f"model {spec.name!r}: {file} {problem}; copy it again.", code="model_weights_missing"
        )
    config = Path(source.config)
    if config.is_absolute():
        if not (config / "model_index.json").is_file():
            raise ModelUnavailableError(
                f"model {spec.name!r}: source.config {config} is not a diffusers folder (no model_index.json); it "
                "must hold the pipeline's configs (the base model's diffusers folder).",
                code="model_weights_missing",
            )
    else:
        config = cached_snapshot(f"model {spec.name!r}", source.config, source.revision)
    if file.suffix in SAFE_SUFFIXES:
        check_file_kind(spec, file, tensor_names(file), config)
    component = _DENOISER_IN_FILE[spec.family][0] if spec.family in _DENOISER_IN_FILE else None
    chosen = check_components(spec, config, from_file=None if component is None else frozenset({component}))
    check_checkpoint(spec, config, single_file=True)
    return LocatedWeights(config, chosen, file, component)


def _diffusers_folder(spec: ModelSpec, folder: Path) -> LocatedWeights:
    chosen = check_components(spec, folder)
    check_checkpoint(spec, folder)
    return LocatedWeights(folder, chosen)


def weights_problem(spec: ModelSpec) -> ModelUnavailableError | None:
    """Why the model's files cannot be loaded (missing or cut short, refused by its pickle policy, or another kind
    of model than models.toml declares), or None when they are in place. File names, configs and safetensors
    headers only: a whole file holding another model's tensors of the same family shows only when it loads."""
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
            return _from_folder(spec, pipeline_class, weights, dtype)
        if weights.file_component is None:
            pipeline = pipeline_class.from_single_file(
                str(weights.file), config=str(weights.folder), dtype=dtype, local_files_only=True
            )
            # Some of diffusers' single-file loaders leave a module in training mode (T5: dropout on, so the same
            # seed gives another image each time); a served model only ever runs inference.
            for module in pipeline.components.values():
                if hasattr(module, "eval"):
                    module.eval()
            return pipeline
        import diffusers

        name, class_name = weights.file_component, _DENOISER_IN_FILE[spec.family][1]
        denoiser = getattr(diffusers, class_name).from_single_file(
            str(weights.file), config=str(weights.folder), subfolder=name, dtype=dtype, local_files_only=True
        )
        return _from_folder(spec, pipeline_class, weights, dtype, **{name: denoiser})
    except Exception as exc:  # any failure here means the model cannot be served; keep the cause chained
        raise ModelUnavailableError(
            f"model {spec.name!r}: loading {weights.describe()} as a {pipeline_class.__name__} failed: "
            f"{type(exc).__name__}: {exc}",
            code="model_load_failed",
        ) from exc


def _from_folder(
    spec: ModelSpec, pipeline_class: type[DiffusionPipeline], weights: LocatedWeights, dtype: torch.dtype, **given: Any
) -> DiffusionPipeline:
    pickled = {name: variant for name, variant in weights.chosen.pickled.items() if name not in given}
    if pickled:
        logger.warning("model %s: loading pickled weights for %s (allow_pickle = true)", spec.name, ", ".join(pickled))
    return pipeline_class.from_pretrained(
        str(weights.folder),
        dtype=dtype,
        local_files_only=True,
        variant=weights.chosen.variant,
        use_safetensors=True,
        # Components saved as null (SD3 without T5): diffusers wants them named, unless optional.
        **dict.fromkeys(absent_components(weights.folder)),
        # Pickled components load on their own: diffusers' fallback to pickles logs each one as an error.
        **{name: _pickled_component(weights.folder, name, variant, dtype) for name, variant in pickled.items()},
        **given,
    )


def _pickled_component(folder: Path, name: str, variant: str | None, dtype: torch.dtype) -> Any:
    """A component of the folder loaded from its pickled weights, with the class model_index.json names for it."""
    model_class = component_class(*read_json(folder / "model_index.json")[name])
    return model_class.from_pretrained(
        str(folder), subfolder=name, dtype=dtype, variant=variant, use_safetensors=False, local_files_only=True
    )


def component_class(library: str, class_name: str) -> type:
    """The class of a model_index.json entry `[library, class_name]`, found as diffusers finds it: the library is a
    package (`diffusers`, `transformers`) or one of diffusers' pipeline modules (SD 1.5's safety checker is
    `["stable_diffusion", "StableDiffusionSafetyChecker"]`)."""
    import importlib

    from diffusers import pipelines

    module = getattr(pipelines, library) if hasattr(pipelines, library) else importlib.import_module(library)
    return getattr(module, class_name)
