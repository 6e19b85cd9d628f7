"""What an operator sees: the CLI, a model without weights, a broken models.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import ServerProcess


def localimg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "localimg.cli", *args], capture_output=True, text=True, timeout=120)


def test_models_command_lists_weights_status(tiny_models_toml: Path, tmp_path: Path):
    config = tmp_path / "models.toml"
    config.write_text(
        tiny_models_toml.read_text().replace('path = "tiny-', f'path = "{tiny_models_toml.parent}/tiny-')
        + '\n[models.absent]\nfamily = "sdxl"\nsource = { repo = "nobody/absent", revision = "main" }\n'
    )
    result = localimg("models", "--config", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("tiny-flux (default)") and "weights=present" in line for line in lines)
    assert any(line.startswith("absent") and "weights=MISSING" in line for line in lines)


def test_broken_config_is_one_clear_line(tmp_path: Path):
    config = tmp_path / "models.toml"
    config.write_text('[models.x]\nfamly = "flux"\n')
    for command in ("models", "serve"):
        result = localimg(command, "--config", str(config))
        assert result.returncode == 2
        assert "[models.x]" in result.stderr and "famly" in result.stderr
        assert "Traceback" not in result.stderr


def test_missing_weights_answer_a_clear_error(tiny_models_toml: Path, tmp_path: Path):
    config = tmp_path / "models.toml"
    config.write_text(
        tiny_models_toml.read_text().replace('path = "tiny-', f'path = "{tiny_models_toml.parent}/tiny-')
        + f'\n[models.absent]\nfamily = "sd15"\nsource = {{ path = "{tmp_path}/nothing-here" }}\n'
    )
    server = ServerProcess(config, "--preload", "default")
    try:
        server.wait_ready()
        client = openai.OpenAI(base_url=f"{server.root}/v1", api_key="sk-local", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            client.images.generate(model="absent", prompt="x", size="256x256")
        assert info.value.status_code == 503
        assert "nothing-here" in info.value.message and info.value.code == "model_weights_missing"
        assert info.value.response.headers["x-should-retry"] == "false"
        # The server keeps serving the models it has.
        assert len(client.images.generate(model="tiny-flux", prompt="x", size="256x256").data) == 1
    finally:
        server.stop()
