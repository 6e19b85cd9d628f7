"""The learned matting stage: a background-removal model (BiRefNet, RMBG-2.0) declared as `[matting]` in models.toml.

`load_matting` picks the implementation: the learned model when it is declared and its weights are on disk,
otherwise the built-in `KeyColourMatting`. The model is loaded with transformers'
`AutoModelForImageSegmentation` from local files only, `.safetensors` weights only, and runs the model's own
Python code only when the operator set `trust_remote_code = true`. Expected model behaviour (BiRefNet family):
input a batch of ImageNet-normalised RGB at `input_size`², output a logit map (or a list of them, finest last).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from localimg.backends.base import DeviceInfo
from localimg.backends.device import raise_unless_out_of_memory, torch_device
from localimg.backends.hub_cache import cached_snapshot
from localimg.errors import OUT_OF_MEMORY, GenerationError, ModelUnavailableError
from localimg.imaging.alpha import KeyColourMatting, Matting

if TYPE_CHECKING:
    import torch

    from localimg.registry import MattingSpec

logger = logging.getLogger(__name__)

_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, the normalisation BiRefNet and RMBG-2.0 were trained with
_STD = (0.229, 0.224, 0.225)


class LearnedMatting:
    """Alpha from a learned segmentation model: sigmoid of its logit map, resized to the image.

    Finished requests are matted on their own threads, beside the engine's generation on the same device: one image
    at a time, so the matting's activations take one image's worth of device memory however many transparent
    requests finish together (and the module is never entered from two threads at once)."""

    def __init__(self, model: torch.nn.Module, device: DeviceInfo, input_size: int) -> None:
        self.model = model
        self.device = device
        self.input_size = input_size
        self._one_at_a_time = threading.Lock()

    @classmethod
    def load(cls, spec: MattingSpec, device: DeviceInfo) -> LearnedMatting:
        """Load the model onto `device`; raises ModelUnavailableError saying what is wrong."""
        from transformers import AutoModelForImageSegmentation

        folder = locate_matting_weights(spec)
        check_matting_config(spec, folder)
        logger.info("loading matting model from %s (trust_remote_code=%s)", folder, spec.trust_remote_code)
        try:
            model = AutoModelForImageSegmentation.from_pretrained(
                str(folder), trust_remote_code=spec.trust_remote_code, local_files_only=True, use_safetensors=True
            )
            model = model.to(torch_device(device)).eval()
        except Exception as exc:  # any failure means the model cannot be used; keep the cause chained
            raise ModelUnavailableError(
                f"[matting] model at {folder}: loading failed: {type(exc).__name__}: {exc}",
                code="model_load_failed",
            ) from exc
        return cls(model, device, spec.input_size)

    def matte(self, image: Image.Image) -> Image.Image:
        """`image` with the model's alpha. Raises DeviceFailedError when the device is lost (the engine then
        fails too), GenerationError when the device's memory ran out."""
        rgb = image.convert("RGB")
        alpha = None
        try:
            with self._one_at_a_time:
                alpha = self._alpha(rgb)
        except Exception as exc:
            raise_unless_out_of_memory(self.device, exc)
        if alpha is None:  # raised out of the except block: its traceback would pin the failed call's tensors
            raise GenerationError(
                f"out of memory matting a {rgb.width}x{rgb.height} image on {self.device.name}; try a smaller size",
                code=OUT_OF_MEMORY,
            )
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.fromarray(alpha))
        return rgba

    def _alpha(self, rgb: Image.Image) -> np.ndarray:
        import torch

        side = self.input_size
        pixels = np.asarray(rgb.resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
        pixels = (pixels - np.asarray(_MEAN, dtype=np.float32)) / np.asarray(_STD, dtype=np.float32)
        parameter = next(self.model.parameters())
        batch = torch.from_numpy(pixels).permute(2, 0, 1)[None].to(parameter.device, parameter.dtype)
        with torch.inference_mode():
            logits = _logit_map(self.model(batch)).float()
            probability = torch.nn.functional.interpolate(
                logits.sigmoid(), size=(rgb.height, rgb.width), mode="bilinear", align_corners=False
            )[0, 0]
        return (probability.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def load_matting(spec: MattingSpec | None, device: DeviceInfo) -> Matting:
    """The learned model when `[matting]` is declared and its weights are present, else `KeyColourMatting`.

    Missing weights fall back (logged); weights that are present but fail to load raise ModelUnavailableError,
    since the operator asked for that model."""
    if spec is None:
        logger.info("matting: built-in key-colour matting (no [matting] model declared)")
        return KeyColourMatting()
    try:
        locate_matting_weights(spec)
    except ModelUnavailableError as exc:
        logger.warning("matting: built-in key-colour matting; the declared [matting] model is unusable: %s", exc)
        return KeyColourMatting()
    matting = LearnedMatting.load(spec, device)
    logger.info("matting: learned model on %s", matting.device.name)
    return matting


def locate_matting_weights(spec: MattingSpec) -> Path:
    """The model folder, if it holds a config and .safetensors weights; raises ModelUnavailableError otherwise."""
    source = spec.source
    if source.path is not None:
        folder = source.path
    else:
        assert source.repo is not None
        folder = cached_snapshot("[matting] model", source.repo, source.revision)
    if not (folder / "config.json").is_file():
        what = "does not exist" if not folder.exists() else "has no config.json"
        raise ModelUnavailableError(f"[matting] model folder {folder} {what}.", code="model_weights_missing")
    if not any(folder.glob("*.safetensors")):
        raise ModelUnavailableError(
            f"[matting] model folder {folder} has no .safetensors weights (pickled weights are not loaded).",
            code="model_weights_missing",
        )
    return folder


def check_matting_config(spec: MattingSpec, folder: Path) -> None:
    """What `config.json` says without loading anything (so `localimg models` can tell too): that the folder is a
    transformers model, and whether it runs code of its own. Raises ModelUnavailableError saying what to change."""
    try:
        config: Any = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(
            f"[matting] model at {folder}: config.json is not readable JSON ({exc})", code="model_load_failed"
        ) from exc
    if not isinstance(config, dict) or not (config.get("model_type") or config.get("auto_map")):
        raise ModelUnavailableError(
            f"[matting] model at {folder}: config.json names neither a model_type nor an auto_map, so it is not a "
            "transformers model; point [matting] source at a background-removal model such as BiRefNet or RMBG-2.0.",
            code="model_kind_mismatch",
        )
    if config.get("auto_map") and not spec.trust_remote_code:
        raise ModelUnavailableError(
            f"[matting] model at {folder} ships its own Python code (config.json auto_map), which transformers "
            "runs on load; set `trust_remote_code = true` in the [matting] table of models.toml if you trust "
            "these files, or remove the [matting] table to use the built-in key-colour matting.",
            code="matting_needs_remote_code",
        )


def _logit_map(output: Any) -> torch.Tensor:
    """The (batch, 1, h, w) logit map from a model's output: a tensor, a list of them (finest last), or an
    output object with `.logits`."""
    if isinstance(output, (list, tuple)):
        output = output[-1]
    if hasattr(output, "logits"):
        output = output.logits
    return output if output.ndim == 4 else output[:, None]
