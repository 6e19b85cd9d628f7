"""`[models.NAME.optimize]` in models.toml: defaults, accepted values, and one clear error per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from localimg.errors import RegistryError
from localimg.registry import ImageSize, OptimizeSettings, Registry


def load(tmp_path: Path, optimize: str, family: str = "flux") -> OptimizeSettings:
    path = tmp_path / "models.toml"
    path.write_text(f'[models.m]\nfamily = "{family}"\nsource = {{ path = "w" }}\n[models.m.optimize]\n{optimize}\n')
    spec = Registry.load(path).resolve("m")
    assert spec is not None
    return spec.optimize


def test_defaults_are_auto(tmp_path):
    settings = load(tmp_path, "")
    assert settings == OptimizeSettings()
    assert settings.preset == "lossless" and settings.compile is None and settings.fp8 is None
    assert settings.prompt_cache == 32 and settings.warmup_sizes is None


def test_every_key(tmp_path):
    settings = load(
        tmp_path,
        """
preset = "fast"
attention = "cudnn"
attention_dispatch = "_native_cudnn"
compile = true
compile_vae = "auto"
compile_dynamic = false
fuse_qkv = false
channels_last = true
sync_free = true
prompt_cache = 0
fp8 = true
step_cache = "taylorseer"
step_cache_threshold = 0.1
warmup_sizes = ["1024x1024", "1536x1024"]
compile_cache_dir = "cache"
""",
    )
    assert settings.preset == "fast" and settings.attention == "cudnn"
    assert settings.attention_dispatch == "_native_cudnn"
    assert settings.compile is True and settings.compile_vae is None and settings.compile_dynamic is False
    assert settings.fuse_qkv is False and settings.channels_last is True and settings.sync_free is True
    assert settings.prompt_cache == 0 and settings.fp8 is True
    assert settings.step_cache == "taylorseer" and settings.step_cache_threshold == 0.1
    assert settings.warmup_sizes == (ImageSize(1024, 1024), ImageSize(1536, 1024))
    assert settings.compile_cache_dir == (tmp_path / "cache").resolve()


def test_cuda_graphs_on_a_unet(tmp_path):
    assert load(tmp_path, "cuda_graphs = true", family="sdxl").cuda_graphs is True


@pytest.mark.parametrize(
    ("text", "family", "fragment"),
    [
        ("turbo = true", "flux", "unknown key(s) 'turbo'"),
        ('preset = "fastest"', "flux", "optimize.preset = 'fastest'"),
        ('attention = "xformers"', "flux", "optimize.attention"),
        ('compile = "yes"', "flux", 'expected true, false or "auto"'),
        ("fp8 = 1", "flux", "optimize.fp8"),
        ("prompt_cache = -1", "flux", "optimize.prompt_cache"),
        ("prompt_cache = true", "flux", "prompt_cache must be an integer"),
        ('step_cache = "first_block"', "sdxl", "does not work with sdxl (flux: first_block or taylorseer, sd3: "),
        ('step_cache = "first_block"', "sd3", "optimize.step_cache = 'first_block' does not work with sd3"),
        ("step_cache_threshold = 2", "flux", "step_cache_threshold"),
        ("cuda_graphs = true", "flux", "UNet families"),
        ('warmup_sizes = ["big"]', "flux", "warmup_sizes"),
        ('warmup_sizes = "1024x1024"', "flux", "warmup_sizes must be a list"),
    ],
)
def test_mistakes_name_the_key(tmp_path, text, family, fragment):
    with pytest.raises(RegistryError) as info:
        load(tmp_path, text, family=family)
    assert fragment in str(info.value)
    assert "[models.m]" in str(info.value)


def test_optimize_must_be_a_table(tmp_path):
    path = tmp_path / "models.toml"
    path.write_text('[models.m]\nfamily = "flux"\nsource = { path = "w" }\noptimize = "fast"\n')
    with pytest.raises(RegistryError, match="optimize must be a table"):
        Registry.load(path)
