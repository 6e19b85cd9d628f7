"""models.toml validation: good files load, and each mistake names the file, the table and the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from localimg.errors import RegistryError
from localimg.registry import ImageSize, QualityPreset, Registry
from localimg.testing.tiny import OPENAI_ALIASES

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
source = { repo = "stabilityai/stable-diffusion-xl-base-1.0", revision = "abc123", variant = "fp16" }
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
    assert spec.source.variant == "fp16" and registry.resolve("single").source.variant is None
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
        (MINIMAL + "[models.flux.quality]\nmedium = { guidance = inf }\n", ["quality.medium.guidance", "finite"]),
        (MINIMAL + "[models.flux.quality]\nlow = { guidance = nan }\n", ["quality.low.guidance", "finite"]),
        (MINIMAL + '[models.flux.quality]\nauto = ["medium"]\n', ["quality: auto must be a string"]),
        (MINIMAL.replace('default_model = "flux"', 'default_model = ["flux"]'), ["default_model must be a string"]),
        (MINIMAL + "limits = { min_side = 1024, max_side = 512 }\n", ["min_side = 1024 > limits.max_side = 512"]),
        (MINIMAL.replace("[models.flux]", '[models."café"]'), ["ASCII letters"]),
        (MINIMAL + '[models.flux.quality]\nauto = "max"\n', ["quality.auto", "'max'"]),
        (MINIMAL + 'dtype = { cuda = "fp8" }\n', ["dtype.cuda", "fp8"]),
        (MINIMAL + "max_batch = 0\n", ["max_batch"]),
        (MINIMAL + 'allow_pickle = "yes"\n', ["allow_pickle must be true or false"]),
        (MINIMAL.replace('default_model = "flux"', 'default_model = "sd"'), ["default_model", "'sd'"]),
        (MINIMAL.replace('"flux"]', '"../etc"]').replace("[models.flux]", '[models."../etc"]'), ["../etc"]),
        (MINIMAL + '[models.other]\nfamily = "sd15"\nsource = { path = "x" }\naliases = ["dall-e-3"]\n', ["dall-e-3"]),
        (MINIMAL.replace('["gpt-image-1", "dall-e-3"]', '["flux"]'), ["alias 'flux'"]),
        ('[models.x]\nfamily = "sd15"\nsource = { repo = "no-slash" }\n', ["source.repo", "owner/name"]),
        ('[models.x]\nfamily = "sd15"\nsource = { repo = "acme/tiny sdxl" }\n', ["source.repo", "owner/name"]),
        (
            '[models.x]\nfamily = "sd15"\nsource = { file = "a.safetensors", config = "/srv/c", revision = "v1" }\n',
            ["source.revision", "config is a folder"],
        ),
        ('[models.x]\nfamily = "sd15"\nsource = { file = "a.safetensors" }\n', ["source.config"]),
        ('[models.x]\nfamily = "sd15"\nsource = { path = "x", variant = "fp-16" }\n', ["source.variant", "fp-16"]),
        (
            '[models.x]\nfamily = "sd15"\nsource = { file = "a.safetensors", config = "o/n", variant = "fp16" }\n',
            ["'variant'"],
        ),
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


def test_a_file_not_in_utf8_is_named_with_its_line(tmp_path):
    path = tmp_path / "models.toml"
    path.write_bytes((MINIMAL + 'description = "modèle"\n').encode("latin-1"))
    with pytest.raises(RegistryError) as info:
        Registry.load(path)
    assert str(info.value) == f"{path}: line 7 is not UTF-8 text; save the file as UTF-8"


def test_a_byte_order_mark_is_not_a_mistake(tmp_path):
    path = tmp_path / "models.toml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert Registry.load(path).default_model == "flux"


def test_default_model_may_be_an_alias(tmp_path):
    registry = load(tmp_path, MINIMAL.replace('default_model = "flux"', 'default_model = "gpt-image-1"'))
    assert registry.default_model == "flux" and registry.default.name == "flux"


# Every key of models.toml, each to be given values of other types: a mistake is a RegistryError (one line naming
# the key), never a TypeError's traceback.
EVERY_KEY: dict[str, Any] = {
    "default_model": "flux",
    "models": {
        "flux": {
            "family": "flux",
            "source": {"path": "w/flux", "variant": "fp16"},
            "aliases": ["gpt-image-1"],
            "description": "d",
            "default_size": "1024x1024",
            "limits": {"min_side": 256, "max_side": 2048, "max_pixels": 4194304, "multiple_of": 16},
            "quality": {"auto": "medium", "low": {"steps": 4, "guidance": 3.5, "max_sequence_length": 256}},
            "max_batch": 4,
            "allow_pickle": False,
            "dtype": {"cuda": "bfloat16"},
            "variant": "base",
            "max_input_images": 1,
            "optimize": {
                "preset": "lossless",
                "attention": "auto",
                "compile": "auto",
                "compile_vae": "auto",
                "fuse_qkv": "auto",
                "channels_last": "auto",
                "sync_free": "auto",
                "prompt_cache": 32,
                "fp8": False,
                "step_cache": "off",
                "step_cache_threshold": 0.05,
                "warmup_sizes": ["1024x1024"],
                "compile_cache_dir": "/tmp/cache",
            },  # fmt: skip
        },
        "sd": {
            "family": "sdxl",
            "source": {"file": "x.safetensors", "config": "owner/base"},
            "optimize": {"cuda_graphs": "auto"},
        },
        "hub": {"family": "sd15", "source": {"repo": "owner/name", "revision": "main"}},
    },
    "matting": {"source": {"path": "m"}, "trust_remote_code": False, "input_size": 1024},
}
WRONG_VALUES = [[], ["x"], {}, {"a": 1}, float("nan"), float("inf"), -1, True, "x", ""]


def _key_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [prefix, *(path for key, child in children for path in _key_paths(child, (*prefix, key)))]


@pytest.mark.parametrize("path", _key_paths(EVERY_KEY)[1:], ids=lambda path: ".".join(map(str, path)))
def test_a_value_of_any_type_in_any_key_is_named_or_accepted(path):
    Registry.from_dict(EVERY_KEY, base_dir=Path("/nonexistent"))  # the file itself is valid
    for wrong in WRONG_VALUES:
        data = copy.deepcopy(EVERY_KEY)
        table = data
        for key in path[:-1]:
            table = table[key]
        table[path[-1]] = wrong
        try:
            Registry.from_dict(data, base_dir=Path("/nonexistent"))
        except RegistryError as err:
            key = path[-2] if isinstance(path[-1], int) else path[-1]  # a list's item is named by its list
            assert str(key) in str(err), (wrong, str(err))


def test_restricted_to(tmp_path):
    registry = load(tmp_path, MINIMAL + '[models.sd]\nfamily = "sd15"\nsource = { path = "x" }\naliases = ["a"]\n')
    only_sd = registry.restricted_to(["sd"])
    assert only_sd.default_model == "sd" and only_sd.public_ids() == ["sd", "a"]
    with pytest.raises(RegistryError, match="--models: unknown model"):
        registry.restricted_to(["nope"])
    by_alias = registry.restricted_to(["a", "gpt-image-1", "sd"])  # aliases name their models, as in requests
    assert [spec.name for spec in by_alias] == ["sd", "flux"] and by_alias.default_model == "flux"


def test_shipped_models_toml_is_valid():
    registry = Registry.load(REPO_ROOT / "models.toml")
    families = {spec.family for spec in registry}
    assert families == {"flux", "sd15", "sdxl", "sd3"}
    # The tiny models the tests serve answer to the same OpenAI names.
    for alias in OPENAI_ALIASES:
        assert registry.resolve(alias) is registry.default
    assert set(registry.default.aliases) == set(OPENAI_ALIASES)


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


def test_a_single_files_config_is_a_cached_repo_or_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "acme" / "local").mkdir(parents=True)
    configs = {"hub": "acme/base", "home": "~/sdxl", "relative": "acme/local", "absolute": "/srv/sdxl"}
    text = "".join(
        f'[models.{name}]\nfamily = "sdxl"\nsource = {{ file = "x.safetensors", config = "{config}" }}\n'
        for name, config in configs.items()
    )
    text += (
        '[models.pinned]\nfamily = "flux"\nsource = { file = "f.safetensors", config = "o/n", revision = "abc1234" }\n'
    )
    registry = load(tmp_path, text)
    assert registry.resolve("pinned").source.revision == "abc1234"
    assert registry.resolve("hub").source.config == "acme/base" and registry.resolve("hub").source.revision == "main"
    assert registry.resolve("home").source.config == str(tmp_path / "home" / "sdxl")
    assert registry.resolve("relative").source.config == str(tmp_path / "acme" / "local")  # a folder beside the file
    assert registry.resolve("absolute").source.config == "/srv/sdxl"
