"""What an operator sees: the CLI, a model without weights, a broken models.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from localimg import __version__
from tests.e2e.conftest import ServerProcess
from tests.e2e.ready import wait_until_ok


def localimg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "localimg.cli", *args], capture_output=True, text=True, timeout=120)


def test_models_command_lists_weights_status(tiny_models_toml: Path, tmp_path: Path):
    config = tmp_path / "models.toml"
    config.write_text(
        tiny_models_toml.read_text().replace('path = "tiny-', f'path = "{tiny_models_toml.parent}/tiny-')
        + '\n[models.absent]\nfamily = "sdxl"\nsource = { repo = "nobody/absent", revision = "main" }\n'
        + f'\n[models.wrong]\nfamily = "sd15"\nsource = {{ path = "{tiny_models_toml.parent}/tiny-flux" }}\n'
    )
    result = localimg("models", "--config", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("tiny-flux (default)") and "weights=present" in line for line in lines)
    at = next(i for i, line in enumerate(lines) if line.startswith("absent"))
    assert "weights=MISSING" in lines[at] and "nobody/absent@main is not in the Hugging Face cache" in lines[at + 1]
    # Weights that are there but are another model than the table declares: the table is what to change.
    at = next(i for i, line in enumerate(lines) if line.startswith("wrong"))
    assert "weights=MISMATCH" in lines[at] and "set family = 'flux'" in lines[at + 1]
    # Without its default model's weights the server cannot serve: a script checking a site gets a failure.
    config.write_text(config.read_text().replace('default_model = "tiny-flux"', 'default_model = "absent"'))
    assert localimg("models", "--config", str(config)).returncode == 1


def test_models_command_fails_on_a_matting_model_that_would_stop_the_server(tiny_models_toml: Path, tmp_path: Path):
    config = tmp_path / "models.toml"
    not_a_matting_model = tiny_models_toml.parent / "tiny-sd15" / "unet"  # config.json and .safetensors, no model_type
    config.write_text(
        tiny_models_toml.read_text().replace('path = "tiny-', f'path = "{tiny_models_toml.parent}/tiny-')
        + f'\n[matting]\nsource = {{ path = "{not_a_matting_model}" }}\n'
    )
    result = localimg("models", "--config", str(config))
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("[matting]"))
    assert "weights=MISMATCH" in lines[at] and "names neither a model_type" in lines[at + 1]
    assert "`localimg serve` does not start with it" in lines[at + 1]


def test_broken_config_is_one_clear_line(tmp_path: Path):
    config = tmp_path / "models.toml"
    config.write_text('[models.x]\nfamly = "flux"\n')
    for command in ("models", "serve"):
        result = localimg(command, "--config", str(config))
        assert result.returncode == 2
        assert "[models.x]" in result.stderr and "famly" in result.stderr
        assert "Traceback" not in result.stderr


def with_absent_model(tiny_models_toml: Path, tmp_path: Path) -> Path:
    """The tiny models plus `absent`, whose weights folder does not exist."""
    config = tmp_path / "models.toml"
    config.write_text(
        tiny_models_toml.read_text().replace('path = "tiny-', f'path = "{tiny_models_toml.parent}/tiny-')
        + f'\n[models.absent]\nfamily = "sd15"\nsource = {{ path = "{tmp_path}/nothing-here" }}\n'
    )
    return config


def test_missing_weights_answer_a_clear_error(tiny_models_toml: Path, tmp_path: Path):
    server = ServerProcess(with_absent_model(tiny_models_toml, tmp_path), "--preload", "default", log_dir=tmp_path)
    try:
        server.wait_ready()
        client = openai.OpenAI(base_url=f"{server.root}/v1", api_key="sk-local", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            client.images.generate(model="absent", prompt="x", size="256x256")
        assert info.value.status_code == 503
        assert info.value.code == "model_weights_missing"
        assert "'absent' is not available" in info.value.message and str(tmp_path) not in info.value.message
        assert info.value.response.headers["x-should-retry"] == "false"
        # Model pickers are not offered it, and it comes back once its weights are in place.
        assert "absent" not in [model.id for model in client.models.list()]
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("absent")
        shutil.copytree(tiny_models_toml.parent / "tiny-sd15", tmp_path / "nothing-here")
        assert "absent" in [model.id for model in client.models.list()]
        # The server keeps serving the models it has.
        assert len(client.images.generate(model="tiny-flux", prompt="x", size="256x256").data) == 1
    finally:
        server.stop()


def test_ready_is_503_while_a_preloaded_model_is_unavailable(tiny_models_toml: Path, tmp_path: Path):
    # A load balancer must not send traffic to a server that cannot serve what it was told to.
    server = ServerProcess(
        with_absent_model(tiny_models_toml, tmp_path), "--preload", "default,absent", log_dir=tmp_path
    )
    try:
        wait_until_ok(f"{server.root}/health", timeout_s=120)
        deadline = time.monotonic() + 120
        while (ready := httpx.get(f"{server.root}/ready")).json()["status"] == "loading":
            assert time.monotonic() < deadline, "the preload never finished"
            time.sleep(0.1)
        assert ready.status_code == 503 and ready.json() == {"status": "unavailable", "models": ["absent"]}
        log = server.log()
        assert "nothing-here" in log  # the operator's log says why
        assert "started, but not ready: absent could not be loaded" in log and "ready: serving" not in log
        # ... after saying what it was asked to serve, and how
        config = tmp_path / "models.toml"
        assert (
            "models tiny-flux, tiny-sd15, " in log and f"from {config} (default tiny-flux); API key not required" in log
        )
        client = openai.OpenAI(base_url=f"{server.root}/v1", api_key="sk-local", max_retries=0)
        assert len(client.images.generate(model="tiny-flux", prompt="x", size="256x256").data) == 1
    finally:
        server.stop()


def test_a_failed_device_answers_503_and_ends_the_server_for_its_supervisor(tiny_models_toml: Path, tmp_path: Path):
    """After a sticky CUDA error (injected: a fake illegal memory access raised inside the real pipeline call)
    nothing can run on the device again in this process: the request gets a 503 naming the failure, and the
    server exits with status 3 so that systemd, Docker or Kubernetes starts a fresh one."""
    from localimg.server import DEVICE_FAILED_EXIT_STATUS
    from localimg.testing.faults import DEVICE_FAILURE_PROMPT

    server = ServerProcess(tiny_models_toml, "--preload", "tiny-flux", "--inject-device-failure", log_dir=tmp_path)
    try:
        server.wait_ready()
        # The SDK's default retries: a retry would find the port closed and report a connection error instead.
        client = openai.OpenAI(base_url=f"{server.root}/v1", api_key="sk-local", timeout=60)
        assert len(client.images.generate(model="tiny-flux", prompt="x", size="256x256").data) == 1
        with pytest.raises(openai.InternalServerError) as info:
            client.images.generate(model="tiny-flux", prompt=f"x {DEVICE_FAILURE_PROMPT}", size="256x256")
        assert info.value.status_code == 503 and info.value.response.headers["x-should-retry"] == "false"
        assert info.value.code == "device_failed"
        assert "illegal memory access" in info.value.message
        assert server.process.wait(timeout=60) == DEVICE_FAILED_EXIT_STATUS
        log = server.log()
        assert "CRITICAL localimg.service.engine" in log and "cudaErrorIllegalAddress" in log  # with its traceback
    finally:
        server.stop()


def test_version():
    result = localimg("--version")
    assert result.returncode == 0 and result.stdout == f"localimg {__version__}\n"
