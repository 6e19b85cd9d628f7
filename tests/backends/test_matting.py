"""The learned matting path on a tiny local model with its own code (as BiRefNet/RMBG ship), and the fallback."""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from localimg.backends.base import DeviceInfo
from localimg.backends.matting import LearnedMatting, load_matting
from localimg.errors import OUT_OF_MEMORY, DeviceFailedError, GenerationError, ModelUnavailableError
from localimg.imaging.alpha import KeyColourMatting
from localimg.registry import MattingSpec, ModelSource

CPU = DeviceInfo(kind="cpu", name="cpu")

# A segmentation model shipped as remote code, shaped like BiRefNet: it returns a list of logit maps, finest last.
MODEL_CODE = """
import torch
from transformers import PretrainedConfig, PreTrainedModel


class TinyMattingConfig(PretrainedConfig):
    model_type = "tiny_matting"


class TinyMatting(PreTrainedModel):
    config_class = TinyMattingConfig

    def __init__(self, config):
        super().__init__(config)
        self.head = torch.nn.Conv2d(3, 1, kernel_size=1)
        self.post_init()

    def forward(self, pixel_values):
        coarse = torch.nn.functional.avg_pool2d(self.head(pixel_values), 2)
        return [coarse, self.head(pixel_values)]
"""


@pytest.fixture(scope="module")
def tiny_matting_dir(tmp_path_factory) -> Path:
    """Save a tiny model whose logit is 12 * (red - green) of the normalised input: red opaque, green clear."""
    code_dir = tmp_path_factory.mktemp("code")
    (code_dir / "tiny_matting.py").write_text(MODEL_CODE)
    module_spec = importlib.util.spec_from_file_location("tiny_matting", code_dir / "tiny_matting.py")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["tiny_matting"] = module
    module_spec.loader.exec_module(module)
    module.TinyMattingConfig.register_for_auto_class()
    module.TinyMatting.register_for_auto_class("AutoModelForImageSegmentation")
    model = module.TinyMatting(module.TinyMattingConfig())
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([12.0, -12.0, 0.0]).view(1, 3, 1, 1))
        model.head.bias.zero_()
    folder = tmp_path_factory.mktemp("matting")
    model.save_pretrained(folder, safe_serialization=True)
    del sys.modules["tiny_matting"]
    assert (folder / "tiny_matting.py").is_file() and list(folder.glob("*.safetensors"))
    return folder


def red_square_on_green() -> Image.Image:
    image = Image.new("RGB", (96, 64), (0, 255, 0))
    image.paste((255, 0, 0), (32, 16, 64, 48))
    return image


def test_learned_matting_runs_the_models_alpha(tiny_matting_dir):
    spec = MattingSpec(ModelSource(path=tiny_matting_dir), trust_remote_code=True, input_size=64)
    matting = load_matting(spec, CPU)
    assert isinstance(matting, LearnedMatting)
    out = matting.matte(red_square_on_green())
    assert out.mode == "RGBA" and out.size == (96, 64)
    alpha = np.asarray(out)[..., 3]
    assert (alpha[20:44, 36:60] == 255).all()  # inside the red square
    assert (alpha[:10] == 0).all() and (alpha[:, :24] == 0).all()  # the green around it
    assert np.asarray(out)[30, 40, :3].tolist() == [255, 0, 0]


def test_remote_code_needs_an_explicit_opt_in(tiny_matting_dir):
    spec = MattingSpec(ModelSource(path=tiny_matting_dir))
    with pytest.raises(ModelUnavailableError) as info:
        load_matting(spec, CPU)
    assert info.value.code == "matting_needs_remote_code"
    assert "trust_remote_code = true" in info.value.message


def test_without_a_declared_model_the_key_colour_matting_is_used(caplog):
    with caplog.at_level(logging.INFO, logger="localimg.backends.matting"):
        assert isinstance(load_matting(None, CPU), KeyColourMatting)
    assert "key-colour" in caplog.text


def test_missing_weights_fall_back_and_say_why(tmp_path, caplog):
    spec = MattingSpec(ModelSource(path=tmp_path / "rmbg-2.0"), trust_remote_code=True)
    with caplog.at_level(logging.WARNING, logger="localimg.backends.matting"):
        assert isinstance(load_matting(spec, CPU), KeyColourMatting)
    assert "rmbg-2.0 does not exist" in caplog.text


def test_pickled_weights_only_fall_back(tmp_path, caplog):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    spec = MattingSpec(ModelSource(path=tmp_path))
    with caplog.at_level(logging.WARNING, logger="localimg.backends.matting"):
        assert isinstance(load_matting(spec, CPU), KeyColourMatting)
    assert "no .safetensors weights" in caplog.text


def test_repo_not_in_cache_falls_back(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    spec = MattingSpec(ModelSource(repo="briaai/RMBG-2.0", revision="main"), trust_remote_code=True)
    with caplog.at_level(logging.WARNING, logger="localimg.backends.matting"):
        assert isinstance(load_matting(spec, CPU), KeyColourMatting)
    assert "hf download briaai/RMBG-2.0" in caplog.text


class _FailingSegmenter(torch.nn.Module):
    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.error = error

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise self.error


CUDA_ERROR = getattr(torch, "AcceleratorError", RuntimeError)  # what torch >= 2.8 raises for a CUDA error


def test_a_lost_device_while_matting_is_a_failed_device():
    """The matting runs on the generation device: a sticky CUDA error there is the 503 `device_failed` that the
    engine gives, not an anonymous 500."""
    lost = CUDA_ERROR("CUDA error: an illegal memory access was encountered\nCompile with TORCH_USE_CUDA_DSA ...")
    matting = LearnedMatting(_FailingSegmenter(lost), DeviceInfo(kind="cuda", name="Fake GPU"), input_size=8)
    with pytest.raises(DeviceFailedError) as info:
        matting.matte(red_square_on_green())
    assert info.value.status == 503 and info.value.code == "device_failed"
    assert "Fake GPU" in info.value.message and "illegal memory access" in info.value.message
    assert info.value.__cause__ is lost


def test_running_out_of_memory_while_matting_says_so():
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
    matting = LearnedMatting(_FailingSegmenter(oom), CPU, input_size=8)
    with pytest.raises(GenerationError) as info:
        matting.matte(red_square_on_green())
    assert info.value.code == OUT_OF_MEMORY and "96x64" in info.value.message


def test_any_other_matting_error_is_raised_as_it_is():
    bug = ValueError("a model bug")
    with pytest.raises(ValueError) as info:
        LearnedMatting(_FailingSegmenter(bug), CPU, input_size=8).matte(red_square_on_green())
    assert info.value is bug


class _CountingSegmenter(torch.nn.Module):
    """Records how many threads are inside its forward at once."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.inside = 0
        self.most_inside = 0
        self._count = threading.Lock()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with self._count:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        time.sleep(0.05)  # a forward pass long enough for the other threads to arrive
        with self._count:
            self.inside -= 1
        return torch.zeros(pixel_values.shape[0], 1, 8, 8)


def test_requests_finishing_together_are_matted_one_at_a_time():
    """Each finished request mattes on its own thread; on the device they take turns, so the matting's memory is
    one image's however many transparent requests finish at once."""
    segmenter = _CountingSegmenter()
    matting = LearnedMatting(segmenter, CPU, input_size=8)
    with ThreadPoolExecutor(4) as pool:
        matted = list(pool.map(lambda _: matting.matte(red_square_on_green()), range(4)))
    assert segmenter.most_inside == 1
    assert [image.mode for image in matted] == ["RGBA"] * 4
