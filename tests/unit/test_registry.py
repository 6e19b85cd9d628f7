"""models.toml validation: good files load, and each mistake names the file, the table and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from localimg.errors import RegistryError
from localimg.registry import ImageSize, QualityPreset, Registry

REPO_ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
default_model = "flux"
[models.flux]
family = "flux"
source = { path = "weights/flux" }
aliases = ["gpt-image-1", "dall-e-3"]
"""


def load(tmp_path: Path, text: str) -> Registry:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return Registry.load(path)


def fails(tmp_path: Path, text: str, *fragments: str) -> str:
    with pytest.raises(RegistryError) as info:
        load(tmp_path, text)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_minimal_file_takes_family_defaults(tmp_path):
    registry = load(tmp_path, MINIMAL)
    spec = registry.resolve("flux")
    assert spec is registry.default and spec.family == "flux"
    assert spec.source.path == (tmp_path / "weights/flux").resolve()  # relative to the file
    assert spec.default_size == ImageSize(1024, 1024)
    assert spec.quality["medium"].steps == 28 and spec.auto_quality == "medium"
    assert spec.limits.multiple_of == 16 and not spec.allow_pickle


def test_levels_above_high_are_served_only_where_defined_and_default_to_high_with_more_steps(tmp_path):
    spec = load(tmp_path, MINIMAL).resolve("flux")
    assert list(spec.quality) == ["low", "medium", "high"]
    text = MINIMAL + "[models.flux.quality]\nhigh = { steps = 40, guidance = 4.0, max_sequence_length = 256 }\n"
    spec = load(
        tmp_path, text + 'xhigh = { steps = 60 }\nmax = { steps = 80, guidance = 5.0 }\nauto = "xhigh"\n'
    ).default
    assert list(spec.quality) == ["low", "medium", "high", "xhigh", "max"] and spec.auto_quality == "xhigh"
    assert spec.quality["xhigh"] == QualityPreset(steps=60, guidance=4.0, max_sequence_length=256)
    assert spec.quality["max"] == QualityPreset(steps=80, guidance=5.0, max_sequence_length=256)


def test_aliases_resolve(tmp_path):
    registry = load(tmp_path, MINIMAL)
    assert registry.resolve("gpt-image-1").name == "flux"
    assert registry.resolve("dall-e-3").name == "flux"
    assert registry.resolve("nope") is None
    assert registry.public_ids() == ["flux", "gpt-image-1", "dall-e-3"]


