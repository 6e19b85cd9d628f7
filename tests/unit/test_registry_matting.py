"""The optional [matting] table of models.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from localimg.errors import RegistryError
from localimg.registry import ModelSource, Registry

MODELS = """
[models.flux]
family = "flux"
source = { path = "weights/flux" }
"""


def load(tmp_path: Path, matting: str, top: str = "") -> Registry:
    path = tmp_path / "models.toml"
    path.write_text(top + MODELS + matting)
    return Registry.load(path)


def test_no_matting_table(tmp_path):
    assert load(tmp_path, "").matting is None


def test_matting_must_be_a_table(tmp_path):
    with pytest.raises(RegistryError, match=r"\[matting\]: must be a table"):
        load(tmp_path, "", top='matting = "rmbg"\n')


def test_local_folder_defaults(tmp_path):
    spec = load(tmp_path, '[matting]\nsource = { path = "weights/rmbg" }\n').matting
    assert spec is not None
    assert spec.source == ModelSource(path=(tmp_path / "weights/rmbg").resolve())
    assert spec.trust_remote_code is False and spec.input_size == 1024


def test_repo_with_opt_in(tmp_path):
    text = '[matting]\nsource = { repo = "briaai/RMBG-2.0", revision = "abc" }\ntrust_remote_code = true\n'
    registry = load(tmp_path, text + "input_size = 512\n")
    assert registry.matting.source == ModelSource(repo="briaai/RMBG-2.0", revision="abc")
    assert registry.matting.trust_remote_code is True and registry.matting.input_size == 512
    assert registry.restricted_to(["flux"]).matting == registry.matting


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("[matting]\ntrust_remote_code = true\n", ["[matting]: missing key 'source'"]),
        ('[matting]\nsource = { path = "x" }\nfoo = 1\n', ["[matting]: unknown key(s) 'foo'"]),
        ('[matting]\nsource = { file = "x.safetensors", config = "c" }\n', ["not a file"]),
        ('[matting]\nsource = { repo = "rmbg" }\n', ["expected 'owner/name'"]),
        ('[matting]\nsource = { path = "x", variant = "fp16" }\n', ["source.variant is for diffusers models"]),
        (
            '[matting]\nsource = { path = "x" }\ntrust_remote_code = "yes"\n',
            ["trust_remote_code must be true or false"],
        ),
        ('[matting]\nsource = { path = "x" }\ninput_size = 8\n', ["input_size must be an integer in 64..4096"]),
    ],
)
def test_mistakes_name_the_table_and_key(tmp_path, text, fragments):
    with pytest.raises(RegistryError) as info:
        load(tmp_path, text)
    assert str(tmp_path / "models.toml") in str(info.value)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
