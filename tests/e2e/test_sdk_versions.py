"""The compatibility checklist through the SDK versions apps actually pin (spec section 8): openai-python 1.97.0
(the first with image streaming), 1.109.1 (the last 1.x) and 2.54.0 (the last 2.x) next to the 3.x the other
e2e tests use, and the Node SDK from 5.10.1 (its first with image streaming) to the newest this Node runs.

Each SDK is installed once into the tiny-model cache (`sdks/`) and runs a checklist script in a subprocess
(`sdk/python_checklist.py`, `sdk/node_checklist.mjs`) against the real server and the failing in-process
one; the assertions here read what the script saw. Without network to PyPI / npm, or without Node, a case is
skipped with the reason, never passed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e.conftest import ServerProcess
from tests.e2e.failing_server import FAILURE_MESSAGE

SDK_SCRIPTS = Path(__file__).parent / "sdk"
PYTHON_SDKS = ["1.97.0", "1.109.1", "2.54.0"]
NODE_SDKS = ["5.10.1", "6.49.0", "7.60.0"]
INSTALL_TIMEOUT_S = 300
RUN_TIMEOUT_S = 600

PNG = "89504e47"
INPUT_SIZE = "512x512"
TWO_WIDE_IMAGES_TOKENS = 2 * 6144 + 9  # output tokens of two 1536x1024 images + the prompt "a red circle"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 512² RGB picture and a mask whose transparent square marks the region to edit."""
    folder = tmp_path_factory.mktemp("sdk-inputs")
    Image.new("RGB", (512, 512), (200, 30, 30)).save(folder / "image.png")
    mask = Image.new("RGBA", (512, 512), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (128, 128, 384, 384))
    mask.save(folder / "mask.png")
    return folder / "image.png", folder / "mask.png"


UNREACHABLE: dict[str, str] = {}  # registry ("pypi", "npm") -> why its first install failed; the rest skip at once


def installed(folder: Path, marker: str, command: list[str], registry: str) -> Path:
    """`folder` after running `command` into it once (atomically); skip the test when the install fails."""
    if (folder / marker).exists():
        return folder
    if registry in UNREACHABLE:
        pytest.skip(UNREACHABLE[registry])
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        done = subprocess.run(
            command, cwd=staging, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        UNREACHABLE[registry] = f"installing into {folder.name} took over {INSTALL_TIMEOUT_S}s (no {registry} access?)"
        pytest.skip(UNREACHABLE[registry])
    if done.returncode != 0:
        UNREACHABLE[registry] = f"could not install {folder.name} (no {registry} access?): {done.stderr[-500:]}"
        pytest.skip(UNREACHABLE[registry])
    staging.rename(folder)
    return folder


def run_checklist(command: list[str], env: dict[str, str] | None = None) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def expect_error(seen: object, cls: str, status: int | None, code: str, param: str | None) -> None:
    assert isinstance(seen, dict), seen
    assert (seen["class"], seen["status"], seen["code"], seen["param"]) == (cls, status, code, param), seen


@pytest.mark.parametrize("version", PYTHON_SDKS)
def test_python_sdk(
    version: str, server: ServerProcess, failing_root: str, inputs: tuple[Path, Path], tiny_models_toml: Path
):
    folder = tiny_models_toml.parent / "sdks" / f"openai-python-{version}"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", "."]
    installed(folder, "openai", [*pip, f"openai=={version}"], "pypi")
    script = [sys.executable, str(SDK_SCRIPTS / "python_checklist.py"), server.root, failing_root, *map(str, inputs)]
    seen = run_checklist(script, env={**os.environ, "PYTHONPATH": str(folder)})

    assert seen["version"] == version
    image = [PNG, INPUT_SIZE, "RGB"]
    assert seen["generate"] == {
        "images": [[PNG, "1536x1024", "RGB"]] * 2, "url": None, "created": True, "total_tokens": TWO_WIDE_IMAGES_TOKENS,
    }  # fmt: skip
    assert seen["url"] == [None, [PNG, "1024x1024", "RGB"]]
    assert seen["stream"] == [
        ["image_generation.partial_image", 0, image],
        ["image_generation.partial_image", 1, image],
        ["image_generation.completed", None, image],
    ]
    assert seen["async_stream"] == [["image_generation.partial_image", image], ["image_generation.completed", image]]
    assert seen["edit_list"] == [image]
    assert seen["edit_bytes"] == image
    assert seen["edit_mask"] == [image, image]
    assert seen["edit_stream"] == [["image_edit.partial_image", image], ["image_edit.completed", image]]
    assert seen["variation"] == 2
    assert seen["request_id"] is True
    assert seen["models"] == ["model"]
    expect_error(seen["model_missing"], "NotFoundError", 404, "model_not_found", "model")
    expect_error(seen["bad_n"], "BadRequestError", 400, "integer_below_min_value", "n")
    expect_error(seen["bad_stream"], "BadRequestError", 400, "invalid_value", "size")
    expect_error(seen["mid_stream_failure"], "APIError", None, "injected_failure", None)
    assert seen["mid_stream_failure"]["message"] == FAILURE_MESSAGE


@pytest.mark.parametrize("version", NODE_SDKS)
def test_node_sdk(
    version: str, server: ServerProcess, failing_root: str, inputs: tuple[Path, Path], tiny_models_toml: Path
):
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js and npm are not installed")
    folder = tiny_models_toml.parent / "sdks" / f"openai-node-{version}"
    # --engine-strict off: a newer SDK may declare a newer Node than this machine's and still run on it.
    npm_install = [npm, "install", "--no-audit", "--no-fund", "--engine-strict=false", f"openai@{version}"]
    installed(folder, "node_modules/openai", npm_install, "npm")
    script_path = folder / "node_checklist.mjs"  # beside its node_modules, where `import "openai"` resolves
    shutil.copyfile(SDK_SCRIPTS / "node_checklist.mjs", script_path)
    seen = run_checklist([node, str(script_path), server.root, failing_root, *map(str, inputs)])

    image = [PNG, INPUT_SIZE]
    assert seen["generate"] == {"images": [[PNG, "1536x1024"]] * 2, "total_tokens": TWO_WIDE_IMAGES_TOKENS}
    assert seen["jpeg"][0] == "jpeg" and seen["jpeg"][1].startswith("ffd8ff")
    assert seen["stream"] == [
        ["image_generation.partial_image", 0, image],
        ["image_generation.partial_image", 1, image],
        ["image_generation.completed", None, image],
    ]
    assert seen["edit_list"] == [image]
    assert seen["edit_mask"] == [image, image]
    assert seen["edit_stream"] == [["image_edit.partial_image", image], ["image_edit.completed", image]]
    assert seen["variation"] == 2
    assert seen["models"] == ["model"]
    expect_error(seen["model_missing"], "NotFoundError", 404, "model_not_found", "model")
    expect_error(seen["bad_size"], "BadRequestError", 400, "invalid_value", "size")
    expect_error(seen["bad_stream"], "BadRequestError", 400, "empty_string", "prompt")
    expect_error(seen["mid_stream_failure"], "APIError", None, "injected_failure", None)
    assert FAILURE_MESSAGE in seen["mid_stream_failure"]["message"]