def test_full_entry(tmp_path):
    registry = load(
        tmp_path,
        """
[models.sdxl]
family = "sdxl"
source = { repo = "stabilityai/stable-diffusion-xl-base-1.0", revision = "abc123" }
default_size = "1024x768"
max_batch = 2
allow_pickle = true
dtype = { cuda = "float16" }
limits = { max_side = 1536, multiple_of = 64 }
[models.sdxl.quality]
auto = "high"
low = { steps = 10, guidance = 4.0 }
high = { steps = 60, guidance = 6.5 }
[models.single]
family = "sd15"
source = { file = "ckpt/model.safetensors", config = "runwayml/stable-diffusion-v1-5" }
""",
    )
    spec = registry.resolve("sdxl")
    assert registry.default_model == "sdxl"
    assert spec.source.repo == "stabilityai/stable-diffusion-xl-base-1.0" and spec.source.revision == "abc123"
    assert spec.default_size == ImageSize(1024, 768) and spec.max_batch == 2 and spec.allow_pickle
    assert spec.dtype == {"cuda": "float16"}
    assert spec.limits.max_side == 1536 and spec.limits.multiple_of == 64 and spec.limits.min_side == 256
    assert spec.auto_quality == "high" and spec.quality["low"].guidance == 4.0 and spec.quality["medium"].steps == 30
    single = registry.resolve("single")
    assert single.source.file == (tmp_path / "ckpt/model.safetensors").resolve()
    assert single.source.config == "runwayml/stable-diffusion-v1-5"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (MINIMAL.replace('family = "flux"', 'famly = "flux"'), ["[models.flux]", "'famly'"]),
        (MINIMAL.replace('"flux"\nsource', '"flux2"\nsource'), ["[models.flux]", "family", "flux2"]),
        (MINIMAL.replace('source = { path = "weights/flux" }', ""), ["[models.flux]", "source"]),
        (MINIMAL.replace("path =", "pth ="), ["[models.flux]", "source"]),
        (MINIMAL + 'default_size = "big"\n', ["[models.flux]", "default_size", "big"]),
        (MINIMAL + "limits = { max_sid = 5 }\n", ["[models.flux]", "limits", "max_sid"]),
        (MINIMAL + "limits = { max_side = -5 }\n", ["limits.max_side"]),
        (MINIMAL + 'default_size = "0x0"\n', ["default_size", "'0x0'", "limits"]),
        (MINIMAL + 'default_size = "4096x4096"\n', ["default_size", "outside the model's limits"]),
        (MINIMAL + 'default_size = "1000x1000"\n', ["default_size", "multiples of 16"]),
        (MINIMAL + "limits = { multiple_of = 5000 }\n", ["no image size meets these limits"]),
        (MINIMAL + "limits = { max_pixels = 1000 }\n", ["no image size meets these limits"]),
        (
            MINIMAL + "[models.flux.quality]\nhigh = { max_sequence_length = 100000 }\n",
            ["max_sequence_length", "1..512"],
        ),
        (MINIMAL + "[models.flux.quality]\nhigh = { max_sequence_length = true }\n", ["max_sequence_length"]),
        (MINIMAL + '[models.flux.optimize]\nwarmup_sizes = ["4096x4096"]\n', ["warmup_sizes", "4096x4096"]),
        (MINIMAL + "[models.flux.quality]\nmedium = { steps = 0 }\n", ["quality.medium.steps"]),
        (MINIMAL + "[models.flux.quality]\nultra = { steps = 4 }\n", ["quality", "'ultra'"]),
        (MINIMAL + '[models.flux.quality]\nauto = "best"\n', ["quality.auto", "best"]),
        (MINIMAL + "[models.flux.quality]\nxhigh = { guidance = 4.0 }\n", ["quality.xhigh.steps is required"]),
        (MINIMAL + '[models.flux.quality]\nauto = "max"\n', ["quality.auto", "'max'"]),
        (MINIMAL + 'dtype = { cuda = "fp8" }\n', ["dtype.cuda", "fp8"]),
        (MINIMAL + "max_batch = 0\n", ["max_batch"]),
        (MINIMAL + 'allow_pickle = "yes"\n', ["allow_pickle must be true or false"]),
        (MINIMAL.replace('default_model = "flux"', 'default_model = "sd"'), ["default_model", "'sd'"]),
        (MINIMAL.replace('"flux"]', '"../etc"]').replace("[models.flux]", '[models."../etc"]'), ["../etc"]),
        (MINIMAL + '[models.other]\nfamily = "sd15"\nsource = { path = "x" }\naliases = ["dall-e-3"]\n', ["dall-e-3"]),
        (MINIMAL.replace('["gpt-image-1", "dall-e-3"]', '["flux"]'), ["alias 'flux'"]),
        ('[models.x]\nfamily = "sd15"\nsource = { repo = "no-slash" }\n', ["source.repo", "owner/name"]),
        ('[models.x]\nfamily = "sd15"\nsource = { file = "a.safetensors" }\n', ["source.config"]),
        ("default_model = 'x'\n", ["at least one"]),
        ("models = [", ["not valid TOML"]),
        (MINIMAL + "\n[server]\nport = 1\n", ["top level", "'server'"]),
    ],
)
def test_mistakes_are_named(tmp_path, text, fragments):
    message = fails(tmp_path, text, *fragments)
    assert str(tmp_path / "models.toml") in message or "models.toml" in message


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(RegistryError, match="cannot read"):
        Registry.load(tmp_path / "nope.toml")


def test_restricted_to(tmp_path):
    registry = load(tmp_path, MINIMAL + '[models.sd]\nfamily = "sd15"\nsource = { path = "x" }\naliases = ["a"]\n')
    only_sd = registry.restricted_to(["sd"])
    assert only_sd.default_model == "sd" and only_sd.public_ids() == ["sd", "a"]
    with pytest.raises(RegistryError, match="unknown model"):
        registry.restricted_to(["nope"])


def test_shipped_models_toml_is_valid():
    registry = Registry.load(REPO_ROOT / "models.toml")
    families = {spec.family for spec in registry}
    assert families == {"flux", "sd15", "sdxl", "sd3"}
    for alias in ("gpt-image-2", "gpt-image-2.5-flare", "gpt-image-1.5", "gpt-image-1", "dall-e-3", "dall-e-2"):
        assert registry.resolve(alias) is registry.default


KONTEXT = """
[models.kontext]
family = "flux"
source = { path = "weights/kontext" }
variant = "kontext"
max_input_images = 4
"""


def test_references_model_routes_to_a_model_taking_references(tmp_path):
    registry = load(tmp_path, MINIMAL.replace('aliases = ["gpt-image-1", "dall-e-3"]', 'references_model = "kontext"')
                    + KONTEXT)  # fmt: skip
    assert registry.resolve("flux").references_model == "kontext"
    assert registry.restricted_to(["flux"]).resolve("flux").references_model is None  # not served: no route
    fails(tmp_path, MINIMAL + 'references_model = "nope"\n', "[models.flux]", "references_model", "'nope'")
    one_image = KONTEXT.replace("max_input_images = 4", "max_input_images = 1")
    fails(tmp_path, MINIMAL + 'references_model = "kontext"\n' + one_image, "[models.flux]", "takes one input image")
